"""Invariances (hypothesis) and the degenerate cases: empty groups, classes without positives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emodebias.metrics import GAP_METRICS, MetricsInputError, evaluate

FAST = settings(max_examples=40, deadline=None)


@st.composite
def cases(draw, max_n: int = 60):
    """Binary targets/predictions with a 2- or 3-valued group column."""
    n = draw(st.integers(8, max_n))
    k = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    g = draw(st.integers(2, 3))
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, k)) < rng.uniform(0.2, 0.8)).astype(float)
    probs = rng.random((n, k))
    groups = np.array(["a", "b", "c"])[rng.integers(0, g, n)]
    return targets, probs, groups, seed


@FAST
@given(cases(max_n=20), st.integers(2, 3))
def test_gaps_zero_when_groups_identical(case, n_groups: int) -> None:
    targets, probs, _, _ = case
    block = len(targets)
    names = np.repeat(np.array(["x", "y", "z"][:n_groups]), block)
    res = evaluate(np.tile(targets, (n_groups, 1)), np.tile(probs, (n_groups, 1)),
                   {"g": names})
    for m in GAP_METRICS:
        if f"g.{m}" in res.summary:
            assert res.summary[f"g.{m}"] == pytest.approx(0.0, abs=1e-12)
    assert res.summary["g.dp_maxdev_gap"] == pytest.approx(0.0, abs=1e-12)
    assert res.summary["g.macro_f1_gap"] == pytest.approx(0.0, abs=1e-12)
    assert res.summary["g.worst_group_f1"] == pytest.approx(res.summary["macro_f1"])
    assert res.summary["g.worst_group_acc"] == pytest.approx(res.summary["hamming_acc"])


@FAST
@given(cases())
def test_invariant_to_renaming_groups_and_permuting_rows(case) -> None:
    targets, probs, groups, seed = case
    base = evaluate(targets, probs, {"g": groups})
    renamed = pd.Series(groups).map({"a": "zz", "b": "007", "c": "mid"}).to_numpy()
    perm = np.random.default_rng(seed).permutation(len(targets))
    other = evaluate(targets[perm], probs[perm], {"g": renamed[perm]})
    assert other.summary.keys() == base.summary.keys()
    for key, val in base.summary.items():
        assert other.summary[key] == pytest.approx(val, abs=1e-12)


@FAST
@given(cases())
def test_summary_finite_and_bounded(case) -> None:
    targets, probs, groups, _ = case
    res = evaluate(targets, probs, {"g": groups})
    vals = np.array(list(res.summary.values()))
    assert np.isfinite(vals).all()
    assert (vals >= 0).all()
    rates = res.table[res.table.metric.isin(["tpr", "fpr", "ppr", "f1"])].value.dropna()
    assert rates.between(0, 1).all()
    # Two-group identity on arbitrary data: the per-class FairLib term is |m_a − m_b|.
    if len(set(groups)) == 2:
        t = res.table[res.table.attribute == "g"]
        for rate, gap in (("tpr", "tpr_gap"), ("fpr", "fpr_gap"), ("ppr", "dp_sumdev_gap")):
            for cls in sorted(set(t.cls) - {"all"}):
                per = t[(t.metric == rate) & (t.cls == cls)].value.to_numpy()
                term = t[(t.metric == gap) & (t.cls == cls)].value.iloc[0]
                if np.isfinite(term):
                    assert term == pytest.approx(abs(per[0] - per[1]), abs=1e-12)


def _reasons(res, **match) -> list[dict]:
    return [s for s in res.skipped if all(s[k] == v for k, v in match.items())]


def test_class_without_positives_in_a_group_leaves_tpr_and_f1_gaps() -> None:
    # class 1 has no positive in group B -> out of the TPR and F1 gaps, still in FPR and DP.
    targets = np.array([[1, 1], [0, 1], [1, 0], [0, 0], [1, 0], [0, 0]], float)
    probs = np.array([[1, 1], [1, 0], [0, 0], [0, 1], [1, 1], [0, 0]], float)
    groups = np.array(["A", "A", "A", "B", "B", "B"])
    res = evaluate(targets, probs, {"g": groups})
    # class 0 TPR: A 1/2 (TP1 FN1), B 1 (TP1)  -> gap over class 0 alone = 1/2
    assert res.summary["g.tpr_gap"] == pytest.approx(0.5)
    # class 0 F1: A 2/(2+1+1) = 1/2, B 2/(2+0+0) = 1 -> 1/2
    assert res.summary["g.f1_gap"] == pytest.approx(0.5)
    # FPR keeps both classes: class 0 A 1/1, B 0/2 -> 1; class 1 A 0/1, B 2/3 -> 2/3
    assert res.summary["g.fpr_gap"] == pytest.approx(np.sqrt((1 + (2 / 3) ** 2) / 2))
    for metric in ("tpr_gap", "f1_gap"):
        hit = _reasons(res, metric=metric, cls="1", group="B")
        assert len(hit) == 1 and hit[0]["count"] == 0
    assert not _reasons(res, metric="fpr_gap")
    per_class = res.table[(res.table.metric == "tpr_gap") & (res.table.cls == "1")].value
    assert per_class.isna().all()


def test_absent_and_small_groups_are_reported_not_nan() -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 3)) < 0.4).astype(float)
    probs = rng.random((40, 3))
    race = pd.Categorical(rng.choice(["White", "Black"], 40),
                          categories=["Asian", "Black", "White"])
    ref = evaluate(targets, probs, {"race": np.asarray(race)})
    res = evaluate(targets, probs, {"race": race})
    assert _reasons(res, group="Asian", reason="group absent from the data")
    for key, val in ref.summary.items():
        assert res.summary[key] == pytest.approx(val, abs=1e-12)
    # min_support drops a group with too few utterances, like dropping its rows
    small = np.where(np.arange(40) < 3, "Other", np.asarray(race).astype(object))
    res = evaluate(targets, probs, {"race": small}, min_support=4)
    hit = _reasons(res, group="Other")
    assert hit and hit[0]["count"] == 3
    keep = np.arange(40) >= 3
    sub = evaluate(targets[keep], probs[keep], {"race": small[keep]}, min_support=4)
    for key in ("race.tpr_gap", "race.dp_maxdev_gap", "race.worst_group_f1"):
        assert res.summary[key] == pytest.approx(sub.summary[key], abs=1e-12)


def test_single_group_and_missing_values() -> None:
    targets = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    probs = np.full((6, 3), 0.2) + 0.4 * np.eye(3)[[0, 1, 1, 0, 2, 2]]
    res = evaluate(targets, probs, {"gender": ["F", "F", None, np.nan, "F", pd.NA]})
    assert not [k for k in res.summary if k.startswith("gender.")]
    assert _reasons(res, attribute="gender", reason="attribute value missing")[0]["count"] == 3
    assert _reasons(res, attribute="gender", reason="fewer than 2 groups to compare: no gaps")
    assert np.isfinite(list(res.summary.values())).all()


def test_missing_rows_leave_only_their_attribute() -> None:
    rng = np.random.default_rng(3)
    targets, probs = rng.dirichlet(np.ones(4), 80), rng.dirichlet(np.ones(4), 80)
    gender = rng.choice(["F", "M"], 80).astype(object)
    gender[::7] = None
    res = evaluate(targets, probs, {"gender": gender})
    keep = np.array([g is not None for g in gender])
    sub = evaluate(targets[keep], probs[keep], {"gender": gender[keep]})
    full = evaluate(targets, probs)
    assert res.summary["macro_f1"] == pytest.approx(full.summary["macro_f1"])
    for key in sub.summary:
        if key.startswith("gender."):
            assert res.summary[key] == pytest.approx(sub.summary[key], abs=1e-12)


def test_threshold_applies_to_predictions() -> None:
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], float)
    probs = np.array([[0.7, 0.3], [0.6, 0.4], [0.45, 0.55], [0.2, 0.8]])
    assert evaluate(targets, probs).summary["hamming_acc"] == pytest.approx(4 / 8)
    # at 0.35: row 1 predicts both (class 1 right), row 2 predicts both (class 0 right)
    assert evaluate(targets, probs, threshold=0.35).summary["hamming_acc"] == pytest.approx(6 / 8)


@pytest.mark.parametrize(
    ("targets", "probs", "kwargs", "message"),
    [
        (np.ones((3, 2)) / 2, np.ones((3, 3)) / 3, {}, "shape"),
        (np.ones(3), np.ones(3), {}, r"\[N, K>=2\]"),
        (np.array([[0.5, 0.5], [np.nan, 1]]), np.ones((2, 2)) / 2, {}, r"rows \[1\]"),
        (np.array([[0.5, 0.5], [1.5, -0.5]]), np.ones((2, 2)) / 2, {}, "outside"),
        (np.ones((2, 2)) / 2, np.ones((2, 2)) / 2, {"attributes": {"g": ["F"]}}, "1 values"),
        (np.ones((2, 2)) / 2, np.ones((2, 2)) / 2, {"classes": ["a"]}, "distinct"),
        (np.ones((2, 2)) / 2, np.ones((2, 2)) / 2,
         {"attributes": {"g": ["F", "M"]}, "intersections": [("g", "age")]}, "unknown"),
        (np.ones((2, 2)) / 2, np.ones((2, 2)) / 2, {"speakers": ["s1", None], "n_boot": 5},
         r"rows \[1\]"),
    ],
)
def test_bad_input_raises_clear_error(targets, probs, kwargs, message) -> None:
    with pytest.raises(MetricsInputError, match=message):
        evaluate(targets, probs, **kwargs)
