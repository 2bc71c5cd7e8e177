"""Multi-label predictions with a known truth, for checking intervals and tests by simulation.

Speakers belong to groups; each speaker has a random effect on the logit of predicting a class
(shared across classes, plus a class-specific part), clip counts vary by speaker, and labels are
independent of the speaker effect. The population TPR of group g and class c is then
``E_u[sigmoid(a_gc + u)]`` (computed by Gauss–Hermite quadrature), so the population TPR gap is
known exactly. Counts are drawn per speaker directly (the sufficient statistics of the speaker
bootstrap), for many replications at once.

`simulate_model_pair` draws one utterance-level test set scored by two models that are
exchangeable within each speaker (or with model B planted worse for one gender), for checking
the paired comparison of `emodebias.auditing.compare`.
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

    Runs the library's resampling (`inference`) and TPR-gap code (`evaluate.plan_metrics`) on
    all replications at once; ``pct_low``/``pct_high`` are the plain percentile interval of the
    plug-in gap, for comparison.
    """
    from emodebias.metrics import inference, rates
    from emodebias.metrics.evaluate import _as_counts, _sum_agg

    g = int(sim.group.max()) + 1
    zeros = np.zeros_like(sim.tp)
    # unit sums laid out as evaluate's [TP_k, FP_k, FN_k, n]: FP unused for the TPR gap
    units = np.concatenate([sim.tp, zeros, sim.pos - sim.tp, sim.pos[..., :1]], axis=-1)
    agg = _sum_agg(np.ones(K, dtype=bool))  # the TPR gap's aggregation, as in `evaluate`

    def tpr_spread(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = _as_counts(sums, K)
        x = rates.tpr(c) - rates.tpr(c.pooled())
        return agg(x), x

    point, x0 = tpr_spread(inference.group_sums(np.ones((1, len(sim.group))), units, sim.group,
                                                g))
    boot, xb = tpr_spread(inference.group_sums(inference.stratified_weights(
        rng, sim.group, n_boot), units, sim.group, g))
    speakers = np.bincount(sim.group).min()
    inflate = float(np.sqrt(speakers / max(speakers - 1, 1)))
    est, lo, hi = inference.shrunk_interval(x0[:, 0], np.moveaxis(xb, 1, 0), agg, ci=ci,
                                            inflate=inflate)
    if g == 2:  # signed per-class differences, as `evaluate` reports them (second − first)
        d0 = x0[:, 0, 1] - x0[:, 0, 0]
        qlo, qhi = np.nanquantile(xb[..., 1, :] - xb[..., 0, :], [(1 - ci) / 2, (1 + ci) / 2],
                                  axis=1)
        diff = {"diff_low": d0 + inflate * (qlo - d0), "diff_high": d0 + inflate * (qhi - d0)}
    else:
        diff = {}
    out = {**diff, "point": point[:, 0], "estimate": est, "low": lo, "high": hi,
           "pct_low": np.nanquantile(boot, (1 - ci) / 2, axis=-1),
           "pct_high": np.nanquantile(boot, 1 - (1 - ci) / 2, axis=-1)}
    if n_perm:
        null, _ = tpr_spread(inference.permuted_group_sums(rng, units, sim.group, g, n_perm))
        out["p_perm"] = inference.permutation_p(point[:, 0], null)
    return out


@dataclass
class ModelPair:
    """One test set scored by two models: soft targets, both models' probabilities ``[N, K]``,
    each utterance's speaker and gender (``"female"``/``"male"``)."""

    targets: np.ndarray
    probs_a: np.ndarray
    probs_b: np.ndarray
    speakers: np.ndarray
    gender: np.ndarray


def simulate_model_pair(rng: np.random.Generator, *, speakers_per_group: int = 20,
                        utterances: int = 15, k: int = K, signal: float = 0.6,
                        sd_speaker: float = 0.6, sd_model_speaker: float = 0.4,
                        sd_noise: float = 0.8, worse_female: float = 0.0) -> ModelPair:
    """Two models' predictions on a multi-label test set with speaker-level effects.

    Soft targets mix a primary emotion (weight 0.6) with a Dirichlet share, so some utterances
    have two classes above 1/K. Each model's class logits are ``signal·K·y'`` plus a speaker
    effect shared by both models (a hard speaker is hard for both), a speaker effect of the
    model's own (the same law for both: a model suits some voices) and utterance noise; the
    probabilities are a softmax. With `worse_female` = 0 the two models are exchangeable within
    every speaker (the paired test's null); with `worse_female` = f model B's signal for female
    speakers is scaled by 1 − f (B is worse for one gender: lower macro-F1, larger TPR gap).
    """
    s = 2 * speakers_per_group
    female = np.arange(s) < speakers_per_group
    n_utt = rng.integers(max(utterances - 5, 2), utterances + 6, s)
    spk = np.repeat(np.arange(s), n_utt)
    n = len(spk)
    primary = rng.choice(k, size=n, p=PREVALENCE / PREVALENCE.sum() if k == K
                         else np.full(k, 1.0 / k))
    soft = 0.6 * np.eye(k)[primary] + 0.4 * rng.dirichlet(np.full(k, 0.3), size=n)
    shared = rng.normal(0, sd_speaker, (s, k))[spk]

    def model(scale: np.ndarray) -> np.ndarray:
        own = rng.normal(0, sd_model_speaker, (s, k))[spk]
        logits = signal * k * soft * scale[:, None] + shared + own + rng.normal(
            0, sd_noise, (n, k))
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    ones = np.ones(n)
    probs_a = model(ones)
    probs_b = model(np.where(female[spk], 1.0 - worse_female, 1.0))
    return ModelPair(soft, probs_a, probs_b, spk, np.where(female[spk], "female", "male"))
