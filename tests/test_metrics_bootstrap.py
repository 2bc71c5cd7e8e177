"""Bootstrap intervals (speaker / utterance level, vectorised) and paired method comparisons."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import stats

from emodebias.metrics import MetricsInputError, evaluate, paired_test, sign_flip_p


def _biased_case(n: int, seed: int = 0, n_speakers: int = 30, k: int = 6,
                 speaker_effect: float = 0.0):
    """Targets and softmax-like outputs; male and elderly speakers get noisier predictions."""
    rng = np.random.default_rng(seed)
    speaker = rng.integers(0, n_speakers, n)
    gender = np.where(speaker % 2 == 0, "F", "M")
    targets = rng.dirichlet(np.full(k, 0.5), n)
    age = np.array(["Young", "Middle", "Elderly"])[speaker % 3]
    noise = (np.where(gender == "M", 2.0, 0.6) + np.where(age == "Elderly", 1.5, 0.0))[:, None]
    offset = rng.normal(0, speaker_effect, (n_speakers, k))[speaker]
    logits = 3 * targets + noise * rng.normal(size=(n, k)) + offset
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return targets, probs, {"gender": gender, "age_group": age}, speaker


def _interval_keys(summary: dict) -> list[str]:
    return [k[: -len(".ci_low")] for k in summary if k.endswith(".ci_low")]


def test_every_interval_contains_its_estimate() -> None:
    targets, probs, attrs, speaker = _biased_case(1500)
    res = evaluate(targets, probs, attrs, speakers=speaker, n_boot=300, seed=1)
    assert res.summary["gender.tpr_gap"] > 0.1 and res.summary["age_group.tpr_gap"] > 0.1
    keys = _interval_keys(res.summary)
    assert {"macro_f1", "gender.tpr_gap_bc", "age_group.dp_sumdev_gap_bc",
            "gender.worst_group_f1"} <= set(keys)
    for key in keys:
        lo, hi = res.summary[f"{key}.ci_low"], res.summary[f"{key}.ci_high"]
        assert lo <= res.summary[key] <= hi, key
        assert lo < hi, key
    # the bias-corrected gap sits below the paper's plug-in value (|.| inflates the plug-in)
    for m in ("tpr_gap", "fpr_gap", "f1_gap"):
        assert res.summary[f"gender.{m}_bc"] < res.summary[f"gender.{m}"]
    assert res.info["bootstrap_unit"] == "speaker" and res.info["n_units"] == 30


def test_ci_narrows_with_more_data() -> None:
    widths = {}
    for n in (300, 3000):
        targets, probs, attrs, _ = _biased_case(n, seed=2)
        s = evaluate(targets, probs, attrs, n_boot=200, seed=0).summary
        widths[n] = {k: s[f"{k}.ci_high"] - s[f"{k}.ci_low"]
                     for k in ("macro_f1", "hamming_acc", "gender.tpr_gap_bc")}
    for key, wide in widths[300].items():
        # the width scales like 1/sqrt(n): a 10x larger set gives ~0.32x the width
        assert widths[3000][key] < 0.6 * wide, key


@pytest.mark.parametrize("use_speakers", [False, True])
def test_one_resample_equals_evaluating_the_resampled_rows(use_speakers: bool) -> None:
    """The weighted (vectorised) resample equals scoring the explicitly repeated rows."""
    import importlib

    from emodebias.metrics.inference import stratified_weights

    ev = importlib.import_module("emodebias.metrics.evaluate")

    targets, probs, attrs, speaker = _biased_case(200, seed=3, n_speakers=12)
    units = ev._speaker_codes(speaker if use_speakers else None, len(targets))
    y, p = ev._binarize(targets, probs, None)
    sums, strata = ev._unit_sums(ev._base(y, p), units, np.zeros(len(units), int))
    w = stratified_weights(np.random.default_rng(5), strata, 1)
    got = ev._overall(ev._as_counts(w @ sums, 6))
    # the documented draw: multinomial counts per unit, units numbered in first-seen order
    n_units = units.max() + 1
    mult = np.random.default_rng(5).multinomial(n_units, np.full(n_units, 1 / n_units), 1)[0]
    rows = np.repeat(np.arange(len(targets)), mult[units])
    ref = evaluate(targets[rows], probs[rows], {k: v[rows] for k, v in attrs.items()})
    for key in ("macro_f1", "hamming_acc"):
        assert got[key][0] == pytest.approx(ref.summary[key], abs=1e-12), key


def test_stratified_resamples_keep_every_group_and_its_size() -> None:
    from emodebias.metrics.inference import stratified_weights

    strata = np.array([0] * 3 + [1] * 7 + [2] * 1)
    w = stratified_weights(np.random.default_rng(0), strata, 500)
    for s in range(3):
        assert (w[:, strata == s].sum(1) == (strata == s).sum()).all()
    assert (w[:, strata == 2] == 1).all()  # a one-unit stratum is always itself


def test_speaker_bootstrap_is_wider_when_speakers_differ() -> None:
    targets, probs, attrs, speaker = _biased_case(1500, seed=4, speaker_effect=1.5)
    by_utt = evaluate(targets, probs, attrs, n_boot=200).summary
    by_spk = evaluate(targets, probs, attrs, speakers=speaker, n_boot=200).summary
    for key in ("macro_f1", "hamming_acc"):
        w_utt = by_utt[f"{key}.ci_high"] - by_utt[f"{key}.ci_low"]
        w_spk = by_spk[f"{key}.ci_high"] - by_spk[f"{key}.ci_low"]
        assert w_spk > 1.5 * w_utt, key


def test_bootstrap_is_deterministic_and_fast() -> None:
    targets, probs, attrs, speaker = _biased_case(1500, seed=5)
    attrs["race"] = np.array(["A", "B", "C", "D"])[speaker % 4]
    kwargs = dict(speakers=speaker, intersections=[("gender", "age_group")])
    evaluate(targets, probs, attrs, n_boot=5, **kwargs)  # warm-up (imports, caches)
    start = time.perf_counter()
    a = evaluate(targets, probs, attrs, n_boot=200, seed=7, **kwargs)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"200 resamples of 1500 x 6 took {elapsed:.2f} s"
    b = evaluate(targets, probs, attrs, n_boot=200, seed=7, **kwargs)
    c = evaluate(targets, probs, attrs, n_boot=200, seed=8, **kwargs)
    assert a.summary == b.summary
    assert a.summary["macro_f1.ci_low"] != c.summary["macro_f1.ci_low"]


# ------------------------------------------------------------------------------- paired tests
def test_paired_test_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.65, 0.02, 8)
    b = a - rng.normal(0.01, 0.01, 8)
    out = paired_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert out["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert out["p_ttest"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert out["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-10)
    assert out["mean_diff"] == pytest.approx(np.mean(a - b))
    assert out["ci_low"] < out["mean_diff"] < out["ci_high"]


def test_sign_flip_exact_by_hand() -> None:
    # d = (1, 2, 3): of the 8 sign patterns only +++ and --- reach |sum| = 6 -> p = 2/8
    assert sign_flip_p(np.array([1.0, 2.0, 3.0])) == pytest.approx(0.25)
    # d = (1, 2, -3): |sum| = 0 is reached or exceeded by all 8 patterns -> p = 1
    assert sign_flip_p(np.array([1.0, 2.0, -3.0])) == pytest.approx(1.0)
    # five positive folds: p = 2/32, the floor of a 5-fold comparison
    assert paired_test([0.7] * 5, [0.6, 0.61, 0.62, 0.63, 0.64])["p_permutation"] == 0.0625


def test_sign_flip_monte_carlo_close_to_exact() -> None:
    d = np.random.default_rng(1).normal(0.3, 1.0, 12)
    exact = sign_flip_p(d)
    approx = sign_flip_p(d, n_perm=20_000, exact_max=0)
    assert approx == pytest.approx(exact, abs=0.015)


def test_paired_test_dicts_align_by_key_and_refuse_unpaired() -> None:
    a = {("fold", 1): 0.6, ("fold", 2): 0.7, ("fold", 3): 0.65}
    b = {("fold", 3): 0.6, ("fold", 1): 0.5, ("fold", 2): 0.7}
    out = paired_test(a, b)
    assert out["n"] == 3 and out["mean_diff"] == pytest.approx((0.1 + 0.0 + 0.05) / 3)
    with pytest.raises(MetricsInputError, match="only in a"):
        paired_test({1: 0.5, 2: 0.6}, {1: 0.5})
    with pytest.raises(MetricsInputError, match="dicts"):
        paired_test({1: 0.5}, [0.5])


def test_paired_test_degenerate_differences() -> None:
    same = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["p_ttest"] == same["p_wilcoxon"] == same["p_permutation"] == 1.0
    shifted = paired_test([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])  # constant difference
    assert shifted["p_ttest"] == pytest.approx(0.0, abs=1e-9)
    assert shifted["p_permutation"] == pytest.approx(0.25)
