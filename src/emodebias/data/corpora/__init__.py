"""Corpus adapters: each `emodebias.data.corpora.<name>.load(root, **opts) -> Manifest`.

`load_corpus` imports the adapter lazily, so a corpus's optional dependencies are needed only
when that corpus is used. Options are checked and typed against the adapter's own signature
(`_options.adapter_options`), so `prepare --help`, errors and the adapters agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from emodebias.data.corpora._options import AdapterOption, adapter_module, adapter_options, coerce

if TYPE_CHECKING:
    from emodebias.data.manifest import Manifest

CORPORA = ("emo_superb", "crema_d", "msp_podcast", "emodb", "ravdess", "table", "synthetic")

__all__ = ["CORPORA", "AdapterOption", "adapter_options", "corpus_key", "load_corpus"]


def corpus_key(name: str) -> str:
    """'EmoDB' / 'emo-superb' -> the registry key; an unknown name lists the known ones."""
    from emodebias.data.corpora._base import CorpusError

    key = str(name).strip().lower().replace("-", "_")
    if key not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    return key


def load_corpus(name: str, root: str | Path, **opts: object) -> Manifest:
    """Build the Manifest of corpus `name` from the files under `root`.

    `opts` are the adapter's options (text is converted to each option's type); unknown names,
    a missing required option or a value of the wrong type raise a one-line `CorpusError`
    listing the options the adapter takes. ``make_folds=K`` (``fold_seed``) adds K
    speaker-independent, gender-balanced folds (`splits.make_folds`) to a corpus without
    official folds; an adapter's own default folds (EmoDB, RAVDESS, synthetic) are replaced.
    """
    from emodebias.data.corpora._base import CorpusError

    key = corpus_key(name)
    options = adapter_options(key)
    typed = coerce(key, options, opts)
    k = typed.pop("make_folds", None)
    seed = typed.pop("fold_seed", None)
    own = {o.name for o in options if not o.common}
    if k:
        if "folds" in typed:
            raise CorpusError(f"give folds= or make_folds= for corpus {key!r}, not both")
    elif seed is not None:
        if "fold_seed" not in own:
            raise CorpusError("fold_seed (CLI: --seed) only applies with make_folds "
                              "(CLI: --make-folds K)")
        typed["fold_seed"] = seed
    manifest = adapter_module(key).load(Path(root), **typed)
    if not k:
        return manifest
    from emodebias.data.splits import make_folds

    if manifest.folds and "folds" not in own:
        raise CorpusError(
            f"corpus {key!r} already has folds {manifest.folds} (official or from a split "
            "column); make_folds adds folds only to corpora without them"
        )
    return make_folds(manifest, k=int(k), seed=int(seed or 0), overwrite=True)
