"""Interval coverage and null calibration by simulation (fast versions of bench_coverage.py).

Truth is known: `simulate_tpr` draws speakers with random effects from groups whose population
TPRs differ by a set RMS gap over 6 classes. Every replication runs the library's resampling.
"""

from __future__ import annotations

import numpy as np
import pytest

from emodebias.metrics import evaluate
from emodebias.metrics.simulate import simulate_tpr, tpr_gap_intervals

REPS = 800


def _coverage(speakers: int, gap: float, groups: int = 2, seed: int = 1, n_perm: int = 0):
    rng = np.random.default_rng(seed)
    sim = simulate_tpr(rng, replications=REPS, speakers_per_group=speakers, gap=gap,
                       groups=groups)
    r = tpr_gap_intervals(sim, rng, n_boot=400, n_perm=n_perm)
    covered = (r["low"] <= sim.true_gap + 1e-12) & (sim.true_gap <= r["high"] + 1e-12)
    plain = (r["pct_low"] <= sim.true_gap) & (sim.true_gap <= r["pct_high"])
    return sim, r, covered.mean(), plain.mean()


@pytest.mark.parametrize(("speakers", "gap", "groups"), [(20, 0.1, 2), (40, 0.1, 2),
                                                          (20, 0.2, 2), (20, 0.1, 3)])
def test_bias_corrected_interval_covers_a_real_gap(speakers: int, gap: float,
                                                   groups: int) -> None:
    sim, r, coverage, plain = _coverage(speakers, gap, groups)
    if groups == 2:
        assert sim.true_gap == pytest.approx(gap)
        truth = sim.true_tpr[1] - sim.true_tpr[0]
        signed = (r["diff_low"] <= truth) & (truth <= r["diff_high"])
        assert 0.92 <= signed.mean() <= 0.97, signed.mean()  # per-class signed differences
    assert 0.93 <= coverage <= 0.97, coverage
    # the plain percentile interval of the plug-in gap misses far more often (it is biased)
    assert plain < 0.9
    # the plug-in gap is biased upward, the corrected estimate much less
    assert abs(np.mean(r["estimate"]) - gap) < 0.5 * (np.mean(r["point"]) - gap)


def test_no_gap_interval_reaches_zero_or_is_indistinguishable_from_chance() -> None:
    sim, r, coverage, plain = _coverage(20, 0.0, n_perm=99)
    assert sim.true_gap == 0.0
    honest = (r["low"] == 0) | (r["p_perm"] > 0.05)
    assert honest.mean() >= 0.93 and coverage >= 0.93
    assert plain == 0.0  # every plain percentile interval lies above 0
    assert np.mean(r["point"]) > 0.05  # the noise a plug-in gap shows without any real gap


def test_permutation_null_false_positive_rate() -> None:
    rng = np.random.default_rng(7)
    sim = simulate_tpr(rng, replications=1000, speakers_per_group=20, gap=0.0)
    p = tpr_gap_intervals(sim, rng, n_boot=1, n_perm=199)["p_perm"]
    fpr = float(np.mean(p <= 0.05))
    assert fpr <= 0.06, fpr
    assert fpr >= 0.02  # calibrated, not trivially conservative
    # with a real gap and 40 speakers per group the test has power
    sim = simulate_tpr(rng, replications=200, speakers_per_group=40, gap=0.15)
    p = tpr_gap_intervals(sim, rng, n_boot=1, n_perm=199)["p_perm"]
    assert np.mean(p <= 0.05) > 0.8


@pytest.mark.parametrize("speakers_per_group", [1, 2])
def test_too_few_speakers_are_flagged_not_printed(speakers_per_group: int) -> None:
    rng = np.random.default_rng(0)
    spk = np.repeat(np.arange(2 * speakers_per_group), 40)
    gender = np.where(spk % 2 == 0, "F", "M")
    targets = rng.dirichlet(np.ones(6), len(spk))
    probs = rng.dirichlet(np.ones(6), len(spk))
    res = evaluate(targets, probs, {"gender": gender}, speakers=spk, n_boot=200, n_perm=50)
    rows = res.gaps[res.gaps.attribute == "gender"]
    assert (rows.status == "not estimable").all()
    assert rows.reason.str.contains(f"'F' has {speakers_per_group}, 'M' has "
                                    f"{speakers_per_group} \\(min_speakers=5\\)").all()
    assert not [k for k in res.summary if k.startswith("gender.") and ".ci_" in k]
    assert res.summary["gender.tpr_gap_estimable"] == 0.0
    assert rows.ci_low.isna().all() and rows.ci_high.isna().all()
    assert res.per_class[res.per_class.attribute == "gender"].status.eq("not estimable").all()
