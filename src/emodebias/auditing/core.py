"""Audit an existing emotion model: run it over a prepared corpus, save its predictions as a run
folder and score them exactly as `emodebias evaluate` does (nothing is trained).

The audit folder is a run folder (record.json with ``kind: audit`` and ``spec.method: audit``,
predictions.npz), so `evaluate`, `collect`, `report` and `compare` read it like a trained run;
beside them it holds evaluate's outputs (gaps.csv, per_class.csv, table.csv, summary.json) and
figures/. Its identity is the model's content hash, the manifest's content hash, the
utterances scored and the class map: the same audit gives the same hash.

Class map rule: each model class maps to one corpus class (`--map`, else the corpus class of the
same name, compared case-insensitively) or is dropped on request (`--drop`); a model class that
is neither is an error listing both sides. A prediction over the corpus classes is the model's
probability summed per corpus class, the dropped classes' mass removed and each row
renormalised (`ClassMap.project_probs`); corpus classes the model lacks get probability 0 and
are listed in the record. An utterance whose whole mass is on dropped classes is not scored
(counted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emodebias.auditing.inference import run_inference
from emodebias.auditing.models import AuditModel, open_model
from emodebias.data.classmap import ClassMap, ClassMapError
from emodebias.errors import UserError

if TYPE_CHECKING:
    from emodebias.data.manifest import Manifest
    from emodebias.data.splits import Split
    from emodebias.metrics.evaluate import MetricsResult

log = logging.getLogger(__name__)

PROJECTION_RULE = ("sum of the model's class probabilities per corpus class; mass on dropped "
                   "model classes removed; each row renormalised over the corpus classes")
PARTS = ("train", "dev", "test")


@dataclass
class AuditResult:
    """What an audit produced: its run folder, the scores and the model's class facts."""

    path: Path
    metrics: MetricsResult
    record: dict
    written: list[Path]


def resolve_class_map(source: Sequence[str], targets: Sequence[str],
                      spec: str | Path | Mapping[str, str] | Iterable[str] | None = None,
                      drop: Iterable[str] = ()) -> ClassMap:
    """The model -> corpus class map: `spec` first, then equal names (case-insensitive); every
    model class must be mapped or dropped (one-line error naming both sides otherwise)."""
    source, targets, drop = list(source), list(targets), list(drop)
    pairs: dict[str, str] = {}
    if spec is not None:
        user = ClassMap.parse(spec, targets=targets)
        user.check(source, what="model")
        pairs.update(user.mapping)
    unknown = sorted(set(drop) - set(source))
    if unknown:
        raise ClassMapError(f"--drop names {unknown}, which the model lacks; model classes: "
                            f"{source}; corpus classes: {targets}")
    lower = {t.lower(): t for t in targets}
    for c in source:
        if c not in pairs and c not in drop and c.lower() in lower:
            pairs[c] = lower[c.lower()]
    unmapped = [c for c in source if c not in pairs and c not in drop]
    if unmapped:
        raise ClassMapError(
            f"model classes {unmapped} match no corpus class; model classes: {source}; corpus "
            f"classes: {targets}; map them (--map {unmapped[0]}=CLASS) or drop them (--drop "
            f"{unmapped[0]})")
    return ClassMap(pairs, tuple(targets))


def select_utterances(manifest: Manifest, split: Split | str | Path | None,
                      part: str | None) -> tuple[list[str], Split | None]:
    """The whole corpus, or one part (default test) of a split."""
    if split is None:
        if part is not None:
            raise UserError(f"--part {part} needs --split (the whole corpus is audited without)")
        return list(manifest.utt_ids), None
    from emodebias.runs import open_split

    part = part or "test"
    if part not in PARTS:
        raise UserError(f"--part must be one of {', '.join(PARTS)}, not {part!r}")
    sp = open_split(manifest, split)
    ids = list(getattr(sp, part))
    missing = sorted(set(ids) - set(manifest.utt_ids))
    if missing:
        raise UserError(f"the split's {part} part has {len(missing)} utterances the manifest "
                        f"lacks (e.g. {missing[0]}); was it made from this manifest?")
    if not ids:
        raise UserError(f"the split's {part} part is empty")
    return ids, sp


def work_dir(out: Path) -> Path:
    """Where an audit keeps its partial work until the run folder is committed."""
    out = Path(out)
    return out.parent / f".{out.name}.audit-work"


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def audit(model: str | Path | Callable | AuditModel, manifest: Manifest | str | Path, *,
          out: str | Path, split: Split | str | Path | None = None, part: str | None = None,
          class_map: str | Path | Mapping[str, str] | Iterable[str] | None = None,
          drop: Iterable[str] = (), classes: Sequence[str] | None = None,
          sample_rate: int | None = None, device: str = "cpu", batch_size: int = 8,
          max_seconds: float | None = None, name: str | None = None,
          attributes: Iterable[str] | None = None, intersections: Iterable[Iterable[str]] = (),
          bins: Mapping[str, Iterable[float]] | None = None, n_boot: int = 1000,
          n_perm: int = 1000, min_speakers: int = 5, seed: int = 0,
          show_progress: bool = True, plots: bool = True) -> AuditResult:
    """Run `model` over the corpus (or a split part), commit the run folder `out`, score it.

    Inference resumes from the partial work of an interrupted audit with the same model, files
    and settings (see `auditing.inference`).
    """
    from emodebias import api
    from emodebias.bench.grid import RunSpec
    from emodebias.bench.pipeline import DEFAULT_ATTRIBUTES, speaker_rows
    from emodebias.bench.results import RECORD, RunResult, commit_run
    from emodebias.metrics import evaluate_predictions

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if max_seconds is not None and max_seconds < 0:
        raise UserError(f"--max-seconds must be >= 0 (0 = whole file), got {max_seconds}")
    out = Path(out)
    if out.exists() and not (out / RECORD).is_file() and (not out.is_dir()
                                                           or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an audit or run folder; pass an empty "
                        "or new folder (an earlier audit folder there is replaced)")
    man = api.open_manifest(manifest)
    ids, sp = select_utterances(man, split, part)
    m = open_model(model, classes=classes, sample_rate=sample_rate, device=device,
                   max_seconds=max_seconds, name=name)
    cmap = resolve_class_map(m.classes, man.classes, class_map, drop)
    label = name or m.identity["name"]
    start = time.perf_counter()
    paths = man.df["path"].astype(str).to_numpy()[man.index_of(ids)].tolist()
    work = work_dir(out)
    inf = run_inference(m, ids, paths, work, batch_size=batch_size, show_progress=show_progress)
    read = np.isfinite(inf.probs).all(1)
    projected = np.full((len(ids), len(man.classes)), np.nan, dtype=np.float32)
    mass = np.zeros(len(ids), bool)
    if read.any():
        projected[read], mass[read] = cmap.project_probs(inf.probs[read], m.classes)
    keep = read & mass
    if not keep.any():
        raise UserError(f"no utterance could be scored: {int((~read).sum())} unreadable, "
                        f"{int((read & ~mass).sum())} with all probability on dropped classes")
    test_ids = [u for u, k in zip(ids, keep, strict=True) if k]
    probs = projected[keep]
    targets = man.soft_labels()[man.index_of(test_ids)]
    attrs = (list(attributes) if attributes is not None
             else [a for a in DEFAULT_ATTRIBUTES if a in man.df.columns])
    combos = [list(c) for c in intersections]
    ev = {"attributes": attrs, "intersections": combos, "bins": dict(bins or {}),
          "n_boot": n_boot, "n_perm": n_perm, "min_speakers": min_speakers, "seed": seed}
    metrics = evaluate_predictions(
        {"utt_ids": np.asarray(test_ids), "probs": probs, "targets": targets}, manifest=man,
        attributes=attrs, intersections=combos, bins=ev["bins"], n_boot=n_boot, n_perm=n_perm,
        min_speakers=min_speakers, seed=seed)
    table = metrics.to_dict()["table"]
    scored = sorted(({r["attribute"] for r in table} - {"all"}) & set(man.df.columns))
    table += speaker_rows(man, test_ids, scored)
    # every audit of a corpus is one report scenario (encoder "audit"), its rows the models
    spec = RunSpec(corpus=man.corpus, encoder="audit", fold=str(sp.fold) if sp else "all",
                   ratio=sp.ratio if sp else None, direction=sp.direction if sp else "natural",
                   split_seed=sp.seed if sp else 0, groups="none", method="audit",
                   hparams={"model": label}, evaluation=ev, device=device)
    missing = cmap.missing_targets(m.classes)
    details = {
        **m.identity, "classes": list(m.classes), "class_map": dict(cmap.mapping),
        "dropped": [c for c in m.classes if c not in cmap.mapping],
        "missing_classes": missing, "projection_rule": PROJECTION_RULE,
        "sample_rate": m.sample_rate, "max_seconds": m.max_seconds or None,
        "part": (part or "test") if sp else "all", "n_utterances": len(ids),
        "n_scored": len(test_ids), "n_unreadable": int((~read).sum()),
        "n_no_mapped_mass": int((read & ~mass).sum()),
        "failures": dict(list(inf.failures.items())[:50]),
    }
    inputs = {"model": m.identity["hash"], "manifest": man.content_hash(),
              "utterances": _digest(test_ids), "class_map": _digest(details["class_map"])}
    result = RunResult(
        spec=spec, summary=dict(metrics.summary), table=table, hparams={}, kind="audit",
        name=label, wall_time=time.perf_counter() - start, test_ids=test_ids, test_probs=probs,
        test_targets=targets, classes=list(man.classes), inputs=inputs,
        encoder={"name": label, "id": label, "kind": m.identity["kind"],
                 "sample_rate": m.sample_rate, "max_seconds": m.max_seconds or None},
        info={"audit": details, "skipped_metrics": metrics.skipped, "n_test": len(test_ids)},
        sources={"manifest": str(manifest) if not hasattr(manifest, "df") else None,
                 "split": None if sp is None or not isinstance(split, (str, Path))
                 else str(split), "model": m.identity.get("path")})
    result.sources = {k: v for k, v in result.sources.items() if v is not None}
    final = commit_run(out, result, replace=True)
    shutil.rmtree(work, ignore_errors=True)
    written = [final]
    from emodebias.cli.evaluate import write_outputs

    written += write_outputs(metrics, final)
    from emodebias.bench.results import read_record

    record = read_record(final)
    if plots:
        written += audit_plots(record, final / "figures", attrs)
    if missing:
        log.warning("the model has no class for %s (always predicted 0)", ", ".join(missing))
    return AuditResult(final, metrics, record, written)


def audit_plots(record: dict, fig_dir: Path, attributes: Sequence[str]) -> list[Path]:
    """The report's per-class gap bars and group x class rate heatmaps, per attribute."""
    from emodebias.bench.results import tidy_frame
    from emodebias.report import plots

    tidy = tidy_frame([record])
    table = tidy[tidy["part"] == "table"]
    fig_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for attr in attributes:
        for fn, stem in ((plots.class_gap_bars, "class_gaps"),
                         (plots.group_rate_heatmap, "group_rates")):
            png = fn(table, fig_dir / f"{stem}_{attr}.png", attribute=attr)
            if png:
                made.append(Path(png))
    return made


def describe(record: dict) -> list[str]:
    """Lines about the audited model printed before the metrics (classes, map, crop)."""
    a = record.get("info", {}).get("audit", {})
    mapped = ", ".join(f"{k}->{v}" for k, v in a.get("class_map", {}).items())
    lines = [f"model {a.get('name')} ({a.get('kind')}, hash {a.get('hash')}): "
             f"{len(a.get('classes', []))} classes; map {mapped}"]
    if a.get("dropped"):
        lines.append(f"dropped model classes: {', '.join(a['dropped'])}")
    if a.get("missing_classes"):
        lines.append(f"corpus classes the model lacks (probability 0): "
                     f"{', '.join(a['missing_classes'])}")
    lines.append(f"{a.get('n_scored')} of {a.get('n_utterances')} utterances scored "
                 f"({a.get('n_unreadable')} unreadable, {a.get('n_no_mapped_mass')} with no "
                 f"mass on a mapped class); audio at {a.get('sample_rate')} Hz, first "
                 f"{a.get('max_seconds') or 'all'} s")
    return lines


def audited_models(records: Iterable[dict]) -> tuple[list[str], list[list[str]]]:
    """The report's table of audited models (what each is, how its classes were mapped)."""
    head = ["model", "kind", "content hash", "class map", "dropped", "missing (p = 0)",
            "scored / utterances"]
    body = []
    for rec in records:
        a = rec.get("info", {}).get("audit")
        if rec.get("kind") != "audit" or not a:
            continue
        body.append([str(a.get("name")), str(a.get("kind")), str(a.get("hash")),
                     ", ".join(f"{k}->{v}" for k, v in a.get("class_map", {}).items()),
                     ", ".join(a.get("dropped", [])) or "-",
                     ", ".join(a.get("missing_classes", [])) or "-",
                     f"{a.get('n_scored')} / {a.get('n_utterances')}"])
    return head, body


__all__ = ["PROJECTION_RULE", "AuditResult", "audit", "audit_plots", "audited_models", "describe",
           "resolve_class_map", "select_utterances", "work_dir"]

