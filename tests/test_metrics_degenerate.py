"""Degenerate designs end as flags with reasons and counts, never as misleading intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emodebias.metrics import MetricsInputError, evaluate, evaluate_predictions


def _data(n: int = 400, speakers: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    spk = np.arange(n) % speakers
    return rng.dirichlet(np.ones(6), n), rng.dirichlet(np.ones(6), n), spk


def test_empty_group_is_reported_and_a_lone_group_has_no_gaps() -> None:
    targets, probs, spk = _data()
    gender = pd.Categorical(np.where(spk % 2 == 0, "F", "M"), categories=["F", "M", "X"])
    res = evaluate(targets, probs, {"gender": gender}, speakers=spk, n_boot=50)
    absent = [s for s in res.skipped if s["reason"] == "group absent from the data"]
    assert [(s["group"], s["count"]) for s in absent] == [("X", 0)]
    assert (res.gaps.status == "ok").all()  # F and M are still compared
    only = pd.Categorical(["F"] * len(spk), categories=["F", "M"])
    res = evaluate(targets, probs, {"gender": only}, speakers=spk, n_boot=50)
    assert (res.gaps.status == "not estimable").all()
    assert (res.gaps.reason == "fewer than 2 groups to compare").all()
    assert not any(k.startswith("gender.") for k in res.summary)


def test_one_speaker_per_group() -> None:
    targets, probs, _ = _data(n=100)
    spk = np.repeat([0, 1], 50)
    res = evaluate(targets, probs, {"g": np.where(spk == 0, "a", "b")}, speakers=spk,
                   n_boot=100)
    assert (res.gaps.status == "not estimable").all()
    assert res.gaps.reason.str.contains("'a' has 1, 'b' has 1").all()
    hit = [s for s in res.skipped if s["reason"].startswith("intervals not estimable")]
    assert hit and hit[0]["count"] == 1
    assert "g.tpr_gap_bc.ci_low" not in res.summary


def test_too_many_unusable_resamples() -> None:
    # class 0 has positives in only 2 of group b's 10 speakers: many resamples lose them
    rng = np.random.default_rng(3)
    spk = np.repeat(np.arange(20), 20)
    group = np.where(spk < 10, "a", "b")
    targets = rng.dirichlet(np.ones(3), len(spk))
    targets[:, 0] = 0.0
    targets[(spk < 10) | (spk >= 18), 0] = 0.9
    targets = targets / targets.sum(1, keepdims=True)
    probs = rng.dirichlet(np.ones(3), len(spk))
    res = evaluate(targets, probs, {"g": group}, speakers=spk, n_boot=400, max_unusable=0.02)
    row = res.gaps[res.gaps.metric == "tpr_gap"].iloc[0]
    assert row.status == "not estimable" and row.n_unusable > 8
    assert row.reason == f"{row.n_unusable} of 400 resamples unusable (> max_unusable=0.02)"
    assert np.isnan(row.ci_low) and "g.tpr_gap_bc.ci_low" not in res.summary


def test_numeric_and_absent_attributes_are_errors() -> None:
    targets, probs, spk = _data()
    with pytest.raises(MetricsInputError, match=r"'age' is numeric with 20 distinct values"):
        evaluate(targets, probs, {"age": 20 + spk})
    few = evaluate(targets, probs, {"level": spk % 3})  # a coded attribute with 3 values is fine
    assert set(few.gaps.attribute) == {"level"}
    df = pd.DataFrame({"speaker": spk, "gender": np.where(spk % 2, "F", "M")})
    for j in range(6):
        df[f"prob_{j}"], df[f"label_{j}"] = probs[:, j], targets[:, j]
    with pytest.raises(MetricsInputError, match=r"\['race'\] not found"):
        evaluate_predictions({"probs": probs, "targets": targets, "gender": df.gender},
                             attributes=["race"], speaker=None)


def test_zero_width_intervals_are_flagged() -> None:
    # perfect predictions: every resample has macro-F1 1 and TPR/FPR/F1 gaps 0
    targets, _, spk = _data(n=200)
    res = evaluate(targets, targets, {"g": np.where(spk % 2, "a", "b")}, speakers=spk,
                   n_boot=100)
    assert res.summary["macro_f1"] == 1.0 and "macro_f1.ci_low" not in res.summary
    assert any(s["metric"] == "macro_f1" and "same value" in s["reason"] for s in res.skipped)
    rows = res.gaps[res.gaps.metric.isin(["tpr_gap", "fpr_gap", "f1_gap"])]
    assert (rows.status == "not estimable").all() and (rows.value == 0).all()
    assert rows.reason.str.startswith("all 100 usable resamples gave the same value").all()
