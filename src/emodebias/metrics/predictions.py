"""Score saved test predictions (``.npz`` with utt_ids, probs[, targets]) against a manifest."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from emodebias.manifest import Manifest
from emodebias.metrics.attributes import MetricsInputError
from emodebias.metrics.evaluate import MetricsResult, evaluate


def load_predictions(source: str | Path | Mapping) -> dict[str, np.ndarray]:
    """The arrays of a predictions file (or dict): utt_ids [N], probs [N, K], optional targets."""
    if isinstance(source, Mapping):
        data = dict(source)
        where = "predictions dict"
    else:
        path = Path(source)
        if not path.is_file():
            raise MetricsInputError(f"no predictions file at {path}")
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
        where = str(path)
    missing = [key for key in ("utt_ids", "probs") if key not in data]
    if missing:
        raise MetricsInputError(f"{where} lacks {missing} (has {sorted(data)})")
    data["utt_ids"] = np.asarray(data["utt_ids"]).astype(str)
    data["probs"] = np.asarray(data["probs"], dtype=np.float64)
    if len(data["utt_ids"]) != len(data["probs"]):
        raise MetricsInputError(f"{where}: {len(data['utt_ids'])} utt_ids for "
                                f"{len(data['probs'])} rows of probs")
    return data


def from_predictions(
    predictions: str | Path | Mapping,
    manifest: Manifest | str | Path,
    attributes: Iterable[str] = ("gender", "age_group", "race"),
    intersections: Iterable[Iterable[str]] = (),
    speaker_bootstrap: bool = True,
    **kwargs: object,
) -> MetricsResult:
    """`evaluate` on saved predictions, taking attributes and speakers from the manifest.

    Targets come from the file when it has them, else from the manifest's soft labels. Attributes
    the manifest lacks are reported in ``skipped`` (a corpus without race still scores gender).
    With `speaker_bootstrap`, bootstrap intervals resample the manifest's speakers.
    """
    if not isinstance(manifest, Manifest):
        manifest = Manifest.load(manifest)
    data = load_predictions(predictions)
    rows = manifest.index_of(data["utt_ids"])
    df = manifest.df.iloc[rows].reset_index(drop=True)
    if "targets" in data:
        targets = np.asarray(data["targets"], dtype=np.float64)
    elif manifest.has_soft:
        targets = manifest.soft_labels()[rows]
    else:
        raise MetricsInputError("predictions have no targets and the manifest no soft labels")
    if data["probs"].shape[1:] != (len(manifest.classes),):
        raise MetricsInputError(f"probs have shape {data['probs'].shape}; the manifest has "
                                f"{len(manifest.classes)} classes {manifest.classes}")
    wanted = list(attributes)
    present = {a: df[a] for a in wanted if a in df.columns}
    absent = [a for a in wanted if a not in df.columns]
    combos = [tuple(c) for c in intersections]
    usable = [c for c in combos if all(a in present for a in c)]
    speakers = df["speaker"] if speaker_bootstrap else None
    result = evaluate(targets, data["probs"], pd.DataFrame(present), speakers=speakers,
                      classes=manifest.classes, intersections=usable, **kwargs)
    for a in absent + ["×".join(c) for c in combos if c not in usable]:
        result.skipped.append({"attribute": a, "group": "all", "cls": "all", "metric": "*",
                               "reason": "attribute not in the manifest", "count": len(df)})
    return result
