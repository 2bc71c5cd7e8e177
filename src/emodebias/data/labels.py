"""Votes -> distributional labels (EMO-SUPERB rule), binarisation at 1/K, majority class.

Verified on the EMO-SUPERB CREMA-D files (PAPERS.md §1.3): p = vote share over the K classes
(other/none votes dropped), y' = (1-a)·p + a/K with a = 0.05·K/(K-1), positive when y' > 1/K.
"""

from __future__ import annotations

import numpy as np

from emodebias.errors import UserError

SMOOTHING = 0.05


class LabelError(UserError):
    """Votes or labels that cannot give a distribution (e.g. all-zero votes)."""


def smoothing_alpha(k: int) -> float:
    """a = 0.05·K/(K-1): a unanimous vote maps to 0.95, every other class to 0.05/(K-1)."""
    return SMOOTHING * k / (k - 1)


def soft_from_votes(votes: np.ndarray, ids: list[str] | None = None) -> np.ndarray:
    """[N, K] vote counts (other/none already dropped) -> smoothed distributional labels."""
    votes = np.asarray(votes, dtype=np.float64)
    if votes.ndim != 2 or votes.shape[1] < 2:
        raise LabelError(f"votes must be [N, K>=2], got shape {votes.shape}")
    if (votes < 0).any() or not np.isfinite(votes).all():
        raise LabelError("votes must be finite and non-negative")
    total = votes.sum(axis=1, keepdims=True)
    empty = total[:, 0] == 0
    if empty.any():
        where = np.flatnonzero(empty)[:5]
        names = [ids[i] for i in where] if ids is not None else where.tolist()
        raise LabelError(f"{int(empty.sum())} utterance(s) have no votes for any class: {names}")
    k = votes.shape[1]
    a = smoothing_alpha(k)
    return (1 - a) * votes / total + a / k


TIE_TOL = 1e-9


def binarize(soft: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Multi-label targets/predictions: 1[y_k > threshold], threshold 1/K by default.

    An exact tie (within 1e-9, i.e. float noise) counts as positive: the EMO-SUPERB files store
    p = 1/K rounded up (0.166667 > 1/6), so labels computed from votes must agree with them.
    """
    soft = np.asarray(soft)
    t = 1.0 / soft.shape[1] if threshold is None else threshold
    return soft > t - TIE_TOL


def unsmooth(soft: np.ndarray) -> np.ndarray:
    """Invert the smoothing: the vote shares p behind distributional labels y'."""
    soft = np.asarray(soft, dtype=np.float64)
    k = soft.shape[1]
    a = smoothing_alpha(k)
    return (soft - a / k) / (1 - a)


def strict_majority(
    dist: np.ndarray, share: float = 0.5, smoothed: bool = True, tol: float = 1e-3
) -> np.ndarray:
    """Index of the class holding more than `share` of the votes, else -1.

    `dist` is smoothed labels (default) or, with smoothed=False, votes or vote shares. `tol`
    absorbs the 3- to 6-decimal rounding of published label files, so an exact 50% is never a
    majority; a real majority n/m exceeds 1/2 by at least 1/(2m), far above `tol` for m < 500.
    """
    dist = np.asarray(dist, dtype=np.float64)
    p = unsmooth(dist) if smoothed else dist / dist.sum(axis=1, keepdims=True)
    best = p.argmax(axis=1)
    ok = p[np.arange(len(p)), best] > share + tol
    return np.where(ok, best, -1)


def class_balanced_weights(binary: np.ndarray) -> np.ndarray:
    """Cui et al. 2019 class weights as in EMO-SUPERB: w_c = (1-β)/(1-β^{n_c}), Σ w = K.

    β = (N-1)/N with N utterances and n_c positives of class c; a class with no positives gets
    the weight of n_c = 1 so the loss stays finite.
    """
    binary = np.asarray(binary, dtype=bool)
    n, k = binary.shape
    beta = (n - 1) / n
    n_c = np.maximum(binary.sum(axis=0), 1).astype(np.float64)
    w = (1 - beta) / (1 - beta**n_c)
    return w * k / w.sum()


def count_votes(item_ids: list[str] | np.ndarray, labels: list[str] | np.ndarray,
                classes: list[str]) -> np.ndarray:
    """Per-annotation rows (item id, class name) -> [n_items, K] vote counts.

    Items come back in order of first appearance (``pandas.unique(item_ids)``); labels outside
    `classes` (e.g. "other") must be removed by the caller, which decides how to report them.
    """
    import pandas as pd

    ids = pd.Index(pd.unique(np.asarray(item_ids, dtype=object)))
    rows = ids.get_indexer(np.asarray(item_ids, dtype=object))
    pos = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(lab) for lab in labels if lab not in pos})
    if unknown:
        raise LabelError(f"labels {unknown[:5]} are not among the classes {list(classes)}")
    cols = np.fromiter((pos[lab] for lab in labels), dtype=np.int64, count=len(rows))
    votes = np.zeros((len(ids), len(classes)), dtype=np.float64)
    np.add.at(votes, (rows, cols), 1.0)
    return votes
