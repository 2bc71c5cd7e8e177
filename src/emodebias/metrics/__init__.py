"""Accuracy and fairness metrics for multi-label SER (definitions: ``docs/metrics.md``).

`evaluate` scores predictions overall and per demographic group (TPR/FPR/PPR/F1, macro-F1,
Hamming accuracy) and computes the fairness gaps: the papers' plug-in value, a bias-corrected
estimate with a stratified speaker-bootstrap interval (or a "not estimable" flag with its
reason), signed per-class differences with intervals, and a permutation null.
`evaluate_predictions` does it for a predictions table, ``.npz`` or run folder; `MetricFrame`
is the fairlearn-shaped view; `pooled_oof` scores the out-of-fold predictions of a grid as one
test set; `paired_test`, `holm` and `fold_interval` compare runs.
"""

from emodebias.metrics.attributes import MetricsInputError, bin_attribute, parse_bins
from emodebias.metrics.evaluate import GAP_METRICS, MetricsResult, evaluate
from emodebias.metrics.frame import MetricFrame
from emodebias.metrics.oof import pooled_frame, pooled_oof
from emodebias.metrics.predictions import (
    evaluate_predictions,
    from_predictions,
    load_predictions,
    read_predictions,
)
from emodebias.metrics.stats import (
    fold_interval,
    holm,
    min_sign_flip_p,
    paired_test,
    pairs_needed,
    sign_flip_p,
)

__all__ = [
    "GAP_METRICS",
    "MetricFrame",
    "MetricsInputError",
    "MetricsResult",
    "bin_attribute",
    "evaluate",
    "evaluate_predictions",
    "fold_interval",
    "from_predictions",
    "holm",
    "load_predictions",
    "min_sign_flip_p",
    "paired_test",
    "pairs_needed",
    "parse_bins",
    "pooled_frame",
    "pooled_oof",
    "read_predictions",
    "sign_flip_p",
]
