"""Paired comparison of two methods over the same folds/seeds.

With 5 folds (the CREMA-D protocol) a normal-theory test alone is fragile, so three p-values are
reported, all two-sided, on the differences d = a − b:

* ``p_ttest``: paired t-test (``scipy.stats.ttest_rel``).
* ``p_permutation``: sign-flip permutation test of the mean difference (under H0 each d is
  symmetric about 0). Exact (all 2^n sign patterns) for n ≤ `exact_max`, else `n_perm` random
  patterns with the observed one counted (p = (1 + #{|mean*| ≥ |mean|}) / (1 + n_perm)).
  Note the floor: with n = 5 the smallest exact p is 2/32 = 0.0625.
* ``p_wilcoxon``: Wilcoxon signed-rank (``scipy.stats.wilcoxon``, exact where scipy can).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from emodebias.metrics.attributes import MetricsInputError


def _paired(a: Mapping | Sequence | np.ndarray,
            b: Mapping | Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise MetricsInputError("paired_test needs two dicts (keyed by fold/seed) or two arrays")
    if isinstance(a, Mapping):
        only_a, only_b = sorted(set(a) - set(b), key=str), sorted(set(b) - set(a), key=str)
        if only_a or only_b:
            raise MetricsInputError(f"unpaired runs: only in a {only_a}, only in b {only_b}")
        keys = sorted(a, key=str)
        return (np.array([a[x] for x in keys], float), np.array([b[x] for x in keys], float),
                keys)
    xa, xb = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if xa.shape != xb.shape:
        raise MetricsInputError(f"paired_test: {xa.size} values in a vs {xb.size} in b")
    return xa, xb, list(range(xa.size))


def sign_flip_p(d: np.ndarray, n_perm: int = 10_000, seed: int = 0,
                exact_max: int = 16) -> float:
    """Two-sided sign-flip permutation p-value for mean(d) = 0."""
    d = np.asarray(d, float)
    obs = abs(d.mean())
    tol = 1e-12 * max(1.0, np.abs(d).max(initial=0.0))
    if d.size <= exact_max:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d / d.size) >= obs - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_perm, d.size))
    hits = np.sum(np.abs(signs @ d / d.size) >= obs - tol)
    return float((1 + hits) / (1 + n_perm))


def paired_test(a: Mapping | Sequence | np.ndarray, b: Mapping | Sequence | np.ndarray,
                n_perm: int = 10_000, seed: int = 0, exact_max: int = 16) -> dict:
    """Compare method A with B run on the same folds/seeds (dicts keyed alike, or aligned arrays).

    Returns n, mean_a, mean_b, mean_diff (a − b), sd_diff, ci_low/ci_high (95% t interval of the
    mean difference), t, p_ttest, p_permutation, p_wilcoxon, keys. Undefined statistics (n < 2,
    all differences 0) are NaN for t/CI and 1.0 for p-values (no evidence of a difference).
    """
    xa, xb, keys = _paired(a, b)
    if xa.size == 0:
        raise MetricsInputError("paired_test needs at least one pair")
    bad = ~(np.isfinite(xa) & np.isfinite(xb))
    if bad.any():
        bad_keys = [keys[i] for i in np.flatnonzero(bad)]
        raise MetricsInputError(f"non-finite values for keys {bad_keys}")
    d = xa - xb
    n = d.size
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    out = {"n": n, "mean_a": float(xa.mean()), "mean_b": float(xb.mean()),
           "mean_diff": float(d.mean()), "sd_diff": sd, "keys": keys,
           "t": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
           "p_ttest": 1.0, "p_wilcoxon": 1.0,
           "p_permutation": sign_flip_p(d, n_perm, seed, exact_max)}
    if np.all(d == 0):
        return out
    if n > 1:
        # ttest_rel's statistic, written out so that constant non-zero differences (sd = 0)
        # give t = ±inf and p = 0 instead of a precision warning.
        se = sd / np.sqrt(n)
        t = out["mean_diff"] / se if se > 0 else np.copysign(np.inf, out["mean_diff"])
        half = float(stats.t.ppf(0.975, n - 1) * se)
        out.update(t=float(t), p_ttest=float(2 * stats.t.sf(abs(t), n - 1)),
                   ci_low=out["mean_diff"] - half, ci_high=out["mean_diff"] + half)
    out["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue)
    return out


# ----------------------------------------------------------------------------- across runs
def fold_interval(values: Sequence[float] | np.ndarray, ci: float = 0.95) -> dict:
    """Mean over folds (or fold × seed units) with a t interval: n, mean, sd, ci_low, ci_high.

    Each value is one fold's result (seeds averaged within the fold first), so the interval
    reflects fold-to-fold variation; with one value there is no interval (NaN bounds).
    """
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    out = {"n": n, "mean": float(x.mean()) if n else float("nan"), "sd": float("nan"),
           "ci_low": float("nan"), "ci_high": float("nan")}
    if n > 1:
        sd = float(x.std(ddof=1))
        half = float(stats.t.ppf(0.5 + ci / 2, n - 1) * sd / np.sqrt(n))
        out.update(sd=sd, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control over the comparisons)."""
    p = np.asarray(pvalues, float)
    order = np.argsort(p)
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def min_sign_flip_p(n: int) -> float:
    """The smallest two-sided p an exact sign-flip test of n paired differences can give."""
    return min(1.0, 2.0 ** (1 - int(n))) if n > 0 else 1.0  # int: numpy ints overflow


def pairs_needed(alpha: float = 0.05, comparisons: int = 1) -> int:
    """Fewest pairs for which the sign-flip test can reach Holm's first threshold α/m."""
    n = 1
    while min_sign_flip_p(n) > alpha / max(comparisons, 1):
        n += 1
    return n
