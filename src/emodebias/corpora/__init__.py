"""Corpus adapters: each `emodebias.corpora.<name>.load(root, **opts) -> Manifest`.

`load_corpus` imports the adapter lazily, so a corpus's optional dependencies are needed only
when that corpus is used.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emodebias.manifest import Manifest

CORPORA = ("emo_superb", "crema_d", "msp_podcast", "emodb", "ravdess", "table", "synthetic")


def load_corpus(name: str, root: str | Path, **opts: object) -> Manifest:
    """Build the Manifest of corpus `name` from the files under `root`.

    Unknown option names raise a TypeError listing the options the adapter accepts.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    module = importlib.import_module(f"emodebias.corpora.{key}")
    loader = module.load
    params = inspect.signature(loader).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(opts) - set(params))
        if unknown:
            accepted = [p for p in params if p != "root"]
            raise TypeError(
                f"corpus {key!r} does not take option(s) {unknown}; it takes {accepted}"
            )
    return loader(root, **opts)
