"""Paper-style tables from run results (one row per run, see `bench.results.summary_wide`).

Aggregation (the IDI protocol):
* a table row is one (method, group source, hyperparameters); its cell is the mean ± sample std
  (ddof = 1) over folds, seeds being averaged within a fold first;
* each row names its group source in a `groups` cell with a mark: ● uses true group labels,
  ◐ uses inferred groups (pseudo-labels of a pretrained model), ○ uses inferred groups (k-means
  clusters, with k), – uses no groups (ERM, Random, LfF, DisEnt, ...);
* the Overall/Gain buckets follow the IDI protocol: ● truth, ◐ pseudo-labels, ○ every debiasing
  method without demographic labels (clusters and no-group methods alike);
* per supervision level (or per k, Table 2) an *Overall* row averages the row means of the
  debiasing methods (ERM and Random excluded), and the *Gain* row is the relative change of that
  average vs ERM: (ERM − x)/ERM for gaps (lower is better), (x − ERM)/ERM otherwise.
  This reproduces the published IDI Table 2 gains exactly (see tests/test_report_tables.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emodebias.bench.grid import cluster_k, group_kind

LEVELS = {"truth": "●", "pseudo": "◐", "cluster": "○"}
LEVEL_ORDER = ["–", "●", "◐", "○"]
BASELINES = ("erm", "random")
DISPLAY = {"erm": "ERM", "random": "Random", "lff": "LfF", "disent": "DisEnt", "sih": "SiH",
           "pgdro": "PGDRO", "ds": "DS", "rw": "RW", "gdro": "GDRO", "gadro": "GADRO",
           "adv": "ADV", "madv": "MADV", "gr": "GR", "mmd": "MMD", "jtt": "JTT",
           "eo_thresh": "EO-Thresh"}
METHOD_ORDER = ["erm", "random", "lff", "disent", "sih", "jtt", "pgdro", "ds", "rw", "gdro",
                "gadro", "adv", "madv", "gr", "mmd", "eo_thresh"]
LABELS = {"macro_f1": "F1↑", "hamming_acc": "ACC↑"}
SCENARIO = ["corpus", "encoder", "ratio", "direction"]
TABLE1_METRICS = ["macro_f1", "hamming_acc", "gender.tpr_gap", "gender.dp_maxdev_gap"]
TABLE2_METRICS = ["macro_f1", "hamming_acc", "race.tpr_gap", "race.dp_maxdev_gap",
                  "age_group.tpr_gap", "age_group.dp_maxdev_gap"]
# the IDI paper's "DP gap" is the max-deviation form; the FairLib (sum) form is marked Σ
SHORT = {"dp_maxdev_gap": "DPgap", "dp_sumdev_gap": "DPgap(Σ)", "worst_group_f1": "worst-group F1",
         "worst_group_acc": "worst-group ACC"}


def lower_is_better(metric: str) -> bool:
    return metric.split(".")[-1].endswith(("_gap", "_gap_bc"))


def metric_label(metric: str) -> str:
    if metric in LABELS:
        return LABELS[metric]
    attr, _, name = metric.rpartition(".")
    short = SHORT.get(name) or name.replace("_gap", "gap").replace("_", "").upper().replace(
        "GAP", "gap")
    arrow = "↓" if lower_is_better(metric) else "↑"
    return f"{attr} {short}{arrow}" if attr else f"{short}{arrow}"


def supervision(method: str, groups: str) -> str:
    """The IDI Overall/Gain bucket: no-group debiasing methods share ○ with the clusters."""
    kind = group_kind(groups)
    if kind in LEVELS:
        return LEVELS[kind]
    return "–" if method in BASELINES else "○"


NO_GROUPS = "–"
GROUPS_NOTE = ("groups: ● uses true group labels · ◐ uses inferred groups (pseudo-labels of a "
               "pretrained model) · ○ uses inferred groups (k-means clusters, k given) · – uses no "
               "groups.")


def group_text(groups: str) -> str:
    """The group source in words: truth:gender, pseudo:<model>, cluster k=16 (<encoder>)."""
    kind = group_kind(groups)
    if kind == "cluster":
        enc = groups.split(":")[1] if groups.count(":") >= 2 else ""
        k = cluster_k(groups)
        return f"cluster k={k}" + (f" ({enc})" if enc else "") if k else groups
    return "no groups" if kind == "none" else groups


def group_cell(groups: str) -> str:
    """Mark + source, e.g. '● truth:gender', '○ cluster k=16 (ecapa)'; '–' for no groups."""
    kind = group_kind(groups)
    return f"{LEVELS[kind]} {group_text(groups)}" if kind in LEVELS else NO_GROUPS


def full_label(method: str, groups: str, hparams: str = "{}") -> str:
    """Row label plus its group source, unique per table row (figures, legends)."""
    return f"{row_label(method, groups, hparams)} {group_cell(groups)}"


# marks after a method's name: its formula is one reading of its source / it is in neither study
READING_MARK, EXTRA_MARK = "*", "⁺"
MARKS_NOTE = (f"{READING_MARK} reading-dependent (the source's formula admits more than one "
              f"reading; see docs/decisions.md) · {EXTRA_MARK} an extra, in neither reproduced "
              "study.")


def method_marks(method: str) -> str:
    """The registry's marks for a method (unknown names, e.g. from older runs, get none)."""
    from emodebias.training.methods import REGISTRY

    cls = REGISTRY.get(method)
    if cls is None:
        return ""
    return (READING_MARK if cls.reading_dependent else "") + (EXTRA_MARK if cls.extra else "")


def row_label(method: str, groups: str, hparams: str = "{}") -> str:
    if method == "audit":  # an audited model: its name is the row (it has no settings)
        return "audit: " + str((json.loads(hparams) if hparams else {}).get("model", "?"))
    name = DISPLAY.get(method, method.upper()) + method_marks(method)
    if group_kind(groups) == "cluster":
        name += "-IDI"
    hp = json.loads(hparams) if hparams else {}
    if hp:
        name += " [" + ", ".join(f"{k}={v}" for k, v in sorted(hp.items())) + "]"
    return name


@dataclass
class PaperTable:
    """`rows`: one per method row with `<metric>` means, `<metric>_std` and `n` folds;
    `overall` / `gain`: one row per bucket (level or k) with the same metric columns."""

    rows: pd.DataFrame
    overall: pd.DataFrame
    gain: pd.DataFrame
    metrics: list[str]
    title: str = ""

    def to_rows(self, digits: int = 3) -> tuple[list[str], list[list[str]]]:
        """Header and formatted cells: method rows, then Overall and Gain rows per bucket."""
        head = ["method", "groups"] + [metric_label(m) for m in self.metrics]
        body = []
        for _, r in self.rows.iterrows():
            body.append([r["label"], group_cell(r["groups"])]
                        + [fmt_mean_std(r[m], r[f"{m}_std"], digits) for m in self.metrics])
        for _, r in self.overall.iterrows():
            body.append(["Overall", r["bucket"]] + [fmt_num(r[m], digits) for m in self.metrics])
        for _, r in self.gain.iterrows():
            body.append(["Gain", r["bucket"]] + [fmt_pct(r[m]) for m in self.metrics])
        return head, body

    def to_markdown(self, digits: int = 3) -> str:
        return markdown_table(*self.to_rows(digits))


def fmt_num(x: float, digits: int = 3) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def fmt_mean_std(mean: float, std: float, digits: int = 3) -> str:
    if mean is None or not np.isfinite(mean):
        return "—"
    if std is None or not np.isfinite(std):
        return fmt_num(mean, digits)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_pct(x: float) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x * 100:+.2f}%"


def fold_stats(wide: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean ± std over folds per (method, groups, hparams); seeds averaged within each fold."""
    keys = ["method", "groups", "hparams"]
    present = [m for m in metrics if m in wide.columns]
    per_fold = wide.groupby(keys + ["fold"], dropna=False)[present].mean().reset_index()
    g = per_fold.groupby(keys, dropna=False)
    out = g[present].mean()
    std = g[present].std(ddof=1).add_suffix("_std")
    out = out.join(std).join(g.size().rename("n"))
    for m in metrics:  # metrics no run reported stay as NaN columns
        if m not in out.columns:
            out[m], out[f"{m}_std"] = np.nan, np.nan
    return out.reset_index()


def _sort_key(row: pd.Series) -> tuple:
    m = row["method"]
    order = METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER)
    k = row["k"] if np.isfinite(row["k"]) else -1
    return (order, m, LEVEL_ORDER.index(row["level"]), k, row["hparams"])


def paper_table(wide: pd.DataFrame, metrics: list[str], bucket: str = "level",
                baseline: str = "erm", title: str = "") -> PaperTable:
    """Table-1 style (bucket='level': ●/◐/○) or Table-2 style (bucket='k': one Gain per k)."""
    if bucket not in {"level", "k"}:
        raise ValueError(f"bucket must be 'level' or 'k', got {bucket!r}")
    rows = fold_stats(wide, metrics)
    rows["level"] = [supervision(m, g) for m, g in zip(rows["method"], rows["groups"],
                                                        strict=True)]
    rows["k"] = [float(cluster_k(g) or np.nan) for g in rows["groups"]]
    rows["label"] = [row_label(m, g, h) for m, g, h in
                     zip(rows["method"], rows["groups"], rows["hparams"], strict=True)]
    if bucket == "level":
        rows["bucket"] = rows["level"]
    else:
        rows["bucket"] = [f"k={int(k)}" if np.isfinite(k) else lv
                          for k, lv in zip(rows["k"], rows["level"], strict=True)]
    rows = rows.iloc[sorted(range(len(rows)), key=lambda i: _sort_key(rows.iloc[i]))]
    rows = rows.reset_index(drop=True)
    debiased = rows[~rows["method"].isin(BASELINES)]
    buckets = sorted(debiased["bucket"].unique(), key=_bucket_order)
    overall = pd.DataFrame([{"bucket": b, **debiased.loc[debiased["bucket"] == b, metrics]
                             .mean().to_dict()} for b in buckets], columns=["bucket", *metrics])
    base = rows[(rows["method"] == baseline) & (rows["groups"] == "none")]
    gains = []
    if len(base):
        ref = base.iloc[0]
        for _, o in overall.iterrows():
            g = {"bucket": o["bucket"]}
            for m in metrics:
                change = (ref[m] - o[m]) if lower_is_better(m) else (o[m] - ref[m])
                g[m] = change / ref[m] if ref[m] != 0 else np.nan  # no relative change from 0
            gains.append(g)
    gain = pd.DataFrame(gains, columns=["bucket", *metrics])
    return PaperTable(rows, overall, gain, list(metrics), title)


def _bucket_order(b: str) -> tuple:
    if b in LEVEL_ORDER:
        return (0, LEVEL_ORDER.index(b))
    return (1, int(b.split("=")[1]))


def scenarios(wide: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """Split runs by (corpus, encoder, ratio, direction): one paper table each, ratios in
    numeric order (the full, unsubsampled training set first)."""
    keys = pd.Series([tuple(str(v) for v in row) for row in
                      wide[SCENARIO].itertuples(index=False, name=None)], index=wide.index)

    def order(k: tuple) -> tuple:
        corpus, encoder, ratio, direction = k
        r = float(ratio) if ratio not in ("nan", "None") else 0.0
        return corpus, encoder, r, direction

    return [(k, wide[keys == k]) for k in sorted(set(keys), key=order)]


def scenario_title(key: tuple) -> str:
    corpus, encoder, ratio, direction = key
    r = "full" if ratio in ("nan", "None") else f"1:{float(ratio):g}"
    return f"{corpus} · {encoder} · {r} · {direction}"


def table1(wide: pd.DataFrame, title: str = "") -> PaperTable:
    return paper_table(wide, TABLE1_METRICS, bucket="level", title=title)


def table2(wide: pd.DataFrame, title: str = "") -> PaperTable | None:
    """Race and age gaps of the cluster-group methods per k (None when there are none)."""
    keep = wide[(wide["group_kind"] == "cluster") |
                ((wide["method"] == "erm") & (wide["groups"] == "none"))]
    if not (keep["group_kind"] == "cluster").any():
        return None
    return paper_table(keep, TABLE2_METRICS, bucket="k", title=title)


def ratio_table(wide: pd.DataFrame, metric: str, digits: int = 3) -> pd.DataFrame:
    """Rows = method rows, columns = imbalance ratios (1:r), cells = mean ± std over folds."""
    out = {}
    for ratio, part in wide.groupby("ratio", dropna=False):
        stats = fold_stats(part, [metric])
        label = "full" if not np.isfinite(ratio) else f"1:{ratio:g}"
        for _, r in stats.iterrows():
            key = (row_label(r["method"], r["groups"], r["hparams"]), group_cell(r["groups"]))
            out.setdefault(key, {})[label] = fmt_mean_std(r[metric], r[f"{metric}_std"], digits)
    df = pd.DataFrame.from_dict(out, orient="index")
    df.index = pd.MultiIndex.from_tuples(df.index, names=["method", "groups"])
    cols = sorted(df.columns, key=lambda c: float("inf") if c == "full" else float(c[2:]))
    return df[cols].fillna("—")


def markdown_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in body]
    return "\n".join(lines)


def frame_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """A small DataFrame (index included) as header + string cells."""
    df = df.reset_index()
    return [str(c) for c in df.columns], [[str(v) for v in r] for r in df.itertuples(index=False)]
