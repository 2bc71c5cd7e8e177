"""Ground-truth groups from manifest columns (one attribute, or the intersection of several).

An utterance with NA in any of the named columns gets group -1 (unknown), and is counted in
``info["n_unknown"]``. Group names join the column values with ``|`` (e.g. ``F|Young``), ordered
by the columns' natural value order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from emodebias.data.manifest import ManifestError
from emodebias.groups.assignment import GroupAssignment

if TYPE_CHECKING:
    from emodebias.data.manifest import Manifest

SEPARATOR = "|"


def _label(value: object) -> str:
    """'30' rather than '30.0' for whole numbers stored as float (a column with NAs)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def truth_groups(manifest: Manifest, columns: list[str] | str = "gender") -> GroupAssignment:
    """Group per utterance from `columns`; several columns give their intersections."""
    cols = [columns] if isinstance(columns, str) else list(columns)
    if not cols:
        raise ManifestError("truth_groups needs at least one manifest column")
    missing = [c for c in cols if c not in manifest.df.columns]
    if missing:
        raise ManifestError(f"manifest has no column(s) {missing}; "
                         f"columns: {list(manifest.df.columns)}")
    df = manifest.df[cols]
    known = df.notna().all(axis=1).to_numpy()
    grouped = df.groupby(cols, sort=True, dropna=True)
    ids = grouped.ngroup().to_numpy(dtype=float)
    ids = np.where(known & np.isfinite(ids), ids, -1).astype(np.int64)
    n_groups = int(ids.max(initial=-1)) + 1
    first = [int(np.flatnonzero(ids == g)[0]) for g in range(n_groups)]
    names = [SEPARATOR.join(_label(df[c].iloc[i]) for c in cols) for i in first]
    counts = np.bincount(ids[ids >= 0], minlength=len(names))
    info = {"columns": cols, "n_unknown": int((ids < 0).sum()),
            "sizes": {n: int(c) for n, c in zip(names, counts, strict=True)}}
    return GroupAssignment(manifest.utt_ids, ids, names, f"truth:{'+'.join(cols)}", None, info)
