"""Score multi-label SER predictions: accuracy overall and per group, fairness gaps, bootstrap CIs.

Conventions (PAPERS.md §4):

* Targets (soft y' or binary) are positive when > 1/K; predictions when > `threshold` (1/K by
  default, the EMO-SUPERB rule for softmax outputs). `threshold` applies to the predictions only:
  the label rule is part of the benchmark's definition.
* Macro-F1 is sklearn's ``f1_score(average='macro', zero_division=0)`` over the whole set; Hamming
  accuracy is the share of right (utterance, class) decisions.
* Per attribute, the groups compared are those with at least `min_support` utterances; rows whose
  attribute is missing are left out of that attribute only. Overall rates ``m_c`` inside a gap are
  taken over the utterances of the compared groups (so the two-group identity holds exactly).
* A class with fewer than `min_support` positives in some compared group is left out of that
  attribute's TPR and F1 gaps (F1 without positives is 0 whatever the model does); a class with
  too few negatives is left out of the FPR gap. Everything left out is listed in ``skipped``.
* Bootstrap: `n_boot` resamples of speakers (when `speakers` is given; all of a speaker's
  utterances move together, which respects the within-speaker correlation) or of utterances,
  drawn as multiplicity weights so every resample is one matrix product. The groups and classes
  that enter each gap are fixed by the point estimate; a resample in which one of them vanishes
  leaves that metric undefined and is dropped from its interval (counted in ``skipped``).
  Intervals are percentile intervals at level `ci`. Gaps are absolute values, so resampling noise
  pushes them up: for a gap near 0 the interval sits above the point estimate (read it as "the
  gap is at most ci_high"), while for a real gap it brackets the point estimate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from emodebias.labels import binarize
from emodebias.metrics import rates
from emodebias.metrics.attributes import Attribute, MetricsInputError, encode_all

ALL = "all"
GAP_METRICS = ("tpr_gap", "fpr_gap", "f1_gap", "dp_gap", "dp_gap_fairlib")
_BOOT_CELLS = 4_000_000  # resample weights held in memory at once (B_chunk × N)


@dataclass
class MetricsResult:
    """`table`: tidy rows (metric, attribute, group, cls, value, support); `summary`: headline
    numbers (finite floats only, with ``<key>.ci_low``/``<key>.ci_high`` after a bootstrap);
    `skipped`: what was left out and why (attribute, group, cls, metric, reason, count)."""

    table: pd.DataFrame
    summary: dict[str, float]
    skipped: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def skipped_frame(self) -> pd.DataFrame:
        cols = ["attribute", "group", "cls", "metric", "reason", "count"]
        return pd.DataFrame(self.skipped, columns=cols)

    def to_dict(self) -> dict:
        """JSON-ready form for run records."""
        table = self.table.astype(object).where(self.table.notna(), None)
        return {"summary": dict(self.summary), "table": table.to_dict(orient="records"),
                "skipped": list(self.skipped), "info": dict(self.info)}

    @classmethod
    def from_dict(cls, d: Mapping) -> MetricsResult:
        table = pd.DataFrame(d["table"], columns=["metric", "attribute", "group", "cls",
                                                  "value", "support"])
        table["value"] = table["value"].astype(float)
        return cls(table, dict(d["summary"]), list(d.get("skipped", [])), dict(d.get("info", {})))


@dataclass
class _Plan:
    """What enters one attribute's gaps, fixed by the point estimate."""

    attr: Attribute
    offset: int
    groups: np.ndarray  # bool [G]: compared groups
    classes: dict[str, np.ndarray]  # metric -> bool [K]


def evaluate(
    targets: np.ndarray,
    probs: np.ndarray,
    attributes: Mapping[str, object] | pd.DataFrame | None = None,
    threshold: float | None = None,
    speakers: Iterable | None = None,
    n_boot: int = 0,
    seed: int = 0,
    min_support: int = 1,
    classes: list[str] | None = None,
    intersections: Iterable[Iterable[str]] = (),
    ci: float = 0.95,
) -> MetricsResult:
    """Accuracy and fairness of predictions `probs` [N, K] against `targets` [N, K].

    `attributes` maps a name to a per-utterance column (NA allowed) or is a DataFrame;
    `intersections` adds crossed attributes such as ``("gender", "age_group")``.
    """
    y, p = _binarize(targets, probs, threshold)
    n, k = y.shape
    if min_support < 1:
        raise MetricsInputError(f"min_support must be >= 1, got {min_support}")
    if not 0 < ci < 1:
        raise MetricsInputError(f"ci must lie in (0, 1), got {ci}")
    classes = _class_names(classes, k)
    attrs = encode_all(attributes, n, intersections)
    design, offsets = _design(y, p, attrs)
    point = np.ones((1, n)) @ design
    skipped: list[dict] = []
    plans = [_plan(a, off, _counts(point, off, len(a.names), k), min_support, classes, skipped)
             for a, off in zip(attrs, offsets[1:], strict=True)]
    plans = [pl for pl in plans if pl is not None]

    values, terms = _metrics(point, k, plans)
    summary = {key: float(v[0]) for key, v in values.items() if np.isfinite(v[0])}
    info = {"n": n, "k": k, "classes": classes, "threshold": 1.0 / k if threshold is None
            else float(threshold), "min_support": min_support, "n_boot": int(n_boot),
            "seed": seed, "ci": ci}
    if n_boot > 0:
        units = _bootstrap_units(speakers, n)
        info["bootstrap_unit"] = "speaker" if speakers is not None else "utterance"
        info["n_units"] = int(units.max()) + 1
        boot = _bootstrap(design, units, k, plans, n_boot, seed)
        summary.update(_intervals(boot, summary, ci, skipped))
    table = _table(point, k, classes, attrs, offsets, plans, values, terms)
    return MetricsResult(table, summary, skipped, info)


# ----------------------------------------------------------------------------- inputs
def _binarize(targets: np.ndarray, probs: np.ndarray,
              threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    targets = np.asarray(targets, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if targets.ndim != 2 or targets.shape[1] < 2:
        raise MetricsInputError(f"targets must be [N, K>=2], got shape {targets.shape}")
    if probs.shape != targets.shape:
        raise MetricsInputError(f"probs shape {probs.shape} != targets shape {targets.shape}")
    if len(targets) == 0:
        raise MetricsInputError("no utterances to score")
    for name, arr in (("targets", targets), ("probs", probs)):
        bad = ~np.isfinite(arr).all(1)
        if name == "targets":
            bad |= ((arr < 0) | (arr > 1)).any(1)
        if bad.any():
            raise MetricsInputError(
                f"{name} has {int(bad.sum())} row(s) that are not finite"
                f"{' or outside [0, 1]' if name == 'targets' else ''}, "
                f"e.g. rows {np.flatnonzero(bad)[:5].tolist()}")
    return binarize(targets), binarize(probs, threshold)


def _class_names(classes: list[str] | None, k: int) -> list[str]:
    if classes is None:
        return [str(i) for i in range(k)]
    classes = [str(c) for c in classes]
    if len(classes) != k or len(set(classes)) != k:
        raise MetricsInputError(f"classes {classes} must be {k} distinct names")
    return classes


def _bootstrap_units(speakers: Iterable | None, n: int) -> np.ndarray:
    """Resampling unit per utterance: speaker codes, or one unit per utterance."""
    if speakers is None:
        return np.arange(n)
    s = pd.Series(list(speakers))
    if len(s) != n:
        raise MetricsInputError(f"speakers has {len(s)} entries for {n} utterances")
    if s.isna().any():
        raise MetricsInputError(
            f"speakers missing in rows {np.flatnonzero(s.isna().to_numpy())[:5].tolist()}")
    return pd.factorize(s.astype(str))[0].astype(np.int64)


# ----------------------------------------------------------------------------- counts
def _design(y: np.ndarray, p: np.ndarray,
            attrs: list[Attribute]) -> tuple[np.ndarray, list[int]]:
    """Per-utterance indicators [TP_k, FP_k, FN_k, 1], once overall and once per group.

    Weighted column sums of this matrix are every confusion count the metrics need, so a batch
    of resample weights W [B, N] gives all counts of all resamples as ``W @ design``.
    """
    base = np.concatenate([y & p, ~y & p, y & ~p, np.ones((len(y), 1), bool)], 1).astype(float)
    blocks, offsets, off = [base], [0], base.shape[1]
    for a in attrs:
        blocks.append((a.onehot()[:, :, None] * base[:, None, :]).reshape(len(y), -1))
        offsets.append(off)
        off += blocks[-1].shape[1]
    return np.concatenate(blocks, 1), offsets


def _counts(sums: np.ndarray, offset: int, g: int, k: int) -> rates.Counts:
    width = 3 * k + 1
    block = sums[:, offset:offset + g * width].reshape(len(sums), g, width)
    return rates.Counts(block[..., :k], block[..., k:2 * k], block[..., 2 * k:3 * k],
                        block[..., 3 * k])


# ----------------------------------------------------------------------------- plan
def _skip(skipped: list[dict], attribute: str, reason: str, count: int = 0, group: str = ALL,
          cls: str = ALL, metric: str = "*") -> None:
    skipped.append({"attribute": attribute, "group": group, "cls": cls, "metric": metric,
                    "reason": reason, "count": int(count)})


def _plan(a: Attribute, offset: int, c: rates.Counts, min_support: int, classes: list[str],
          skipped: list[dict]) -> _Plan | None:
    """Pick the compared groups and the classes of each gap; report the rest."""
    if a.n_missing:
        _skip(skipped, a.name, "attribute value missing", a.n_missing)
    n = c.n[0]
    for gi, gname in enumerate(a.names):
        if n[gi] == 0:
            _skip(skipped, a.name, "group absent from the data", 0, group=gname)
        elif n[gi] < min_support:
            _skip(skipped, a.name, f"group has fewer than min_support={min_support} utterances",
                  n[gi], group=gname)
    groups = n >= min_support
    if groups.sum() < 2:
        _skip(skipped, a.name, "fewer than 2 groups to compare: no gaps", int(groups.sum()))
        return None
    sel = c.select(groups)
    names = [g for g, keep in zip(a.names, groups, strict=True) if keep]
    support = {"tpr_gap": sel.pos[0], "f1_gap": sel.pos[0], "fpr_gap": sel.neg[0]}
    kind = {"tpr_gap": "positives", "f1_gap": "positives", "fpr_gap": "negatives"}
    chosen = {}
    for metric, sup in support.items():
        low = sup < min_support  # [Gv, K]
        for ci_, cname in enumerate(classes):
            for gi in np.flatnonzero(low[:, ci_]):
                _skip(skipped, a.name, f"class left out of the gap: {int(sup[gi, ci_])} "
                      f"{kind[metric]} in this group (min_support={min_support})",
                      sup[gi, ci_], group=names[gi], cls=cname, metric=metric)
        chosen[metric] = ~low.any(0)
        if not chosen[metric].any():
            _skip(skipped, a.name, "no class has support in every group", metric=metric)
    return _Plan(a, offset, groups, chosen)


# ----------------------------------------------------------------------------- metrics
def _metrics(sums: np.ndarray, k: int,
             plans: list[_Plan]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Summary values ``key -> [B]`` and per-class gap terms ``key -> [B, K]`` from counts."""
    overall = _counts(sums, 0, 1, k)
    values = {"macro_f1": rates.macro_f1(overall)[:, 0],
              "hamming_acc": rates.hamming_acc(overall)[:, 0]}
    terms: dict[str, np.ndarray] = {}
    for pl in plans:
        c = _counts(sums, pl.offset, len(pl.attr.names), k).select(pl.groups)
        pooled = c.pooled()
        found = {m: rates.aggregation_gap(fn(c), fn(pooled), pl.classes[m])
                 for m, fn in (("tpr_gap", rates.tpr), ("fpr_gap", rates.fpr),
                               ("f1_gap", rates.f1))}
        found.update(rates.dp_gaps(rates.ppr(c), rates.ppr(pooled)))
        for m, (term, gap) in found.items():
            values[f"{pl.attr.name}.{m}"] = gap
            terms[f"{pl.attr.name}.{m}"] = term
        mf, acc = rates.macro_f1(c), rates.hamming_acc(c)
        values[f"{pl.attr.name}.macro_f1_gap"] = mf.max(-1) - mf.min(-1)
        values[f"{pl.attr.name}.worst_group_f1"] = mf.min(-1)
        values[f"{pl.attr.name}.worst_group_acc"] = acc.min(-1)
    return values, terms


# ----------------------------------------------------------------------------- bootstrap
def _bootstrap(design: np.ndarray, units: np.ndarray, k: int, plans: list[_Plan],
               n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Summary values over `n_boot` resamples of `units` (speakers or utterances)."""
    rng = np.random.default_rng(seed)
    n_units = int(units.max()) + 1
    chunk = max(1, _BOOT_CELLS // max(len(units), n_units))
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        mult = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=b)
        values, _ = _metrics(mult[:, units].astype(float) @ design, k, plans)
        for key, v in values.items():
            out.setdefault(key, []).append(v)
    return {key: np.concatenate(v) for key, v in out.items()}


def _intervals(boot: dict[str, np.ndarray], summary: dict[str, float], ci: float,
               skipped: list[dict]) -> dict[str, float]:
    alpha = (1 - ci) / 2 * 100
    out = {}
    for key, v in boot.items():
        if key not in summary:
            continue
        ok = np.isfinite(v)
        attribute, _, metric = key.rpartition(".")
        if not ok.all():
            _skip(skipped, attribute or ALL, "bootstrap resamples where the metric was "
                  "undefined (a compared group or class vanished); left out of the interval",
                  int((~ok).sum()), metric=metric)
        if ok.any():
            lo, hi = np.percentile(v[ok], [alpha, 100 - alpha])
            out[f"{key}.ci_low"], out[f"{key}.ci_high"] = float(lo), float(hi)
    return out


# ----------------------------------------------------------------------------- table
def _table(point: np.ndarray, k: int, classes: list[str], attrs: list[Attribute],
           offsets: list[int], plans: list[_Plan], values: dict[str, np.ndarray],
           terms: dict[str, np.ndarray]) -> pd.DataFrame:
    rows: list[tuple] = []
    per_class = (("tpr", rates.tpr, "pos"), ("fpr", rates.fpr, "neg"),
                 ("ppr", rates.ppr, None), ("f1", lambda c: rates.f1(c, 0.0), "pos"))

    def cells(attr: str, names: list[str], c: rates.Counts) -> None:
        for metric, fn, sup in per_class:
            val = fn(c)[0]
            support = getattr(c, sup)[0] if sup else np.broadcast_to(c.n[0][:, None], val.shape)
            for gi, g in enumerate(names):
                rows.extend((metric, attr, g, cls, val[gi, ci_], support[gi, ci_])
                            for ci_, cls in enumerate(classes))
        for metric, fn in (("macro_f1", rates.macro_f1), ("hamming_acc", rates.hamming_acc)):
            val = fn(c)[0]
            rows.extend((metric, attr, g, ALL, val[gi], c.n[0][gi]) for gi, g in enumerate(names))

    cells(ALL, [ALL], _counts(point, 0, 1, k))
    for a, off in zip(attrs, offsets[1:], strict=True):
        cells(a.name, a.names, _counts(point, off, len(a.names), k))
    for pl in plans:
        n_cmp = float(_counts(point, pl.offset, len(pl.attr.names), k).n[0][pl.groups].sum())
        for m in GAP_METRICS:
            key = f"{pl.attr.name}.{m}"
            rows.extend((m, pl.attr.name, ALL, cls, terms[key][0, ci_], n_cmp)
                        for ci_, cls in enumerate(classes))
        for m in (*GAP_METRICS, "macro_f1_gap", "worst_group_f1", "worst_group_acc"):
            rows.append((m, pl.attr.name, ALL, ALL, values[f"{pl.attr.name}.{m}"][0], n_cmp))
    table = pd.DataFrame(rows, columns=["metric", "attribute", "group", "cls", "value",
                                        "support"])
    table["value"] = table["value"].astype(float)
    table["support"] = table["support"].astype(float).round().astype(np.int64)
    return table
