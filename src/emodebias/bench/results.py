"""Run folders: one format for every run, committed atomically; `collect` -> tidy Parquet.

A run folder, whoever made it (`emodebias bench`, `emodebias train`, `emodebias.fit`)::

    record.json       spec, resolved hyperparameters and training config, encoder (name, options,
                      id, config), class names, dev-selected epoch, test metrics (summary and
                      per-group table), wall time, input hashes and provenance
    predictions.npz   test utt_ids, softmax probabilities, targets, classes
    model/            the trained head (FitResult.save), when the method trains one

A grid keeps its runs under its output folder as ``runs/<hash>/`` (and the last error of a failed
run in ``failures/<hash>.json``, retried next time); `train` writes one run folder where it is
told. A run's identity (`hash`, the folder name in a grid) is its RunSpec's hash when the spec
names every input (grid runs: corpus, fold, ratio, ...); a run trained on given files
(`kind: train`) also records the content hashes of its manifest, split, feature store and group
assignment in `inputs`, and its hash covers spec and inputs: the same command on the same files
gives the same hash. Every consumer finds runs with `find_run_dirs`: a run folder, a folder of
run folders, a grid output folder, or any folder above them.

A run is written into a private temporary directory and renamed into place in one step, with
`record.json` written last; a directory `runs/<hash>/` with a `record.json` is therefore always
complete, and a killed writer leaves only a `*.tmp-*` directory that the next runner removes.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from emodebias.bench.grid import RunSpec, cluster_k, content_hash, group_kind
from emodebias.errors import UserError
from emodebias.fileio import replacing, write_text_atomic

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
RECORD = "record.json"
PREDICTIONS = "predictions.npz"
MODEL = "model"
PROVENANCE = "provenance.json"  # a grid invocation's provenance, beside its runs/
# Record fields that legitimately differ between two executions of the same spec.
VOLATILE = ("wall_time", "created", "host", "pid", "provenance", "sources")
# Folders never searched for runs (besides temporaries of killed writers): grid stage caches,
# failure notes and records set aside as damaged.
_SKIP_DIRS = ("cache", "failures", "damaged")
MAX_DEPTH = 4  # how deep below the given folder runs are looked for


class RecordError(UserError):
    """A run record is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class RunResult:
    """What an executor returns for one spec; `write_run` turns it into a record on disk."""

    spec: RunSpec
    summary: dict[str, float]
    table: list[dict] = field(default_factory=list)  # tidy metric rows (metric, attribute, ...)
    best_epoch: int | None = None
    hparams: dict = field(default_factory=dict)
    wall_time: float = 0.0
    test_ids: list[str] = field(default_factory=list)
    test_probs: np.ndarray | None = None
    test_targets: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    save_model: Callable[[Path], object] | None = None
    kind: str = "grid"  # "grid" (bench), "train" (one run on given files) or "audit" (a model
    # run over a corpus: no training, `encoder` names the model, `train_config` stays empty)
    name: str | None = None  # the record's display name (default: the spec's name)
    inputs: dict = field(default_factory=dict)  # content hashes of the input files (train)
    encoder: dict = field(default_factory=dict)  # name, options, id, config, max_seconds
    train_config: dict = field(default_factory=dict)  # the resolved TrainConfig
    sources: dict = field(default_factory=dict)  # where the inputs were read (paths)
    provenance: dict | None = None  # versions, commit, command line (see emodebias.provenance)
    # scores on shared classes (`bench.cross_corpus.Evaluation`: .file, .record(), .arrays())
    evaluations: list = field(default_factory=list)
    # a search trial's dev scores and selection (emodebias.bench.selection)
    selection: dict | None = None

    @property
    def hash(self) -> str:
        return run_hash(self.spec, self.inputs)


def run_hash(spec: RunSpec, inputs: dict | None = None) -> str:
    """A run's identity: the spec's hash, or with `inputs` a hash of spec and input hashes."""
    if not inputs:
        return spec.hash
    return content_hash({"spec": spec.hash, "inputs": inputs})


def run_dir(out: Path, spec: RunSpec | str) -> Path:
    h = spec if isinstance(spec, str) else spec.hash
    return Path(out) / "runs" / h


def is_done(out: Path, spec: RunSpec | str) -> bool:
    return (run_dir(out, spec) / RECORD).is_file()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_run(out: Path, result: RunResult) -> Path:
    """Commit one grid run to ``<out>/runs/<hash>`` atomically; a run already committed is left
    as it is. Its provenance is the grid invocation's (``<out>/provenance.json``)."""
    if result.provenance is None:
        result.provenance = grid_provenance(out)
    final = commit_run(run_dir(out, result.hash), result)
    (Path(out) / "failures" / f"{result.hash}.json").unlink(missing_ok=True)
    return final


def grid_provenance(out: Path) -> dict:
    """The provenance the runner wrote for this grid invocation, else this process's."""
    try:
        return json.loads((Path(out) / PROVENANCE).read_text())
    except (OSError, json.JSONDecodeError):
        from emodebias import provenance

        return provenance.collect()


def commit_run(final: Path, result: RunResult, replace: bool = False) -> Path:
    """Write `result` as the run folder `final` (tmp dir + rename, record.json last).

    Without `replace` a folder already holding a record is kept (first commit wins: grids);
    with it, an earlier run folder there is swapped out in one rename (`train --out` again).
    A file, or a folder that is not a run folder, is never overwritten.
    """
    final = Path(final)
    done = (final / RECORD).is_file()
    if done and not replace:
        return final
    if final.exists() and not final.is_dir():
        raise UserError(f"{final} is a file; pass a folder for the run")
    if final.is_dir() and not done and any(final.iterdir()):
        raise UserError(f"{final} exists and is not a run folder (no {RECORD}); pass an empty "
                        "or new folder for the run")
    if result.provenance is None:
        from emodebias import provenance

        result.provenance = provenance.collect()
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead(p for pattern in (".tmp-*", ".old-*")
                 for p in final.parent.glob(glob.escape(final.name) + pattern))
    tmp = final.parent / f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_contents(tmp, result)
        if replace and final.exists():
            old = final.parent / f"{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            return final
        try:
            os.rename(tmp, final)
        except OSError:  # another writer committed the same spec first: keep theirs
            if not (final / RECORD).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def make_record(result: RunResult) -> dict:
    """The record.json content of a run (files named relative to its folder)."""
    spec = result.spec
    return _jsonable({
        "selection": result.selection,
        "schema_version": SCHEMA_VERSION,
        "kind": result.kind,
        "hash": result.hash,
        "name": result.name or spec.name,
        "spec": spec.to_dict(),
        "inputs": result.inputs,
        "status": "ok",
        "best_epoch": result.best_epoch,
        "hparams": result.hparams,
        "train_config": (result.train_config or None if result.kind == "audit"
                         else result.train_config or _resolved_train(spec)),
        "encoder": result.encoder or {"name": spec.encoder, "options": spec.encoder_opts},
        "classes": list(result.classes),
        "metrics": {"summary": result.summary, "table": result.table},
        "wall_time": result.wall_time,
        "predictions": PREDICTIONS if result.test_probs is not None else None,
        "model": MODEL if result.save_model is not None else None,
        "info": result.info,
        "sources": result.sources,
        "provenance": result.provenance,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "evaluations": [e.record() for e in result.evaluations],  # cross-corpus grids
    })


def _resolved_train(spec: RunSpec) -> dict:
    """The full TrainConfig a grid spec's `train` overrides resolve to."""
    from dataclasses import asdict

    from emodebias.training import TrainConfig

    return asdict(TrainConfig(**spec.train))


def _write_contents(folder: Path, result: RunResult) -> None:
    """predictions.npz, model/ and (last, fsynced) record.json of one run into `folder`."""
    if result.test_probs is not None:
        arrays = {"utt_ids": np.asarray(result.test_ids, dtype=str),
                  "probs": np.asarray(result.test_probs, dtype=np.float32),
                  "classes": np.asarray(result.classes, dtype=str)}
        if result.test_targets is not None:
            arrays["targets"] = np.asarray(result.test_targets, dtype=np.float32)
        np.savez(folder / PREDICTIONS, **arrays)
    for ev in result.evaluations:
        np.savez(folder / ev.file, **ev.arrays())
    if result.save_model is not None:
        result.save_model(folder / MODEL)
    with open(folder / RECORD, "w") as fh:
        json.dump(make_record(result), fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


def write_failure(out: Path, spec: RunSpec, exc: BaseException) -> Path:
    """Keep the error of a failed run (it is retried on the next invocation)."""
    path = Path(out) / "failures" / f"{spec.hash}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return write_text_atomic(path, json.dumps(
        {"hash": spec.hash, "name": spec.name, "spec": spec.to_dict(),
         "error": f"{type(exc).__name__}: {exc}", "traceback": tb}, indent=1, default=str))


def clean_stale(out: Path) -> int:
    """Remove temporary run directories left by killed writers whose process is gone."""
    return _remove_dead((Path(out) / "runs").glob("*.tmp-*"))


def _remove_dead(paths: Iterable[Path]) -> int:
    """Remove ``<name>.tmp-<pid>-*`` / ``<name>.old-<pid>-*`` folders whose writer is gone."""
    n = 0
    for tmp in paths:
        match = re.search(r"\.(?:tmp|old)-(\d+)-", tmp.name)
        if match and int(match[1]) != os.getpid() and not _alive(int(match[1])):
            shutil.rmtree(tmp, ignore_errors=True)
            n += 1
    return n


def _alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (killed, not yet reaped by its new parent) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def read_record(path: Path) -> dict:
    """A record from a run directory (or record.json path); errors name the file."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordError(f"cannot read run record {path}: {exc}") from None
    if not isinstance(rec, dict):
        raise RecordError(f"run record {path} is not a JSON object")
    for key in ("hash", "spec", "metrics"):
        if key not in rec:
            raise RecordError(f"run record {path} lacks {key!r}")
    if run_hash(RunSpec.from_dict(rec["spec"]), rec.get("inputs")) != rec["hash"]:
        raise RecordError(f"run record {path}: spec does not match its hash {rec['hash']}")
    return rec


def find_run_dirs(path: Path) -> list[Path]:
    """Run folders at or below `path`: a run folder itself, a folder of `train` outputs, a grid
    output folder (``runs/<hash>/``), or a folder above several of them. Temporaries of killed
    writers and grid caches are skipped; a missing folder is a UserError."""
    path = Path(path)
    if (path / RECORD).is_file():
        return [path]
    if not path.is_dir():
        raise RecordError(f"{path}: no such run folder (expected a folder with {RECORD}, or a "
                          "folder of them)")
    found: list[Path] = []
    base = len(path.parts)
    for root, dirs, files in os.walk(path):
        here = Path(root)
        if RECORD in files and here != path:
            found.append(here)
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if ".tmp-" not in d and ".old-" not in d
                         and d not in _SKIP_DIRS and len(here.parts) - base < MAX_DEPTH)
    return sorted(found)


def iter_runs(path: Path) -> Iterable[tuple[Path, dict]]:
    """(run folder, record) for every run under `path` (see `find_run_dirs`)."""
    for d in find_run_dirs(path):
        yield d, read_record(d)


def iter_records(out: Path) -> Iterable[dict]:
    """Every committed record under `out`; a grid folder not yet written has none."""
    if not Path(out).exists():
        return
    for _, rec in iter_runs(out):
        yield rec


def load_predictions(run: Path) -> dict[str, np.ndarray]:
    with np.load(Path(run) / PREDICTIONS) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- tidy table
SPEC_COLUMNS = ["hash", "name", "corpus", "encoder", "fold", "ratio", "direction", "split_seed",
                "groups", "group_kind", "k", "method", "hparams", "seed", "best_epoch",
                "wall_time", "kind", "run", "block", "late_epoch", "trial", "selected",
                "best_rerun", "selection_rule", "search_hparams"]
# eval_corpus: the corpus scored (the training corpus, or a test corpus: cross-corpus rows);
# eval_classes: "all" (the training corpus's classes) or "shared" (a cross-corpus grid's
# shared classes, parts "shared_summary" / "shared_table")
TIDY_COLUMNS = SPEC_COLUMNS + ["eval_corpus", "eval_classes", "part", "metric", "attribute",
                               "group", "cls", "value", "support"]


def record_rows(rec: dict, run: str | None = None) -> list[dict]:
    """One record -> tidy rows: summary metrics (group/cls empty) then the per-group table;
    `run` names its folder (relative to what was collected)."""
    spec = rec["spec"]
    base = {
        "hash": rec["hash"], "name": rec.get("name", ""), "corpus": spec["corpus"],
        "encoder": spec["encoder"], "fold": str(spec["fold"]), "ratio": spec["ratio"],
        "direction": spec["direction"], "split_seed": spec["split_seed"],
        "groups": spec["groups"], "group_kind": group_kind(spec["groups"]),
        "k": cluster_k(spec["groups"]), "method": spec["method"],
        "hparams": json.dumps(_fixed_hparams(spec), sort_keys=True), "seed": spec["seed"],
        "best_epoch": rec.get("best_epoch"), "wall_time": rec.get("wall_time"),
        "kind": rec.get("kind", "grid"), "run": run, "block": spec.get("block") or "main",
        "late_epoch": bool(rec.get("info", {}).get("convergence", {}).get("late", False)),
        **selection_columns(rec),
    }
    rows = _metric_rows({**base, "eval_corpus": spec["corpus"], "eval_classes": "all"},
                        rec["metrics"], "")
    for ev in rec.get("evaluations", []):  # cross-corpus grids: scores on the shared classes
        rows += _metric_rows({**base, "eval_corpus": ev["corpus"], "eval_classes": "shared"},
                             ev, "shared_")
    return rows


def _metric_rows(base: dict, metrics: dict, prefix: str) -> list[dict]:
    """Tidy rows of one scoring (`summary` dict and per-group `table` list)."""
    rows = []
    for key, value in metrics["summary"].items():
        attr, metric = split_summary_key(key)
        rows.append({**base, "part": prefix + "summary", "metric": metric, "attribute": attr,
                     "group": None, "cls": None, "value": value, "support": None})
    for r in metrics.get("table", []):
        rows.append({**base, "part": prefix + "table", "metric": r.get("metric"),
                     "attribute": r.get("attribute"), "group": r.get("group"),
                     "cls": r.get("cls"), "value": r.get("value"), "support": r.get("support")})
    return rows


def _fixed_hparams(spec: dict) -> dict:
    """The hyperparameters that name a method's row: a search's drawn values are left out (they
    are in `search_hparams`), so the chosen trials of every fold form one row."""
    space = set((spec.get("search") or {}).get("space", []))
    return {k: v for k, v in spec["hparams"].items() if k not in space}


def selection_columns(rec: dict) -> dict:
    """A run's search columns: its trial, whether it is the one its search kept (runs outside
    searches always are), whether it reruns the chosen trial (`--best`), the rule and the
    trial's searched values (JSON)."""
    sel = rec.get("selection") or {}
    return {"trial": sel.get("trial"), "selected": bool(sel.get("chosen", True)),
            "best_rerun": bool(sel.get("best_rerun", False)),
            "selection_rule": sel.get("rule"),
            "search_hparams": None if sel.get("hparams") is None
            else json.dumps(sel["hparams"], sort_keys=True)}


def final_runs(tidy: pd.DataFrame) -> pd.DataFrame:
    """The rows a results table reports: runs outside searches, and of each search its chosen
    trial, or its reruns (`bench --best`) where the folder has them."""
    if tidy.empty or "selected" not in tidy.columns or tidy["trial"].isna().all():
        return tidy
    searched = tidy["trial"].notna()
    keep = ~searched | tidy["selected"].astype(bool)
    rerun = tidy["best_rerun"].astype(bool)
    if rerun.any():  # searches that were rerun report their reruns only
        methods = set(tidy.loc[rerun, "method"])
        keep &= ~(searched & ~rerun & tidy["method"].isin(methods))
    return tidy[keep]


def split_summary_key(key: str) -> tuple[str | None, str]:
    """'gender.tpr_gap' -> ('gender', 'tpr_gap'); 'macro_f1.ci_low' -> (None, 'macro_f1_ci_low')."""
    suffix = ""
    for end in (".ci_low", ".ci_high"):
        if key.endswith(end):
            key, suffix = key[: -len(end)], "_" + end[1:]
    attr, _, metric = key.rpartition(".")
    return (attr or None), metric + suffix


def tidy_frame(records: Iterable[dict | tuple[str | None, dict]]) -> pd.DataFrame:
    """Records (or (run folder name, record) pairs) -> the tidy table."""
    pairs = [(None, r) if isinstance(r, dict) else r for r in records]
    rows = [row for run, rec in pairs for row in record_rows(rec, run)]
    df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    for col in ("attribute", "group", "cls", "metric"):
        df[col] = df[col].map(lambda v: None if v is None or (isinstance(v, float) and
                                                              np.isnan(v)) else str(v))
    for col in ("value", "support", "ratio", "wall_time", "best_epoch", "k", "trial"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def collect_frame(path: Path) -> pd.DataFrame:
    """The tidy table of every run under `path`; a run found twice (same hash, e.g. a copied
    folder) counts once, from the first folder in sorted order."""
    path = Path(path)
    pairs, seen = [], {}
    for d, rec in iter_runs(path):
        if rec["hash"] in seen:
            log.warning("%s repeats run %s of %s; counted once", d, rec["hash"], seen[rec["hash"]])
            continue
        seen[rec["hash"]] = d
        pairs.append((d.relative_to(path).as_posix() if d != path else ".", rec))
    return tidy_frame(pairs)


def collect(out: Path, path: Path | None = None) -> pd.DataFrame:
    """All runs under `out` (see `find_run_dirs`) -> one tidy Parquet table (default
    `<out>/results.parquet`)."""
    df = collect_frame(out) if Path(out).exists() else tidy_frame([])
    path = Path(path) if path else Path(out) / "results.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        df.to_parquet(tmp, index=False)
    return df


def summary_wide(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the spec columns plus one column per summary metric
    (``macro_f1``, ``gender.tpr_gap``, ...)."""
    s = tidy[tidy["part"] == "summary"].copy()
    s["key"] = np.where(s["attribute"].isna(), s["metric"],
                        s["attribute"].fillna("") + "." + s["metric"])
    spec_cols = [c for c in SPEC_COLUMNS if c in s.columns]
    wide = s.pivot_table(index="hash", columns="key", values="value", aggfunc="first")
    meta = s.drop_duplicates("hash").set_index("hash")[
        [c for c in spec_cols if c != "hash"]]
    return meta.join(wide).reset_index()
