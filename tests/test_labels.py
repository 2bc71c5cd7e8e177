"""Distributional labels, binarisation, strict majority and class weights (PAPERS.md §1.3, §2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from emodebias.data.labels import (
    LabelError,
    binarize,
    class_balanced_weights,
    count_votes,
    smoothing_alpha,
    soft_from_votes,
    strict_majority,
    unsmooth,
)

CLASSES = ["angry", "sad", "disgust", "fear", "neutral", "happy"]


def test_paper_example_crema_d_votes() -> None:
    # PAPERS.md §1.3: votes (2,1,1,3,3,0)/10 -> 0.198, 0.104, 0.104, 0.292, 0.292, 0.01
    soft = soft_from_votes(np.array([[2, 1, 1, 3, 3, 0]]))
    np.testing.assert_allclose(soft[0], [0.198, 0.104, 0.104, 0.292, 0.292, 0.01], atol=1e-12)


@pytest.mark.parametrize(("k", "floor"), [(6, 0.01), (9, 0.00625), (4, 0.016667),
                                          (10, 0.005556), (11, 0.005)])
def test_smoothing_floor_and_unanimous_peak(k: int, floor: float) -> None:
    votes = np.zeros((1, k))
    votes[0, 0] = 7
    soft = soft_from_votes(votes)
    assert soft[0, 0] == pytest.approx(0.95)
    np.testing.assert_allclose(soft[0, 1:], floor, atol=5e-7)
    assert smoothing_alpha(k) == pytest.approx(0.05 * k / (k - 1))


@settings(max_examples=60, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(1, 8), st.integers(2, 9)),
              elements=st.integers(0, 12)))
def test_soft_properties(votes: np.ndarray) -> None:
    votes[:, 0] += votes.sum(1) == 0  # at least one vote per row
    soft = soft_from_votes(votes)
    k = votes.shape[1]
    np.testing.assert_allclose(soft.sum(1), 1.0)
    assert (soft >= smoothing_alpha(k) / k - 1e-12).all()
    np.testing.assert_allclose(unsmooth(soft), votes / votes.sum(1, keepdims=True), atol=1e-12)
    # smoothing leaves the 1/K threshold where the vote share is: y' > 1/K  <=>  p > 1/K,
    # exact ties p = 1/K counting positive (integer test: K * votes >= total)
    positive = k * votes > votes.sum(1, keepdims=True)
    tie = k * votes == votes.sum(1, keepdims=True)
    np.testing.assert_array_equal(binarize(soft), positive | tie)


def test_all_zero_votes_name_the_utterance() -> None:
    with pytest.raises(LabelError, match="u2"):
        soft_from_votes(np.array([[1, 0], [0, 0]]), ids=["u1", "u2"])
    with pytest.raises(LabelError, match="non-negative"):
        soft_from_votes(np.array([[1, -1]]))


def test_binarize_tie_rounded_counts_positive() -> None:
    # an exact tie p = 1/6 is stored as 0.166667 in the CSVs and counts as positive (§1.3.3)
    row = np.array([[0.166667, 0.01, 0.01, 0.01, 0.01, 0.793333]])
    assert binarize(row).tolist() == [[True, False, False, False, False, True]]
    assert binarize(row, threshold=0.5).tolist() == [[False] * 5 + [True]]
    # the same tie computed from votes (2 of 12) is positive too, and float noise below 1/K
    # does not flip it; a share clearly below 1/K stays negative
    soft = soft_from_votes(np.array([[2, 10, 0, 0, 0, 0], [1, 5, 0, 0, 0, 0]]))
    assert binarize(soft)[:, 0].tolist() == [True, True]
    assert not binarize(soft_from_votes(np.array([[1, 6, 0, 0, 0, 0]])))[0, 0]


def test_strict_majority_needs_more_than_half() -> None:
    votes = np.array([[5, 5, 0], [6, 4, 0], [4, 3, 3], [0, 0, 9]])
    np.testing.assert_array_equal(strict_majority(votes, smoothed=False), [-1, 0, -1, 2])
    # same answer from smoothed labels rounded to 3 decimals, as in the published files
    soft = np.round(soft_from_votes(votes), 3)
    np.testing.assert_array_equal(strict_majority(soft), [-1, 0, -1, 2])


def test_count_votes() -> None:
    votes = count_votes(["a", "b", "a", "a"], ["sad", "angry", "sad", "happy"],
                        ["angry", "sad", "happy"])
    np.testing.assert_array_equal(votes, [[0, 2, 1], [1, 0, 0]])
    with pytest.raises(LabelError, match="other"):
        count_votes(["a"], ["other"], ["angry", "sad"])


@pytest.fixture(scope="module")
def fold1(shared_data) -> pd.DataFrame:
    return pd.read_csv(shared_data / "emo-superb" / "crema-d" / "labels_consensus_1.csv")


def test_class_weights_match_paper_fold1_full_train(fold1: pd.DataFrame) -> None:
    train = fold1[fold1.Split_Set == "Train"]
    binary = binarize(train[CLASSES].to_numpy())
    assert len(train) == 4509
    # §1.3.4: positives in the fold-1 train split
    assert binary.sum(0).tolist() == [1162, 1080, 1403, 1177, 3549, 585]
    assert binary.any(1).all()
    w = class_balanced_weights(binary)
    np.testing.assert_allclose(w, [0.970, 1.034, 0.824, 0.959, 0.404, 1.810], atol=6e-4)
    assert w.sum() == pytest.approx(len(CLASSES))


def test_class_weights_hand_example() -> None:
    # N=4, beta=3/4: n=(1,2,4) -> raw (1/4)/(1-beta^n) = 1, 4/7, 64/175; rescaled to sum K=3
    binary = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 1]], dtype=bool)
    raw = np.array([1.0, 4 / 7, 64 / 175])
    np.testing.assert_allclose(class_balanced_weights(binary), raw * 3 / raw.sum())


def test_soft_from_votes_reproduces_emo_superb_where_votes_agree(shared_data, fold1) -> None:
    """tabulatedVotes has fewer raters than EMO-SUPERB used, but thousands of clips coincide."""
    tab = pd.read_csv(shared_data / "crema-d" / "processedResults" / "tabulatedVotes.csv")
    voice = tab[tab.iloc[:, 0] // 100000 == 1].set_index("fileName")
    votes = voice[["A", "S", "D", "F", "N", "H"]].to_numpy()  # class order of the CSV
    mine = pd.DataFrame(soft_from_votes(votes), index=voice.index, columns=CLASSES)
    ref = fold1.assign(utt=fold1.FileName.str[:-4]).set_index("utt")[CLASSES]
    diff = np.abs(mine.loc[ref.index].to_numpy() - ref.to_numpy()).max(1)
    agree = diff <= 5e-4 + 1e-9  # the files round to 3 decimals
    assert agree.sum() >= 4000  # 4,070 of 7,442 clips reproduce to the file's rounding
    # a different smoothing (plain shares, no label smoothing) reproduces almost none
    plain = voice[["A", "S", "D", "F", "N", "H"]].to_numpy() / votes.sum(1, keepdims=True)
    plain_diff = np.abs(plain[voice.index.get_indexer(ref.index)] - ref.to_numpy()).max(1)
    assert (plain_diff <= 5e-4).sum() < 0.05 * agree.sum()
