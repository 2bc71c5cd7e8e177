"""The notebook API behind `import emodebias as ed`: the pipeline's steps as plain functions.

Data arguments come first and may be positional; every option after them is keyword-only, so a
call reads the same in a year (``ed.make_split(man, 1, ratio="1:20")``). Stage outputs may be
given as objects or as the paths the CLI writes (a manifest folder, a split folder, a store
folder, a groups folder): a notebook can pick up where a shell session stopped. A run trained
here is the same run a `emodebias train` writes: `Run.save(folder)` gives an identical run
folder, and `load_run(folder)` reads any run folder back, including a benchmark grid's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emodebias.runs import Run, RunRequest, load_run, load_runs

if TYPE_CHECKING:
    from emodebias.encoders.base import Encoder
    from emodebias.groups.assignment import GroupAssignment
    from emodebias.manifest import Manifest
    from emodebias.metrics.evaluate import MetricsResult
    from emodebias.splits import Split
    from emodebias.store import FeatureStore

__all__ = ["evaluate", "extract", "fit", "fit_many", "load_corpus", "load_run", "load_runs",
           "make_folds", "make_split", "open_groups", "open_manifest", "open_split",
           "open_store"]


# ----------------------------------------------------------------------------- stage inputs
def open_manifest(manifest: Manifest | str | Path) -> Manifest:
    """A Manifest, or the manifest file / folder `prepare --out` was given."""
    from emodebias import locate
    from emodebias.manifest import Manifest

    if isinstance(manifest, Manifest):
        return manifest
    return Manifest.load(locate.resolve(manifest, locate.MANIFEST))


def open_store(store: FeatureStore | str | Path) -> FeatureStore:
    """A FeatureStore, or the folder `extract --out` was given."""
    from emodebias import locate
    from emodebias.store import FeatureStore

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
    from emodebias.corpora import load_corpus as _load

    return _load(name, root, **options)


def make_folds(manifest: Manifest, *, k: int = 5, seed: int = 0,
               overwrite: bool = False) -> Manifest:
    """Add k speaker-independent folds (for corpora without official ones)."""
    from emodebias.splits import make_folds as _make

    return _make(manifest, k=k, seed=seed, overwrite=overwrite)


def make_split(manifest: Manifest, fold: str | int, *, ratio: str | float | None = None,
               direction: str = "natural", seed: int = 0) -> Split:
    """One fold's train/dev/test ids, optionally gender-imbalanced at 1:r (`emodebias split`)."""
    from emodebias.splits import make_split as _make

    return _make(manifest, str(fold), ratio=ratio, direction=direction, seed=seed)


def extract(manifest: Manifest, encoder: Encoder | str, out: str | Path, *,
            device: str | None = None, max_seconds: float | None = 10.0, progress: bool = True,
            **options: Any) -> FeatureStore:
    """Encode every utterance once into a FeatureStore at `out` (`emodebias extract`);
    `encoder` is an Encoder or a `get_encoder` name; other options go to `store.extract`."""
    from emodebias.encoders import get_encoder
    from emodebias.store import extract as _extract

    enc = get_encoder(encoder) if isinstance(encoder, (str, Path)) else encoder
    return _extract(manifest, enc, out, device=device, max_seconds=max_seconds,
                    progress=progress, **options)


def _config(epochs: int, batch_size: int, lr: float, device: str, options: dict) -> Any:
    from emodebias.train import TrainConfig

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
