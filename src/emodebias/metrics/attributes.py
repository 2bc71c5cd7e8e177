"""Demographic attributes -> integer group codes for evaluation.

An attribute is any per-utterance column (array, list, Series, Categorical) or a DataFrame column;
missing values (None/NaN/pd.NA) become code -1 and are excluded from that attribute only. Groups are
the observed values in sorted order, or, for a pandas Categorical, all its categories: a category
with no utterance is then an *absent group*, which `evaluate` reports. Intersections
(e.g. gender × age_group) are attributes of their own, named ``"gender×age_group"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emodebias.errors import UserError

JOIN = "×"
MAX_NUMERIC_LEVELS = 8  # a numeric attribute with more distinct values must be binned first


class MetricsInputError(UserError):
    """Predictions, targets or attributes that cannot be scored; the message says which."""


@dataclass
class Attribute:
    """One attribute as codes ``[N]`` (−1 = missing) into `names`."""

    name: str
    codes: np.ndarray
    names: list[str]

    @property
    def n_missing(self) -> int:
        return int((self.codes < 0).sum())

    def onehot(self) -> np.ndarray:
        """``[N, G]`` float indicator; rows with a missing value are all zero."""
        out = np.zeros((len(self.codes), len(self.names)))
        known = self.codes >= 0
        out[np.flatnonzero(known), self.codes[known]] = 1.0
        return out


def encode(name: str, values: object, n: int) -> Attribute:
    """Codes for one attribute column of length `n`."""
    if isinstance(values, pd.Series):
        series = values
    elif isinstance(values, pd.Categorical):
        series = pd.Series(values)
    else:
        series = pd.Series(_as_1d(name, values))
    if len(series) != n:
        raise MetricsInputError(f"attribute {name!r} has {len(series)} values for {n} utterances")
    series = series.reset_index(drop=True)
    if isinstance(series.dtype, pd.CategoricalDtype):
        names = [str(c) for c in series.cat.categories]
        codes = series.cat.codes.to_numpy(np.int64)
    else:
        _refuse_continuous(name, series)
        missing = series.isna().to_numpy()
        raw = series.to_numpy(object)
        labels = [None if miss else str(v) for v, miss in zip(raw, missing, strict=True)]
        names = sorted({v for v in labels if v is not None})
        lookup = {v: i for i, v in enumerate(names)}
        codes = np.array([-1 if v is None else lookup[v] for v in labels], dtype=np.int64)
    if len(set(names)) != len(names):
        raise MetricsInputError(f"attribute {name!r} has groups that print alike: {names}")
    return Attribute(name, codes, names)


def _refuse_continuous(name: str, series: pd.Series) -> None:
    """A numeric column with many values (e.g. age in years) is not a set of groups."""
    numeric = pd.to_numeric(series.dropna(), errors="coerce")
    if series.dtype == bool or len(numeric) == 0 or numeric.isna().any():
        return
    levels = numeric.nunique()
    if levels > MAX_NUMERIC_LEVELS:
        lo, hi = numeric.min(), numeric.max()
        raise MetricsInputError(
            f"attribute {name!r} is numeric with {levels} distinct values ({lo:g}..{hi:g}); "
            f"bin it into groups first: CLI --bin {name}=EDGE,EDGE,... (e.g. --bin {name}=20,36,50)"
            f", Python bin_attribute(values, [20, 36, 50]), or use a categorical column")


def bin_attribute(values: object, edges: Iterable[float]) -> pd.Categorical:
    """Numeric values -> ordered groups cut at `edges`: ``<20``, ``20–36``, ..., ``≥50``.

    Each bin holds its lower edge (``20–36`` is 20 <= x < 36); missing values stay missing.
    """
    edges = sorted(float(e) for e in edges)
    if not edges or len(set(edges)) != len(edges):
        raise MetricsInputError(f"bin edges must be distinct numbers, got {edges}")
    x = pd.to_numeric(pd.Series(values), errors="coerce")
    bad = pd.Series(values).notna() & x.isna()
    if bad.any():
        raise MetricsInputError(f"cannot bin non-numeric values, e.g. rows "
                                f"{np.flatnonzero(bad.to_numpy())[:5].tolist()}")
    fmt = [f"{e:g}" for e in edges]
    inner = [f"{a}–{b}" for a, b in zip(fmt, fmt[1:], strict=False)]
    labels = [f"<{fmt[0]}", *inner, f"≥{fmt[-1]}"]
    return pd.cut(x, [-np.inf, *edges, np.inf], right=False, labels=labels).array


def parse_bins(specs: Iterable[str]) -> dict[str, list[float]]:
    """``["age=20,36,50"]`` -> ``{"age": [20.0, 36.0, 50.0]}`` (the CLI's --bin option)."""
    out = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        try:
            edges = [float(v) for v in rest.split(",") if v.strip()]
        except ValueError:
            edges = []
        if not sep or not name.strip() or not edges:
            raise MetricsInputError(f"--bin takes NAME=EDGE,EDGE,... (e.g. age=20,36,50), "
                                    f"got {spec!r}")
        out[name.strip()] = edges
    return out


def intersect(parts: list[Attribute]) -> Attribute:
    """The cross product of attributes; missing when any part is missing.

    Groups are every combination of the parts' groups, so a combination with no utterance (e.g.
    no elderly women in a test fold) is reported as absent rather than silently ignored.
    """
    name = JOIN.join(p.name for p in parts)
    sizes = [len(p.names) for p in parts]
    codes = np.zeros(len(parts[0].codes), dtype=np.int64)
    missing = np.zeros(len(codes), dtype=bool)
    for p, size in zip(parts, sizes, strict=True):
        codes = codes * size + np.maximum(p.codes, 0)
        missing |= p.codes < 0
    grids = np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij")
    combos = np.stack([g.ravel() for g in grids], axis=1)
    names = [JOIN.join(p.names[i] for p, i in zip(parts, row, strict=True)) for row in combos]
    return Attribute(name, np.where(missing, -1, codes), names)


def encode_all(attributes: Mapping[str, object] | pd.DataFrame | None, n: int,
               intersections: Iterable[Iterable[str]] = ()) -> list[Attribute]:
    """Every attribute of a dict or DataFrame, then the requested intersections."""
    if attributes is None:
        attributes = {}
    if isinstance(attributes, pd.DataFrame):
        attributes = {str(c): attributes[c] for c in attributes.columns}
    out = [encode(str(k), v, n) for k, v in attributes.items()]
    by_name = {a.name: a for a in out}
    for combo in intersections:
        combo = list(combo)
        unknown = [c for c in combo if c not in by_name]
        if len(combo) < 2 or unknown:
            raise MetricsInputError(
                f"intersection {combo} needs >= 2 known attributes; unknown: {unknown}, "
                f"known: {sorted(by_name)}")
        out.append(intersect([by_name[c] for c in combo]))
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        raise MetricsInputError(f"duplicate attribute names: {names}")
    return out


def _as_1d(name: str, values: object) -> np.ndarray:
    arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        raise MetricsInputError(f"attribute {name!r} must be 1-D, got shape {arr.shape}")
    return arr
