"""Report figures (matplotlib, Agg backend; each function writes one PNG and returns its path).

* fairness–accuracy scatter: one numbered point per table row (mean over folds) with 95% t
  intervals over folds on both axes, ERM starred, axes from 0, Pareto front marked (a row is on
  the front when no other row has both a lower-or-equal gap and a higher-or-equal score, with
  one strictly better);
* gap and F1 vs imbalance ratio, one line per table row and one panel column per direction;
* gap, F1 and accuracy vs k for the cluster-group (IDI) methods, one panel row per direction;
* per-class gap bars per table row, and a per-group × class TPR/FPR heatmap;
* the q trajectory of DRO runs (group weights per epoch).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from emodebias.bench.grid import group_kind  # noqa: E402
from emodebias.report.tables import full_label, metric_label, row_label  # noqa: E402


def pareto_front(cost: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mask of points not dominated when `cost` is minimised and `score` maximised."""
    cost, score = np.asarray(cost, float), np.asarray(score, float)
    front = np.ones(len(cost), dtype=bool)
    for i in range(len(cost)):
        better_eq = (cost <= cost[i]) & (score >= score[i])
        strictly = (cost < cost[i]) | (score > score[i])
        front[i] = not (better_eq & strictly).any()
    return front


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


KIND_STYLE = {"truth": ("tab:blue", "o"), "pseudo": ("tab:purple", "D"),
              "cluster": ("tab:orange", "s"), "none": ("tab:gray", "^")}
KIND_NAME = {"truth": "● true groups", "pseudo": "◐ pseudo-labels", "cluster": "○ clusters",
             "none": "– no groups"}


def tradeoff_points(wide: pd.DataFrame, gap: str = "gender.tpr_gap",
                    score: str = "macro_f1") -> pd.DataFrame:
    """One numbered point per table row: fold means, 95% t intervals over folds, Pareto flag.
    The numbers are the key between the figure and the report's legend table."""
    from emodebias.metrics.stats import fold_interval

    if gap not in wide.columns or score not in wide.columns:
        return pd.DataFrame()
    rows = []
    for (method, groups, hp), part in wide.groupby(["method", "groups", "hparams"]):
        cell = {"method": method, "groups": groups, "hparams": hp,
                "label": full_label(method, groups, hp)}
        for key, m in (("gap", gap), ("score", score)):
            f = fold_interval(part.groupby("fold")[m].mean().to_numpy())
            cell.update({key: f["mean"], f"{key}_lo": f["ci_low"], f"{key}_hi": f["ci_high"],
                         "n": f["n"]})
        rows.append(cell)
    pts = pd.DataFrame(rows).dropna(subset=["gap", "score"])
    if pts.empty:
        return pts
    pts = pts.iloc[sorted(range(len(pts)), key=lambda i: (pts.iloc[i]["method"] != "erm",
                                                         pts.iloc[i]["label"]))]
    pts = pts.reset_index(drop=True)
    pts.insert(0, "no", np.arange(1, len(pts) + 1))
    pts["pareto"] = pareto_front(pts["gap"].to_numpy(), pts["score"].to_numpy())
    return pts


def tradeoff_scatter(wide: pd.DataFrame, path: Path, gap: str = "gender.tpr_gap",
                     score: str = "macro_f1", title: str = "") -> Path | None:
    """Numbered points with 95% fold intervals on both axes; ERM as a star with dashed
    cross-hairs; both axes start at 0 (no gap, zero score) so noise does not look like
    structure; the Pareto front as a red step line. The legend is a table in the report."""
    pts = tradeoff_points(wide, gap, score)
    if pts.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    for kind, (color, marker) in KIND_STYLE.items():
        sel = pts[[group_kind(g) == kind and m != "erm" for g, m in
                   zip(pts["groups"], pts["method"], strict=True)]]
        if sel.empty:
            continue
        xerr = _err(sel, "gap")
        yerr = _err(sel, "score")
        ax.errorbar(sel["gap"], sel["score"], xerr=xerr, yerr=yerr, fmt=marker, color=color,
                    ecolor=color, elinewidth=0.8, capsize=2, alpha=0.9, label=KIND_NAME[kind],
                    zorder=3)
    erm = pts[(pts["method"] == "erm") & (pts["groups"] == "none")]
    if len(erm):
        e = erm.iloc[0]
        ax.errorbar([e["gap"]], [e["score"]], xerr=_err(erm, "gap"), yerr=_err(erm, "score"),
                    fmt="*", ms=14, color="black", elinewidth=0.8, capsize=2, label="ERM",
                    zorder=4)
        ax.axvline(e["gap"], color="black", ls="--", lw=0.7)
        ax.axhline(e["score"], color="black", ls="--", lw=0.7)
    front = pts[pts["pareto"]].sort_values("gap")
    ax.step(front["gap"], front["score"], where="post", color="tab:red", lw=1,
            label="Pareto front", zorder=2)
    hi_x = np.nanmax(np.r_[pts["gap_hi"].to_numpy(), pts["gap"].to_numpy()])
    hi_y = np.nanmax(np.r_[pts["score_hi"].to_numpy(), pts["score"].to_numpy()])
    ax.set_xlim(0, min(1.0, hi_x * 1.08) if hi_x > 0 else 1.0)
    ax.set_ylim(0, min(1.0, hi_y * 1.05) if hi_y > 0 else 1.0)
    _number_points(ax, pts)
    ax.set_xlabel(f"{metric_label(gap)} (axis from 0 = no gap)")
    ax.set_ylabel(f"{metric_label(score)} (axis from 0)")
    ax.set_title(title or "fairness–accuracy trade-off", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _number_points(ax: plt.Axes, pts: pd.DataFrame) -> None:
    """Number each point; a number whose point lies within ~3% of the axes of an earlier one
    is stacked above the earlier numbers, so coincident points stay readable."""
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    xy = np.c_[(pts["gap"] - x0) / (x1 - x0), (pts["score"] - y0) / (y1 - y0)]
    for i, (_, r) in enumerate(pts.iterrows()):
        near = int((np.hypot(*(xy[:i] - xy[i]).T) < 0.03).sum()) if i else 0
        ax.annotate(str(r["no"]), (r["gap"], r["score"]), fontsize=8,
                    xytext=(5, 4 + 9 * near), textcoords="offset points",
                    weight="bold" if r["pareto"] else "normal", zorder=5,
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.4"} if near else None)


def _err(sel: pd.DataFrame, key: str) -> np.ndarray | None:
    """Asymmetric error-bar lengths from the interval columns (none with one fold)."""
    lo = (sel[key] - sel[f"{key}_lo"]).to_numpy(float)
    hi = (sel[f"{key}_hi"] - sel[key]).to_numpy(float)
    if not np.isfinite(lo).any():
        return None
    return np.vstack([np.nan_to_num(lo), np.nan_to_num(hi)])


def _line_label(method: str, groups: str, hp: str) -> str:
    return full_label(method, groups, hp)


def gap_vs_ratio(wide: pd.DataFrame, path: Path, gap: str = "gender.tpr_gap",
                 score: str = "macro_f1") -> Path | None:
    """Gap (top) and F1 (bottom) vs imbalance ratio, one column of panels per imbalance
    direction (never pooled), one line per table row (mean over folds)."""
    wide = wide[np.isfinite(wide["ratio"])]
    if wide["ratio"].nunique() < 2 or gap not in wide.columns:
        return None
    metrics = [m for m in (gap, score) if m in wide.columns]
    directions = sorted(wide["direction"].unique())
    fig, axes = plt.subplots(len(metrics), len(directions),
                             figsize=(5.2 * len(directions), 3.6 * len(metrics)),
                             squeeze=False, sharex=True)
    for col, direction in enumerate(directions):
        part = wide[wide["direction"] == direction]
        for row, m in enumerate(metrics):
            ax = axes[row][col]
            for (method, groups, hp), rows in part.groupby(["method", "groups", "hparams"]):
                by_r = rows.groupby(["ratio", "fold"])[m].mean().groupby("ratio").mean()
                ax.plot(by_r.index, by_r.values, marker="o",
                        label=_line_label(method, groups, hp))
            ax.set_xscale("log")
            ratios = sorted(part["ratio"].unique())
            ax.set_xticks(ratios, [f"1:{r:g}" for r in ratios])
            ax.minorticks_off()
            ax.set_ylim(bottom=0)
            ax.set_title(f"direction: {direction}", fontsize=9)
            ax.set_ylabel(metric_label(m))
            ax.grid(alpha=0.3)
        axes[-1][col].set_xlabel("imbalance ratio r (1:r)")
    axes[0][-1].legend(fontsize=7, loc="best")
    return _save(fig, path)


def metrics_vs_k(wide: pd.DataFrame, path: Path,
                 metrics: tuple[str, ...] = ("gender.tpr_gap", "macro_f1", "hamming_acc")
                 ) -> Path | None:
    """Cluster-group methods' metrics vs k, one row of panels per imbalance direction (never
    pooled); ERM of the same direction as a dashed line."""
    clusters = wide[wide["group_kind"] == "cluster"]
    if clusters["k"].nunique() < 2:
        return None
    present = [m for m in metrics if m in wide.columns]
    directions = sorted(clusters["direction"].unique())
    fig, axes = plt.subplots(len(directions), len(present),
                             figsize=(4.6 * len(present), 3.6 * len(directions)), squeeze=False)
    for row, direction in enumerate(directions):
        part = clusters[clusters["direction"] == direction]
        erm = wide[(wide["method"] == "erm") & (wide["groups"] == "none")
                   & (wide["direction"] == direction)]
        for ax, m in zip(axes[row], present, strict=True):
            for (method, hp), rows in part.groupby(["method", "hparams"]):
                by_k = rows.groupby(["k", "fold"])[m].mean().groupby("k").mean()
                ax.plot(by_k.index, by_k.values, marker="o",
                        label=row_label(method, "cluster:x:k=2", hp) + " ○ cluster k")
            if len(erm):
                ax.axhline(erm.groupby("fold")[m].mean().mean(), color="black", ls="--", lw=1,
                           label="ERM")
            ax.set_xscale("log", base=2)
            ks = sorted(part["k"].dropna().unique())
            ax.set_xticks(ks, [f"{k:g}" for k in ks])
            ax.minorticks_off()
            ax.set_ylim(bottom=0)
            ax.set_xlabel("k (clusters)")
            ax.set_ylabel(metric_label(m))
            ax.set_title(f"direction: {direction}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    return _save(fig, path)


def class_gap_bars(table: pd.DataFrame, path: Path, attribute: str = "gender",
                   gaps: tuple[str, ...] = ("tpr_gap", "fpr_gap")) -> Path | None:
    """Per-class gap bars, one bar per table row in each class group, one panel per gap;
    bars are means over folds (seeds first), whiskers the fold min–max."""
    t = table[(table["attribute"] == attribute) & (table["group"] == "all")
              & (table["cls"] != "all") & table["metric"].isin(gaps)]
    if t.empty:
        return None
    t = t.assign(label=[full_label(m, g, h) for m, g, h in
                        zip(t["method"], t["groups"], t["hparams"], strict=True)])
    per_fold = t.groupby(["metric", "label", "cls", "fold"])["value"].mean()
    stats = per_fold.groupby(["metric", "label", "cls"]).agg(["mean", "min", "max"])
    classes = list(dict.fromkeys(t["cls"]))
    labels = sorted(t["label"].unique(), key=lambda s: (not s.startswith("ERM"), s))
    present = [g for g in gaps if g in set(t["metric"])]
    fig, axes = plt.subplots(len(present), 1, figsize=(max(7.0, 1.1 * len(classes) + 3),
                                                       3.0 * len(present) + 0.25 * len(labels)),
                             squeeze=False, layout="constrained")
    width = 0.8 / len(labels)
    x = np.arange(len(classes))
    for ax, g in zip(axes[:, 0], present, strict=True):
        for j, lab in enumerate(labels):
            rows = stats.loc[g].loc[lab].reindex(classes) if lab in stats.loc[g].index else None
            if rows is None:
                continue
            err = np.vstack([rows["mean"] - rows["min"], rows["max"] - rows["mean"]])
            ax.bar(x + (j - (len(labels) - 1) / 2) * width, rows["mean"], width,
                   yerr=np.nan_to_num(err), capsize=1.5, label=lab, error_kw={"lw": 0.6})
        ax.set_xticks(x, classes, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"{attribute} {g.replace('_gap', '').upper()} gap")
        ax.grid(alpha=0.3, axis="y")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, ncol=2, loc="outside lower center")
    return _save_constrained(fig, path)


def _save_constrained(fig: plt.Figure, path: Path) -> Path:
    """Save a figure laid out by constrained layout (tight_layout would undo it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def group_rate_heatmap(table: pd.DataFrame, path: Path, attribute: str = "gender"
                       ) -> Path | None:
    """Per-group × class TPR and FPR (mean over folds and rows' runs), one row of panels per
    table row (at most 8): shows which class and which group a gap comes from."""
    t = table[(table["attribute"] == attribute) & (table["group"] != "all")
              & (table["cls"] != "all") & table["metric"].isin(["tpr", "fpr"])]
    if t.empty:
        return None
    t = t.assign(label=[full_label(m, g, h) for m, g, h in
                        zip(t["method"], t["groups"], t["hparams"], strict=True)])
    labels = sorted(t["label"].unique(), key=lambda s: (not s.startswith("ERM"), s))[:8]
    classes = list(dict.fromkeys(t["cls"]))
    groups = sorted(t["group"].astype(str).unique())
    fig, axes = plt.subplots(len(labels), 2, figsize=(max(7.0, 0.9 * len(classes) * 2 + 1.5),
                                                      (0.35 * len(groups) + 1.0) * len(labels)),
                             squeeze=False, layout="constrained")
    for row, lab in enumerate(labels):
        for col, metric in enumerate(("tpr", "fpr")):
            ax = axes[row][col]
            part = t[(t["label"] == lab) & (t["metric"] == metric)]
            grid = (part.groupby(["group", "cls", "fold"])["value"].mean()
                    .groupby(["group", "cls"]).mean().unstack("cls")
                    .reindex(index=groups, columns=classes))
            im = ax.imshow(grid.to_numpy(float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for (i, j), v in np.ndenumerate(grid.to_numpy(float)):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 else "black")
            ax.set_xticks(range(len(classes)), classes, fontsize=7)
            ax.set_yticks(range(len(groups)), groups, fontsize=7)
            ax.set_title(f"{lab} · {metric.upper()}", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6)
    return _save_constrained(fig, path)


MAX_Q_PANELS = 6


def q_trajectories(records: list[dict], path: Path) -> Path | None:
    """The DRO group weights q over epochs, one panel per configuration (its first fold and
    seed), one line per group: shows which groups the robust loss leaned on, and whether q
    settled or still oscillated when training stopped."""
    first: dict[tuple, dict] = {}
    for rec in sorted(records, key=lambda r: (str(r["spec"]["fold"]), r["spec"]["seed"])):
        info = rec.get("info") or {}
        if info.get("q_trajectory"):
            spec = rec["spec"]
            key = (spec["method"], spec["groups"], json.dumps(spec["hparams"], sort_keys=True))
            first.setdefault(key, rec)
    if not first:
        return None
    chosen = list(first.items())[:MAX_Q_PANELS]
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.6 * len(chosen), 3.8), squeeze=False)
    for ax, ((method, groups, hp), rec) in zip(axes[0], chosen, strict=True):
        q = np.asarray(rec["info"]["q_trajectory"], dtype=float)  # [epochs, groups]
        names = rec["info"].get("q_groups") or [str(g) for g in range(q.shape[1])]
        epochs = np.arange(1, len(q) + 1)
        for g, name in enumerate(names):
            ax.plot(epochs, q[:, g], lw=1, label=str(name))
        ax.axhline(1 / q.shape[1], color="black", ls=":", lw=1)
        ax.set_ylim(0, max(1 / q.shape[1] * 2, float(q.max()) * 1.05))
        ax.set_title(f"{full_label(method, groups, hp)} · fold {rec['spec']['fold']}", fontsize=8)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(names) <= 12:
            ax.legend(fontsize=6, ncol=2)
    axes[0][0].set_ylabel("group weight q (dotted: uniform)")
    return _save(fig, path)


def layer_weight_means(records: list[dict]) -> dict[str, np.ndarray]:
    """Per method row (its label), the mean over its runs of the selected epoch's normalised
    layer weights (records without them, e.g. single-layer features, are left out)."""
    rows: dict[str, list[np.ndarray]] = {}
    for rec in records:
        w = (rec.get("info") or {}).get("layer_weights")
        if w:
            spec = rec["spec"]
            label = full_label(spec["method"], spec["groups"],
                               json.dumps(spec["hparams"], sort_keys=True))
            rows.setdefault(label, []).append(np.asarray(w, dtype=float))
    return {k: np.mean(np.stack(v), 0) for k, v in rows.items()
            if len({len(x) for x in v}) == 1}


def layer_weights(records: list[dict], path: Path) -> Path | None:
    """Mean learned layer weight per layer of the SSL head's layer mix, one line per method
    row: which layers each method leaned on (dotted: uniform weights, where training starts)."""
    means = layer_weight_means(records)
    if not means:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    n_layers = max(len(v) for v in means.values())
    for label, w in means.items():
        ax.plot(np.arange(len(w)), w, marker="o", ms=3, lw=1, label=label)
    ax.axhline(1 / n_layers, color="black", ls=":", lw=1)
    ax.set_xlabel("layer (0 = CNN output)")
    ax.set_ylabel("normalised layer weight")
    top = max(float(max(w.max() for w in means.values())), 1 / n_layers)
    ax.set_ylim(0, top * 1.15)  # from 0: small departures from uniform look small
    ax.set_xticks(np.arange(n_layers))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=1 if len(means) <= 12 else 2, loc="center left",
              bbox_to_anchor=(1.01, 0.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps the legend beside the axes
    plt.close(fig)
    return path
