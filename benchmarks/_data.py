"""Shared helpers for the benchmarks: CREMA-D-sized synthetic feature stores with real labels.

The feature *values* are synthetic (deterministic, seeded), but the labels, speakers, genders and
the 5 EMO-SUPERB folds are the real CREMA-D ones from ``../shared/data/emo-superb/crema-d``. The
values carry a weak class and gender signal so that training curves (and dev-loss model
selection) behave like real ones rather than fitting pure noise.

A store is a directory laid out like ``emodebias.features.store.FeatureStore``: ``features.npy``
(float16 [N, L, D], opened as a memmap) plus ``meta.json`` (utt_id order, layers, dim). It is
cached under ``$EMODEBIAS_BENCH_CACHE`` (default: ``<tmp>/emodebias-bench-cache``) and keyed by
its shape and seed, so repeated benchmark runs reuse it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CLASSES: tuple[str, ...] = ("angry", "sad", "disgust", "fear", "neutral", "happy")
N_LAYERS = 13
DIM = 768
CHUNK = 2048  # rows generated per chunk when writing a store

# Per-emotion majority gender of strict-majority utterances (PAPERS.md §1.6, fixed across folds).
MAJORITY_GENDER: dict[str, str] = {
    "angry": "M", "disgust": "M", "neutral": "M", "fear": "F", "happy": "F", "sad": "F",
}


def data_dir() -> Path:
    """The shared real-data directory: ``$EMODEBIAS_DATA`` or ``<project>/../shared/data``."""
    env = os.environ.get("EMODEBIAS_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (root / "emo-superb" / "crema-d").is_dir():
        raise FileNotFoundError(
            f"CREMA-D label files not found under {root}/emo-superb/crema-d; set EMODEBIAS_DATA "
            "to the directory that holds emo-superb/crema-d/labels_consensus_{1..5}.csv"
        )
    return root


def cache_dir() -> Path:
    """Where benchmark stores are cached (created if needed)."""
    env = os.environ.get("EMODEBIAS_BENCH_CACHE")
    path = Path(env) if env else Path(tempfile.gettempdir()) / "emodebias-bench-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class CremaLabels:
    """Real CREMA-D labels: one row per clip, folds 1..5 as arrays of 'train'/'dev'/'test'."""

    utt_ids: list[str]
    soft: np.ndarray  # float32 [N, K] distributional labels (EMO-SUPERB smoothing)
    gender: np.ndarray  # '<U1' [N], 'F' / 'M'
    speaker: np.ndarray  # int [N]
    folds: dict[int, np.ndarray]  # fold -> object [N] in {'train', 'dev', 'test'}

    @property
    def n(self) -> int:
        return len(self.utt_ids)

    def fold_idx(self, fold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row indices (sorted) of the train, dev and test parts of one official fold."""
        part = self.folds[fold]
        return tuple(np.flatnonzero(part == p) for p in ("train", "dev", "test"))  # type: ignore[return-value]

    def majority(self) -> np.ndarray:
        """Strict-majority class per clip (vote share > 0.5) or -1 (PAPERS.md §1.6)."""
        from emodebias.data.labels import strict_majority

        return strict_majority(self.soft)


def load_crema_labels(root: Path | None = None) -> CremaLabels:
    """Read ``labels_consensus_{1..5}.csv`` into one table with the 5 fold assignments."""
    base = (root or data_dir()) / "emo-superb" / "crema-d"
    parts = {"Train": "train", "Development": "dev", "Test": "test"}
    tables = [pd.read_csv(base / f"labels_consensus_{k}.csv") for k in range(1, 6)]
    first = tables[0].sort_values("FileName").reset_index(drop=True)
    folds: dict[int, np.ndarray] = {}
    for k, t in enumerate(tables, start=1):
        t = t.set_index("FileName").loc[first["FileName"]]
        folds[k] = t["Split_Set"].map(parts).to_numpy(dtype=object)
    return CremaLabels(
        utt_ids=[f.removesuffix(".wav") for f in first["FileName"]],
        soft=first[list(CLASSES)].to_numpy(np.float32),
        gender=first["Gender"].str[0].to_numpy(dtype="<U1"),
        speaker=first["SpkrID"].to_numpy(int),
        folds=folds,
    )


@dataclass
class BenchStore:
    """A FeatureStore-like directory: ``features`` memmap float16 [N, L, D] + ``meta``."""

    path: Path
    features: np.ndarray
    utt_ids: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def rows(self, utt_ids: list[str]) -> np.ndarray:
        pos = {u: i for i, u in enumerate(self.utt_ids)}
        return np.array([pos[u] for u in utt_ids], dtype=np.int64)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.features.shape)) * self.features.dtype.itemsize


def _open(path: Path) -> BenchStore:
    meta = json.loads((path / "meta.json").read_text())
    feats = np.load(path / "features.npy", mmap_mode="r")
    return BenchStore(path, feats, meta.pop("utt_ids"), meta)


def write_store(
    path: Path,
    utt_ids: list[str],
    soft: np.ndarray,
    gender: np.ndarray,
    n_layers: int = N_LAYERS,
    dim: int = DIM,
    seed: int = 0,
    progress: bool = False,
) -> BenchStore:
    """Write deterministic synthetic features with a weak label/gender signal, chunk by chunk.

    x[n, l] = noise + soft[n] @ A[l] + (gender[n] == 'M') * b[l], all N(0, 1)-scaled, float16.
    Memory stays at one chunk; the result is identical for the same (ids, labels, seed, shape).
    """
    path.mkdir(parents=True, exist_ok=True)
    n, k = soft.shape
    rng = np.random.default_rng(seed)
    class_dirs = rng.standard_normal((n_layers, k, dim), dtype=np.float32) * 0.6
    layer_gain = np.linspace(0.3, 1.2, n_layers, dtype=np.float32)[:, None, None]
    class_dirs *= layer_gain
    gender_dir = rng.standard_normal((n_layers, dim), dtype=np.float32) * 0.4
    male = (np.asarray(gender) == "M").astype(np.float32)
    tmp = path / "features.npy.tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, n_layers, dim))
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        crng = np.random.default_rng([seed, start])
        x = crng.standard_normal((stop - start, n_layers, dim), dtype=np.float32)
        x += np.einsum("nk,lkd->nld", soft[start:stop].astype(np.float32), class_dirs)
        x += male[start:stop, None, None] * gender_dir[None]
        out[start:stop] = x.astype(np.float16)
        if progress and (start // CHUNK) % 10 == 0:
            print(f"  writing store {path.name}: {stop}/{n} rows", flush=True)
    out.flush()
    del out
    os.replace(tmp, path / "features.npy")
    meta = {
        "encoder": "synthetic-bench", "layers": n_layers, "dim": dim, "seed": seed,
        "manifest_hash": f"crema-d-labels-n{n}", "failures": {}, "utt_ids": list(utt_ids),
    }
    (path / "meta.json").write_text(json.dumps(meta))
    return _open(path)


def crema_store(
    labels: CremaLabels | None = None, n_layers: int = N_LAYERS, dim: int = DIM, seed: int = 0
) -> tuple[BenchStore, CremaLabels]:
    """The CREMA-D-sized store (7,442 × 13 × 768 float16, ~149 MB), cached between runs."""
    labels = labels or load_crema_labels()
    path = cache_dir() / f"crema_n{labels.n}_l{n_layers}_d{dim}_s{seed}"
    if (path / "meta.json").exists() and (path / "features.npy").exists():
        return _open(path), labels
    store = write_store(path, labels.utt_ids, labels.soft, labels.gender, n_layers, dim, seed)
    return store, labels


# --------------------------------------------------------------------------- splits and groups


def imbalance_idx(
    labels: CremaLabels, fold: int, ratio: float, direction: str = "natural", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/dev/test rows of one fold at gender ratio 1:r (PAPERS.md §1.6 rule).

    Train and dev keep strict-majority clips only: all majority-gender clips of each emotion and
    floor(n_major / r) randomly drawn minority-gender ones; test is the full official test part.
    ``direction`` 'natural' uses the dataset-wide majority gender per emotion; 'reversed' flips it.
    Uses ``emodebias.data.splits.make_split`` semantics where it matters only for sizes (benchmark).
    """
    if direction not in ("natural", "reversed"):
        raise ValueError(f"direction must be 'natural' or 'reversed', got {direction!r}")
    rng = np.random.default_rng([seed, fold, int(ratio * 1000), direction == "reversed"])
    maj = labels.majority()
    train, dev, test = labels.fold_idx(fold)
    out = []
    for part in (train, dev):
        keep: list[np.ndarray] = []
        for c, name in enumerate(CLASSES):
            major = MAJORITY_GENDER[name]
            if direction == "reversed":
                major = "F" if major == "M" else "M"
            rows = part[maj[part] == c]
            is_major = labels.gender[rows] == major
            keep.append(rows[is_major])
            minor = rows[~is_major]
            n_min = min(len(minor), int(np.floor(is_major.sum() / ratio)))
            keep.append(rng.choice(minor, size=n_min, replace=False))
        out.append(np.sort(np.concatenate(keep)))
    return out[0], out[1], test


def gender_ids(labels: CremaLabels) -> np.ndarray:
    """Ground-truth gender groups: 0 = F, 1 = M."""
    return (labels.gender == "M").astype(np.int64)


def pseudo_groups(
    labels: CremaLabels, flip: float = 0.056, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic pseudo-gender (94.4% accurate, IDI §3.1): hard ids and soft probs [N, 2]."""
    rng = np.random.default_rng([seed, 56])
    truth = gender_ids(labels)
    flipped = rng.random(labels.n) < flip
    ids = np.where(flipped, 1 - truth, truth)
    conf = rng.uniform(0.6, 1.0, size=labels.n)
    probs = np.empty((labels.n, 2), dtype=np.float32)
    probs[np.arange(labels.n), ids] = conf
    probs[np.arange(labels.n), 1 - ids] = 1 - conf
    return ids, probs


def cluster_groups(
    labels: CremaLabels, k: int = 16, noise: float = 0.2, seed: int = 0
) -> np.ndarray:
    """Synthetic k-means-like clusters: each speaker has a home cluster in its gender's half of
    the clusters; a ``noise`` share of clips lands in a random cluster (gender-correlated)."""
    rng = np.random.default_rng([seed, k])
    half = k // 2
    ids = np.empty(labels.n, dtype=np.int64)
    for spk in np.unique(labels.speaker):
        rows = np.flatnonzero(labels.speaker == spk)
        male = labels.gender[rows[0]] == "M"
        ids[rows] = rng.integers(half) + (half if male else 0)
    scatter = rng.random(labels.n) < noise
    ids[scatter] = rng.integers(k, size=int(scatter.sum()))
    return ids
