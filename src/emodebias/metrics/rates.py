"""Rates and fairness gaps from confusion counts.

Every function takes count arrays shaped ``[..., G, K]`` (leading batch axis, groups, classes), so
the point estimate (batch 1) and B bootstrap resamples (batch B) run through one code path.
Undefined rates (0/0) are NaN here; `evaluate` decides which groups and classes enter each gap and
reports what it leaves out, so NaN never reaches its summary.

Gap definitions (PAPERS.md §4):

* TPR / FPR / F1 gap, FairLib ``Aggregation_GAP``: per class c, ``T_c = Σ_g |m_cg − m_c|`` with
  ``m_c`` the rate over the utterances of the compared groups, then ``sqrt(mean_c T_c²)``. For two
  groups ``T_c = |m_c1 − m_c2|`` exactly, because ``m_c`` is a mediant of the group values
  (TP/(TP+FN), FP/(FP+TN), 2TP/(2TP+FP+FN) are ratios of sums), so it lies between them.
* ``dp_maxdev_gap`` (the recommended reading of the IDI DP gap): ``d_cg = |PPR_cg − PPR_c|``,
  ``sqrt(mean_c max_g d_cg²)``; for two groups ``max(π_1, π_2)·|PPR_c1 − PPR_c2|`` (π the group
  shares of the compared utterances), so it never exceeds the selection-rate difference.
* ``dp_sumdev_gap`` (FairLib form): ``sqrt(mean_c (Σ_g d_cg)²)``; for two groups
  ``|PPR_c1 − PPR_c2|`` per class, fairlearn's selection-rate (demographic parity) difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (an undefined rate, never a warning)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


@dataclass
class Counts:
    """Confusion counts per group and class: tp, fp, fn ``[..., G, K]``, n ``[..., G]``."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    n: np.ndarray

    @property
    def pos(self) -> np.ndarray:
        """Utterances with the class present (TPR / F1 support)."""
        return self.tp + self.fn

    @property
    def neg(self) -> np.ndarray:
        """Utterances with the class absent (FPR support)."""
        return self.n[..., None] - self.pos

    def select(self, groups: np.ndarray) -> Counts:
        """Counts of a subset of groups (boolean or integer index on the G axis)."""
        return Counts(self.tp[..., groups, :], self.fp[..., groups, :],
                      self.fn[..., groups, :], self.n[..., groups])

    def pooled(self) -> Counts:
        """All groups merged into one: shape ``[..., 1, K]``."""
        return Counts(self.tp.sum(-2, keepdims=True), self.fp.sum(-2, keepdims=True),
                      self.fn.sum(-2, keepdims=True), self.n.sum(-1, keepdims=True))


def tpr(c: Counts) -> np.ndarray:
    """P(ŷ=1 | y=1): NaN where a group has no positives of the class."""
    return safe_div(c.tp, c.pos)


def fpr(c: Counts) -> np.ndarray:
    """P(ŷ=1 | y=0): NaN where a group has no negatives of the class."""
    return safe_div(c.fp, c.neg)


def ppr(c: Counts) -> np.ndarray:
    """P(ŷ=1): positive prediction (selection) rate; NaN for an empty group."""
    return safe_div(c.tp + c.fp, np.broadcast_to(c.n[..., None], c.tp.shape))


def f1(c: Counts, zero_division: float = np.nan) -> np.ndarray:
    """2TP / (2TP + FP + FN); `zero_division` where nothing is true or predicted positive."""
    out = safe_div(2 * c.tp, 2 * c.tp + c.fp + c.fn)
    return np.where(np.isnan(out), zero_division, out)


def macro_f1(c: Counts) -> np.ndarray:
    """Mean over classes of F1 with zero_division=0 (sklearn ``average='macro'``): ``[..., G]``.

    NaN only for an empty group.
    """
    out = f1(c, zero_division=0.0).mean(-1)
    return np.where(c.n > 0, out, np.nan)


def hamming_acc(c: Counts) -> np.ndarray:
    """Share of (utterance, class) decisions that are right: ``[..., G]``."""
    k = c.tp.shape[-1]
    wrong = (c.fp + c.fn).sum(-1)
    return 1.0 - safe_div(wrong, c.n * k)


def aggregation_gap(group: np.ndarray, overall: np.ndarray,
                    classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FairLib aggregation: per-class ``Σ_g |m_cg − m_c|`` and its RMS over `classes`.

    `group` ``[..., G, K]`` holds the rates of the compared groups, `overall` ``[..., 1, K]`` the
    rate over their pooled utterances, `classes` a bool ``[K]`` mask of the classes that enter
    the gap. Returns (per-class terms ``[..., K]``, NaN for excluded classes; gap ``[...]``, NaN
    if an included class is undefined in some group).
    """
    terms = np.abs(group - overall).sum(-2)
    return _rms(terms, classes)


def dp_gaps(group_ppr: np.ndarray, overall_ppr: np.ndarray) -> dict[str, tuple[np.ndarray,
                                                                               np.ndarray]]:
    """Both DP-gap forms: ``{"dp_maxdev_gap": (max_g d, gap), "dp_sumdev_gap": (Σ_g d, gap)}``."""
    d = np.abs(group_ppr - overall_ppr)
    every = np.ones(d.shape[-1], dtype=bool)
    return {"dp_maxdev_gap": _rms(d.max(-2), every), "dp_sumdev_gap": _rms(d.sum(-2), every)}


def _rms(terms: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes = np.asarray(classes, dtype=bool)
    terms = np.where(classes, terms, np.nan)
    if not classes.any():
        return terms, np.full(terms.shape[:-1], np.nan)
    # A NaN term of an included class propagates: that resample's gap is undefined.
    return terms, np.sqrt(np.mean(terms[..., classes] ** 2, axis=-1))
