"""Score multi-label SER predictions: accuracy overall and per group, fairness gaps, intervals.

Conventions (definitions in ``docs/metrics.md``):

* Targets (soft y' or binary) are positive when > 1/K; predictions when > `threshold` (1/K by
  default, the EMO-SUPERB rule for softmax outputs). `threshold` applies to the predictions only.
* Macro-F1 is sklearn's ``f1_score(average='macro', zero_division=0)`` over the whole set; Hamming
  accuracy is the share of right (utterance, class) decisions.
* Per attribute, the groups compared are those with at least `min_support` utterances; rows whose
  attribute is missing are left out of that attribute only. A class with fewer than `min_support`
  positives (negatives for FPR) in some compared group is left out of that gap. Everything left
  out is listed in ``skipped``.
* Every gap averages over classes by the papers' rule: the root mean square over the classes
  that enter it. Each gap is reported three ways: the paper-compatible plug-in value
  (``<attr>.<gap>``), a bias-corrected estimate with its interval (``<attr>.<gap>_bc``,
  ``.ci_low``/``.ci_high``), and a permutation p-value and noise floor (``<attr>.<gap>_p``,
  ``<attr>.<gap>_floor``). Signed per-class differences with intervals (percentile, widened by
  sqrt(n/(n−1)) for n speakers in the smallest group) are in ``per_class``.
* Intervals come from a speaker bootstrap stratified by group (`inference`); they are withheld
  (flagged "not estimable" with the reason) when a compared group has fewer than `min_speakers`
  speakers or more than `max_unusable` of the resamples leave a metric undefined.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from emodebias.data.labels import binarize
from emodebias.metrics import inference, rates
from emodebias.metrics.attributes import Attribute, MetricsInputError, encode_all

ALL = "all"
GAP_METRICS = ("tpr_gap", "fpr_gap", "f1_gap", "dp_maxdev_gap", "dp_sumdev_gap")
ATTR_METRICS = (*GAP_METRICS, "macro_f1_gap", "worst_group_f1", "worst_group_acc")
AVERAGING = "root mean square over the classes in the gap"
DIFF_RATES = ("tpr", "fpr", "ppr", "f1")
_RATE_FN = {"tpr": rates.tpr, "fpr": rates.fpr, "ppr": rates.ppr, "f1": rates.f1}
_GAP_RATE = {"tpr_gap": "tpr", "fpr_gap": "fpr", "f1_gap": "f1", "dp_maxdev_gap": "ppr",
             "dp_sumdev_gap": "ppr"}
GAP_COLUMNS = ["attribute", "metric", "value", "value_bc", "ci_low", "ci_high", "interval",
               "status", "reason", "p_perm", "noise_floor", "worst_class", "worst_class_term",
               "classes_used", "averaging", "n_boot", "n_unusable", "n_perm", "speakers"]
PER_CLASS_COLUMNS = ["attribute", "rate", "cls", "contrast", "diff", "ci_low", "ci_high",
                     "status", "reason", "n_unusable"]


@dataclass
class MetricsResult:
    """Scores of one set of predictions.

    `table`: tidy rows (metric, attribute, group, cls, value, support); `summary`: headline
    numbers (finite floats only); `gaps`: one row per attribute × gap with the plug-in value, the
    bias-corrected estimate and interval, the status/reason of the interval, the permutation
    p-value and noise floor, the worst class and the averaging rule; `per_class`: signed
    per-class differences with intervals; `skipped`: what was left out and why.
    """

    table: pd.DataFrame
    summary: dict[str, float]
    skipped: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    gaps: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=GAP_COLUMNS))
    per_class: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=PER_CLASS_COLUMNS))

    def skipped_frame(self) -> pd.DataFrame:
        cols = ["attribute", "group", "cls", "metric", "reason", "count"]
        return pd.DataFrame(self.skipped, columns=cols)

    def by_group(self) -> pd.DataFrame:
        """Per-class rates laid out like `MetricFrame.by_group`, for every attribute at once:
        rows (attribute, group), columns (metric, class); the overall rates are the row
        ("all", "all")."""
        rows = self.table[self.table["metric"].isin(DIFF_RATES) & (self.table["cls"] != ALL)]
        wide = rows.pivot_table(index=["attribute", "group"], columns=["metric", "cls"],
                                values="value", aggfunc="first", dropna=False, sort=False)
        wide.columns = wide.columns.set_names(["metric", "cls"])
        return wide

    def not_estimable(self) -> pd.DataFrame:
        """The gap rows whose interval is withheld, with the reason."""
        return self.gaps[self.gaps["status"] == "not estimable"]

    def to_dict(self) -> dict:
        """JSON-ready form for run records."""
        return {"summary": dict(self.summary), "table": _records(self.table),
                "skipped": list(self.skipped), "info": dict(self.info),
                "gaps": _records(self.gaps), "per_class": _records(self.per_class)}

    @classmethod
    def from_dict(cls, d: Mapping) -> MetricsResult:
        table = pd.DataFrame(d["table"], columns=["metric", "attribute", "group", "cls",
                                                  "value", "support"])
        table["value"] = table["value"].astype(float)
        return cls(table, dict(d["summary"]), list(d.get("skipped", [])), dict(d.get("info", {})),
                   pd.DataFrame(d.get("gaps", []), columns=GAP_COLUMNS),
                   pd.DataFrame(d.get("per_class", []), columns=PER_CLASS_COLUMNS))


def _records(df: pd.DataFrame) -> list[dict]:
    return df.astype(object).where(df.notna(), None).to_dict(orient="records")


@dataclass
class _Plan:
    """What enters one attribute's gaps (fixed by the point estimate) and its resampling units."""

    attr: Attribute
    groups: np.ndarray  # bool [G]: compared groups
    names: list[str]  # names of the compared groups
    classes: dict[str, np.ndarray]  # gap metric -> bool [K]
    unit_sums: np.ndarray  # [U, 3K+1] per (speaker, group) unit
    unit_group: np.ndarray  # [U] index into the compared groups
    unit_strata: np.ndarray  # [U] stratum (group × extra stratum)
    speakers: np.ndarray  # [Gc] speakers per compared group
    reason: str = ""  # why intervals are not estimable ("" = they are)
    values: dict = field(default_factory=dict)  # point values, set when scored
    terms: dict = field(default_factory=dict)  # point per-class gap terms


def evaluate(
    targets: np.ndarray | pd.DataFrame,
    probs: np.ndarray | pd.DataFrame,
    attributes: Mapping[str, object] | pd.DataFrame | None = None,
    *,
    threshold: float | None = None,
    speakers: Iterable | None = None,
    n_boot: int = 0,
    n_perm: int = 0,
    seed: int = 0,
    min_support: int = 1,
    min_speakers: int = 5,
    max_unusable: float = 0.1,
    classes: list[str] | None = None,
    intersections: Iterable[Iterable[str]] = (),
    strata: Iterable | None = None,
    ci: float = 0.95,
) -> MetricsResult:
    """Accuracy and fairness of predictions `probs` [N, K] against `targets` [N, K].

    `attributes` maps a name to a per-utterance column (NA allowed) or is a DataFrame;
    `intersections` adds crossed attributes such as ``("gender", "age_group")``. Class names come
    from `classes`, else from DataFrame columns (``prob_``/``label_`` prefixes dropped). `speakers`
    makes the bootstrap and the permutation null work on speakers; `strata` (e.g. the fold of
    pooled out-of-fold predictions) is kept fixed by both.
    """
    classes, targets, probs = _classes_and_arrays(targets, probs, classes)
    y, p = _binarize(targets, probs, threshold)
    n, k = y.shape
    _check_options(min_support, min_speakers, max_unusable, ci, n_boot, n_perm)
    classes = _class_names(classes, k)
    attrs = encode_all(attributes, n, intersections)
    spk = _speaker_codes(speakers, n)
    extra = _strata_codes(strata, n)
    base = _base(y, p)
    design, offsets = _design(base, attrs)
    point = np.ones((1, n)) @ design
    skipped: list[dict] = []
    plans = []
    for a, off in zip(attrs, offsets[1:], strict=True):
        pl = _plan(a, base, spk, extra, _counts(point, off, len(a.names), k), min_support,
                   min_speakers, classes, skipped)
        if pl is not None:
            plans.append(pl)

    info = {"n": n, "k": k, "classes": classes, "threshold": 1.0 / k if threshold is None
            else float(threshold), "min_support": min_support, "min_speakers": min_speakers,
            "max_unusable": max_unusable, "n_boot": int(n_boot), "n_perm": int(n_perm),
            "seed": seed, "ci": ci, "averaging": AVERAGING,
            "bootstrap_unit": "speaker" if speakers is not None else "utterance",
            "interval_gap": inference.INTERVAL_GAP, "interval_other": inference.INTERVAL_PLAIN,
            "n_units": int(spk.max()) + 1}
    rng = np.random.default_rng(seed)
    summary: dict[str, float] = {}
    overall = _overall(_counts(point, 0, 1, k))
    summary.update({m: float(v[0]) for m, v in overall.items()})
    if n_boot > 0:
        unit_sums, unit_strata = _unit_sums(base, spk, extra)
        w = inference.stratified_weights(rng, unit_strata, n_boot)
        c = _as_counts(w @ unit_sums, k)
        for m, v in _overall(c).items():
            status, reason, _, lo, hi, _ = _interval(summary[m], v, "", max_unusable, ci, None)
            if status == "ok":
                summary[f"{m}.ci_low"], summary[f"{m}.ci_high"] = lo, hi
            else:
                _skip(skipped, ALL, f"interval {status}: {reason}", metric=m)
    gap_rows, class_rows = [], []
    for pl in plans:
        g, r = _score_plan(pl, k, classes, rng, n_boot, n_perm, max_unusable, ci, summary,
                           skipped)
        gap_rows += g
        class_rows += r
    for a in attrs:
        if a.name not in {pl.attr.name for pl in plans}:
            reason = "fewer than 2 groups to compare"
            gap_rows += [_gap_row(a.name, m, status="not estimable", reason=reason)
                         for m in GAP_METRICS]
    table = _table(point, k, classes, attrs, offsets, plans)
    gaps = pd.DataFrame(gap_rows, columns=GAP_COLUMNS)
    per_class = pd.DataFrame(class_rows, columns=PER_CLASS_COLUMNS)
    summary = {key: v for key, v in summary.items() if np.isfinite(v)}
    return MetricsResult(table, summary, skipped, info, gaps, per_class)


@dataclass
class HeadlineScorer:
    """`evaluate`'s headline numbers for many prediction sets on one test set, from count sums.

    Macro-F1, Hamming accuracy and each attribute's `ATTR_METRICS` are functions of confusion
    counts, and which groups and classes enter each gap depends on the targets only (`_plan`),
    so the plan is fixed once. A prediction set enters as its design rows (`design`), which add
    over utterances: summed per speaker they give any re-assembly of speakers (the paired swap
    test of `emodebias.auditing.compare`) as one matrix product, scored in a batch by the same
    `plan_metrics` that `evaluate` uses, instead of one `evaluate` call per re-assembly.
    """

    y: np.ndarray  # bool [N, K] binarised targets
    threshold: float | None
    attrs: list[Attribute]
    offsets: list[int]  # column offset of each attribute's block in the design
    plans: dict[str, _Plan]  # attribute name -> plan (attributes with >= 2 compared groups)

    @property
    def keys(self) -> list[str]:
        """Summary keys scored, in `evaluate`'s naming."""
        return ["macro_f1", "hamming_acc"] + [f"{a.name}.{m}" for a in self.attrs
                                              for m in ATTR_METRICS]

    def design(self, probs: np.ndarray) -> np.ndarray:
        """Per-utterance count indicators ``[N, W]`` of `probs` (overall, then per group)."""
        _, p = _binarize(self.y.astype(float), probs, self.threshold)
        return _design(_base(self.y, p), self.attrs)[0]

    def scores(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        """Headline numbers ``key -> [...]`` of design sums ``[..., W]`` (NaN: undefined)."""
        sums = np.asarray(sums, float)
        lead, k = sums.shape[:-1], self.y.shape[1]
        flat = sums.reshape(-1, sums.shape[-1])
        out = {m: v for m, v in _overall(_counts(flat, 0, 1, k)).items()}
        for a, off in zip(self.attrs, self.offsets[1:], strict=True):
            pl = self.plans.get(a.name)
            if pl is None:
                out.update({f"{a.name}.{m}": np.full(len(flat), np.nan) for m in ATTR_METRICS})
                continue
            c = _counts(flat, off, len(a.names), k).select(pl.groups)
            values = plan_metrics(c, pl.classes)[0]
            out.update({f"{a.name}.{m}": values[m] for m in ATTR_METRICS})
        return {key: v.reshape(lead) for key, v in out.items()}


def headline_scorer(targets: np.ndarray, attributes: Mapping[str, object] | pd.DataFrame | None,
                    *, threshold: float | None = None, min_support: int = 1,
                    classes: list[str] | None = None) -> HeadlineScorer:
    """The `HeadlineScorer` of a test set; its scores equal `evaluate`'s summary values (same
    `threshold`, `min_support`) wherever those are defined."""
    targets = np.asarray(targets, float)
    y, _ = _binarize(targets, targets, None)
    _check_options(min_support, 2, 0.0, 0.95, 0, 0)
    classes = _class_names(classes, y.shape[1])
    attrs = encode_all(attributes, len(y), ())
    base = _base(y, np.zeros_like(y))  # the plan uses target counts only
    design, offsets = _design(base, attrs)
    point = np.ones((1, len(y))) @ design
    spk, extra = np.arange(len(y)), np.zeros(len(y), dtype=np.int64)
    plans = {}
    for a, off in zip(attrs, offsets[1:], strict=True):
        pl = _plan(a, base, spk, extra, _counts(point, off, len(a.names), y.shape[1]),
                   min_support, 2, classes, [])
        if pl is not None:
            plans[a.name] = pl
    return HeadlineScorer(y, threshold, attrs, offsets, plans)


# ----------------------------------------------------------------------------- inputs
def _classes_and_arrays(targets: object, probs: object, classes: list[str] | None
                        ) -> tuple[list[str] | None, np.ndarray, np.ndarray]:
    """Class names from DataFrame columns (targets reordered to the probs' class order)."""
    named = {}
    for what, arr, prefix in (("probs", probs, "prob_"), ("targets", targets, "label_")):
        if isinstance(arr, pd.DataFrame):
            named[what] = [str(c)[len(prefix):] if str(c).startswith(prefix) else str(c)
                           for c in arr.columns]
    if "probs" in named and "targets" in named:
        order = align_classes(named["targets"], named["probs"], "targets", "probs")
        targets = np.asarray(targets, dtype=np.float64)
        if order is not None:
            targets = targets[:, order]
    found = named.get("probs", named.get("targets"))
    if classes is None:
        classes = found
    elif found is not None and list(map(str, classes)) != found:
        raise MetricsInputError(f"classes {list(classes)} differ from the columns' {found}")
    return classes, np.asarray(targets), np.asarray(probs)


def align_classes(have: list[str] | None, classes: list[str], where: str,
                  other: str = "the manifest") -> np.ndarray | None:
    """Column order that puts `have` (the class names of `where`'s columns) into `classes`
    order (None: already aligned); the one name matching of scores, targets, prediction files
    and audits, so a mismatch reads the same everywhere."""
    if have is None or list(have) == list(classes):
        return None
    if sorted(have) != sorted(classes):
        raise MetricsInputError(f"{where} has classes {list(have)} but {other} has "
                                f"{list(classes)}; the class names must match")
    return np.array([list(have).index(c) for c in classes])


def _check_options(min_support: int, min_speakers: int, max_unusable: float, ci: float,
                   n_boot: int, n_perm: int) -> None:
    if min_support < 1:
        raise MetricsInputError(f"min_support must be >= 1, got {min_support}")
    if min_speakers < 2:
        raise MetricsInputError(f"min_speakers must be >= 2, got {min_speakers}")
    if not 0 <= max_unusable < 1:
        raise MetricsInputError(f"max_unusable must lie in [0, 1), got {max_unusable}")
    if not 0 < ci < 1:
        raise MetricsInputError(f"ci must lie in (0, 1), got {ci}")
    if n_boot < 0 or n_perm < 0:
        raise MetricsInputError(f"n_boot and n_perm must be >= 0, got {n_boot}, {n_perm}")


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


def _speaker_codes(speakers: Iterable | None, n: int) -> np.ndarray:
    """Resampling unit per utterance: speaker codes (first-seen order), or one per utterance."""
    if speakers is None:
        return np.arange(n)
    s = pd.Series(list(speakers))
    if len(s) != n:
        raise MetricsInputError(f"speakers has {len(s)} entries for {n} utterances")
    if s.isna().any():
        raise MetricsInputError(
            f"speakers missing in rows {np.flatnonzero(s.isna().to_numpy())[:5].tolist()}")
    return pd.factorize(s.astype(str))[0].astype(np.int64)


def _strata_codes(strata: Iterable | None, n: int) -> np.ndarray:
    if strata is None:
        return np.zeros(n, dtype=np.int64)
    s = pd.Series(list(strata))
    if len(s) != n or s.isna().any():
        raise MetricsInputError(f"strata must give a value for each of the {n} utterances")
    return pd.factorize(s.astype(str))[0].astype(np.int64)


# ----------------------------------------------------------------------------- counts
def _base(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-utterance indicators [TP_k, FP_k, FN_k, 1]: column sums are confusion counts."""
    return np.concatenate([y & p, ~y & p, y & ~p, np.ones((len(y), 1), bool)], 1).astype(float)


def _design(base: np.ndarray, attrs: list[Attribute]) -> tuple[np.ndarray, list[int]]:
    """`base` once overall and once per group of each attribute (point estimates and table)."""
    blocks, offsets, off = [base], [0], base.shape[1]
    for a in attrs:
        blocks.append((a.onehot()[:, :, None] * base[:, None, :]).reshape(len(base), -1))
        offsets.append(off)
        off += blocks[-1].shape[1]
    return np.concatenate(blocks, 1), offsets


def _counts(sums: np.ndarray, offset: int, g: int, k: int) -> rates.Counts:
    width = 3 * k + 1
    return _as_counts(sums[:, offset:offset + g * width].reshape(len(sums), g, width), k)


def _as_counts(block: np.ndarray, k: int) -> rates.Counts:
    """Counts from sums ``[..., 3K+1]`` (a group axis is added when absent)."""
    if block.ndim == 2:
        block = block[:, None, :]
    return rates.Counts(block[..., :k], block[..., k:2 * k], block[..., 2 * k:3 * k],
                        block[..., 3 * k])


def _unit_sums(base: np.ndarray, unit: np.ndarray, stratum: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Sums of `base` per unit, and each unit's stratum (units never straddle strata)."""
    key = pd.factorize(pd.Series(unit).astype(str) + "|" + pd.Series(stratum).astype(str))[0]
    sums = np.zeros((key.max() + 1, base.shape[1]))
    np.add.at(sums, key, base)
    unit_stratum = np.zeros(key.max() + 1, dtype=np.int64)
    unit_stratum[key] = stratum
    return sums, unit_stratum


# ----------------------------------------------------------------------------- plan
def _skip(skipped: list[dict], attribute: str, reason: str, count: int = 0, group: str = ALL,
          cls: str = ALL, metric: str = "*") -> None:
    skipped.append({"attribute": attribute, "group": group, "cls": cls, "metric": metric,
                    "reason": reason, "count": int(count)})


def _plan(a: Attribute, base: np.ndarray, spk: np.ndarray, extra: np.ndarray, c: rates.Counts,
          min_support: int, min_speakers: int, classes: list[str],
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
    chosen = {m: np.ones(len(classes), bool) for m in ("dp_maxdev_gap", "dp_sumdev_gap")}
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
    # resampling units: (speaker, group) pairs of the rows in compared groups
    index = np.cumsum(groups) - 1
    rows = np.flatnonzero((a.codes >= 0) & groups[np.maximum(a.codes, 0)])
    g_row = index[a.codes[rows]]
    n_groups = int(groups.sum())
    unit_sums, unit_strata = _unit_sums(base[rows], spk[rows], extra[rows] * n_groups + g_row)
    unit_group = unit_strata % n_groups
    speakers = np.array([len(np.unique(spk[rows][g_row == g])) for g in range(n_groups)])
    few = [f"{nm!r} has {s}" for nm, s in zip(names, speakers, strict=True) if s < min_speakers]
    reason = (f"too few speakers: group {', '.join(few)} (min_speakers={min_speakers})"
              if few else "")
    return _Plan(a, groups, names, chosen, unit_sums, unit_group, unit_strata, speakers, reason)


# ----------------------------------------------------------------------------- metrics
def _overall(c: rates.Counts) -> dict[str, np.ndarray]:
    return {"macro_f1": rates.macro_f1(c)[..., 0], "hamming_acc": rates.hamming_acc(c)[..., 0]}


def plan_metrics(c: rates.Counts, classes: Mapping[str, np.ndarray]
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray],
                            dict[str, tuple[np.ndarray, Callable]]]:
    """Attribute metrics from the compared groups' counts ``[..., G, K]``.

    Returns values ``metric -> [...]``, per-class gap terms ``metric -> [..., K]``, signed
    per-class differences ``rate -> [..., C, K]`` (two groups: second − first; more: each group
    − all compared groups), and for each gap its spread X ``[..., G, K]`` with the function
    that maps X to the gap (homogeneous of degree 1, for `inference.shrunk_interval`).
    """
    pooled = c.pooled()
    values, terms, spreads = {}, {}, {}
    for m in ("tpr_gap", "fpr_gap", "f1_gap", "dp_sumdev_gap", "dp_maxdev_gap"):
        fn = _RATE_FN[_GAP_RATE[m]]
        mask = classes[m]
        spread = fn(c) - fn(pooled)
        agg = _max_agg(mask) if m == "dp_maxdev_gap" else _sum_agg(mask)
        terms[m] = np.where(mask, np.abs(spread).max(-2) if m == "dp_maxdev_gap"
                            else np.abs(spread).sum(-2), np.nan)
        values[m] = agg(spread)
        spreads[m] = (spread, agg)
    mf, acc = rates.macro_f1(c), rates.hamming_acc(c)
    values["macro_f1_gap"] = mf.max(-1) - mf.min(-1)
    spreads["macro_f1_gap"] = ((mf - mf.mean(-1, keepdims=True))[..., None], _range_agg)
    values["worst_group_f1"] = mf.min(-1)
    values["worst_group_acc"] = acc.min(-1)
    diffs = {}
    for r in DIFF_RATES:
        g, o = _RATE_FN[r](c), _RATE_FN[r](pooled)
        diffs[r] = g[..., 1:2, :] - g[..., 0:1, :] if c.tp.shape[-2] == 2 else g - o
    return values, terms, diffs, spreads


def _sum_agg(mask: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """FairLib aggregation: RMS over the `mask` classes of Σ_g |X_gc|."""
    return lambda x: rates.aggregation_gap(x, np.zeros_like(x[..., :1, :]), mask)[1]


def _max_agg(mask: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """RMS over the `mask` classes of max_g |X_gc|."""
    return lambda x: rates._rms(np.abs(x).max(-2), mask)[1]


def _range_agg(x: np.ndarray) -> np.ndarray:
    """Largest minus smallest group value (one column)."""
    return x[..., 0].max(-1) - x[..., 0].min(-1)


def contrast_names(names: list[str]) -> list[str]:
    """Labels of the signed differences `plan_metrics` returns."""
    return [f"{names[1]} − {names[0]}"] if len(names) == 2 else [f"{g} − all" for g in names]


def _score_plan(pl: _Plan, k: int, classes: list[str], rng: np.random.Generator, n_boot: int,
                n_perm: int, max_unusable: float, ci: float, summary: dict[str, float],
                skipped: list[dict]) -> tuple[list[dict], list[dict]]:
    """Point values, intervals and nulls of one attribute into `summary`; gap and per-class rows."""
    a, n_groups = pl.attr.name, len(pl.names)

    def sums(w: np.ndarray) -> rates.Counts:
        return _as_counts(inference.group_sums(w, pl.unit_sums, pl.unit_group, n_groups), k)

    values, terms, diffs, spreads = plan_metrics(sums(np.ones((1, len(pl.unit_group)))),
                                                 pl.classes)
    pl.values, pl.terms = values, terms
    for m, v in values.items():
        summary[f"{a}.{m}"] = float(v[0])
    summary[f"{a}.min_speakers"] = float(pl.speakers.min())
    boot = bdiffs = bspreads = null = None
    inflate = float(np.sqrt(pl.speakers.min() / max(pl.speakers.min() - 1, 1)))
    if n_boot > 0 and pl.reason:
        _skip(skipped, a, f"intervals not estimable: {pl.reason}", int(pl.speakers.min()))
    if n_boot > 0:
        boot, _, bdiffs, bspreads = plan_metrics(sums(inference.stratified_weights(
            rng, pl.unit_strata, n_boot)), pl.classes)
    if n_perm > 0:
        strata = pl.unit_strata // n_groups
        null = plan_metrics(_as_counts(inference.permuted_group_sums(
            rng, pl.unit_sums, pl.unit_group, n_groups, n_perm, strata), k), pl.classes)[0]
    gap_rows = []
    for m in ATTR_METRICS:
        key, point = f"{a}.{m}", values[m][0]
        is_gap = m.endswith("_gap")
        gap_of = None
        if is_gap and bspreads is not None:
            (x0, agg), xb = spreads[m], bspreads[m][0]

            def gap_of(ok: np.ndarray, x0=x0, xb=xb, agg=agg) -> tuple[float, float, float]:
                out = inference.shrunk_interval(x0[0], xb[ok], agg, ci=ci, inflate=inflate)
                return tuple(float(v) for v in out)
        status, reason, est, lo, hi, unusable = _interval(
            point, None if boot is None else boot[m], pl.reason, max_unusable, ci, gap_of)
        if unusable:
            _skip(skipped, a, "bootstrap resamples where the metric was undefined (a class had no "
                  "positives/negatives in a resampled group)", unusable, metric=m)
        out_key = f"{key}_bc" if is_gap else key
        if is_gap and np.isfinite(est):
            summary[out_key] = float(est)
        if status == "ok":
            summary[f"{out_key}.ci_low"], summary[f"{out_key}.ci_high"] = float(lo), float(hi)
        summary[f"{key}_estimable"] = float(status == "ok")
        p = floor = np.nan
        if null is not None and is_gap and np.isfinite(point):
            p = float(inference.permutation_p(point, null[m]))
            floor = float(inference.noise_floor(null[m]))
            summary[f"{key}_p"], summary[f"{key}_floor"] = p, floor
        if m in GAP_METRICS:
            term = terms[m][0]
            worst = int(np.nanargmax(term)) if np.isfinite(term).any() else None
            gap_rows.append(_gap_row(
                a, m, value=point, value_bc=est, ci_low=lo, ci_high=hi, status=status,
                reason=reason, p_perm=p, noise_floor=floor,
                worst_class=None if worst is None else classes[worst],
                worst_class_term=np.nan if worst is None else float(term[worst]),
                classes_used=int(np.isfinite(term).sum()), n_boot=n_boot,
                n_unusable=unusable, n_perm=n_perm,
                speakers=", ".join(f"{g}:{s}" for g, s in zip(pl.names, pl.speakers,
                                                               strict=True))))
    class_rows = []
    labels = contrast_names(pl.names)
    for r in DIFF_RATES:
        for j, contrast in enumerate(labels):
            for ci_, cls in enumerate(classes):
                point = diffs[r][0, j, ci_]
                b = None if bdiffs is None else bdiffs[r][:, j, ci_]
                status, reason, _, lo, hi, unusable = _interval(
                    point, b, pl.reason, max_unusable, ci, None)
                # widen by sqrt(n/(n−1)): the stratified bootstrap's variance deflation
                lo, hi = point + inflate * (lo - point), point + inflate * (hi - point)
                class_rows.append({"attribute": a, "rate": r, "cls": cls, "contrast": contrast,
                                   "diff": point, "ci_low": lo, "ci_high": hi,
                                   "status": status, "reason": reason, "n_unusable": unusable})
    return gap_rows, class_rows


def _interval(point: float, boot: np.ndarray | None, plan_reason: str, max_unusable: float,
              ci: float, gap_of: Callable | None) -> tuple[str, str, float, float, float, int]:
    """(status, reason, estimate, low, high, unusable resamples) of one number; `gap_of` maps
    the mask of usable resamples to a gap's (estimate, low, high), else percentile."""
    nan = float("nan")
    if not np.isfinite(point):
        return "not estimable", "undefined on this test set", nan, nan, nan, 0
    if boot is None:
        return "not computed", plan_reason or "no bootstrap (n_boot=0)", nan, nan, nan, 0
    ok = np.isfinite(boot)
    unusable = int((~ok).sum())
    est, lo, hi = gap_of(ok) if gap_of is not None and ok.any() else (nan, nan, nan)
    if plan_reason:
        return "not estimable", plan_reason, est, nan, nan, unusable
    if unusable > max_unusable * len(boot):
        return ("not estimable", f"{unusable} of {len(boot)} resamples unusable (> "
                f"max_unusable={max_unusable:g})", est, nan, nan, unusable)
    if gap_of is None:
        lo, hi = (float(x) for x in inference.percentile_interval(boot[ok], ci))
    if not hi - lo > 1e-12:
        return ("not estimable", f"all {int(ok.sum())} usable resamples gave the same value "
                "(a zero-width interval would claim certainty)", est, nan, nan, unusable)
    return "ok", "", est, lo, hi, unusable


def _gap_row(attribute: str, metric: str, **kw: object) -> dict:
    row = {c: None for c in GAP_COLUMNS}
    row.update(attribute=attribute, metric=metric, averaging=AVERAGING,
               interval=inference.INTERVAL_GAP)
    row.update(kw)
    return row


# ----------------------------------------------------------------------------- table
def _table(point: np.ndarray, k: int, classes: list[str], attrs: list[Attribute],
           offsets: list[int], plans: list[_Plan]) -> pd.DataFrame:
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
        n_cmp = float(pl.unit_sums[:, -1].sum())
        for m in GAP_METRICS:
            rows.extend((m, pl.attr.name, ALL, cls, pl.terms[m][0, ci_], n_cmp)
                        for ci_, cls in enumerate(classes))
        for m in ATTR_METRICS:
            rows.append((m, pl.attr.name, ALL, ALL, pl.values[m][0], n_cmp))
    table = pd.DataFrame(rows, columns=["metric", "attribute", "group", "cls", "value",
                                        "support"])
    table["value"] = table["value"].astype(float)
    table["support"] = table["support"].astype(float).round().astype(np.int64)
    return table
