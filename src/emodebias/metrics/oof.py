"""Pooled out-of-fold scoring of a grid: every fold's test predictions scored as one test set.

With speaker-independent folds each utterance is tested exactly once, so the test sets of all
folds of one configuration (same corpus, encoder, ratio, direction, groups, method,
hyperparameters and seed) together cover every speaker. Scoring them as one set compares groups
over all speakers instead of the 2–3 per group a small fold may hold, which lowers the noise
floor of every gap. The bootstrap and the permutation null keep each fold's speakers within
their fold (the fold is a stratum), so the fold-to-fold model differences stay in the design.

Run folders are read as the grid writes them: ``runs/<hash>/record.json`` and
``predictions.npz`` (utt_ids, probs, targets, classes); speakers and attributes come from the
manifest the grid cached (``cache/manifests/<corpus key>.parquet``) or from the one passed in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emodebias.data.manifest import Manifest
from emodebias.metrics.attributes import MetricsInputError
from emodebias.metrics.evaluate import MetricsResult
from emodebias.metrics.predictions import DEFAULT_ATTRIBUTES, _read_npz, evaluate_predictions

CONFIG_KEYS = ("corpus", "encoder", "ratio", "direction", "split_seed", "groups", "method",
               "hparams", "seed")


@dataclass
class PooledRun:
    """One configuration scored on its pooled out-of-fold predictions."""

    config: dict
    folds: list[str]
    result: MetricsResult
    hashes: list[str]  # the run records pooled


def _config(spec: dict) -> tuple:
    return tuple(json.dumps(spec.get(k), sort_keys=True) for k in CONFIG_KEYS)


def _run_folders(root: Path) -> Iterable[tuple[Path, dict]]:
    for record in sorted(Path(root).glob("runs/*/record.json")):
        try:
            rec = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a damaged record is the runner's to report
        if (record.parent / "predictions.npz").is_file() and "spec" in rec:
            yield record.parent, rec


def _cached_manifest(root: Path, spec: dict) -> Manifest | None:
    from emodebias.bench.grid import RunSpec

    try:
        key = RunSpec.from_dict(spec).corpus_key
    except Exception:  # a record from another version: no manifest to find
        return None
    path = Path(root) / "cache" / "manifests" / f"{key}.parquet"
    return Manifest.load(path) if path.is_file() else None


def pooled_oof(root: str | Path, *, manifest: Manifest | str | Path | None = None,
               attributes: Iterable[str] | None = None, min_folds: int = 2,
               **kwargs: object) -> list[PooledRun]:
    """Score the pooled out-of-fold predictions of each configuration under `root`.

    Configurations with fewer than `min_folds` folds, or whose manifest cannot be found, are
    left out. Other keywords go to `evaluate` (n_boot, n_perm, min_speakers, seed, ...).
    """
    if manifest is not None and not isinstance(manifest, Manifest):
        manifest = Manifest.load(manifest)
    configs: dict[tuple, list[tuple[Path, dict]]] = {}
    for folder, rec in _run_folders(root):
        configs.setdefault(_config(rec["spec"]), []).append((folder, rec))
    out = []
    for runs in configs.values():
        runs = sorted(runs, key=lambda r: _fold_order(r[1]["spec"].get("fold")))
        folds = list(dict.fromkeys(str(rec["spec"].get("fold")) for _, rec in runs))
        if len(folds) < min_folds:
            continue
        if len(folds) != len(runs):
            raise MetricsInputError(f"{runs[0][0].parent}: several runs of one configuration "
                                    f"share a fold ({len(runs)} runs, folds {folds})")
        spec = runs[0][1]["spec"]
        man = manifest if manifest is not None else _cached_manifest(Path(root), spec)
        if man is None:
            continue
        parts = []
        for folder, rec in runs:
            data = _read_npz(folder / "predictions.npz")
            parts.append((str(rec["spec"].get("fold")), data))
        classes = [str(c) for c in parts[0][1].get("classes", man.classes)]
        ids = np.concatenate([np.asarray(d["utt_ids"]).astype(str) for _, d in parts])
        if len(set(ids)) != len(ids):
            raise MetricsInputError(f"{root}: folds of {spec.get('method')} share test "
                                    "utterances; pooled scoring needs disjoint test sets")
        pooled = {"utt_ids": ids,
                  "probs": np.concatenate([d["probs"] for _, d in parts]),
                  "classes": np.asarray(classes),
                  "fold": np.concatenate([[f] * len(d["utt_ids"]) for f, d in parts])}
        if all("targets" in d for _, d in parts):
            pooled["targets"] = np.concatenate([d["targets"] for _, d in parts])
        wanted = list(attributes) if attributes is not None else [
            a for a in DEFAULT_ATTRIBUTES if a in man.df.columns]
        strata = pooled["fold"]
        result = evaluate_predictions(pooled, manifest=man, attributes=wanted, strata=strata,
                                      **kwargs)
        result.info["pooled_folds"] = folds
        config = {k: spec.get(k) for k in CONFIG_KEYS}
        out.append(PooledRun(config, folds, result, [str(rec.get("hash")) for _, rec in runs]))
    return out


def _fold_order(fold: object) -> tuple:
    text = str(fold)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def pooled_frame(runs: list[PooledRun]) -> pd.DataFrame:
    """One row per configuration: the config, the folds and every summary number."""
    rows = [{**r.config, "hparams": json.dumps(r.config.get("hparams") or {}, sort_keys=True),
             "folds": ",".join(r.folds), **r.result.summary} for r in runs]
    return pd.DataFrame(rows)
