"""Metrics against independent references: sklearn, fairlearn and hand-worked examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import f1_score, hamming_loss, multilabel_confusion_matrix

from emodebias.metrics import evaluate

TOL = 1e-12


def _random_case(seed: int, n: int = 400, k: int = 5, groups: tuple = ("F", "M")):
    rng = np.random.default_rng(seed)
    targets = rng.dirichlet(np.full(k, 0.7), n)
    probs = rng.dirichlet(np.ones(k), n)
    group = rng.choice(groups, n)
    return targets, probs, group


def _value(res, metric, attribute="all", group="all", cls="all") -> float:
    t = res.table
    row = t[(t.metric == metric) & (t.attribute == attribute) & (t.group == group)
            & (t.cls == cls)]
    assert len(row) == 1, (metric, attribute, group, cls)
    return float(row.value.iloc[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overall_matches_sklearn(seed: int) -> None:
    targets, probs, _ = _random_case(seed)
    k = targets.shape[1]
    y, p = targets > 1 / k, probs > 1 / k
    res = evaluate(targets, probs)
    assert res.summary["macro_f1"] == pytest.approx(
        f1_score(y, p, average="macro", zero_division=0), abs=TOL)
    assert res.summary["hamming_acc"] == pytest.approx(1 - hamming_loss(y, p), abs=TOL)
    mcm = multilabel_confusion_matrix(y, p)  # [K, 2, 2]: [[tn, fp], [fn, tp]]
    per_class_f1 = f1_score(y, p, average=None, zero_division=0)
    for c in range(k):
        (tn, fp), (fn, tp) = mcm[c]
        assert _value(res, "tpr", cls=str(c)) == pytest.approx(tp / (tp + fn), abs=TOL)
        assert _value(res, "fpr", cls=str(c)) == pytest.approx(fp / (fp + tn), abs=TOL)
        assert _value(res, "ppr", cls=str(c)) == pytest.approx((tp + fp) / len(y), abs=TOL)
        assert _value(res, "f1", cls=str(c)) == pytest.approx(per_class_f1[c], abs=TOL)


def test_zero_division_matches_sklearn() -> None:
    # Class 2 never true nor predicted: sklearn's zero_division=0 counts it as F1 = 0.
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0]], float)
    probs = np.array([[0.8, 0.1, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    res = evaluate(targets, probs)
    y, p = targets > 1 / 3, probs > 1 / 3
    assert res.summary["macro_f1"] == pytest.approx(
        f1_score(y, p, average="macro", zero_division=0), abs=TOL)


@pytest.mark.parametrize("groups", [("F", "M"), ("Young", "Middle", "Elderly")])
def test_per_group_matches_fairlearn_and_sklearn(groups: tuple) -> None:
    targets, probs, group = _random_case(7, groups=groups)
    k = targets.shape[1]
    y, p = targets > 1 / k, probs > 1 / k
    res = evaluate(targets, probs, {"g": group})
    for c in range(k):
        mf = MetricFrame(metrics={"tpr": true_positive_rate, "fpr": false_positive_rate,
                                  "ppr": selection_rate},
                         y_true=y[:, c].astype(int), y_pred=p[:, c].astype(int),
                         sensitive_features=group)
        for g in groups:
            for metric in ("tpr", "fpr", "ppr"):
                assert _value(res, metric, "g", g, str(c)) == pytest.approx(
                    mf.by_group.loc[g, metric], abs=TOL)
    for g in groups:
        m = group == g
        assert _value(res, "macro_f1", "g", g) == pytest.approx(
            f1_score(y[m], p[m], average="macro", zero_division=0), abs=TOL)
        assert _value(res, "hamming_acc", "g", g) == pytest.approx(
            1 - hamming_loss(y[m], p[m]), abs=TOL)
        per_class = f1_score(y[m], p[m], average=None, zero_division=0)
        for c in range(k):
            assert _value(res, "f1", "g", g, str(c)) == pytest.approx(per_class[c], abs=TOL)


@pytest.mark.parametrize("seed", [3, 4])
def test_two_group_gaps_equal_rms_of_differences(seed: int) -> None:
    """FairLib Σ_g |m_g − m| equals |m_1 − m_2| for two groups (m lies between them)."""
    targets, probs, group = _random_case(seed)
    k = targets.shape[1]
    y, p = targets > 1 / k, probs > 1 / k
    res = evaluate(targets, probs, {"gender": group})
    share = max(np.mean(group == "F"), np.mean(group == "M"))
    for metric, fn in (("tpr_gap", true_positive_rate), ("fpr_gap", false_positive_rate),
                       ("dp_sumdev_gap", selection_rate),
                       ("f1_gap", lambda a, b: f1_score(a, b, zero_division=0))):
        diffs = [MetricFrame(metrics=fn, y_true=y[:, c].astype(int), y_pred=p[:, c].astype(int),
                             sensitive_features=group).difference() for c in range(k)]
        assert res.summary[f"gender.{metric}"] == pytest.approx(
            np.sqrt(np.mean(np.square(diffs))), abs=TOL)
    # Recommended DP: max_g |PPR_g − PPR| = max(π_F, π_M)·|PPR_F − PPR_M|.
    sel = [MetricFrame(metrics=selection_rate, y_true=y[:, c].astype(int),
                       y_pred=p[:, c].astype(int), sensitive_features=group).difference()
           for c in range(k)]
    assert res.summary["gender.dp_maxdev_gap"] == pytest.approx(
        share * np.sqrt(np.mean(np.square(sel))), abs=TOL)


# Hand-worked example, 2 groups × 2 classes; probs are 0/1 so ŷ = probs > 1/2.
#        class 0 (y / ŷ)        class 1 (y / ŷ)
# A: [1,1,0,0]/[1,0,1,0]   [1,0,0,0]/[1,0,0,0]
# B: [1,1,1,0]/[1,1,1,1]   [1,1,0,0]/[0,1,0,0]
TWO_Y = np.array([[1, 1], [1, 0], [0, 0], [0, 0], [1, 1], [1, 1], [1, 0], [0, 0]], float)
TWO_P = np.array([[1, 1], [0, 0], [1, 0], [0, 0], [1, 0], [1, 1], [1, 0], [1, 0]], float)
TWO_G = np.array(["A"] * 4 + ["B"] * 4)


def test_hand_worked_two_groups() -> None:
    res = evaluate(TWO_Y, TWO_P, {"g": TWO_G})
    s = res.summary
    # class 0: A TP1 FN1 FP1 TN1 -> TPR 1/2, FPR 1/2, PPR 1/2, F1 1/2
    #          B TP3 FN0 FP1 TN0 -> TPR 1,   FPR 1,   PPR 1,   F1 6/7
    # class 1: A TP1 TN3         -> TPR 1,   FPR 0,   PPR 1/4, F1 1
    #          B TP1 FN1 TN2     -> TPR 1/2, FPR 0,   PPR 1/4, F1 2/3
    assert s["g.tpr_gap"] == pytest.approx(np.sqrt(((1 / 2) ** 2 + (1 / 2) ** 2) / 2))  # 1/2
    assert s["g.fpr_gap"] == pytest.approx(np.sqrt((1 / 2) ** 2 / 2))
    assert s["g.f1_gap"] == pytest.approx(np.sqrt(((6 / 7 - 1 / 2) ** 2 + (1 / 3) ** 2) / 2))
    assert s["g.dp_sumdev_gap"] == pytest.approx(np.sqrt((1 / 2) ** 2 / 2))
    # overall PPR class 0 = 6/8 -> d_A = d_B = 1/4; class 1: 2/8, d = 0
    assert s["g.dp_maxdev_gap"] == pytest.approx(np.sqrt((1 / 4) ** 2 / 2))
    # group macro-F1: A (1/2 + 1)/2 = 3/4, B (6/7 + 2/3)/2 = 16/21; accuracy 6/8 both
    assert s["g.worst_group_f1"] == pytest.approx(3 / 4)
    assert s["g.macro_f1_gap"] == pytest.approx(16 / 21 - 3 / 4)
    assert s["g.worst_group_acc"] == pytest.approx(3 / 4)
    # overall: class 0 TP4 FP2 FN1 -> 8/11; class 1 TP2 FN1 -> 4/5; errors 4 of 16
    assert s["macro_f1"] == pytest.approx((8 / 11 + 4 / 5) / 2)
    assert s["hamming_acc"] == pytest.approx(12 / 16)
    assert res.skipped == []


# Hand-worked example, 3 groups of unequal size (2, 2, 4) × 2 classes.
#        class 0 (y / ŷ)          class 1 (y / ŷ)
# A: [1,0]/[1,1]               [1,0]/[1,0]
# B: [1,0]/[0,0]               [1,0]/[1,1]
# C: [1,1,0,0]/[1,0,1,0]       [1,0,0,0]/[0,0,0,0]
THREE_Y = np.array([[1, 1], [0, 0], [1, 1], [0, 0], [1, 1], [1, 0], [0, 0], [0, 0]], float)
THREE_P = np.array([[1, 1], [1, 0], [0, 1], [0, 1], [1, 0], [0, 0], [1, 0], [0, 0]], float)
THREE_G = np.array(["A", "A", "B", "B", "C", "C", "C", "C"])


def test_hand_worked_three_groups() -> None:
    s = evaluate(THREE_Y, THREE_P, {"g": THREE_G}).summary
    # class 0: TPR A 1, B 0, C 1/2, all 1/2 -> Σ|.| = 1/2 + 1/2 + 0 = 1
    #          FPR A 1, B 0, C 1/2, all 1/2 -> 1
    #          F1  A 2/3, B 0, C 1/2, all 4/8 = 1/2 -> 1/6 + 1/2 = 2/3
    #          PPR A 1, B 0, C 1/2, all 1/2 -> d = 1/2, 1/2, 0: max 1/2, sum 1
    # class 1: TPR A 1, B 1, C 0, all 2/3 -> 1/3 + 1/3 + 2/3 = 4/3
    #          FPR A 0, B 1, C 0, all 1/5 -> 1/5 + 4/5 + 1/5 = 6/5
    #          F1  A 1, B 2/3, C 0, all 4/6 -> 1/3 + 0 + 2/3 = 1
    #          PPR A 1/2, B 1, C 0, all 3/8 -> d = 1/8, 5/8, 3/8: max 5/8, sum 9/8
    assert s["g.tpr_gap"] == pytest.approx(np.sqrt((1 + (4 / 3) ** 2) / 2))
    assert s["g.fpr_gap"] == pytest.approx(np.sqrt((1 + (6 / 5) ** 2) / 2))
    assert s["g.f1_gap"] == pytest.approx(np.sqrt(((2 / 3) ** 2 + 1) / 2))
    assert s["g.dp_maxdev_gap"] == pytest.approx(np.sqrt(((1 / 2) ** 2 + (5 / 8) ** 2) / 2))
    assert s["g.dp_sumdev_gap"] == pytest.approx(np.sqrt((1 + (9 / 8) ** 2) / 2))
    # group macro-F1: A (2/3+1)/2 = 5/6, B (0+2/3)/2 = 1/3, C (1/2+0)/2 = 1/4
    assert s["g.worst_group_f1"] == pytest.approx(1 / 4)
    assert s["g.macro_f1_gap"] == pytest.approx(5 / 6 - 1 / 4)
    # accuracy: A 3/4, B 2/4, C 5/8
    assert s["g.worst_group_acc"] == pytest.approx(1 / 2)


def test_table_layout_and_supports() -> None:
    res = evaluate(THREE_Y, THREE_P, {"g": THREE_G}, classes=["angry", "sad"])
    t = res.table
    assert list(t.columns) == ["metric", "attribute", "group", "cls", "value", "support"]
    tpr_c = t[(t.metric == "tpr") & (t.group == "C") & (t.cls == "angry")].iloc[0]
    fpr_c = t[(t.metric == "fpr") & (t.group == "C") & (t.cls == "sad")].iloc[0]
    assert (tpr_c.value, tpr_c.support) == (0.5, 2)
    assert (fpr_c.value, fpr_c.support) == (0.0, 3)
    per_class = t[(t.metric == "tpr_gap") & (t.attribute == "g")].set_index("cls").value
    assert per_class["angry"] == pytest.approx(1.0)
    assert per_class["sad"] == pytest.approx(4 / 3)
    # every summary number is also a table row
    gaps = t[(t.attribute == "g") & (t.cls == "all") & (t.group == "all")]
    for _, row in gaps.iterrows():
        assert res.summary[f"g.{row.metric}"] == pytest.approx(row.value)


def test_dataframe_attributes_and_intersection_match_manual_cross() -> None:
    targets, probs, gender = _random_case(11, n=600)
    rng = np.random.default_rng(5)
    age = rng.choice(["Young", "Middle", "Elderly"], len(gender)).astype(object)
    age[:20] = None
    df = pd.DataFrame({"gender": gender, "age_group": age})
    res = evaluate(targets, probs, df, intersections=[("gender", "age_group")])
    manual = np.array([None if a is None else f"{g}×{a}" for g, a in zip(gender, age,
                                                                           strict=True)])
    ref = evaluate(targets, probs, {"gender×age_group": manual})
    for key, val in ref.summary.items():
        assert res.summary[key] == pytest.approx(val, abs=TOL)
    assert {"gender.tpr_gap", "age_group.dp_maxdev_gap"} <= set(res.summary)
    miss = [s for s in res.skipped if s["reason"] == "attribute value missing"]
    assert sorted((s["attribute"], s["count"]) for s in miss) == [
        ("age_group", 20), ("gender×age_group", 20)]
