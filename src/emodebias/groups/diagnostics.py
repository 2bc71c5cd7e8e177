"""How good are inferred groups? Agreement with every known attribute, and usable group sizes.

Scores (rows where the group is -1 or the attribute is NA are left out and counted):
- ``purity``: share of utterances whose attribute value is their group's majority value; this
  is also the accuracy of mapping every group to its majority value (many-to-one), the right
  accuracy when k exceeds the number of attribute values.
- ``hungarian_acc``: accuracy after the best one-to-one matching of groups to values
  (scipy ``linear_sum_assignment``); invariant to relabelling; with k > #values the unmatched
  groups count as errors.
- ``nmi`` and ``ari`` (scikit-learn; NMI with the arithmetic mean): ~0 for random groups.
- ``label_acc``: plain accuracy when group names are attribute values (pseudo-labels F/M).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from emodebias.groups.assignment import GroupAssignment

if TYPE_CHECKING:
    from emodebias.data.manifest import Manifest

ATTRIBUTES = ("gender", "age_group", "race")


def contingency(groups: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Counts [n_groups_seen, n_values] and the value names (sorted), for known rows only."""
    value_names = sorted(pd.unique(values).tolist(), key=str)
    codes = pd.Categorical(values, categories=value_names).codes
    group_codes = pd.Categorical(groups, categories=sorted(np.unique(groups).tolist())).codes
    table = np.zeros((group_codes.max(initial=-1) + 1, len(value_names)), dtype=np.int64)
    np.add.at(table, (group_codes, codes), 1)
    return table, [str(v) for v in value_names]


def hungarian_accuracy(table: np.ndarray) -> float:
    """Best one-to-one group->value matching accuracy from a contingency table."""
    from scipy.optimize import linear_sum_assignment

    if table.sum() == 0:
        return float("nan")
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def purity(table: np.ndarray) -> float:
    """Many-to-one (majority value per group) accuracy."""
    return float(table.max(axis=1).sum() / table.sum()) if table.sum() else float("nan")


def score(groups: np.ndarray, values: np.ndarray, names: list[str] | None = None) -> dict:
    """All agreement scores of one labelling against one attribute (known rows only)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    groups = np.asarray(groups)
    values = np.asarray(values, dtype=object)
    table, value_names = contingency(groups, values)
    out = {"n_scored": int(len(groups)), "n_values": len(value_names),
           "purity": purity(table), "hungarian_acc": hungarian_accuracy(table),
           "nmi": float(normalized_mutual_info_score(values.astype(str), groups)),
           "ari": float(adjusted_rand_score(values.astype(str), groups)),
           "label_acc": float("nan")}
    if names is not None and set(value_names) <= set(names):
        predicted = np.asarray(names, dtype=object)[groups]
        out["label_acc"] = float(np.mean(predicted == values.astype(str)))
    return out


def _attribute_values(manifest: Manifest, assignment: GroupAssignment,
                      attribute: str) -> np.ndarray:
    """The attribute per assignment row (NA where unknown or not in the manifest)."""
    col = manifest.df[attribute]
    pos = pd.Index(manifest.df["utt_id"].astype(str)).get_indexer(pd.Index(assignment.utt_ids))
    values = np.full(len(pos), None, dtype=object)
    hit = pos >= 0
    picked = col.to_numpy(dtype=object)[pos[hit]]
    known = pd.notna(picked)
    values[np.flatnonzero(hit)[known]] = [_text(v) for v in picked[known]]
    return values


def _text(value: object) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def diagnose(assignment: GroupAssignment, manifest: Manifest,
             attributes: tuple[str, ...] | list[str] = ATTRIBUTES, *,
             train_ids: list[str] | None = None, min_size: int = 2) -> pd.DataFrame:
    """One row per known attribute: purity, NMI, ARI, Hungarian and label accuracy, coverage.

    ``size_min``/``size_max`` are the smallest/largest group (training utterances when
    `train_ids` is given, else all). Attributes missing from the manifest are skipped (listed
    in ``df.attrs["skipped"]``); ``df.attrs["warnings"]`` holds `size_warnings` (groups too
    small for training methods).
    """
    rows, skipped = [], []
    ids = assignment.ids
    sizes = group_sizes(assignment, train_ids)
    counts = sizes["n_train" if train_ids is not None else "n"]
    for attribute in attributes:
        if attribute not in manifest.df.columns:
            skipped.append(attribute)
            continue
        values = _attribute_values(manifest, assignment, attribute)
        known = (ids >= 0) & pd.notna(values)
        row = {"source": assignment.source, "attribute": attribute,
               "n_groups": assignment.n_groups, "n_unscored": int((~known).sum()),
               "size_min": int(counts.min()), "size_max": int(counts.max())}
        if known.any():
            row.update(score(ids[known], values[known], assignment.names))
        else:
            row.update({"n_scored": 0, "n_values": 0})
        rows.append(row)
    columns = ["source", "attribute", "n_groups", "size_min", "size_max", "n_values", "n_scored",
               "n_unscored", "purity", "hungarian_acc", "nmi", "ari", "label_acc"]
    table = pd.DataFrame(rows).reindex(columns=columns)
    table.attrs["skipped"] = skipped
    table.attrs["warnings"] = size_warnings(assignment, manifest, train_ids, min_size)
    return table


def composition(assignment: GroupAssignment, manifest: Manifest, attribute: str) -> pd.DataFrame:
    """Group x attribute-value counts (the cross-table behind the scores; NA as 'NA')."""
    values = _attribute_values(manifest, assignment, attribute)
    values = np.where(pd.isna(values), "NA", values)
    names = np.asarray([*assignment.names, "unknown"], dtype=object)[assignment.ids]
    return pd.crosstab(pd.Categorical(names, [*assignment.names, "unknown"]), values,
                       dropna=False, rownames=["group"], colnames=[attribute])


def group_sizes(assignment: GroupAssignment, train_ids: list[str] | None = None) -> pd.DataFrame:
    """Per group: utterances overall and (with `train_ids`) in train."""
    sizes = pd.DataFrame({"group": assignment.names,
                          "n": np.bincount(assignment.ids[assignment.ids >= 0],
                                           minlength=assignment.n_groups)})
    if train_ids is not None:
        train = assignment.align(list(train_ids)).ids
        sizes["n_train"] = np.bincount(train[train >= 0], minlength=assignment.n_groups)
    return sizes


def size_warnings(assignment: GroupAssignment, manifest: Manifest | None = None,
                  train_ids: list[str] | None = None, min_size: int = 2) -> list[str]:
    """Groups a training method cannot use well: too few (train) utterances, or a class missing.

    DS keeps min over groups of n(class, group) per class, so one group without a class removes
    that class from DS training; GDRO/GADRO never see a group that is empty in train.
    """
    sizes = group_sizes(assignment, train_ids)
    col = "n_train" if train_ids is not None else "n"
    where = "training utterances" if train_ids is not None else "utterances"
    out = [f"group {g!r} has {n} {where} (< min_size={min_size})"
           for g, n in zip(sizes["group"], sizes[col], strict=True) if n < min_size]
    if manifest is None or train_ids is None or not (manifest.has_soft or manifest.has_votes):
        return out
    from emodebias.data.labels import strict_majority

    labels = manifest.soft_labels() if manifest.has_soft else manifest.votes()
    rows = manifest.index_of(list(train_ids))
    major = strict_majority(labels[rows]) if manifest.has_soft else \
        strict_majority(labels[rows], smoothed=False)
    groups = assignment.align(list(train_ids)).ids
    ok = (major >= 0) & (groups >= 0)
    cells = np.zeros((len(manifest.classes), assignment.n_groups), dtype=np.int64)
    np.add.at(cells, (major[ok], groups[ok]), 1)
    for c, cls in enumerate(manifest.classes):
        empty = [assignment.names[g] for g in np.flatnonzero(cells[c] == 0)
                 if sizes[col].iloc[g] > 0]
        if cells[c].sum() and empty:
            out.append(f"class {cls!r} has no majority-labelled training utterance in group(s) "
                       f"{empty[:8]}{' ...' if len(empty) > 8 else ''}: DS drops that class")
    return out
