"""Data-level balancing by class × group (PAPERS §3.1–3.2): RW and DS.

Both use the single majority class c_i and the hard group g_i of each training utterance; the
counts n_{c,g} come from the training set being manipulated (FairLib BT, BTObj="EO").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from emodebias.training.methods.base import Method, Prepared, register

if TYPE_CHECKING:
    from emodebias.training.data import TrainData


def training_cells(data: TrainData) -> tuple[np.ndarray, ...]:
    """(rows, their majority class, their group, n_{c,g} [C, G] over rows whose class and
    group are both known, that mask) of the training set."""
    idx = np.asarray(data.train_idx, dtype=np.int64)
    maj, grp = data.majority[idx], data.groups[idx]
    known = (maj >= 0) & (grp >= 0)
    counts = np.zeros((data.n_classes, data.n_groups), dtype=np.int64)
    np.add.at(counts, (maj[known], grp[known]), 1)
    return idx, maj, grp, counts, known


@register("rw")
class RW(Method):
    """Reweighting, [IDI] Eq. 1: instance weight w_i = n_{c_i} / n_{c_i, g_i}, loss mean(w·ℓ).

    Rows with no strict-majority class or an unknown group (-1) keep weight 1 (plain ERM rows).
    """

    family = "pre-processing"
    supervision = "hard"
    HPARAMS = {}

    @classmethod
    def prepare(cls, data, hp, gen, config) -> Prepared:
        idx, maj, grp, counts, known = training_cells(data)
        n_c = counts.sum(1)
        w = np.ones(len(idx))
        w[known] = n_c[maj[known]] / counts[maj[known], grp[known]]
        info = {"n_cg": counts.tolist(), "unweighted_rows": int((~known).sum())}
        return Prepared(idx, w, info)


@register("ds")
class DS(Method):
    """Downsampling, once before training: per class keep m_c = min_g n_{c,g} rows of each group.

    The minimum runs over the groups present in class c (with many clusters a class may miss
    some). Rows with no strict-majority class or an unknown group cannot be balanced and are
    left out; their number is reported in the run's info.
    """

    family = "pre-processing"
    supervision = "hard"
    HPARAMS = {}

    @classmethod
    def prepare(cls, data, hp, gen, config) -> Prepared:
        idx, maj, grp, counts, known = training_cells(data)
        keep: list[np.ndarray] = []
        for c in range(data.n_classes):
            present = counts[c][counts[c] > 0]
            if not len(present):
                continue
            m_c = int(present.min())
            for g in np.flatnonzero(counts[c]):
                cell = idx[known & (maj == c) & (grp == g)]
                perm = torch.randperm(len(cell), generator=gen).numpy()
                keep.append(cell[np.sort(perm[:m_c])])
        if not keep:
            raise ValueError("DS: no training row has both a majority class and a known group")
        out = np.sort(np.concatenate(keep))
        info = {"kept": len(out), "dropped_unknown": int((~known).sum()), "n_cg": counts.tolist()}
        return Prepared(out, None, info)
