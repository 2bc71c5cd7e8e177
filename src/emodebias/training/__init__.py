"""Train SER heads on cached features: one run (`fit`) or a grid stacked into few trainings
(`fit_many`, `fit_stream`).

The package reads as the pipeline: `data` (what training reads and its settings), `plan` (a
plan per run, stack keys, twins, chunks), `loop` (the stacked training loop), `selection` (dev
evaluation and per-run epoch selection), `results` (FitResult, prediction), `fitting` (the entry
points, worker processes), `compile` (torch.compile with an eager fallback).

Public names are imported on first access, so the model and optimiser modules can use
`training.compile` without importing the trainer.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "FeatureError": "data", "RunConfig": "data", "TrainConfig": "data", "TrainData": "data",
    "TrainingError": "data", "FitResult": "results", "load_method": "results",
    "predict_probs": "results", "fit": "fitting", "fit_many": "fitting", "fit_stream": "fitting",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the module behind a public name on first access (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
