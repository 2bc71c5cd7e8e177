"""Golden aggregation: hand-written run records -> the exact paper-style tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emodebias.bench.grid import RunSpec
from emodebias.bench.results import summary_wide, tidy_frame
from emodebias.report.tables import (
    fmt_pct,
    paper_table,
    ratio_table,
    table1,
    table2,
)


def record(method: str, groups: str, fold: int, ratio: float | None = 20.0,
           direction: str = "natural", **summary: float) -> dict:
    spec = RunSpec(corpus="c", encoder="e", fold=str(fold), ratio=ratio, direction=direction,
                   groups=groups, method=method)
    return {"hash": spec.hash, "name": spec.name, "spec": spec.to_dict(), "best_epoch": 3,
            "wall_time": 1.0, "metrics": {"summary": summary, "table": []}}


def t1(method, groups, f1, tpr):
    """Two folds; F1 and TPR gap per fold."""
    return [record(method, groups, fold + 1, macro_f1=f1[fold], hamming_acc=0.8,
                   **{"gender.tpr_gap": tpr[fold], "gender.dp_maxdev_gap": 0.1}) for fold in (0, 1)]


def wide_of(records):
    return summary_wide(tidy_frame(records))


def test_table1_golden_means_stds_overall_and_gains() -> None:
    records = (t1("erm", "none", (.60, .70), (.30, .26)) + t1("random", "none", (.36, .36),
                                                             (.06, .06))
               + t1("rw", "truth:gender", (.62, .64), (.10, .14))
               + t1("gdro", "truth:gender", (.58, .60), (.20, .16))
               + t1("rw", "cluster:x:k=16", (.64, .64), (.25, .23))
               + t1("lff", "none", (.66, .66), (.27, .29)))
    tab = table1(wide_of(records))
    rows = tab.rows.set_index("label")
    assert list(rows.index) == ["ERM", "Random", "LfF", "RW", "RW-IDI", "GDRO"]
    assert list(rows["bucket"]) == ["–", "–", "○", "●", "○", "●"]
    assert rows.loc["ERM", "macro_f1"] == pytest.approx(0.65)
    assert rows.loc["ERM", "macro_f1_std"] == pytest.approx(math.sqrt(2 * 0.05**2))
    assert rows.loc["GDRO", "gender.tpr_gap"] == pytest.approx(0.18)
    assert (rows["n"] == 2).all()
    overall = tab.overall.set_index("bucket")
    assert list(overall.index) == ["●", "○"]
    # ● = mean(RW, GDRO) = F1 .61, TPR .15;  ○ = mean(RW-IDI, LfF) = F1 .65, TPR .26
    assert overall.loc["●", "macro_f1"] == pytest.approx(0.61)
    assert overall.loc["○", "gender.tpr_gap"] == pytest.approx(0.26)
    gain = tab.gain.set_index("bucket")
    assert gain.loc["●", "macro_f1"] == pytest.approx((0.61 - 0.65) / 0.65)      # -6.15 %
    assert gain.loc["●", "gender.tpr_gap"] == pytest.approx((0.28 - 0.15) / 0.28)  # +46.43 %
    assert gain.loc["○", "macro_f1"] == pytest.approx(0.0, abs=1e-12)
    assert gain.loc["○", "gender.tpr_gap"] == pytest.approx((0.28 - 0.26) / 0.28)  # +7.14 %
    md = tab.to_markdown()
    assert "| ERM | – | 0.650 ± 0.071 | 0.800 ± 0.000 | 0.280 ± 0.028 | 0.100 ± 0.000 |" in md
    assert "| Gain | ● | -6.15% | +0.00% | +46.43% | +0.00% |" in md
    assert "| Overall | ○ | 0.650 | 0.800 | 0.260 | 0.100 |" in md


IDI_T2 = {  # published IDI Table 2 rows: F1, ACC, race TPR, race DP, age TPR, age DP
    ("erm", "none"): (.651, .824, .183, .111, .153, .090),
    ("ds", 16): (.561, .755, .142, .119, .134, .095),
    ("rw", 16): (.642, .817, .147, .100, .140, .079),
    ("gadro", 16): (.639, .803, .159, .118, .138, .095),
    ("gdro", 16): (.638, .804, .162, .113, .122, .089),
}


def test_table2_reproduces_the_published_idi_gains() -> None:
    names = ["macro_f1", "hamming_acc", "race.tpr_gap", "race.dp_maxdev_gap", "age_group.tpr_gap",
             "age_group.dp_maxdev_gap"]
    records = []
    for (method, k), values in IDI_T2.items():
        groups = "none" if k == "none" else f"cluster:ecapa:k={k}"
        records.append(record(method, groups, 1, **dict(zip(names, values, strict=True))))
    tab = table2(wide_of(records))
    gain = tab.gain.set_index("bucket").loc["k=16"]
    published = ["-4.76%", "-3.55%", "+16.67%", "-1.35%", "+12.75%", "+0.56%"]
    assert [fmt_pct(gain[m]) for m in names] == published
    assert list(tab.rows["label"]) == ["ERM", "DS-IDI", "RW-IDI", "GDRO-IDI", "GADRO-IDI"]


def test_table2_is_none_without_cluster_rows() -> None:
    assert table2(wide_of(t1("erm", "none", (.6, .7), (.3, .2)))) is None


def test_no_erm_means_no_gain_rows_and_bad_bucket_raises() -> None:
    wide = wide_of(t1("rw", "truth:gender", (.6, .7), (.3, .2)))
    tab = table1(wide)
    assert tab.gain.empty and len(tab.overall) == 1
    with pytest.raises(ValueError, match="bucket"):
        paper_table(wide, ["macro_f1"], bucket="nope")


def test_ratio_table() -> None:
    recs = []
    for ratio, f1s in ((5.0, (.70, .72)), (40.0, (.60, .64)), (None, (.8, .8))):
        for fold in (1, 2):
            recs.append(record("erm", "none", fold, ratio=ratio, macro_f1=f1s[fold - 1]))
    tab = ratio_table(wide_of(recs), "macro_f1")
    assert list(tab.columns) == ["1:5", "1:40", "full"]
    assert tab.loc[("ERM", "–"), "1:40"] == f"0.620 ± {np.std([.60, .64], ddof=1):.3f}"
    assert tab.loc[("ERM", "–"), "full"] == "0.800 ± 0.000"
