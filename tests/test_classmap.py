"""Class maps: hand-worked projections of probabilities and smoothed labels, and the errors."""

from __future__ import annotations

import numpy as np
import pytest

from emodebias.data.classmap import ClassMap, ClassMapError
from emodebias.data.labels import soft_from_votes


def test_parse_forms_agree(tmp_path):
    spec = {"ang": "angry", "hap": "happy", "exc": "happy", "neu": "neutral"}
    (tmp_path / "m.json").write_text('{"ang": "angry", "hap": "happy", "exc": "happy", '
                                     '"neu": "neutral"}')
    (tmp_path / "m.yaml").write_text("ang: angry\nhap: happy\nexc: happy\nneu: neutral\n")
    maps = [ClassMap.parse(spec), ClassMap.parse("ang=angry, hap=happy,exc=happy,neu=neutral"),
            ClassMap.parse(tmp_path / "m.json"), ClassMap.parse(str(tmp_path / "m.yaml"))]
    for m in maps:
        assert dict(m.mapping) == spec
        assert m.targets == ("angry", "happy", "neutral")


def test_project_probs_sums_and_renormalises():
    m = ClassMap.parse("a=x,b=y,c=y", targets=["x", "y", "z"])
    probs = np.array([[0.2, 0.3, 0.1, 0.4],   # d is unmapped: 0.4 dropped, 0.6 kept
                      [0.0, 0.0, 0.0, 1.0]])  # all mass unmapped: not scorable
    out, ok = m.project_probs(probs, ["a", "b", "c", "d"])
    np.testing.assert_allclose(out[0], [0.2 / 0.6, 0.4 / 0.6, 0.0], rtol=1e-6)
    assert ok.tolist() == [True, False] and np.isnan(out[1]).all()
    assert m.check(["a", "b", "c", "d"]) == ["d"]
    assert m.missing_targets(["a", "b", "c", "d"]) == ["z"]


def test_project_soft_resmooths_vote_shares():
    votes = np.array([[3, 1, 0, 0], [0, 0, 0, 2], [1, 1, 1, 1]])
    soft = soft_from_votes(votes)
    m = ClassMap.parse("a=x,b=y,c=y")  # d unmapped
    out, ok = m.project_soft(soft, ["a", "b", "c", "d"])
    expected = soft_from_votes(np.array([[3, 1], [1, 2]]))
    np.testing.assert_allclose(out[ok], expected, atol=1e-6)
    assert ok.tolist() == [True, False, True]


def test_errors_name_both_sides():
    m = ClassMap.parse("ang=angry,sad=sad")
    with pytest.raises(ClassMapError, match=r"lack.*\['ang', 'hap'\]"):
        m.check(["ang", "hap"])  # 'sad' is not a source class
    with pytest.raises(ClassMapError, match=r"\['hap'\] are not mapped"):
        ClassMap.parse("ang=angry").check(["ang", "hap"], require_all=True)
    with pytest.raises(ClassMapError, match="mapped twice"):
        ClassMap.parse("a=x,a=y")
    with pytest.raises(ClassMapError, match="not source=target"):
        ClassMap.parse(["a=x", "b"])
    with pytest.raises(ClassMapError, match="not among"):
        ClassMap.parse("a=x", targets=["y", "z"])
    with pytest.raises(ClassMapError, match="no such class map file"):
        ClassMap.parse("missing.yaml")
