"""Read predictions from any of the formats users have, and score them.

Accepted sources (`read_predictions`):

* a table, CSV or Parquet: one row per utterance with probability columns ``prob_<class>``,
  optional target columns ``label_<class>`` (soft or binary), and any other columns (speaker,
  attributes, utt_id);
* an ``.npz`` with ``utt_ids``, ``probs`` ``[N, K]``, optional ``targets``, ``classes`` and any
  1-D per-utterance arrays (speaker, gender, ...). Arrays of Python strings saved by numpy as
  object arrays load through a restricted reader that accepts only numpy arrays of plain values
  (no arbitrary unpickling);
* a run folder (a directory with ``predictions.npz``);
* a dict of the same arrays.

`evaluate_predictions` takes targets, speakers and attributes from the predictions or, for what
they lack, from a manifest, reordering classes to the manifest's by name (different class names
are refused, naming both lists).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emodebias.data.manifest import Manifest
from emodebias.metrics.attributes import MetricsInputError, bin_attribute
from emodebias.metrics.evaluate import MetricsResult, align_classes, evaluate

PREDICTIONS_FILE = "predictions.npz"
DEFAULT_ATTRIBUTES = ("gender", "age_group", "race")


@dataclass
class Predictions:
    """Loaded predictions: `probs` [N, K], optional `targets`, `classes`, `utt_ids`, and the
    other per-utterance columns (`columns`)."""

    probs: np.ndarray
    targets: np.ndarray | None
    classes: list[str] | None
    utt_ids: np.ndarray | None
    columns: pd.DataFrame
    where: str


# ----------------------------------------------------------------------------- npz
class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays of plain Python values only (what np.save writes for object
    arrays of strings); any other class is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's signature)
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    data = {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            raw = zf.read(member)
            key = member[:-4] if member.endswith(".npy") else member
            try:
                data[key] = np.load(io.BytesIO(raw), allow_pickle=False)
            except ValueError:  # an object array: only plain values are accepted
                buf = io.BytesIO(raw)
                major, _ = np.lib.format.read_magic(buf)
                (np.lib.format.read_array_header_1_0 if major == 1
                 else np.lib.format.read_array_header_2_0)(buf)
                try:
                    arr = _ArrayOnlyUnpickler(buf).load()
                except (pickle.UnpicklingError, EOFError, AttributeError) as exc:
                    raise MetricsInputError(f"{path}: array {key!r} cannot be read safely "
                                            f"({exc}); save it as strings or numbers") from None
                bad = [type(v).__name__ for v in np.ravel(arr)
                       if v is not None and not isinstance(v, (str, int, float, bool))]
                if bad:
                    raise MetricsInputError(f"{path}: array {key!r} holds {bad[0]} objects; "
                                            "save it as strings or numbers") from None
                data[key] = np.asarray(arr)
    return data


# ----------------------------------------------------------------------------- reading
def read_predictions(source: str | Path | Mapping, *, prob_prefix: str = "prob_",
                     label_prefix: str = "label_", utt_id: str = "utt_id") -> Predictions:
    """Predictions from a table, an ``.npz``, a run folder or a dict (see the module doc)."""
    if isinstance(source, Mapping):
        return _from_arrays(dict(source), "predictions dict")
    path = Path(source)
    if path.is_dir():
        if not (path / PREDICTIONS_FILE).is_file():
            inside = sorted(p.name for p in path.iterdir())[:10]
            raise MetricsInputError(f"{path} is a folder without {PREDICTIONS_FILE} (has "
                                    f"{inside}); pass a run folder or a predictions file")
        path = path / PREDICTIONS_FILE
    if not path.is_file():
        raise MetricsInputError(f"no predictions file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            return _from_arrays(_read_npz(path), str(path))
        except zipfile.BadZipFile:
            raise MetricsInputError(f"{path} is not a valid .npz file") from None
    if suffix in (".csv", ".tsv", ".txt"):
        df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    elif suffix in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise MetricsInputError(f"{path} is not a readable Parquet file ({exc})") from None
    else:
        raise MetricsInputError(f"{path}: unknown predictions format {suffix!r}; use .csv, "
                                ".parquet, .npz or a run folder")
    return _from_table(df, str(path), prob_prefix, label_prefix, utt_id)


def _from_table(df: pd.DataFrame, where: str, prob_prefix: str, label_prefix: str,
                utt_id: str) -> Predictions:
    prob_cols = [c for c in df.columns if str(c).startswith(prob_prefix)]
    if not prob_cols:
        raise MetricsInputError(f"{where} has no probability columns {prob_prefix}<class> "
                                f"(columns: {list(map(str, df.columns))[:12]}); name them so "
                                "or pass --prob-prefix")
    classes = [str(c)[len(prob_prefix):] for c in prob_cols]
    label_cols = [c for c in df.columns if str(c).startswith(label_prefix)]
    targets = None
    if label_cols:
        named = [str(c)[len(label_prefix):] for c in label_cols]
        if sorted(named) != sorted(classes):
            raise MetricsInputError(f"{where}: target columns name classes {named}, "
                                    f"probability columns {classes}")
        targets = _numeric(df[[f"{label_prefix}{c}" for c in classes]], where)
    probs = _numeric(df[prob_cols], where)
    ids = df[utt_id].astype(str).to_numpy() if utt_id in df.columns else None
    rest = df.drop(columns=prob_cols + label_cols).reset_index(drop=True)
    return Predictions(probs, targets, classes, ids, rest, where)


def _numeric(df: pd.DataFrame, where: str) -> np.ndarray:
    values = df.apply(pd.to_numeric, errors="coerce")
    bad = values.isna() & df.notna()
    if bad.any().any():
        col = bad.any().idxmax()
        row = int(np.flatnonzero(bad[col].to_numpy())[0])
        raise MetricsInputError(f"{where}: column {col!r} row {row} is not a number "
                                f"({df[col].iloc[row]!r})")
    return values.to_numpy(np.float64)


def _from_arrays(data: dict, where: str) -> Predictions:
    if "probs" not in data:
        raise MetricsInputError(f"{where} lacks 'probs' (has {sorted(data)})")
    probs = np.asarray(data.pop("probs"), dtype=np.float64)
    if probs.ndim != 2:
        raise MetricsInputError(f"{where}: probs must be [N, K], got shape {probs.shape}")
    n = len(probs)
    targets = data.pop("targets", None)
    if targets is not None:
        targets = np.asarray(targets, dtype=np.float64)
    classes = data.pop("classes", None)
    classes = None if classes is None else [str(c) for c in np.asarray(classes).ravel()]
    ids = data.pop("utt_ids", None)
    if ids is not None:
        ids = np.asarray(ids).astype(str)
        if len(ids) != n:
            raise MetricsInputError(f"{where}: {len(ids)} utt_ids for {n} rows of probs")
    cols = {}
    for key, value in data.items():
        arr = np.asarray(value)
        if arr.ndim == 1 and len(arr) == n:
            cols[key] = arr.astype(str) if arr.dtype.kind in "OSU" else arr
    return Predictions(probs, targets, classes, ids, pd.DataFrame(cols), where)


def load_predictions(source: str | Path | Mapping) -> dict[str, np.ndarray]:
    """The arrays of a predictions file (or dict): utt_ids [N], probs [N, K], optional targets."""
    pred = read_predictions(source)
    if pred.utt_ids is None:
        raise MetricsInputError(f"{pred.where} lacks ['utt_ids']")
    out = {"utt_ids": pred.utt_ids, "probs": pred.probs}
    if pred.targets is not None:
        out["targets"] = pred.targets
    if pred.classes is not None:
        out["classes"] = np.asarray(pred.classes)
    return out


# ----------------------------------------------------------------------------- scoring
def evaluate_predictions(
    source: str | Path | Mapping | Predictions,
    *,
    manifest: Manifest | str | Path | None = None,
    attributes: Iterable[str] | None = None,
    intersections: Iterable[Iterable[str]] = (),
    bins: Mapping[str, Iterable[float]] | None = None,
    speaker: str | None = "speaker",
    utt_id: str = "utt_id",
    prob_prefix: str = "prob_",
    label_prefix: str = "label_",
    **kwargs: object,
) -> MetricsResult:
    """Score predictions (table, ``.npz``, run folder, dict) with intervals and nulls.

    `attributes` None takes those of gender, age_group and race that exist; a named attribute
    that neither the predictions nor the manifest have is an error. `bins` cuts numeric
    attributes into groups (``{"age": [20, 36, 50]}``). `speaker` names the speaker column
    (None: utterances are resampled as if independent). Other keywords go to `evaluate`
    (n_boot and n_perm default to 1000 here, as in the CLI; min_speakers, threshold, ...).
    """
    kwargs.setdefault("n_boot", 1000)
    kwargs.setdefault("n_perm", 1000)
    pred = source if isinstance(source, Predictions) else read_predictions(
        source, prob_prefix=prob_prefix, label_prefix=label_prefix, utt_id=utt_id)
    frame = pred.columns.reset_index(drop=True)
    probs, targets, classes = pred.probs, pred.targets, pred.classes
    if manifest is not None:
        if not isinstance(manifest, Manifest):
            manifest = Manifest.load(manifest)
        if pred.utt_ids is None:
            raise MetricsInputError(f"{pred.where} has no {utt_id!r} column to match the "
                                    "manifest's utterances; add it or pass --utt-id")
        if classes is None and probs.shape[1] != len(manifest.classes):
            raise MetricsInputError(f"{pred.where}: probs have {probs.shape[1]} columns; the "
                                    f"manifest has {len(manifest.classes)} classes "
                                    f"{manifest.classes}")
        order = align_classes(classes, manifest.classes, pred.where)
        if order is not None:
            probs = probs[:, order]
            targets = None if targets is None else targets[:, order]
        classes = list(manifest.classes)
        rows = manifest.index_of(pred.utt_ids)
        mdf = manifest.df.iloc[rows].reset_index(drop=True)
        if targets is None:
            if not manifest.has_soft:
                raise MetricsInputError("the predictions have no targets and the manifest no "
                                        "soft labels")
            targets = manifest.soft_labels()[rows]
        extra = [c for c in mdf.columns if c not in frame.columns]
        frame = pd.concat([frame, mdf[extra]], axis=1)
    if targets is None:
        raise MetricsInputError(f"{pred.where} has no targets: add {label_prefix}<class> columns"
                                " (or a 'targets' array), or pass a manifest")
    for name, edges in (bins or {}).items():
        if name not in frame.columns:
            raise MetricsInputError(f"cannot bin {name!r}: no such column (have "
                                    f"{sorted(map(str, frame.columns))})")
        frame[name] = bin_attribute(frame[name], edges)
    if attributes is None:
        wanted = [a for a in DEFAULT_ATTRIBUTES if a in frame.columns]
    else:
        wanted = list(attributes)
        absent = [a for a in wanted if a not in frame.columns]
        if absent:
            raise MetricsInputError(
                f"attribute(s) {absent} not found in {pred.where}"
                f"{' or the manifest' if manifest is not None else ''}; available columns: "
                f"{sorted(map(str, frame.columns))}")
    for combo in intersections:
        missing = [a for a in combo if a not in wanted]
        if missing:
            raise MetricsInputError(f"intersection {list(combo)} uses {missing}, which are not "
                                    f"among the attributes {wanted}")
    speakers = None
    if speaker is not None:
        if speaker not in frame.columns:
            raise MetricsInputError(f"no speaker column {speaker!r} in {pred.where}"
                                    f"{' or the manifest' if manifest is not None else ''}; "
                                    "name it with --speaker COLUMN (speaker=), or pass "
                                    "--speaker '' (speaker=None) to resample utterances as if "
                                    "independent")
        speakers = frame[speaker].to_numpy()
    result = evaluate(targets, probs, frame[wanted], speakers=speakers, classes=classes,
                      intersections=[tuple(c) for c in intersections], **kwargs)
    result.info["source"] = pred.where
    return result


def from_predictions(
    predictions: str | Path | Mapping,
    manifest: Manifest | str | Path,
    attributes: Iterable[str] | None = None,
    intersections: Iterable[Iterable[str]] = (),
    speaker_bootstrap: bool = True,
    **kwargs: object,
) -> MetricsResult:
    """`evaluate_predictions` against a manifest (targets, speakers and attributes from it)."""
    return evaluate_predictions(predictions, manifest=manifest, attributes=attributes,
                                intersections=intersections,
                                speaker="speaker" if speaker_bootstrap else None, **kwargs)
