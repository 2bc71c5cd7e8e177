"""Trained runs as objects: train on given files, load from a run folder, predict on audio.

`train_runs` is what `emodebias train` and `emodebias.fit` / `emodebias.fit_many` do: align a
feature store, manifest, split and optional group assignment (each checked against the others),
train the runs in one `fit_many` call, score each exactly as a benchmark grid does (same summary
and per-group table), and return one `RunResult` per run, identified by its resolved config and
the content hashes of its inputs (see `emodebias.bench.results`). `Run` is the in-memory view of
a run folder, whoever wrote it (`train`, `bench`, the Python API): its record, its saved test
predictions, its head, and `predict(paths)` on new audio with the encoder the record names.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emodebias.bench.results import (
    RunResult,
    commit_run,
    find_run_dirs,
    iter_runs,
    load_predictions,
    make_record,
    read_record,
)
from emodebias.data.audio import DEFAULT_MAX_SECONDS
from emodebias.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

    from emodebias.data.manifest import Manifest
    from emodebias.data.splits import Split
    from emodebias.features.encoders.base import Encoder
    from emodebias.features.store import FeatureStore
    from emodebias.groups.assignment import GroupAssignment
    from emodebias.training import FitResult, TrainConfig

log = logging.getLogger(__name__)

# TrainConfig fields that change a run's numbers (device and speed settings do not)
TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "select")
# encoder config keys that rebuild the encoder (`get_encoder` options) per encoder kind
_ENCODER_OPTIONS = {
    "acoustic": ("n_mels", "n_mfcc", "fmin", "fmax", "f0"),
    "resemblyzer": ("trim_silence",),
    "ssl": ("layers", "normalize", "dtype"),
    "xvector": ("source", "normalize", "dtype"),
    "ecapa": ("source",),
    "opensmile": ("feature_set",),
}


# ----------------------------------------------------------------------------- encoders
def encoder_args(meta: dict) -> tuple[str, dict]:
    """(`get_encoder` name, options) that rebuild the encoder of a store's meta.json."""
    from emodebias.features.encoders import PRESETS

    cfg = meta.get("config") or {}
    kind, ident = cfg.get("kind"), meta.get("encoder", "")
    opts = {k: cfg[k] for k in _ENCODER_OPTIONS.get(kind, ()) if k in cfg}
    if kind == "ssl":
        return (ident if ident in PRESETS else cfg["source"]), opts
    if kind == "xvector" and ident in PRESETS:
        opts.pop("source", None)
        return ident, opts
    if kind == "opensmile":
        return "egemaps", opts
    return (kind or ident), opts


def encoder_block(store: FeatureStore) -> dict:
    """The record's encoder entry: how to rebuild it and what it was when features were made."""
    name, options = encoder_args(store.meta)
    return {"name": name, "options": options, "id": store.meta.get("encoder"),
            "config": store.meta.get("config"), "max_seconds": store.meta.get("max_seconds"),
            "sample_rate": store.meta.get("sample_rate"), "n_layers": store.n_layers,
            "dim": store.dim}


# ----------------------------------------------------------------------------- inputs
def open_split(manifest: Manifest, split: Split | str | int | Path) -> Split:
    """A Split, a saved one (split.json, its folder, or the folder `split --out` was given),
    or a fold name of the manifest (its full train/dev/test parts)."""
    from emodebias import locate
    from emodebias.data.splits import Split, make_split

    if isinstance(split, Split):
        return split
    text = str(split)
    path = Path(text)
    if path.exists() or path.suffix == ".json" or "/" in text:
        return Split.load(locate.resolve(path, locate.SPLIT))
    if text not in manifest.folds:
        folds = ", ".join(manifest.folds) or "none"
        raise UserError(f"--split {text!r} is neither a split file or folder nor a fold of the "
                        f"manifest (folds: {folds}); make one with `emodebias split`")
    return make_split(manifest, text)


# ----------------------------------------------------------------------------- training
@dataclass
class RunRequest:
    """One run to train: method, hyperparameter overrides and seed."""

    method: str = "erm"
    hparams: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else
                 json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def input_hashes(manifest: Manifest, store: FeatureStore, split: Split,
                 groups: GroupAssignment | None) -> dict[str, str | None]:
    """Content hashes of a run's inputs: the same files give the same hashes anywhere."""
    return {
        "manifest": manifest.content_hash(),
        "features": store.key,
        "split": _digest([split.fold, split.ratio, split.direction, split.seed],
                         list(split.train), list(split.dev), list(split.test)),
        "groups": None if groups is None else _digest(
            [groups.source, list(groups.names)], list(groups.utt_ids), groups.ids,
            groups.probs if groups.probs is not None else []),
    }


def _resolve(req: RunRequest) -> None:
    """Unknown methods or hyperparameters are user errors listing the valid ones."""
    from emodebias.training.methods import REGISTRY

    if req.method not in REGISTRY:
        raise UserError(f"unknown method {req.method!r}; registered: {', '.join(sorted(REGISTRY))}"
                        " (see `emodebias methods`)")
    try:
        REGISTRY[req.method].resolve(req.hparams)
    except (ValueError, TypeError) as exc:
        raise UserError(f"method {req.method!r}: {exc}") from None


def train_runs(store: FeatureStore, manifest: Manifest, split: Split, runs: Sequence[RunRequest],
               *, groups: GroupAssignment | None = None, config: TrainConfig | None = None,
               evaluation: dict | None = None, sources: dict | None = None,
               provenance: dict | None = None) -> list[RunResult]:
    """Train `runs` on these inputs (one stacked `fit_many`) and score them like a grid run.

    Methods that use no groups (`supervision` none) train without them and record groups
    "none", so an ERM run compares with ERM runs of a grid.
    """
    from emodebias.bench.grid import RunSpec
    from emodebias.bench.pipeline import score_run
    from emodebias.features.store import check_inputs
    from emodebias.training import RunConfig, TrainConfig, TrainData, fit_stream
    from emodebias.training.methods import REGISTRY

    config = config or TrainConfig()
    for req in runs:
        _resolve(req)
    src = sources or {}
    check_inputs(store, manifest, split, groups, manifest_name=src.get("manifest"),
                 split_name=src.get("split"), groups_name=src.get("groups"))
    plain = TrainData.from_objects(store, manifest, split, None)
    grouped = TrainData.from_objects(store, manifest, split, groups) if groups else plain
    uses = [REGISTRY[r.method].supervision != "none" and groups is not None for r in runs]
    train = {k: v for k, v in asdict(config).items() if k in TRAIN_KEYS}
    enc = encoder_block(store)
    pairs = [(grouped if u else plain, [RunConfig(r.method, dict(r.hparams), r.seed, config)])
             for r, u in zip(runs, uses, strict=True)]
    done = {}
    for pos, fit in fit_stream(pairs):
        if isinstance(fit, BaseException):
            raise fit
        done[pos] = fit
    hashes = {u: input_hashes(manifest, store, split, groups if u else None) for u in set(uses)}
    results = []
    for i, (req, use) in enumerate(zip(runs, uses, strict=True)):
        data, fit = pairs[i][0], done[i]
        spec = RunSpec(corpus=manifest.corpus, encoder=enc["id"] or enc["name"],
                       encoder_opts=enc["options"], fold=str(split.fold), ratio=split.ratio,
                       direction=split.direction, split_seed=split.seed,
                       groups=groups.source if use else "none", method=req.method,
                       hparams=dict(req.hparams), seed=req.seed, train=train,
                       evaluation=dict(evaluation or {}))
        test_ids = [data.utt_ids[j] for j in data.test_idx]
        res = score_run(spec, manifest, test_ids, np.asarray(fit.test_probs), fit)
        info = {**res.info, "history": fit.history, "fit": fit.info,
                "missing_features": data.info.get("missing_features")}
        results.append(replace(
            res, kind="train", inputs=hashes[use],
            encoder=enc, train_config=dict(fit.config), info=info,
            sources={k: str(v) for k, v in src.items() if v is not None},
            provenance=provenance))
    return results


# ----------------------------------------------------------------------------- loaded runs
@dataclass
class FilePrediction:
    """One audio file's outcome: class probabilities, or why there are none."""

    path: str
    probs: np.ndarray | None
    error: str | None = None


@dataclass
class Run:
    """A run: its record, saved test predictions and head (loaded when first needed)."""

    record: dict
    path: Path | None = None
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    result: RunResult | None = None  # set for a run trained in this process (not yet saved)
    _fit: FitResult | None = field(default=None, repr=False)

    @classmethod
    def from_result(cls, result: RunResult, fit: FitResult | None = None) -> Run:
        preds = {"utt_ids": np.asarray(result.test_ids, dtype=str),
                 "probs": np.asarray(result.test_probs, dtype=np.float32),
                 "classes": np.asarray(result.classes, dtype=str)}
        if result.test_targets is not None:
            preds["targets"] = np.asarray(result.test_targets, dtype=np.float32)
        return cls(make_record(result), None, preds, result, fit)

    # --- what the record says
    @property
    def hash(self) -> str:
        return self.record["hash"]

    @property
    def name(self) -> str:
        return self.record.get("name", self.hash)

    @property
    def method(self) -> str:
        return self.record["spec"]["method"]

    @property
    def classes(self) -> list[str]:
        classes = self.record.get("classes") or self.predictions.get("classes", [])
        return [str(c) for c in classes]

    @property
    def best_epoch(self) -> int | None:
        return self.record.get("best_epoch")

    @property
    def summary(self) -> dict[str, float]:
        """Test metrics: macro-F1, accuracy, and gaps per attribute (``gender.tpr_gap``)."""
        return dict(self.record["metrics"]["summary"])

    @property
    def table(self) -> pd.DataFrame:
        """Per-group test metrics, one row per metric x attribute x group (x class)."""
        import pandas as pd

        return pd.DataFrame(self.record["metrics"].get("table", []))

    def __repr__(self) -> str:
        f1 = self.summary.get("macro_f1")
        f1_text = "nan" if f1 is None else f"{f1:.3f}"
        return (f"Run({self.name}, best epoch {self.best_epoch}, macro_f1 {f1_text}"
                f"{', ' + str(self.path) if self.path else ''})")

    # --- the head
    @property
    def fit(self) -> FitResult:
        """The trained head (FitResult); a method that trains none raises a UserError."""
        if self._fit is None:
            model = self.record.get("model")
            if not model or self.path is None:
                raise UserError(f"run {self.path or self.name} has no saved model (method "
                                f"{self.method!r} trains none)")
            from emodebias.training import FitResult

            self._fit = FitResult.load(self.path / model)
        return self._fit

    def save(self, path: str | Path) -> Path:
        """Write this (in-memory) run as a run folder; an earlier run folder there is replaced."""
        if self.result is None:
            raise UserError(f"run {self.name} was loaded from {self.path}; copy that folder")
        self.path = commit_run(Path(path), self.result, replace=True)
        self.record = read_record(self.path)
        return self.path

    # --- prediction
    def encoder(self, device: str = "cpu") -> Encoder:
        """The run's encoder, rebuilt from its record; refuses one that now differs."""
        from emodebias.features.encoders import get_encoder

        block = self.record.get("encoder") or {}
        spec = self.record["spec"]
        enc = get_encoder(block.get("name", spec["encoder"]),
                          **block.get("options", spec["encoder_opts"]))
        want = {k: v for k, v in (block.get("config") or {}).items() if k != "source"}
        have = {k: v for k, v in enc.config.items() if k != "source"}
        if want and json.loads(json.dumps(have)) != want:
            raise UserError(f"the encoder {enc.id} now has config {have}, but run {self.name} was "
                            f"trained on features with {want}; install that version")
        return enc.to(device)

    def predict_features(self, features: np.ndarray, *, device: str = "cpu") -> np.ndarray:
        """Probabilities [N, K] from pooled features [N, L, D] (as the store holds them)."""
        from emodebias.training import predict_probs

        return predict_probs(self.fit, np.asarray(features, dtype=np.float16), device=device)

    def predict_files(self, paths: Sequence[str | Path], *, device: str = "cpu",
                      batch_size: int = 16) -> list[FilePrediction]:
        """Each file's probabilities, or the reason it has none (unreadable, non-finite)."""
        from emodebias.data.audio import AudioError, load_audio

        _ = self.fit  # a run without a head fails here, before an encoder is loaded
        enc = self.encoder(device)
        block = self.record.get("encoder") or {}
        max_seconds = block.get("max_seconds", DEFAULT_MAX_SECONDS)
        out = [FilePrediction(str(p), None) for p in paths]
        waves: list[tuple[int, np.ndarray]] = []
        for i, p in enumerate(paths):
            try:
                waves.append((i, load_audio(p, target_sr=enc.sample_rate, max_seconds=max_seconds)))
            except AudioError as exc:
                out[i].error = str(exc)
        for s in range(0, len(waves), batch_size):
            chunk = waves[s : s + batch_size]
            feats = enc.encode([w for _, w in chunk])
            probs = self.predict_features(feats, device=device)
            for (i, _), row in zip(chunk, probs, strict=True):
                if np.isfinite(row).all():
                    out[i].probs = row
                else:
                    out[i].error = "the model gave non-finite probabilities (the encoder's " \
                                   "features are NaN: silent or too short audio?)"
        return out

    def predict(self, paths: Sequence[str | Path], *, device: str = "cpu") -> np.ndarray:
        """Probabilities [len(paths), K] in `classes` order; a file that cannot be used gets a
        NaN row (`predict_files` says why)."""
        rows = [p.probs if p.probs is not None else np.full(len(self.classes), np.nan)
                for p in self.predict_files(paths, device=device)]
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(self.classes))


def load_runs(path: str | Path) -> list[Run]:
    """Every run at or below `path` (a run folder, a folder of them, a grid output folder)."""
    return [Run(rec, d, load_predictions(d) if rec.get("predictions") else {})
            for d, rec in iter_runs(Path(path))]


def load_run(path: str | Path) -> Run:
    """The one run at `path` (a run folder, or a folder holding exactly one); else a UserError
    listing the runs found."""
    dirs = find_run_dirs(Path(path))
    if len(dirs) == 1:
        return load_runs(dirs[0])[0]
    if not dirs:
        raise UserError(f"{path}: no run folder here (no record.json); train one with "
                        "`emodebias train` or `emodebias bench`")
    shown = ", ".join(str(d) for d in dirs[:5]) + (" ..." if len(dirs) > 5 else "")
    raise UserError(f"{path} holds {len(dirs)} runs ({shown}); pass one run folder")
