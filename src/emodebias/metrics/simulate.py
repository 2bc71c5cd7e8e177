"""Multi-label predictions with a known population gap, for checking intervals by simulation.

Speakers belong to groups; each speaker has a random effect on the logit of predicting a class
(shared across classes, plus a class-specific part), clip counts vary by speaker, and labels are
independent of the speaker effect. The population TPR of group g and class c is then
``E_u[sigmoid(a_gc + u)]`` (computed by Gauss–Hermite quadrature), so the population TPR gap is
known exactly. Counts are drawn per speaker directly (the sufficient statistics of the speaker
bootstrap), for many replications at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

K = 6
BASE_TPR = np.array([0.55, 0.60, 0.65, 0.70, 0.50, 0.75])
SIGNS = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
PREVALENCE = np.array([0.30, 0.20, 0.25, 0.15, 0.35, 0.20])
_X, _W = np.polynomial.hermite_e.hermegauss(60)
_W = _W / _W.sum()


def population_rate(logit: np.ndarray, sd: float) -> np.ndarray:
    """``E[sigmoid(logit + sd·Z)]``, Z standard normal."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(logit, float)[..., None] + sd * _X))) @ _W


def logit_for(rate: np.ndarray, sd: float) -> np.ndarray:
    flat = [optimize.brentq(lambda a, r=r: population_rate(a, sd) - r, -30, 30)
            for r in np.ravel(rate)]
    return np.array(flat).reshape(np.shape(rate))


@dataclass
class Simulated:
    """Per-speaker counts ``tp``, ``pos`` ``[R, S, K]``, speaker group ``[S]`` and the truth."""

    tp: np.ndarray
    pos: np.ndarray
    group: np.ndarray
    true_tpr: np.ndarray  # [G, K] population TPR
    true_gap: float  # FairLib-aggregated RMS gap of the population TPRs


def simulate_tpr(rng: np.random.Generator, *, replications: int, speakers_per_group: int,
                 gap: float, groups: int = 2, clips: int = 25, sd_speaker: float = 0.5,
                 sd_class: float = 0.3) -> Simulated:
    """`replications` test sets with a population TPR gap of `gap` (RMS over 6 classes).

    Group g's TPR on class c is ``BASE_TPR_c + SIGNS_c·gap·g/(G−1)`` for two groups (so the
    two-group gap is exactly `gap`); the gap of more groups follows from the same rates.
    """
    sd = float(np.hypot(sd_speaker, sd_class))
    steps = np.arange(groups) / max(groups - 1, 1)
    tpr = BASE_TPR + SIGNS * gap * steps[:, None]
    a = logit_for(tpr, sd)
    group = np.repeat(np.arange(groups), speakers_per_group)
    s = len(group)
    n = rng.integers(clips - 10, clips + 11, (replications, s))
    pos = rng.binomial(n[..., None], PREVALENCE, (replications, s, K))
    effect = (rng.normal(0, sd_speaker, (replications, s, 1))
              + rng.normal(0, sd_class, (replications, s, K)))
    tp = rng.binomial(pos, 1.0 / (1.0 + np.exp(-(a[group] + effect))))
    overall = tpr.mean(0)  # equal speakers and prevalence per group: the pooled population rate
    true = float(np.sqrt(np.mean(np.abs(tpr - overall).sum(0) ** 2)))
    return Simulated(tp.astype(float), pos.astype(float), group, tpr, true)


def tpr_gap_intervals(sim: Simulated, rng: np.random.Generator, *, n_boot: int = 400,
                      n_perm: int = 0, ci: float = 0.95) -> dict[str, np.ndarray]:
    """Per replication: plug-in gap, bias-corrected estimate and interval, permutation p.

    Runs the library's resampling (`inference`) and gap (`rates.aggregation_gap`) code on all
    replications at once.
    """
    from emodebias.metrics import inference, rates

    g = int(sim.group.max()) + 1
    zeros = np.zeros_like(sim.tp)
    # unit sums laid out as evaluate's [TP_k, FP_k, FN_k, n]: FP unused for the TPR gap
    units = np.concatenate([sim.tp, zeros, sim.pos - sim.tp, sim.pos[..., :1]], axis=-1)
    every = np.ones(K, dtype=bool)

    def gap(sums: np.ndarray) -> np.ndarray:
        c = rates.Counts(sums[..., :K], sums[..., K:2 * K], sums[..., 2 * K:3 * K],
                         sums[..., 3 * K])
        return rates.aggregation_gap(rates.tpr(c), rates.tpr(c.pooled()), every)[1]

    point = gap(inference.group_sums(np.ones((1, len(sim.group))), units, sim.group, g))[:, 0]
    w = inference.stratified_weights(rng, sim.group, n_boot)
    boot = gap(inference.group_sums(w, units, sim.group, g))
    est, lo, hi = inference.bias_corrected_interval(point, boot, ci)
    out = {"point": point, "estimate": est, "low": lo, "high": hi,
           "pct_low": np.nanquantile(boot, (1 - ci) / 2, axis=-1),
           "pct_high": np.nanquantile(boot, 1 - (1 - ci) / 2, axis=-1)}
    if n_perm:
        null = gap(inference.permuted_group_sums(rng, units, sim.group, g, n_perm))
        out["p_perm"] = inference.permutation_p(point, null)
    return out
