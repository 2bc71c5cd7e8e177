"""The report's "In-corpus vs cross-corpus" section (grids with `test_corpus:`, see
`emodebias.bench.cross_corpus`).

Per training scenario (corpus · encoder · ratio · direction): one table with a row per method and
evaluation (in-corpus on all classes, in-corpus on the shared classes, each test corpus on the
shared classes) and one table with the change from in- to cross-corpus per method and test
corpus, on the shared classes so both sides are scored alike. Intervals: with several folds ×
seeds, 95% t intervals over folds (the change paired per run); with one run, the metrics'
bootstrap intervals (a gap's is its bias-corrected value's, marked "bc"), and for the change a
normal approximation from the two intervals (the two test sets are disjoint, so their
resampling is independent).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emodebias.report.tables import SCENARIO, fmt_num, group_cell, metric_label, row_label

METRICS = ("macro_f1", "gender.tpr_gap")
CHANGE_NOTE = ("Δ = cross-corpus − in-corpus, both on the shared classes (a gap that grows is "
               "fairness lost on the other corpus). Brackets: 95% t intervals over folds when "
               "there are several folds, else bootstrap intervals of the single run (bc: of the "
               "bias-corrected gap) and, for Δ, their normal-approximation combination.")


def eval_wide(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, evaluation): spec columns, eval_corpus, eval_classes and one column
    per summary metric (``macro_f1``, ``macro_f1.ci_low``, ``gender.tpr_gap``, ...)."""
    s = tidy[tidy["part"].isin(["summary", "shared_summary"])].copy()
    if s.empty or "eval_corpus" not in s.columns:
        return pd.DataFrame()
    metric = s["metric"].str.replace(r"_ci_(low|high)$", r".ci_\1", regex=True)
    s["key"] = np.where(s["attribute"].isna(), metric, s["attribute"].fillna("") + "." + metric)
    idx = ["hash", "eval_corpus", "eval_classes"]
    wide = s.pivot_table(index=idx, columns="key", values="value", aggfunc="first")
    meta = s.drop_duplicates(idx).set_index(idx)[[*SCENARIO, "method", "groups", "hparams",
                                                  "fold", "seed"]]
    out = meta.join(wide)
    # the all-class scoring's counts, from its per-group table (utterances: macro-F1's support)
    t = tidy[(tidy["part"] == "table") & (tidy["attribute"] == "all") & (tidy["group"] == "all")]
    counts = {"n_utterances": t[t["metric"] == "macro_f1"].set_index(idx)["support"],
              "n_speakers": t[t["metric"] == "speakers"].set_index(idx)["value"]}
    for col, values in counts.items():
        values = values[~values.index.duplicated()]
        out[col] = out[col].fillna(values) if col in out else values
    return out.reset_index()


def _interval(rows: pd.DataFrame, key: str) -> str:
    """Mean over folds with a t interval, or one run's value with its bootstrap interval."""
    if key not in rows or rows[key].notna().sum() == 0:
        return "—"
    from emodebias.metrics.stats import fold_interval

    f = fold_interval(rows.groupby("fold")[key].mean().to_numpy())
    if f["n"] > 1:
        return f"{fmt_num(f['mean'])} [{fmt_num(f['ci_low'])}, {fmt_num(f['ci_high'])}]"
    lo, hi, mark = _boot(rows.iloc[0], key)
    return fmt_num(f["mean"]) + (f" [{fmt_num(lo)}, {fmt_num(hi)}]{mark}" if lo == lo else "")


def _boot(row: pd.Series, key: str) -> tuple[float, float, str]:
    """One run's bootstrap interval of `key` (a gap's: its bias-corrected value's, "bc")."""
    for k, mark in ((key, ""), (f"{key}_bc", " bc")):
        lo, hi = row.get(f"{k}.ci_low"), row.get(f"{k}.ci_high")
        if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
            return float(lo), float(hi), mark
    return float("nan"), float("nan"), ""


def _change(inn: pd.DataFrame, cross: pd.DataFrame, key: str) -> str:
    """cross − in, paired per run; interval over folds, or combined bootstrap half-widths."""
    from emodebias.metrics.stats import fold_interval

    if key not in inn or key not in cross:
        return "—"
    pair = inn[["hash", "fold", key]].merge(cross[["hash", key]], on="hash",
                                            suffixes=("", "_x"))
    pair["d"] = pair[f"{key}_x"] - pair[key]
    f = fold_interval(pair.groupby("fold")["d"].mean().to_numpy())
    if f["n"] == 0:
        return "—"
    if f["n"] > 1:
        return f"{f['mean']:+.3f} [{f['ci_low']:+.3f}, {f['ci_high']:+.3f}]"
    (lo1, hi1, _), (lo2, hi2, _) = _boot(inn.iloc[0], key), _boot(cross.iloc[0], key)
    half = np.hypot((hi1 - lo1) / 2, (hi2 - lo2) / 2)
    return f"{f['mean']:+.3f}" + (f" [{f['mean'] - half:+.3f}, {f['mean'] + half:+.3f}]"
                                  if np.isfinite(half) else "")


def _label(corpus: str, ev_corpus: str, classes: str) -> str:
    if ev_corpus == corpus:
        return f"in-corpus ({corpus}, {'all' if classes == 'all' else 'shared'} classes)"
    return f"cross-corpus ({ev_corpus}, shared classes)"


def cross_corpus_blocks(tidy: pd.DataFrame) -> list[tuple]:
    """The section's blocks; none when no run was scored on another corpus."""
    wide = eval_wide(tidy)
    if wide.empty or not (wide["eval_corpus"] != wide["corpus"]).any():
        return []
    blocks: list[tuple] = [("h", 2, "In-corpus vs cross-corpus")]
    keys = ["method", "groups", "hparams"]
    for scen, part in wide.groupby(SCENARIO, dropna=False, sort=True):
        corpus, encoder, ratio, direction = scen
        ratio_txt = "full" if ratio != ratio else f"1:{ratio:g}"
        blocks.append(("h", 3, f"Trained on {corpus} · {encoder} · {ratio_txt} · {direction}"))
        head = ["method", "groups", "evaluation", "runs", "utterances", "speakers",
                *(f"{metric_label(m)} [95% CI]" for m in METRICS)]
        body = []
        order = {("all", True): 0, ("shared", True): 1}
        for (method, groups, hp), rows in part.groupby(keys, sort=True):
            evals = sorted(rows.groupby(["eval_corpus", "eval_classes"]),
                           key=lambda g: (order.get((g[0][1], g[0][0] == corpus), 2), g[0][0]))
            for (ev_corpus, classes), ev in evals:
                body.append([row_label(method, groups, hp), group_cell(groups),
                             _label(corpus, ev_corpus, classes), str(ev["hash"].nunique()),
                             fmt_num(ev.get("n_utterances", pd.Series(dtype=float)).mean(), 0),
                             fmt_num(ev.get("n_speakers", pd.Series(dtype=float)).mean(), 0),
                             *(_interval(ev, m) for m in METRICS)])
        blocks += [("table", head, body)]
        head = ["method", "groups", "test corpus"]
        for m in METRICS:
            lab = metric_label(m)
            head += [f"{lab} in-corpus", f"{lab} cross-corpus", f"Δ {lab}"]
        body = []
        shared = part[part["eval_classes"] == "shared"]
        for (method, groups, hp), rows in shared.groupby(keys, sort=True):
            inn = rows[rows["eval_corpus"] == corpus]
            for test, cross in rows[rows["eval_corpus"] != corpus].groupby("eval_corpus"):
                cells = []
                for m in METRICS:
                    cells += [_interval(inn, m), _interval(cross, m), _change(inn, cross, m)]
                body.append([row_label(method, groups, hp), group_cell(groups), test, *cells])
        blocks += [("h", 3, f"Change from in- to cross-corpus (trained on {corpus})"),
                   ("table", head, body), ("p", CHANGE_NOTE)]
    return blocks
