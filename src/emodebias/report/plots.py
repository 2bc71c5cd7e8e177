"""Report figures (matplotlib, Agg backend; each function writes one PNG and returns its path).

* fairness–accuracy scatter: one point per method row (mean over folds), Pareto front marked
  (a row is on the front when no other row has both a lower-or-equal gap and a higher-or-equal
  score, with one strictly better);
* gap vs imbalance ratio, one line per method row and one panel per direction (EMO-Debias);
* gap and accuracy vs k for the cluster-group (IDI) methods (IDI Fig. 2/3);
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

from emodebias.report.tables import fold_stats, metric_label, row_label, supervision  # noqa: E402


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


def tradeoff_scatter(wide: pd.DataFrame, path: Path, gap: str = "gender.tpr_gap",
                     score: str = "macro_f1", title: str = "") -> Path | None:
    stats = fold_stats(wide, [gap, score]).dropna(subset=[gap, score])
    if stats.empty:
        return None
    front = pareto_front(stats[gap].to_numpy(), stats[score].to_numpy())
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.scatter(stats[gap], stats[score], c=np.where(front, "tab:red", "tab:blue"), zorder=3)
    for (_, r), on in zip(stats.iterrows(), front, strict=True):
        label = f"{row_label(r['method'], r['groups'], r['hparams'])} "
        label += supervision(r["method"], r["groups"])
        ax.annotate(label, (r[gap], r[score]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points", weight="bold" if on else "normal")
    pts = stats[front].sort_values(gap)
    ax.step(pts[gap], pts[score], where="post", color="tab:red", lw=1, label="Pareto front")
    ax.set_xlabel(metric_label(gap))
    ax.set_ylabel(metric_label(score))
    ax.set_title(title or "fairness–accuracy trade-off (mean over folds)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def gap_vs_ratio(wide: pd.DataFrame, path: Path, gap: str = "gender.tpr_gap") -> Path | None:
    wide = wide[np.isfinite(wide["ratio"])]
    if wide["ratio"].nunique() < 2 or gap not in wide.columns:
        return None
    directions = sorted(wide["direction"].unique())
    fig, axes = plt.subplots(1, len(directions), figsize=(5.2 * len(directions), 4),
                             squeeze=False, sharey=True)
    for ax, direction in zip(axes[0], directions, strict=True):
        part = wide[wide["direction"] == direction]
        for (method, groups, hp), rows in part.groupby(["method", "groups", "hparams"]):
            by_r = rows.groupby(["ratio", "fold"])[gap].mean().groupby("ratio").mean()
            ax.plot(by_r.index, by_r.values, marker="o", label=row_label(method, groups, hp))
        ax.set_xscale("log")
        ax.set_xlabel("imbalance ratio r (1:r)")
        ax.set_title(direction, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric_label(gap))
    axes[0][-1].legend(fontsize=7, loc="best")
    return _save(fig, path)


def metrics_vs_k(wide: pd.DataFrame, path: Path,
                 metrics: tuple[str, ...] = ("gender.tpr_gap", "hamming_acc")) -> Path | None:
    clusters = wide[wide["group_kind"] == "cluster"]
    if clusters["k"].nunique() < 2:
        return None
    present = [m for m in metrics if m in wide.columns]
    erm = wide[(wide["method"] == "erm") & (wide["groups"] == "none")]
    fig, axes = plt.subplots(1, len(present), figsize=(5.2 * len(present), 4), squeeze=False)
    for ax, m in zip(axes[0], present, strict=True):
        for method, rows in clusters.groupby("method"):
            by_k = rows.groupby(["k", "fold"])[m].mean().groupby("k").mean()
            ax.plot(by_k.index, by_k.values, marker="o", label=row_label(method, "cluster:x:k=2"))
        if len(erm):
            ax.axhline(erm[m].mean(), color="black", ls="--", lw=1, label="ERM")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (clusters)")
        ax.set_ylabel(metric_label(m))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    return _save(fig, path)


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
        ax.set_title(f"{row_label(method, groups, hp)} · fold {rec['spec']['fold']}", fontsize=8)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(names) <= 12:
            ax.legend(fontsize=6, ncol=2)
    axes[0][0].set_ylabel("group weight q (dotted: uniform)")
    return _save(fig, path)
