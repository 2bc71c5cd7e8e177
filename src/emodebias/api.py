"""The notebook API behind `import emodebias as ed`: the pipeline's steps as plain functions.

Data arguments come first and may be positional; every option after them is keyword-only, so a
call reads the same in a year (``ed.make_split(man, 1, ratio="1:20")``). Stage outputs may be
given as objects or as the paths the CLI writes (a manifest folder, a split folder, a store
folder, a groups folder): a notebook can pick up where a shell session stopped. A run trained
here is the same run a `emodebias train` writes: `Run.save(folder)` gives an identical run
folder, and `load_run(folder)` reads any run folder back, including a benchmark grid's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emodebias.data.audio import DEFAULT_MAX_SECONDS
from emodebias.errors import UserError
from emodebias.runs import Run, RunRequest, load_run, load_runs

if TYPE_CHECKING:
    from emodebias.data.manifest import Manifest
    from emodebias.data.splits import Split
    from emodebias.features.encoders.base import Encoder
    from emodebias.features.store import FeatureStore
    from emodebias.groups.assignment import GroupAssignment
    from emodebias.metrics.evaluate import MetricsResult

__all__ = ["audit", "cluster_groups", "compare", "evaluate", "extract", "fit", "fit_many",
           "load_corpus", "load_run", "load_runs", "make_folds", "make_split", "open_groups",
           "open_manifest", "open_split", "open_store", "pseudo_groups", "truth_groups"]


# ----------------------------------------------------------------------------- stage inputs
def open_manifest(manifest: Manifest | str | Path) -> Manifest:
    """A Manifest, or the manifest file / folder `prepare --out` was given."""
    from emodebias import locate
    from emodebias.data.manifest import Manifest

    if isinstance(manifest, Manifest):
        return manifest
    return Manifest.load(locate.resolve(manifest, locate.MANIFEST))


def open_store(store: FeatureStore | str | Path) -> FeatureStore:
    """A FeatureStore, or the folder `extract --out` was given."""
    from emodebias import locate
    from emodebias.features.store import FeatureStore

    if isinstance(store, FeatureStore):
        return store
    return FeatureStore.open(locate.resolve(store, locate.FEATURES))


def open_split(manifest: Manifest, split: Split | str | int | Path) -> Split:
    """A Split, a saved one (split.json, or the folder `split --out` was given), or a fold
    name of the manifest (its full train/dev/test parts)."""
    from emodebias.runs import open_split as _open

    return _open(manifest, split)


def open_groups(groups: GroupAssignment | str | Path | None) -> GroupAssignment | None:
    """A GroupAssignment, its folder, or the folder `groups --out` was given (one inside)."""
    from emodebias import locate
    from emodebias.groups.assignment import GroupAssignment

    if groups is None or isinstance(groups, GroupAssignment):
        return groups
    return GroupAssignment.load(locate.resolve(groups, locate.GROUPS))


# ----------------------------------------------------------------------------- stages
def load_corpus(name: str, root: str | Path, **options: Any) -> Manifest:
    """A corpus adapter's manifest (`emodebias prepare`); options are the adapter's."""
    from emodebias.data.corpora import load_corpus as _load

    return _load(name, root, **options)


def make_folds(manifest: Manifest, *, k: int = 5, seed: int = 0,
               overwrite: bool = False) -> Manifest:
    """Add k speaker-independent folds (for corpora without official ones)."""
    from emodebias.data.splits import make_folds as _make

    return _make(manifest, k=k, seed=seed, overwrite=overwrite)


def make_split(manifest: Manifest, fold: str | int, *, ratio: str | float | None = None,
               direction: str = "natural", seed: int = 0) -> Split:
    """One fold's train/dev/test ids, optionally gender-imbalanced at 1:r (`emodebias split`)."""
    from emodebias.data.splits import make_split as _make

    return _make(manifest, str(fold), ratio=ratio, direction=direction, seed=seed)


def extract(manifest: Manifest, encoder: Encoder | str, out: str | Path, *,
            device: str | None = None, max_seconds: float | None = DEFAULT_MAX_SECONDS,
            progress: bool = True, **options: Any) -> FeatureStore:
    """Encode every utterance once into a FeatureStore at `out` (`emodebias extract`);
    `encoder` is an Encoder or a `get_encoder` name; other options go to `store.extract`."""
    from emodebias.features.encoders import get_encoder
    from emodebias.features.store import extract as _extract

    enc = get_encoder(encoder) if isinstance(encoder, (str, Path)) else encoder
    return _extract(manifest, enc, out, device=device, max_seconds=max_seconds,
                    progress=progress, **options)


# ----------------------------------------------------------------------------- groups
def truth_groups(manifest: Manifest | str | Path, *,
                 columns: str | Sequence[str] = "gender") -> GroupAssignment:
    """Ground-truth groups from manifest columns; several columns give their intersections."""
    from emodebias.groups.truth import truth_groups as _truth

    return _truth(open_manifest(manifest), [columns] if isinstance(columns, str) else
                  list(columns))


def _fit_ids(manifest: Manifest | None, split: Split | str | int | Path | None
             ) -> list[str] | None:
    """Train + dev ids of `split` (what group models are fitted on), None without a split."""
    if split is None:
        return None
    from emodebias.data.splits import Split

    if not isinstance(split, Split):
        if manifest is None:
            raise UserError(f"split {split!r} is a name or path: pass the manifest too")
        split = open_split(manifest, split)
    if manifest is not None:
        split.check(manifest)
    return list(split.train) + list(split.dev)


def cluster_groups(store: FeatureStore | str | Path, k: int, *,
                   manifest: Manifest | str | Path | None = None,
                   split: Split | str | int | Path | None = None, algorithm: str = "minibatch",
                   seed: int = 42, layer: int | str = "mean") -> GroupAssignment:
    """k-means groups of a store's embeddings (IDI): fitted on the split's train + dev (every
    row without a split), every row assigned; cached beside the store. With `manifest`, a
    store extracted from another manifest is refused."""
    import numpy as np

    from emodebias.groups.cluster import cached_cluster_groups

    man = None if manifest is None else open_manifest(manifest)
    store = open_store(store)
    fit = _fit_ids(man, split)
    mask = None if fit is None else np.isin(np.asarray(store.utt_ids, dtype=object),
                                            np.asarray(fit, dtype=object))
    return cached_cluster_groups(store, k, mask, algorithm, seed, layer, manifest=man)


def pseudo_groups(manifest: Manifest | str | Path, model: str | Path, *,
                  store: FeatureStore | str | Path | None = None,
                  split: Split | str | int | Path | None = None, layer: int | str = "mean",
                  label_map: Mapping[str, str] | None = None, device: str = "cpu",
                  progress: bool = False) -> GroupAssignment:
    """Pseudo-gender groups from `model`: ``f0`` (median F0 at 160 Hz), ``f0:<Hz>``, ``f0:fit``
    (threshold fitted on the split's train + dev), a saved GenderProbe (``.npz``; needs the
    `store` of embeddings it was trained on), or an audio-classification checkpoint."""
    from emodebias.groups.f0 import F0Threshold, f0_groups

    man = open_manifest(manifest)
    model = str(model)
    if model == "f0" or model.startswith("f0:"):
        arg = model[3:]
        if arg == "fit":
            fit = _fit_ids(man, split)
            if fit is None:
                raise UserError("f0:fit fits its threshold on a split's train + dev: pass the "
                                "split (--split)")
            return f0_groups(man, fit_ids=fit, progress=progress)
        try:
            rule = F0Threshold(float(arg)) if arg else None
        except ValueError:
            raise UserError(f"pseudo model {model!r}: write f0, f0:<Hz> or f0:fit") from None
        return f0_groups(man, rule, progress=progress)
    if model.endswith(".npz") or Path(model).with_suffix(".json").is_file():
        from emodebias.groups.embeddings import encoder_name, load_embeddings
        from emodebias.groups.probe import GenderProbe, probe_groups

        if store is None:
            raise UserError(f"the probe {model} reads embeddings: pass the feature store it was "
                            "trained on (--features)")
        opened = open_store(store)
        opened.check(man)
        x, ids, ok = load_embeddings(opened, layer)
        return probe_groups(GenderProbe.load(model), x, ids, man, ok, encoder_name(opened))
    from emodebias.groups.pseudo import hf_gender_groups

    return hf_gender_groups(man, model, dict(label_map) if label_map else None, device=device,
                            progress=progress)


# ----------------------------------------------------------------------------- training
def _config(epochs: int, batch_size: int, lr: float, device: str, options: dict) -> Any:
    from emodebias.training import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, device=device, **options)


def fit(store: FeatureStore | str | Path, manifest: Manifest | str | Path,
        split: Split | str | int | Path, method: str = "erm", *,
        groups: GroupAssignment | str | Path | None = None, hparams: dict | None = None,
        seed: int = 0, epochs: int = 50, batch_size: int = 32, lr: float = 1e-4,
        device: str = "cpu", n_boot: int = 0, out: str | Path | None = None,
        **train_options: Any) -> Run:
    """Train one head with a debiasing method and score it on the split's test part, exactly
    as `emodebias train` does; with `out`, also write the run folder there."""
    return fit_many(store, manifest, split, [RunRequest(method, dict(hparams or {}), seed)],
                    groups=groups, epochs=epochs, batch_size=batch_size, lr=lr, device=device,
                    n_boot=n_boot, out=out, **train_options)[0]


def fit_many(store: FeatureStore | str | Path, manifest: Manifest | str | Path,
             split: Split | str | int | Path,
             runs: Sequence[str | RunRequest | Mapping[str, Any]], *,
             groups: GroupAssignment | str | Path | None = None, epochs: int = 50,
             batch_size: int = 32, lr: float = 1e-4, device: str = "cpu", n_boot: int = 0,
             out: str | Path | None = None, **train_options: Any) -> list[Run]:
    """Train several runs (method names, or {method, hparams, seed}) on one store as one
    stacked model; methods that use no groups ignore `groups`. With `out`, run i is written to
    ``out/<i>-<method>-s<seed>`` (a folder of runs that `collect` and `report` read)."""
    from emodebias.runs import train_runs

    man = open_manifest(manifest)
    requests = [r if isinstance(r, RunRequest) else
                RunRequest(r) if isinstance(r, str) else RunRequest(**dict(r)) for r in runs]
    results = train_runs(open_store(store), man, open_split(man, split), requests,
                         groups=open_groups(groups),
                         config=_config(epochs, batch_size, lr, device, train_options),
                         evaluation={"n_boot": n_boot} if n_boot else None)
    made = [Run.from_result(r) for r in results]
    if out is not None:
        for i, (run, req) in enumerate(zip(made, requests, strict=True)):
            name = f"{i}-{req.method}-s{req.seed}" if len(made) > 1 else ""
            run.save(Path(out) / name)
    return made


def evaluate(predictions: Run | str | Path | Mapping, *,
             manifest: Manifest | str | Path | None = None,
             attributes: Iterable[str] | None = None, **options: Any) -> MetricsResult:
    """Accuracy and fairness (with intervals) of a run, a run folder, or saved predictions
    (CSV / Parquet / npz / dict); see `emodebias.metrics.evaluate_predictions` for options."""
    from emodebias.metrics import evaluate_predictions

    if isinstance(predictions, (str, Path)) and Path(predictions).is_dir():
        predictions = load_run(predictions)
    if isinstance(predictions, Run):
        predictions = predictions.predictions
    return evaluate_predictions(predictions, manifest=manifest, attributes=attributes,
                                **options)


def audit(model: str | Path | Callable[[list], Any], manifest: Manifest | str | Path, *,
          out: str | Path, classes: Sequence[str] | None = None, sample_rate: int | None = None,
          **options: Any) -> Run:
    """Audit an existing emotion model on a corpus (`emodebias audit`): a transformers
    audio-classification checkpoint folder, a run folder, or a callable ``f(waveforms) ->
    probabilities`` over `classes` at `sample_rate` (default 16 kHz). The audit folder `out` is
    a run folder; its scores are ``run.summary`` / ``ed.evaluate(run)``. Options: see
    `emodebias.auditing.audit` (split, part, class_map, drop, device, batch_size, n_boot, ...)."""
    from emodebias.auditing import audit as run_audit

    res = run_audit(model, manifest, out=out, classes=classes, sample_rate=sample_rate,
                    **options)
    return load_run(res.path)


def compare(*runs: Run | str | Path, manifest: Manifest | str | Path | None = None,
            **options: Any) -> Any:
    """Audited (or trained) runs side by side on the same utterances with paired speaker-swap
    tests (`emodebias audit --compare`); returns a `Comparison` (``.table``, ``.lines()``)."""
    from emodebias.auditing.compare import compare_runs

    paths = [r.path if isinstance(r, Run) else r for r in runs]
    if any(p is None for p in paths):
        raise UserError("compare needs saved runs (Run.save(folder) first)")
    return compare_runs(paths, manifest=manifest, **options)
