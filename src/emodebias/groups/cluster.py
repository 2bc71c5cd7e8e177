"""Unsupervised groups (IDI ○): k-means clusters of speaker embeddings.

Defaults are the IDI paper's (PAPERS.md §3.12, §6.7): ``MiniBatchKMeans(init='k-means++',
random_state=42, max_iter=1000, batch_size=32, compute_labels=True, reassignment_ratio=0.01,
tol=1e-4)``, fitted on train+dev (`fit_mask`) and used to assign every utterance, test included.
``n_init=3`` is the default of the paper's scikit-learn 1.2.2 (later versions changed it).

Caution, measured on EmoDB with Resemblyzer embeddings: the paper's mini-batch settings are
seed-sensitive on small corpora (k = 2 gender accuracy ranges 0.53-0.998 over seeds, because the
batch-32 run stops early on a noisy inertia estimate). ``algorithm="kmeans"`` (full Lloyd k-means,
10 initialisations) converges to the same partition every time; prefer it off the paper track.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emodebias import progress
from emodebias.errors import UserError
from emodebias.groups.assignment import GroupAssignment

if TYPE_CHECKING:
    from emodebias.data.manifest import Manifest

DEFAULT_KS = (2, 4, 8, 16, 32)
ALGORITHMS = ("minibatch", "kmeans")
PAPER_MINIBATCH = {"init": "k-means++", "max_iter": 1000, "batch_size": 32,
                   "compute_labels": True, "reassignment_ratio": 0.01, "tol": 1e-4, "n_init": 3}
FULL_KMEANS = {"init": "k-means++", "max_iter": 1000, "tol": 1e-4, "n_init": 10,
               "algorithm": "lloyd"}


log = logging.getLogger(__name__)


class ClusterError(UserError):
    """Clustering cannot run as asked (k too large, no rows to fit, bad algorithm)."""


def check_k(k: object, where: str = "k") -> int:
    """A number of clusters: an integer >= 2 (one cluster is no grouping at all)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ClusterError(f"{where} must be an integer >= 2 (number of clusters), got {k!r}")
    return int(k)


def parse_ks(text: str, where: str = "--k") -> list[int]:
    """'2,4,8' -> [2, 4, 8]; empty, non-integer, repeated or < 2 values raise ClusterError."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ClusterError(f"{where} {text!r}: give at least one number of clusters, e.g. 2,4,8")
    try:
        ks = [int(p) for p in parts]
    except ValueError:
        raise ClusterError(f"{where} {text!r}: expected integers like 2,4,8,16") from None
    for k in ks:
        check_k(k, where)
    if len(set(ks)) != len(ks):
        raise ClusterError(f"{where} {text!r} repeats a value")
    return ks


def _estimator(k: int, algorithm: str, seed: int, overrides: dict | None):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if algorithm not in ALGORITHMS:
        raise ClusterError(f"algorithm {algorithm!r} not in {ALGORITHMS}")
    params = dict(PAPER_MINIBATCH if algorithm == "minibatch" else FULL_KMEANS)
    params.update(overrides or {})
    cls = MiniBatchKMeans if algorithm == "minibatch" else KMeans
    return cls(n_clusters=k, random_state=seed, **params), params


def fit_clusters(embeddings: np.ndarray, utt_ids: list[str], k: int,
                 fit_mask: np.ndarray | None = None, algorithm: str = "minibatch",
                 seed: int = 42, *, name: str = "embeddings", valid: np.ndarray | None = None,
                 params: dict | None = None) -> tuple[GroupAssignment, np.ndarray]:
    """`cluster_groups` plus the cluster centres [k, D] (to assign new utterances later)."""
    k = check_k(k)
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    if x.ndim != 2 or n != len(utt_ids):
        raise ClusterError(f"embeddings {x.shape} do not match {len(utt_ids)} utterance ids")
    finite = np.isfinite(x).all(1)
    valid = finite if valid is None else np.asarray(valid, bool) & finite
    fit = valid if fit_mask is None else (np.asarray(fit_mask, bool) & valid)
    if fit.sum() < k:
        raise ClusterError(f"cannot fit k={k} clusters on {int(fit.sum())} utterance(s)")
    est, resolved = _estimator(int(k), algorithm, seed, params)
    with progress.Bar(None, f"k-means k={k} on {int(fit.sum())} {name} embeddings"):
        est.fit(x[fit])
    ids = np.full(n, -1, dtype=np.int64)
    if valid.any():
        ids[valid] = est.predict(x[valid])
    info = {"k": int(k), "algorithm": algorithm, "seed": int(seed), "params": resolved,
            "n_fit": int(fit.sum()), "n_invalid": int((~valid).sum()),
            "inertia": float(est.inertia_), "n_iter": int(est.n_iter_),
            "sizes": np.bincount(ids[ids >= 0], minlength=k).tolist(),
            "fit_sizes": np.bincount(ids[fit], minlength=k).tolist()}
    names = [f"c{i}" for i in range(k)]
    assignment = GroupAssignment(list(utt_ids), ids, names, f"cluster:{name}:k={k}", None, info)
    return assignment, est.cluster_centers_.astype(np.float32)


def cluster_groups(embeddings: np.ndarray, utt_ids: list[str], k: int,
                   fit_mask: np.ndarray | None = None, algorithm: str = "minibatch",
                   seed: int = 42, **kwargs) -> GroupAssignment:
    """k-means groups: fit on rows in `fit_mask` (default all), assign every valid row.

    Keyword options (see `fit_clusters`): `name` (encoder id for the source string
    ``cluster:<name>:k=<k>``), `valid` (rows with usable embeddings; the others get -1) and
    `params` (overrides of the estimator settings).
    """
    return fit_clusters(embeddings, utt_ids, k, fit_mask, algorithm, seed, **kwargs)[0]


def cluster_many(embeddings: np.ndarray, utt_ids: list[str],
                 ks: list[int] | tuple[int, ...] = DEFAULT_KS, fit_mask: np.ndarray | None = None,
                 algorithm: str = "minibatch", seed: int = 42,
                 **kwargs) -> dict[int, GroupAssignment]:
    """`cluster_groups` for each k."""
    return {int(k): cluster_groups(embeddings, utt_ids, int(k), fit_mask, algorithm, seed, **kwargs)
            for k in ks}


def cache_key(utt_ids: list[str], fit_mask: np.ndarray | None, k: int, algorithm: str, seed: int,
              layer: int | str, params: dict | None = None, content: str = "") -> str:
    """Directory name under ``<store>/groups/``: settings in clear plus a hash of the fit rows
    and of `content` (the store's content id), so clusters of re-extracted features differ."""
    fit = list(utt_ids) if fit_mask is None else \
        [u for u, m in zip(utt_ids, np.asarray(fit_mask, bool), strict=True) if m]
    blob = json.dumps([fit, len(utt_ids), params or {}, content], sort_keys=True)
    digest = hashlib.sha256(blob.encode())
    return f"cluster-{algorithm}-k{k}-s{seed}-layer{layer}-{digest.hexdigest()[:10]}"


def cached_cluster_groups(store, k: int, fit_mask: np.ndarray | None = None,
                          algorithm: str = "minibatch", seed: int = 42, layer: int | str = "mean",
                          params: dict | None = None, cache: bool = True,
                          manifest: Manifest | None = None) -> GroupAssignment:
    """Cluster a FeatureStore's embeddings, caching the result in ``<store dir>/groups/<key>/``.

    `fit_mask` is aligned with the store's row order. The cache is reused only when the store's
    content (its features and failures), the fit rows, k, algorithm, seed, layer and parameters
    are identical; the assignment records the manifest hash the store was extracted from.
    Given `manifest`, a store extracted from another manifest is refused first.
    """
    k = check_k(k)
    from emodebias.groups.embeddings import encoder_name, load_embeddings, store_dir

    if isinstance(store, (str, Path)):
        from emodebias.features.store import FeatureStore

        store = FeatureStore.open(store)
    if manifest is not None:
        store.check(manifest)
    ids = list(store.utt_ids)
    root = store_dir(store)
    target = None
    if cache and root is not None:
        content = getattr(store, "content_id", "")
        target = root / "groups" / cache_key(ids, fit_mask, k, algorithm, seed, layer, params,
                                             content)
        if (target / "groups.json").is_file():
            try:
                return GroupAssignment.load(target)
            except UserError as exc:  # a damaged cache entry is rebuilt, not fatal
                log.warning("rebuilding the cluster cache %s: %s", target, exc)
    x, ids, ok = load_embeddings(store, layer)
    assignment, centers = fit_clusters(x, ids, k, fit_mask, algorithm, seed,
                                       name=encoder_name(store), valid=ok, params=params)
    assignment.info["layer"] = layer
    meta = getattr(store, "meta", None)
    if isinstance(meta, dict):
        assignment.manifest_hash = meta.get("manifest_hash")
    if target is not None:
        assignment.save(target)
        np.save(target / "centers.npy", centers)
    return assignment
