"""The fairlearn-shaped MetricFrame equals fairlearn's MetricFrame class by class."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame as FairlearnFrame
from fairlearn.metrics import equalized_odds_difference, false_positive_rate, selection_rate
from sklearn.metrics import accuracy_score, f1_score, recall_score

from emodebias.metrics import MetricFrame, MetricsInputError

FAIRLEARN = {"tpr": recall_score, "fpr": false_positive_rate, "ppr": selection_rate,
             "f1": f1_score, "acc": accuracy_score}


def _data(n: int = 500, k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.4).astype(float)
    p = rng.random((n, k))
    feats = pd.DataFrame({"gender": rng.choice(["F", "M"], n),
                          "age": rng.choice(["old", "mid", "young"], n)})
    return y, p, feats


@pytest.mark.parametrize("features", [["gender"], ["age"], ["gender", "age"]])
def test_equals_fairlearn_per_class(features: list[str]) -> None:
    y, p, feats = _data()
    classes = ["angry", "happy", "sad", "neutral"]
    sf = feats[features[0]] if len(features) == 1 else feats[features]
    mf = MetricFrame(y_true=pd.DataFrame(y, columns=[f"label_{c}" for c in classes]),
                     y_pred=pd.DataFrame(p, columns=[f"prob_{c}" for c in classes]),
                     sensitive_features=sf)
    assert mf.classes == classes
    for j, c in enumerate(classes):
        ref = FairlearnFrame(metrics=FAIRLEARN, y_true=y[:, j] > 1 / 4, y_pred=p[:, j] > 1 / 4,
                             sensitive_features=sf)
        ours = mf.by_group.xs(c, axis=1, level="cls")
        assert ours.index.equals(ref.by_group.index)
        np.testing.assert_allclose(ours.to_numpy(float), ref.by_group[ours.columns].to_numpy(float),
                                   atol=1e-12)
        for name, got, want in [
            ("overall", mf.overall, ref.overall),
            ("group_min", mf.group_min(), ref.group_min()),
            ("group_max", mf.group_max(), ref.group_max()),
            *[(f"difference {m}", mf.difference(method=m), ref.difference(method=m))
              for m in ("between_groups", "to_overall")],
            *[(f"ratio {m}", mf.ratio(method=m), ref.ratio(method=m))
              for m in ("between_groups", "to_overall")]]:
            np.testing.assert_allclose(got.xs(c, level="cls")[list(FAIRLEARN)].to_numpy(float),
                                       want[list(FAIRLEARN)].to_numpy(float), atol=1e-12,
                                       err_msg=f"{name} {c}")


def test_equalized_odds_and_dp_summaries_match_fairlearn() -> None:
    y, p, feats = _data(seed=1)
    mf = MetricFrame(y_true=y, y_pred=p, sensitive_features=feats["age"])
    per_class = mf.equalized_odds_difference(agg=None)
    ref = [equalized_odds_difference(y[:, j] > 0.25, p[:, j] > 0.25,
                                     sensitive_features=feats["age"]) for j in range(4)]
    np.testing.assert_allclose(per_class.to_numpy(float), ref, atol=1e-12)
    assert mf.equalized_odds_difference() == pytest.approx(np.sqrt(np.mean(np.square(ref))))
    assert mf.equalized_odds_difference(agg="max") == pytest.approx(max(ref))
    dp = mf.demographic_parity_difference(agg=None)
    np.testing.assert_allclose(dp.to_numpy(float),
                               mf.difference()["ppr"].to_numpy(float), atol=0)


def test_intervals_when_bootstrapped() -> None:
    y, p, feats = _data(n=800, seed=2)
    speakers = np.arange(800) % 40
    gender = np.where(speakers % 2 == 0, "F", "M")
    mf = MetricFrame(y_true=y, y_pred=p, sensitive_features=pd.Series(gender, name="gender"),
                     speakers=speakers, n_boot=300, seed=0)
    lo, hi = mf.by_group_ci()
    assert ((lo.to_numpy() <= mf.by_group.to_numpy()) &
            (mf.by_group.to_numpy() <= hi.to_numpy())).all()
    d = mf.difference(ci=True)
    assert list(d.columns) == ["value", "value_bc", "ci_low", "ci_high"]
    assert (d.value_bc <= d.value.abs() + 1e-12).all() and (d.ci_low >= 0).all()
    with pytest.raises(MetricsInputError, match="n_boot"):
        MetricFrame(y_true=y, y_pred=p, sensitive_features=gender).difference(ci=True)
    with pytest.raises(TypeError):
        MetricFrame(y, p, gender)  # options are keyword-only
    with pytest.raises(MetricsInputError, match="method"):
        mf.difference(method="max")


def test_evaluate_by_group_matches_the_frame_for_every_attribute() -> None:
    from emodebias.metrics import evaluate

    y, p, feats = _data(seed=3)
    res = evaluate(y, p, feats, classes=["a", "b", "c", "d"])
    table = res.by_group()
    for attr in ("gender", "age"):
        mf = MetricFrame(y_true=y, y_pred=p, sensitive_features=feats[attr],
                         metrics=("tpr", "fpr", "ppr", "f1"), classes=["a", "b", "c", "d"])
        got = table.loc[attr][mf.by_group.columns]
        np.testing.assert_allclose(got.loc[[str(g) for g in mf.by_group.index]].to_numpy(float),
                                   mf.by_group.to_numpy(float), atol=1e-12)
    assert table.loc[("all", "all")].notna().all()
