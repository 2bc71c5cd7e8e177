"""Accuracy and fairness metrics for multi-label SER (PAPERS.md §4).

`evaluate` scores predictions overall and per demographic group (TPR/FPR/PPR/F1, macro-F1,
Hamming accuracy) and computes the fairness gaps with speaker-level bootstrap intervals;
`from_predictions` does it for a saved ``.npz``; `paired_test` compares two methods over folds.
"""

from emodebias.metrics.attributes import MetricsInputError
from emodebias.metrics.evaluate import GAP_METRICS, MetricsResult, evaluate
from emodebias.metrics.predictions import from_predictions, load_predictions
from emodebias.metrics.stats import paired_test, sign_flip_p

__all__ = [
    "GAP_METRICS",
    "MetricsInputError",
    "MetricsResult",
    "evaluate",
    "from_predictions",
    "load_predictions",
    "paired_test",
    "sign_flip_p",
]
