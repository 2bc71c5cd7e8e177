"""emodebias: measure and reduce demographic bias in multi-label speech emotion recognition.

`import emodebias as ed` gives the pipeline in a few names, loaded on first use so that the
package (and the CLI) import fast::

    man = ed.load_corpus("synthetic", "corpus")            # or ed.open_manifest("work/crema")
    split = ed.make_split(man, 1, ratio="1:20")
    store = ed.extract(man, "acoustic", "work/feats")
    truth = ed.truth_groups(man, columns="gender")         # or ed.cluster_groups(store, 8, ...)
    run = ed.fit(store, man, split, "gdro", groups=truth, epochs=20)
    run.summary["gender.tpr_gap"]; ed.evaluate(run, manifest=man, n_boot=1000)
    ed.load_run("work/runs/gdro").predict(["clip.wav"])    # probabilities [n, K]
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute" (attribute None: the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "load_corpus": ("emodebias.api", "load_corpus"),
    "make_folds": ("emodebias.api", "make_folds"),
    "make_split": ("emodebias.api", "make_split"),
    "extract": ("emodebias.api", "extract"),
    "fit": ("emodebias.api", "fit"),
    "fit_many": ("emodebias.api", "fit_many"),
    "evaluate": ("emodebias.api", "evaluate"),
    "audit": ("emodebias.api", "audit"),
    "compare": ("emodebias.api", "compare"),
    "open_manifest": ("emodebias.api", "open_manifest"),
    "open_store": ("emodebias.api", "open_store"),
    "open_split": ("emodebias.api", "open_split"),
    "open_groups": ("emodebias.api", "open_groups"),
    "truth_groups": ("emodebias.api", "truth_groups"),
    "cluster_groups": ("emodebias.api", "cluster_groups"),
    "pseudo_groups": ("emodebias.api", "pseudo_groups"),
    "load_run": ("emodebias.runs", "load_run"),
    "load_runs": ("emodebias.runs", "load_runs"),
    "Run": ("emodebias.runs", "Run"),
    "RunRequest": ("emodebias.runs", "RunRequest"),
    "get_encoder": ("emodebias.features.encoders", "get_encoder"),
    "list_encoders": ("emodebias.features.encoders", "list_encoders"),
    "groups": ("emodebias.groups", None),
    "methods": ("emodebias.training.methods", None),
    "metrics": ("emodebias.metrics", None),
    "Manifest": ("emodebias.data.manifest", "Manifest"),
    "Split": ("emodebias.data.splits", "Split"),
    "FeatureStore": ("emodebias.features.store", "FeatureStore"),
    "GroupAssignment": ("emodebias.groups.assignment", "GroupAssignment"),
    "TrainConfig": ("emodebias.training", "TrainConfig"),
    "TrainData": ("emodebias.training", "TrainData"),
    "UserError": ("emodebias.errors", "UserError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the module behind a public name on first access (PEP 562)."""
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'emodebias' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
