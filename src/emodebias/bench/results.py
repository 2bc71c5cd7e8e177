"""Run records: one directory per finished run, committed atomically; `collect` -> tidy Parquet.

Layout under a benchmark's output folder::

    runs/<spec hash>/record.json       the run record (DESIGN.md "Run record")
    runs/<spec hash>/predictions.npz   test utt_ids, softmax probabilities, targets
    runs/<spec hash>/model/            the trained head (FitResult.save), when kept
    failures/<spec hash>.json          the last error of a run that failed (retried next time)

A run is written into a private temporary directory and renamed into place in one step, with
`record.json` written last; a directory `runs/<hash>/` with a `record.json` is therefore always
complete, and a killed writer leaves only a `*.tmp-*` directory that the next runner removes.
"""

from __future__ import annotations

import json
import os
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

from emodebias.bench.grid import RunSpec, cluster_k, group_kind
from emodebias.fileio import replacing, write_text_atomic

SCHEMA_VERSION = 1
RECORD = "record.json"
PREDICTIONS = "predictions.npz"
# Record fields that legitimately differ between two executions of the same spec.
VOLATILE = ("wall_time", "created", "host", "pid")


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
    """Commit one run atomically (tmp dir + rename); a run already committed is left as it is."""
    final = run_dir(out, result.spec)
    if (final / RECORD).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        pred_name = None
        if result.test_probs is not None:
            arrays = {"utt_ids": np.asarray(result.test_ids, dtype=str),
                      "probs": np.asarray(result.test_probs, dtype=np.float32),
                      "classes": np.asarray(result.classes, dtype=str)}
            if result.test_targets is not None:
                arrays["targets"] = np.asarray(result.test_targets, dtype=np.float32)
            np.savez(tmp / PREDICTIONS, **arrays)
            pred_name = PREDICTIONS
        model_name = None
        if result.save_model is not None:
            result.save_model(tmp / "model")
            model_name = "model"
        record = {
            "schema_version": SCHEMA_VERSION,
            "hash": result.spec.hash,
            "name": result.spec.name,
            "spec": result.spec.to_dict(),
            "status": "ok",
            "best_epoch": result.best_epoch,
            "hparams": result.hparams,
            "metrics": {"summary": result.summary, "table": result.table},
            "wall_time": result.wall_time,
            "predictions": pred_name,
            "model": model_name,
            "info": result.info,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        with open(tmp / RECORD, "w") as fh:
            json.dump(_jsonable(record), fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.rename(tmp, final)
        except OSError:  # another writer committed the same spec first: keep theirs
            if not (final / RECORD).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (Path(out) / "failures" / f"{result.spec.hash}.json").unlink(missing_ok=True)
    return final


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
    n = 0
    for tmp in (Path(out) / "runs").glob("*.tmp-*"):
        pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
        if pid != os.getpid() and not _alive(pid):
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
        raise ValueError(f"cannot read run record {path}: {exc}") from None
    for key in ("hash", "spec", "metrics"):
        if key not in rec:
            raise ValueError(f"run record {path} lacks {key!r}")
    if RunSpec.from_dict(rec["spec"]).hash != rec["hash"]:
        raise ValueError(f"run record {path}: spec does not match its hash {rec['hash']}")
    return rec


def iter_records(out: Path) -> Iterable[dict]:
    for d in sorted((Path(out) / "runs").glob("*")):
        if ".tmp-" not in d.name and (d / RECORD).is_file():  # uncommitted writes are not runs
            yield read_record(d)


def load_predictions(run: Path) -> dict[str, np.ndarray]:
    with np.load(Path(run) / PREDICTIONS) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- tidy table
SPEC_COLUMNS = ["hash", "name", "corpus", "encoder", "fold", "ratio", "direction", "split_seed",
                "groups", "group_kind", "k", "method", "hparams", "seed", "best_epoch",
                "wall_time"]
TIDY_COLUMNS = SPEC_COLUMNS + ["part", "metric", "attribute", "group", "cls", "value", "support"]


def record_rows(rec: dict) -> list[dict]:
    """One record -> tidy rows: summary metrics (group/cls empty) then the per-group table."""
    spec = rec["spec"]
    base = {
        "hash": rec["hash"], "name": rec.get("name", ""), "corpus": spec["corpus"],
        "encoder": spec["encoder"], "fold": str(spec["fold"]), "ratio": spec["ratio"],
        "direction": spec["direction"], "split_seed": spec["split_seed"],
        "groups": spec["groups"], "group_kind": group_kind(spec["groups"]),
        "k": cluster_k(spec["groups"]), "method": spec["method"],
        "hparams": json.dumps(spec["hparams"], sort_keys=True), "seed": spec["seed"],
        "best_epoch": rec.get("best_epoch"), "wall_time": rec.get("wall_time"),
    }
    rows = []
    for key, value in rec["metrics"]["summary"].items():
        attr, metric = split_summary_key(key)
        rows.append({**base, "part": "summary", "metric": metric, "attribute": attr,
                     "group": None, "cls": None, "value": value, "support": None})
    for r in rec["metrics"].get("table", []):
        rows.append({**base, "part": "table", "metric": r.get("metric"),
                     "attribute": r.get("attribute"), "group": r.get("group"),
                     "cls": r.get("cls"), "value": r.get("value"), "support": r.get("support")})
    return rows


def split_summary_key(key: str) -> tuple[str | None, str]:
    """'gender.tpr_gap' -> ('gender', 'tpr_gap'); 'macro_f1.ci_low' -> (None, 'macro_f1_ci_low')."""
    suffix = ""
    for end in (".ci_low", ".ci_high"):
        if key.endswith(end):
            key, suffix = key[: -len(end)], "_" + end[1:]
    attr, _, metric = key.rpartition(".")
    return (attr or None), metric + suffix


def tidy_frame(records: Iterable[dict]) -> pd.DataFrame:
    rows = [row for rec in records for row in record_rows(rec)]
    df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    for col in ("attribute", "group", "cls", "metric"):
        df[col] = df[col].map(lambda v: None if v is None or (isinstance(v, float) and
                                                              np.isnan(v)) else str(v))
    for col in ("value", "support", "ratio", "wall_time", "best_epoch", "k"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def collect(out: Path, path: Path | None = None) -> pd.DataFrame:
    """All records under `out` -> one tidy Parquet table (default `<out>/results.parquet`)."""
    df = tidy_frame(iter_records(out))
    path = Path(path) if path else Path(out) / "results.parquet"
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
