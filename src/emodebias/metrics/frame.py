"""A fairlearn-`MetricFrame`-shaped view of multi-label SER predictions.

fairlearn scores one binary decision per call; multi-label SER makes K decisions per utterance.
`MetricFrame` here computes every per-class rate for every group at once and lays it out the way
fairlearn does, with a class level added to the columns: ``by_group`` is indexed by group (one
level per sensitive feature, intersections as a MultiIndex like fairlearn) with columns
``(metric, class)``; ``overall``, ``difference``, ``ratio``, ``group_min`` and ``group_max`` are
Series indexed by ``(metric, class)``. Column ``c`` of each equals fairlearn's MetricFrame run on
class ``c`` alone (recall_score, false_positive_rate, selection_rate, f1_score, accuracy_score).

Multi-label summaries aggregate over classes explicitly (``agg="rms"``, the papers' rule, or
``"max"``/``None``). With `n_boot` > 0 the speaker bootstrap (stratified by group) adds
intervals: percentile for rates, bias-corrected percentile for differences (absolute
differences are biased upward; see `inference`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from emodebias.metrics import inference, rates
from emodebias.metrics.attributes import MetricsInputError
from emodebias.metrics.evaluate import (
    _as_counts,
    _base,
    _binarize,
    _class_names,
    _classes_and_arrays,
    _speaker_codes,
    _unit_sums,
)

METRICS = {
    "tpr": rates.tpr,
    "fpr": rates.fpr,
    "ppr": rates.ppr,
    "f1": lambda c: rates.f1(c, zero_division=0.0),
    "acc": lambda c: 1.0 - rates.safe_div(c.fp + c.fn, np.broadcast_to(c.n[..., None],
                                                                        c.tp.shape)),
}
AGG = ("rms", "max", None)


class MetricFrame:
    """Per-group, per-class rates of multi-label predictions (keyword-only construction).

    `y_true` soft or binary targets ``[N, K]`` (positive > 1/K); `y_pred` probabilities or 0/1
    decisions ``[N, K]`` (positive > `threshold`, 1/K by default); `sensitive_features` one
    column (array/Series) or several (DataFrame/dict: groups are their intersections).
    """

    def __init__(self, *, y_true: np.ndarray | pd.DataFrame, y_pred: np.ndarray | pd.DataFrame,
                 sensitive_features: object, metrics: Iterable[str] = tuple(METRICS),
                 threshold: float | None = None, classes: list[str] | None = None,
                 speakers: Iterable | None = None, n_boot: int = 0, seed: int = 0,
                 ci: float = 0.95) -> None:
        classes, y_true, y_pred = _classes_and_arrays(y_true, y_pred, classes)
        y, p = _binarize(y_true, y_pred, threshold)
        self.classes = _class_names(classes, y.shape[1])
        self.metrics = list(metrics)
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise MetricsInputError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
        codes, self._index = _groups(sensitive_features, len(y))
        keep = codes >= 0
        base = _base(y, p)[keep]
        self._k, self.ci, self.n_boot = y.shape[1], ci, int(n_boot)
        self._codes, self._base = codes[keep], base
        self._point = self._group_counts(np.ones((1, len(base))), np.arange(len(base)),
                                         self._codes)
        self._boot = None
        if n_boot > 0:
            units, strata = _unit_sums(base, _speaker_codes(speakers, len(y))[keep], self._codes)
            w = inference.stratified_weights(np.random.default_rng(seed), strata, n_boot)
            self._boot = self._group_counts(w, None, strata, units)
            n = np.bincount(strata).min()
            self._inflate = float(np.sqrt(n / max(n - 1, 1)))

    # ------------------------------------------------------------------ computation
    def _group_counts(self, w: np.ndarray, rows: np.ndarray | None, group: np.ndarray,
                      sums: np.ndarray | None = None) -> tuple[rates.Counts, rates.Counts]:
        sums = self._base if sums is None else sums
        g = inference.group_sums(w, sums, group, len(self._index))
        return _as_counts(g, self._k), _as_counts(g.sum(-2), self._k)

    def _values(self, which: str) -> np.ndarray:
        """``[B, G+1, M·K]``: group rates then overall (columns metric-major), for the point
        (B=1) or the resamples."""
        groups, overall = self._point if which == "point" else self._boot
        out = [np.concatenate([METRICS[m](groups), METRICS[m](overall)], axis=-2)
               for m in self.metrics]
        return np.concatenate(out, axis=-1)

    def _columns(self) -> pd.MultiIndex:
        return pd.MultiIndex.from_product([self.metrics, self.classes], names=["metric", "cls"])

    def _frame(self, v: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(v.reshape(len(self._index), -1), index=self._index,
                            columns=self._columns())

    def _series(self, v: np.ndarray) -> pd.Series:
        return pd.Series(v.reshape(-1), index=self._columns())

    def _stat(self, fn, *, ci: bool, gap: bool = False) -> pd.Series | pd.DataFrame:  # noqa: ANN001
        point = fn(self._values("point")[0])
        if not ci:
            return self._series(point)
        if self._boot is None:
            raise MetricsInputError("intervals need n_boot > 0 (and speakers) at construction")
        if gap:  # the spread is the groups' values; `fn` maps it to the difference
            est, lo, hi = inference.shrunk_interval(
                self._values("point")[0], self._values("boot"), fn, ci=self.ci,
                inflate=self._inflate)
            cols = {"value": self._series(point), "value_bc": self._series(est)}
        else:
            lo, hi = inference.percentile_interval(np.moveaxis(fn(self._values("boot")), 0, -1),
                                                   self.ci)
            cols = {"value": self._series(point)}
        return pd.DataFrame({**cols, "ci_low": self._series(lo), "ci_high": self._series(hi)})

    # ------------------------------------------------------------------ fairlearn-shaped API
    @property
    def by_group(self) -> pd.DataFrame:
        """Rates per group (rows) and (metric, class) (columns)."""
        return self._frame(self._values("point")[0, :-1])

    @property
    def overall(self) -> pd.Series:
        return self._series(self._values("point")[0, -1])

    def by_group_ci(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(low, high) percentile bounds shaped like `by_group`."""
        if self._boot is None:
            raise MetricsInputError("intervals need n_boot > 0 (and speakers) at construction")
        lo, hi = inference.percentile_interval(np.moveaxis(self._values("boot")[:, :-1], 0, -1),
                                               self.ci)
        return self._frame(lo), self._frame(hi)

    def group_min(self, *, ci: bool = False) -> pd.Series | pd.DataFrame:
        return self._stat(lambda v: np.nanmin(v[..., :-1, :], axis=-2), ci=ci)

    def group_max(self, *, ci: bool = False) -> pd.Series | pd.DataFrame:
        return self._stat(lambda v: np.nanmax(v[..., :-1, :], axis=-2), ci=ci)

    def difference(self, *, method: str = "between_groups",
                   ci: bool = False) -> pd.Series | pd.DataFrame:
        """Largest minus smallest group value, or the largest |group − overall| ("to_overall")."""
        _check_method(method)
        if method == "between_groups":
            fn = lambda v: np.nanmax(v[..., :-1, :], -2) - np.nanmin(v[..., :-1, :], -2)  # noqa: E731
        else:
            fn = lambda v: np.nanmax(np.abs(v[..., :-1, :] - v[..., -1:, :]), -2)  # noqa: E731
        return self._stat(fn, ci=ci, gap=True)

    def ratio(self, *, method: str = "between_groups",
              ci: bool = False) -> pd.Series | pd.DataFrame:
        """Smallest over largest group value, or the smallest group/overall ratio (≤ 1)."""
        _check_method(method)
        if method == "between_groups":
            def fn(v: np.ndarray) -> np.ndarray:
                return rates.safe_div(np.nanmin(v[..., :-1, :], -2), np.nanmax(v[..., :-1, :], -2))
        else:
            def fn(v: np.ndarray) -> np.ndarray:
                r = rates.safe_div(v[..., :-1, :], np.broadcast_to(v[..., -1:, :],
                                                                  v[..., :-1, :].shape))
                return np.nanmin(np.where(r > 1, 1 / r, r), axis=-2)
        return self._stat(fn, ci=ci)

    # ------------------------------------------------------------------ multi-label summaries
    def equalized_odds_difference(self, *, method: str = "between_groups",
                                  agg: str | None = "rms") -> pd.Series | float:
        """Per class the larger of the TPR and FPR differences (fairlearn's definition),
        aggregated over classes by `agg` ("rms", "max", or None for the per-class Series)."""
        d = self._only(("tpr", "fpr")).difference(method=method)
        per_class = np.maximum(d["tpr"], d["fpr"])
        return _aggregate(per_class, agg)

    def demographic_parity_difference(self, *, method: str = "between_groups",
                                      agg: str | None = "rms") -> pd.Series | float:
        """Per class the selection-rate (PPR) difference, aggregated over classes by `agg`."""
        return _aggregate(self._only(("ppr",)).difference(method=method)["ppr"], agg)

    def _only(self, metrics: tuple[str, ...]) -> MetricFrame:
        if all(m in self.metrics for m in metrics):
            return self
        raise MetricsInputError(f"this summary needs metrics {list(metrics)}; construct the "
                                f"frame with them (has {self.metrics})")


def _check_method(method: str) -> None:
    if method not in ("between_groups", "to_overall"):
        raise MetricsInputError(f"method must be 'between_groups' or 'to_overall', got "
                                f"{method!r}")


def _aggregate(per_class: pd.Series, agg: str | None) -> pd.Series | float:
    if agg is None:
        return per_class
    if agg == "rms":
        return float(np.sqrt(np.mean(per_class.to_numpy(float) ** 2)))
    if agg == "max":
        return float(per_class.max())
    raise MetricsInputError(f"agg must be one of {AGG}, got {agg!r}")


def _groups(features: object, n: int) -> tuple[np.ndarray, pd.Index]:
    """Group code per utterance (−1 where any feature is missing) and the group index."""
    if isinstance(features, Mapping):
        features = pd.DataFrame({str(k): list(v) for k, v in features.items()})
    if isinstance(features, pd.DataFrame):
        df = features.reset_index(drop=True)
    else:
        s = features if isinstance(features, pd.Series) else pd.Series(np.asarray(features))
        df = s.reset_index(drop=True).to_frame(s.name if s.name is not None
                                              else "sensitive_feature_0")
    if len(df) != n:
        raise MetricsInputError(f"sensitive_features has {len(df)} rows for {n} utterances")
    by = list(df.columns) if df.shape[1] > 1 else df.columns[0]
    grouped = df.groupby(by, sort=True, observed=True, dropna=True)
    codes = grouped.ngroup().to_numpy()
    codes = np.where(df.isna().any(axis=1).to_numpy(), -1, codes)
    keys = list(grouped.groups.keys())
    if len(keys) < 1:
        raise MetricsInputError("sensitive_features has no known values")
    if df.shape[1] == 1:
        index = pd.Index([k[0] if isinstance(k, tuple) else k for k in keys], name=df.columns[0])
    else:
        index = pd.MultiIndex.from_tuples(keys, names=list(df.columns))
    return codes.astype(np.int64), index
