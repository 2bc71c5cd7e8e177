"""RW and DS on the IDI fold-1 1:20 training split built from the real EMO-SUPERB labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from emodebias.data.labels import strict_majority
from emodebias.training import TrainConfig, TrainData
from emodebias.training.losses import class_weights_for
from emodebias.training.methods import get_method

CLASSES = ["angry", "sad", "disgust", "fear", "neutral", "happy"]
MAJOR = {"angry": "M", "disgust": "M", "neutral": "M", "fear": "F", "happy": "F", "sad": "F"}


@pytest.fixture(scope="module")
def fold1_train_1to20(shared_data) -> TrainData:
    """A tiny independent implementation of the PAPERS §1.6 rule (train part of fold 1, r=20)."""
    df = pd.read_csv(shared_data / "emo-superb/crema-d/labels_consensus_1.csv")
    df = df[df["Split_Set"] == "Train"].reset_index(drop=True)
    soft = df[CLASSES].to_numpy()
    maj = strict_majority(soft)
    gender = df["Gender"].str[0].to_numpy()
    rng = np.random.default_rng(0)
    keep = []
    for c, emo in enumerate(CLASSES):
        major = np.flatnonzero((maj == c) & (gender == MAJOR[emo]))
        minor = np.flatnonzero((maj == c) & (gender != MAJOR[emo]))
        keep += list(major) + list(rng.choice(minor, len(major) // 20, replace=False))
    keep = np.sort(keep)
    groups = (gender == "M").astype(int)  # 0 = F, 1 = M
    return TrainData(np.zeros((len(df), 1, 2), np.float16), soft, keep, keep[:3], keep[:3],
                     groups, n_groups=2)


def _count(data: TrainData, idx: np.ndarray, emo: str, g: str) -> int:
    c = CLASSES.index(emo)
    return int(((data.majority[idx] == c) & (data.groups[idx] == (g == "M"))).sum())


def test_split_matches_idi_table_a2(fold1_train_1to20: TrainData) -> None:
    d = fold1_train_1to20
    t = d.train_idx
    assert _count(d, t, "angry", "M") == 240 and _count(d, t, "angry", "F") == 12
    assert _count(d, t, "sad", "F") == 58 and _count(d, t, "sad", "M") == 2
    assert len(d.train_idx) == 1778  # 1,776 in [IDI]; the CSV has 1 more disgust and neutral


def test_rw_weights_idi_example(fold1_train_1to20: TrainData) -> None:
    d = fold1_train_1to20
    prep = get_method("rw").prepare(d, {}, torch.Generator().manual_seed(0), TrainConfig())
    np.testing.assert_array_equal(prep.idx, d.train_idx)
    w = pd.Series(prep.weight)
    maj, grp = d.majority[prep.idx], d.groups[prep.idx]
    angry_f = w[(maj == 0) & (grp == 0)].unique()
    sad_m = w[(maj == 1) & (grp == 1)].unique()
    assert angry_f == pytest.approx([252 / 12]) and angry_f[0] == pytest.approx(21.0)
    assert sad_m == pytest.approx([30.0])
    assert w[(maj == 0) & (grp == 1)].unique() == pytest.approx([252 / 240])
    # Σ_g w·n_{c,g} = G·n_c for every class: each group carries the class's full mass
    for c in range(6):
        assert w[maj == c].sum() == pytest.approx(2 * (maj == c).sum())


def test_ds_keeps_166(fold1_train_1to20: TrainData) -> None:
    d = fold1_train_1to20
    ds = get_method("ds")
    prep = ds.prepare(d, {}, torch.Generator().manual_seed(0), TrainConfig())
    assert len(prep.idx) == 166
    assert set(prep.idx) <= set(d.train_idx) and len(set(prep.idx)) == 166
    minority = {"angry": 12, "sad": 2, "disgust": 4, "fear": 6, "neutral": 54, "happy": 5}
    for emo, m in minority.items():
        assert _count(d, prep.idx, emo, "F") == m and _count(d, prep.idx, emo, "M") == m
    other = ds.prepare(d, {}, torch.Generator().manual_seed(1), TrainConfig())
    assert not np.array_equal(other.idx, prep.idx)  # the majority sample depends on the seed
    # class-balanced weights are recomputed on the downsampled set
    w_full = class_weights_for(d.soft[d.train_idx])
    w_ds = class_weights_for(d.soft[prep.idx])
    assert not np.allclose(w_full, w_ds)


def test_ds_handles_unknown_groups_and_majority() -> None:
    soft = np.array([[0.95, 0.05]] * 6 + [[0.5, 0.5]])
    groups = np.array([0, 0, 0, 1, -1, 1, 0])
    d = TrainData(np.zeros((7, 1, 2), np.float16), soft, np.arange(7), [0], [0], groups)
    prep = get_method("ds").prepare(d, {}, torch.Generator().manual_seed(0), TrainConfig())
    assert len(prep.idx) == 4 and prep.info["dropped_unknown"] == 2
    rw = get_method("rw").prepare(d, {}, torch.Generator().manual_seed(0), TrainConfig())
    np.testing.assert_allclose(rw.weight, [5 / 3, 5 / 3, 5 / 3, 2.5, 1.0, 2.5, 1.0])
