"""Post-processing for Equal Opportunity: per-group, per-class thresholds fitted on dev.

The head is trained as ERM. On the dev set, class c's target is its overall TPR at the usual
1/K threshold; for each group g with at least `min_positives` dev positives of c, the threshold
t_{g,c} is set so that group g reaches that TPR (Hardt et al. 2016 with deterministic
thresholds). Scores are then mapped by a monotone piecewise-linear map sending t_{g,c} to 1/K
(0 -> 0, 1 -> 1), so the standard 1/K binarisation applies the group thresholds; the mapped
scores stay in [0, 1] but no longer sum to 1. Rows of unknown group keep their probabilities.
The groups used at test time are the run's group source (a group-aware deployment).
"""

from __future__ import annotations

import numpy as np

from emodebias.training.methods.base import Method, register


def eo_thresholds(
    probs: np.ndarray, positives: np.ndarray, groups: np.ndarray, n_groups: int,
    min_positives: int = 5,
) -> np.ndarray:
    """Thresholds [G, K] giving each group the class's overall TPR at 1/K on these rows."""
    n_classes = probs.shape[1]
    base = 1.0 / n_classes
    thr = np.full((n_groups, n_classes), base)
    for c in range(n_classes):
        pos = positives[:, c]
        if not pos.any():
            continue
        target = float((probs[pos, c] > base).mean())
        for g in range(n_groups):
            scores = np.sort(probs[pos & (groups == g), c])[::-1]
            n = len(scores)
            if n < min_positives:
                continue
            k = int(round(target * n))  # how many of the group's positives should pass
            if k == 0:
                thr[g, c] = scores[0]
            elif k == n:
                thr[g, c] = scores[-1] * (1 - 1e-6)
            else:
                thr[g, c] = (scores[k - 1] + scores[k]) / 2
    return np.clip(thr, 1e-6, 1 - 1e-6)


def apply_thresholds(probs: np.ndarray, groups: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """Map scores so that score > t_{g,c} iff mapped > 1/K (piecewise linear, monotone)."""
    base = 1.0 / probs.shape[1]
    out = np.array(probs, dtype=np.float64)
    known = groups >= 0
    t = thr[groups[known]]
    p = out[known]
    out[known] = np.where(p <= t, p * base / t, base + (p - t) * (1 - base) / (1 - t))
    return out


@register("eo_thresh")
class EOThresholds(Method):
    """ERM training + per-group EO thresholds fitted on dev (see the module docstring)."""

    extra = True

    family = "post-processing"
    supervision = "hard"
    HPARAMS = {"min_positives": 5}
    PER_RUN_HPARAMS = frozenset({"min_positives"})

    @classmethod
    def postprocess(cls, hp, dev_probs, test_probs, data):
        from emodebias.data.labels import binarize

        dev_idx, test_idx = np.asarray(data.dev_idx), np.asarray(data.test_idx)
        dev_groups, test_groups = data.groups[dev_idx], data.groups[test_idx]
        positives = binarize(np.asarray(data.soft)[dev_idx])
        thr = eo_thresholds(dev_probs, positives, dev_groups, data.n_groups,
                            hp["min_positives"])
        info = {"thresholds": thr.tolist()}
        return (apply_thresholds(dev_probs, dev_groups, thr),
                apply_thresholds(test_probs, test_groups, thr), info)
