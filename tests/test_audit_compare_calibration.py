"""The paired speaker-swap test of `audit --compare`, checked by simulation against a known truth
(fast versions of ``benchmarks/bench_compare.py``).

`simulate_model_pair` draws test sets scored by two models that are exchangeable within every
speaker (the null) or with model B planted worse for female speakers; `paired_comparison` is
the code `compare_runs` runs after loading the folders.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from emodebias.auditing.compare import (
    NOT_TESTABLE,
    TESTED,
    CompareError,
    paired_comparison,
    simulated_comparisons,
)
from emodebias.metrics import evaluate
from emodebias.metrics.evaluate import headline_scorer
from emodebias.metrics.simulate import simulate_model_pair

KEYS = ["macro_f1", "gender.tpr_gap"]


def _rejections(reps: int, *, seed: int, unit: str = "speaker", n_perm: int = 99,
                **sim: float) -> np.ndarray:
    """Per replication and key of KEYS: p <= 0.05."""
    return np.array([t.loc[KEYS, "p"].to_numpy() <= 0.05 for _, t in
                     simulated_comparisons(reps, seed=seed, unit=unit, n_perm=n_perm, **sim)])


def test_cheap_scoring_path_gives_evaluates_numbers() -> None:
    d = simulate_model_pair(np.random.default_rng(0), speakers_per_group=6)
    age = np.where(d.speakers % 3 == 0, "old", np.where(d.speakers % 3 == 1, "young", None))
    attrs = pd.DataFrame({"gender": d.gender, "age": age})
    scorer = headline_scorer(d.targets, attrs, min_support=2)
    for probs in (d.probs_a, d.probs_b):
        summary = evaluate(d.targets, probs, attrs, min_support=2).summary
        got = scorer.scores(scorer.design(probs).sum(0))
        assert set(summary) >= set(scorer.keys)
        for k in scorer.keys:
            assert got[k] == pytest.approx(summary[k], abs=1e-12), k


def test_exact_p_equals_brute_force_over_every_swap_with_evaluate() -> None:
    """6 speakers: all 64 swap patterns enumerated; each re-scored by a full `evaluate`."""
    d = simulate_model_pair(np.random.default_rng(4), speakers_per_group=3, utterances=8,
                            worse_female=0.5)
    c = paired_comparison(d.targets, [d.probs_a, d.probs_b], {"gender": d.gender}, d.speakers,
                          n_perm=1000)
    assert c.exact and c.n_perm == 64
    t = c.table[c.table["model"] == c.names[1]].set_index("metric")
    spk = pd.factorize(pd.Series(d.speakers).astype(str))[0]

    def value(p: np.ndarray) -> np.ndarray:
        s = evaluate(d.targets, p, {"gender": d.gender}).summary
        return np.array([s[k] for k in KEYS])

    observed = value(d.probs_b) - value(d.probs_a)
    hits = np.zeros(len(KEYS))
    for pattern in range(64):
        swap = ((pattern >> np.arange(6)) & 1).astype(bool)[spk][:, None]
        diff = (value(np.where(swap, d.probs_a, d.probs_b))
                - value(np.where(swap, d.probs_b, d.probs_a)))
        hits += np.abs(diff) >= np.abs(observed) - 1e-12
    np.testing.assert_allclose(t.loc[KEYS, "diff"], observed, atol=1e-12)
    np.testing.assert_allclose(t.loc[KEYS, "p"], hits / 64)
    assert (t.loc[KEYS, "p"] >= 2 / 64).all()  # the identity and the full swap always tie


def test_null_rejection_rate_is_nominal_and_utterance_swaps_are_not() -> None:
    """Exchangeable models with a strong per-model speaker effect: swapping speakers keeps the
    rate at α; swapping single utterances (the unit ignoring that effect) exceeds it."""
    sim = {"speakers_per_group": 10, "utterances": 10, "sd_model_speaker": 1.0}
    reps = 200
    rejected = _rejections(reps, seed=11, **sim)
    for k, hits in zip(KEYS, rejected.sum(0), strict=True):
        ci = stats.binomtest(int(hits), reps).proportion_ci(0.95, method="exact")
        assert ci.low <= 0.05 and hits / reps <= 0.09, (k, hits / reps)
    loose = _rejections(100, seed=11, unit="utterance", **sim)
    assert loose[:, 0].mean() >= 0.1, loose.mean(0)  # the check above can fail


def test_planted_difference_is_detected() -> None:
    power = _rejections(100, seed=5, speakers_per_group=20, worse_female=0.5).mean(0)
    assert power[0] >= 0.9, power  # macro-F1 (measured 0.99 in bench_compare)
    assert power[1] >= 0.25, power  # gender TPR gap (measured 0.39 in bench_compare)


def test_too_few_speakers_withholds_p_and_says_why() -> None:
    d = simulate_model_pair(np.random.default_rng(2), speakers_per_group=2, worse_female=0.9)
    c = paired_comparison(d.targets, [d.probs_a, d.probs_b], {"gender": d.gender}, d.speakers,
                          n_perm=500)
    rows = c.table[c.table["model"] == c.names[1]]
    assert (rows["status"] == NOT_TESTABLE).all() and rows["p"].isna().all()
    assert rows["p_holm"].isna().all() and rows["diff"].notna().all()
    text = "\n".join(c.lines())
    assert "not testable: only 4 speakers" in text and "smallest p of 0.125" in text
    assert "needs ≥ 6 speakers" in text
    # 6 speakers: testable (exact, smallest p 2/64), but not through Holm over 10 metrics
    d = simulate_model_pair(np.random.default_rng(2), speakers_per_group=3)
    c = paired_comparison(d.targets, [d.probs_a, d.probs_b], {"gender": d.gender}, d.speakers)
    rows = c.table[c.table["model"] == c.names[1]]
    assert c.exact and (rows["status"] == TESTED).all() and (rows["p"] >= 2 / 64).all()
    assert any("Holm over 10 metrics cannot reject" in n and "needs ≥ 9 speakers" in n
               for n in c.notes), c.notes
    # too few random swaps to reach α is said too
    c = paired_comparison(d.targets, [d.probs_a, d.probs_b], {"gender": d.gender},
                          np.arange(len(d.targets)), n_perm=10)
    assert any("raise --n-perm to at least 19" in n for n in c.notes), c.notes
    with pytest.raises(CompareError, match="speaker for each"):
        paired_comparison(d.targets, [d.probs_a, d.probs_b], None, d.speakers[:-1])


def test_smallest_p_takes_numpy_speaker_counts() -> None:
    """Speaker counts arrive as numpy ints, whose 2**n wraps to 0 from n = 64: the smallest p
    then divided by zero and 80 speakers read as "not testable"."""
    from emodebias.metrics import min_sign_flip_p

    assert min_sign_flip_p(np.int64(70)) == pytest.approx(2.0 ** -69)
    assert min_sign_flip_p(np.int64(4)) == 0.125 and min_sign_flip_p(0) == 1.0
    d = simulate_model_pair(np.random.default_rng(1), speakers_per_group=40)
    c = paired_comparison(d.targets, [d.probs_a, d.probs_b], {"gender": d.gender}, d.speakers,
                          n_perm=50)
    assert (c.table.loc[c.table["model"] == c.names[1], "status"] == TESTED).all()
