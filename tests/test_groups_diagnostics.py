"""Diagnostics against hand-made assignments with hand-worked or independent answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from emodebias.data.manifest import Manifest
from emodebias.groups import GroupAssignment
from emodebias.groups.diagnostics import (
    composition,
    diagnose,
    group_sizes,
    hungarian_accuracy,
    score,
    size_warnings,
)

CLASSES = ["angry", "sad"]


def _manifest(gender, age_group=None, soft=None, split=None) -> Manifest:
    n = len(gender)
    df = pd.DataFrame({"utt_id": [f"u{i:03d}" for i in range(n)], "path": "x.wav",
                       "speaker": [f"s{i % 7}" for i in range(n)], "gender": gender})
    if age_group is not None:
        df["age_group"] = age_group
    if soft is not None:
        df["soft_angry"], df["soft_sad"] = soft[:, 0], soft[:, 1]
    if split is not None:
        df["split_1"] = split
    return Manifest(df, CLASSES)


def _assign(m: Manifest, ids, names=None) -> GroupAssignment:
    ids = np.asarray(ids)
    names = names or [f"c{i}" for i in range(ids.max() + 1)]
    return GroupAssignment(m.utt_ids, ids, names, f"cluster:test:k={len(names)}")


def test_perfect_and_permuted_clusterings_score_one():
    gender = np.array(["F", "M"] * 20, dtype=object)
    age = np.array(["Young", "Middle", "Elderly", "Young"] * 10, dtype=object)
    m = _manifest(gender, age)
    perfect = _assign(m, (gender == "M").astype(int))
    table = diagnose(perfect, m, ("gender",)).iloc[0]
    for col in ("purity", "hungarian_acc", "nmi", "ari"):
        assert table[col] == pytest.approx(1.0)
    # a relabelled (permuted) 3-group clustering of age: still perfect after Hungarian matching
    codes = pd.Series(age).map({"Young": 2, "Middle": 0, "Elderly": 1}).to_numpy()
    row = diagnose(_assign(m, codes), m, ("age_group",)).iloc[0]
    assert row["n_values"] == 3 and row["n_scored"] == 40
    for col in ("purity", "hungarian_acc", "nmi", "ari"):
        assert row[col] == pytest.approx(1.0)


def test_random_groups_have_near_zero_nmi_and_ari():
    rng = np.random.default_rng(0)
    gender = rng.choice(["F", "M"], 4000).astype(object)
    m = _manifest(gender)
    row = diagnose(_assign(m, rng.integers(0, 2, 4000)), m, ("gender",)).iloc[0]
    assert row["nmi"] < 0.005 and abs(row["ari"]) < 0.005
    assert 0.45 < row["hungarian_acc"] < 0.55


def test_hand_worked_example():
    # group 0: F F M ; group 1: M M F ; group 2: F F
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    values = np.array(list("FFMMMFFF"), dtype=object)
    s = score(groups, values)
    assert s["purity"] == pytest.approx(6 / 8)  # majority value per group
    assert s["hungarian_acc"] == pytest.approx(4 / 8)  # one-to-one: {0 or 2 -> F, 1 -> M}
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(values, groups))
    assert s["ari"] == pytest.approx(adjusted_rand_score(values, groups))
    # NMI by hand: H(V)=H(5/8,3/8); I = H(V) - H(V|G); arithmetic normalisation
    def h(p):
        p = np.asarray(p, float)
        p = p[p > 0]
        return -(p * np.log(p)).sum()
    hv, hg = h([5 / 8, 3 / 8]), h([3 / 8, 3 / 8, 2 / 8])
    hv_g = 3 / 8 * h([2 / 3, 1 / 3]) * 2 + 2 / 8 * 0.0
    assert s["nmi"] == pytest.approx((hv - hv_g) / ((hv + hg) / 2))


def test_hungarian_rectangular_table():
    assert hungarian_accuracy(np.array([[5, 0], [0, 3], [2, 0]])) == pytest.approx(8 / 10)
    assert hungarian_accuracy(np.array([[0, 4, 1]])) == pytest.approx(4 / 5)


def test_label_accuracy_for_pseudo_labels_and_unknowns_excluded():
    gender = np.array(["F", "F", "M", "M", None, "M"], dtype=object)
    m = _manifest(gender)
    a = GroupAssignment(m.utt_ids, [0, 1, 1, 1, 0, -1], ["F", "M"], "pseudo:x")
    row = diagnose(a, m, ("gender", "race")).iloc[0]
    assert row["n_scored"] == 4 and row["n_unscored"] == 2
    assert row["label_acc"] == pytest.approx(3 / 4)
    table = diagnose(a, m, ("gender", "race"))
    assert len(table) == 1 and table.attrs["skipped"] == ["race"]
    # flipped names: plain label accuracy drops, Hungarian does not
    flipped = GroupAssignment(m.utt_ids, 1 - np.array([0, 1, 1, 1, 0, 0]), ["F", "M"], "p")
    r2 = diagnose(flipped, m, ("gender",)).iloc[0]
    # names M F F F M M vs truth F F M M NA M: 2/5 right; best matching (swap): 3/5
    assert r2["label_acc"] == pytest.approx(2 / 5) and r2["hungarian_acc"] == pytest.approx(3 / 5)


def test_sizes_and_warnings():
    n = 12
    gender = np.array(["F", "M"] * 6, dtype=object)
    soft = np.tile([[0.94 * 1 + 0.03, 0.03]], (n, 1))  # all strict-majority 'angry'
    soft[6:] = [0.03, 0.97]  # rows 6..11: 'sad'
    split = np.array(["train"] * 10 + ["test"] * 2, dtype=object)
    m = _manifest(gender, soft=soft, split=split)
    ids = np.array([0, 0, 0, 1, 1, 1, 0, 0, 2, 1, 2, 2])
    a = _assign(m, ids)
    train = m.split_ids("1", "train")
    sizes = group_sizes(a, train)
    assert sizes["n"].tolist() == [5, 4, 3] and sizes["n_train"].tolist() == [5, 4, 1]
    row = diagnose(a, m, ("gender",), train_ids=train).iloc[0]
    assert (row["size_min"], row["size_max"]) == (1, 5)
    warnings = size_warnings(a, m, train, min_size=2)
    assert any("'c2' has 1 training" in w for w in warnings)
    # c2's only training row (u008) is 'sad', so 'angry' is missing in c2: DS drops it
    assert any("'angry'" in w and "c2" in w for w in warnings)
    assert not any("'sad'" in w for w in warnings)  # sad: c0 (u006,u007), c1 (u009), c2 (u008)
    assert size_warnings(a, m, None, min_size=4) == ["group 'c2' has 3 utterances (< min_size=4)"]


def test_composition_crosstab():
    gender = np.array(["F", "F", "M", None], dtype=object)
    m = _manifest(gender)
    a = GroupAssignment(m.utt_ids, [0, 1, 1, -1], ["a", "b"], "x")
    tab = composition(a, m, "gender")
    assert tab.loc["a", "F"] == 1 and tab.loc["b", "M"] == 1 and tab.loc["unknown", "NA"] == 1
