"""The benchmark report: Markdown (figures beside it), one self-contained HTML page, and
report.json with every table's cells under its section titles.

Both are rendered from the same list of blocks (headings, paragraphs, tables, images), so they
always say the same thing, and both open with a table of contents whose links point at anchors
on the headings; the HTML embeds every figure as base64 PNG and needs no other file. Every row
names its group source (● truth:<attribute>, ◐ pseudo:<model>, ○ cluster k=<k> (<encoder>),
– no groups), so the cluster runs of one method at different k stay apart.
Contents, per scenario (corpus · encoder · ratio · direction): the Table-1-style table (gender
gaps per supervision level, Overall and Gain rows), the Table-2-style table (race and age gaps
of the cluster-group methods per k) when there are cluster runs with those attributes, paired
tests of each method against ERM over folds × seeds (`emodebias.metrics.paired_test`, with the
smallest p the design allows, Holm-adjusted p-values and a note on whether the design can show
significance), each row's mean over folds with a 95% t interval over folds, the gender gaps
against their permutation noise floors with "not estimable" counts, pooled out-of-fold scoring
when the run folders are at hand, the test set's utterances and speakers per group, every
gender gap (TPR, FPR, F1, DP) and worst-group F1 with fold t intervals, a numbered
fairness–accuracy scatter with interval bars and its key table, per-class gap bars and a
per-group × class TPR/FPR heatmap, the group sources' purity and NMI against each attribute
and the learned layer weights of the head (multi-layer features); across scenarios, per-ratio
tables and gap/F1-vs-ratio plots
(EMO-Debias grids), gap/F1/accuracy vs k (IDI k sweeps), each with the imbalance directions in
separate panels, in- vs cross-corpus scores (grids with `test_corpus:`, `report.cross`), and any
t-SNE figures found.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from emodebias.bench.results import iter_records, summary_wide
from emodebias.report import plots
from emodebias.report.cross import cross_corpus_blocks
from emodebias.report.tables import (
    GROUPS_NOTE,
    MARKS_NOTE,
    TABLE1_METRICS,
    fmt_num,
    frame_rows,
    group_cell,
    markdown_table,
    metric_label,
    ratio_table,
    row_label,
    scenario_title,
    scenarios,
    table1,
    table2,
)

STAT_METRICS = ("macro_f1", "gender.tpr_gap")


@dataclass
class Report:
    markdown: Path
    html: Path
    headline: str  # the first Table-1 table, as Markdown
    tables: Path | None = None  # report.json: every table as shown, under its section titles


Block = tuple  # ("h", level, text) | ("p", text) | ("table", head, body) | ("img", path, caption)


def _pairs(rows: pd.DataFrame, erm: pd.DataFrame, metric: str) -> tuple[dict, dict]:
    """Per-unit values of a method row and of ERM: units are (fold, seed) pairs both ran, or
    folds (seeds averaged) when their seeds differ."""
    keys = ["fold", "seed"] if "seed" in rows.columns else ["fold"]
    a = rows.groupby(keys)[metric].mean().dropna()
    b = erm.groupby(keys)[metric].mean().dropna()
    common = sorted(set(a.index) & set(b.index), key=str)
    if len(common) < 2 and len(keys) == 2:
        a, b = rows.groupby("fold")[metric].mean().dropna(), erm.groupby("fold")[metric].mean()
        common = sorted(set(a.index) & set(b.dropna().index), key=str)
    return {k: a[k] for k in common}, {k: b[k] for k in common}


def paired_rows(wide: pd.DataFrame, metrics: tuple[str, ...] = STAT_METRICS
                ) -> tuple[list, list, str]:
    """Each method row vs ERM over the folds (× seeds) both ran: mean difference, t interval,
    p-values, the smallest p the design allows, and Holm-adjusted permutation p-values over all
    comparisons of the table. Returns (head, body, design note)."""
    from emodebias.metrics.stats import holm, min_sign_flip_p, paired_test, pairs_needed

    erm = wide[(wide["method"] == "erm") & (wide["groups"] == "none")]
    head = ["method", "groups", "metric", "n", "Δ vs ERM", "95% CI of Δ", "p (t)", "p (perm.)",
            "min p", "p (perm., Holm)"]
    body, perm, sizes = [], [], []
    if erm.empty:
        return head, body, ""
    for (method, groups, hp), rows in wide.groupby(["method", "groups", "hparams"]):
        if method == "erm" and groups == "none":
            continue
        for m in metrics:
            if m not in wide.columns:
                continue
            a, b = _pairs(rows, erm, m)
            if len(a) < 2:
                continue
            t = paired_test(a, b)
            perm.append(t["p_permutation"])
            sizes.append(t["n"])
            body.append([row_label(method, groups, hp), group_cell(groups),
                         metric_label(m), t["n"], f"{t['mean_diff']:+.3f}",
                         f"[{fmt_num(t['ci_low'])}, {fmt_num(t['ci_high'])}]",
                         f"{t['p_ttest']:.3f}", f"{t['p_permutation']:.3f}",
                         f"{min_sign_flip_p(t['n']):.4f}"])
    for row, adj in zip(body, holm(perm), strict=True):
        row.append(f"{adj:.3f}")
    note = ""
    if body:
        n, m = min(sizes), len(body)
        need = pairs_needed(0.05, m)
        folds = wide["fold"].nunique()
        seeds = wide["seed"].nunique() if "seed" in wide.columns else 1
        note = (f"Paired over {n} fold×seed units ({folds} folds, {seeds} seed(s)); {m} "
                f"comparisons, Holm-corrected. The exact sign-flip test cannot give p below "
                f"{min_sign_flip_p(n):.4f} with {n} pairs, and Holm's first threshold is "
                f"{0.05 / m:.4f}: ")
        if min_sign_flip_p(n) > 0.05 / m:
            note += (f"this design cannot show a significant difference at α = 0.05. "
                     f"That needs ≥ {need} pairs, e.g. {-(-need // max(folds, 1))} seeds per "
                     f"fold with {folds} folds.")
        else:
            note += "the design can show significance at α = 0.05."
    return head, body, note


def fold_rows(wide: pd.DataFrame, metrics: list[str] = TABLE1_METRICS) -> tuple[list, list]:
    """Per row and metric: mean over folds with a 95% t interval over folds (seeds averaged
    within a fold). This is an interval of the mean over folds, not an average of per-run
    intervals."""
    from emodebias.metrics.stats import fold_interval

    present = [m for m in metrics if m in wide.columns]
    head = ["method", "groups", "n folds"] + [f"{metric_label(m)} mean [95% CI]" for m in present]
    body = []
    for (method, groups, hp), rows in wide.groupby(["method", "groups", "hparams"]):
        cells, n = [], 0
        for m in present:
            f = fold_interval(rows.groupby("fold")[m].mean().to_numpy())
            n = max(n, f["n"])
            cells.append(f"{fmt_num(f['mean'])} [{fmt_num(f['ci_low'])}, "
                         f"{fmt_num(f['ci_high'])}]" if f["n"] > 1 else
                         f"{fmt_num(f['mean'])} (one fold: no interval)")
        body.append([row_label(method, groups, hp), group_cell(groups), n, *cells])
    return head, body


def gap_rows(wide: pd.DataFrame, attribute: str = "gender",
             gaps: tuple[str, ...] = ("tpr_gap", "dp_maxdev_gap")) -> tuple[list, list]:
    """Per row: the paper's gap, the bias-corrected one, the permutation noise floor, how many
    folds show a gap distinguishable from chance, and how many folds' intervals were not
    estimable (with the fewest speakers per group seen)."""
    present = [g for g in gaps if f"{attribute}.{g}_p" in wide.columns
               or f"{attribute}.{g}_estimable" in wide.columns]
    head = ["method", "groups", "gap", "paper (mean)", "bias-corr. (mean)", "noise floor (mean)",
            "folds p < 0.05", "intervals not estimable", "min speakers/group"]
    body = []
    for (method, groups, hp), rows in wide.groupby(["method", "groups", "hparams"]):
        for g in present:
            key = f"{attribute}.{g}"
            col = rows.get
            p, est = col(f"{key}_p"), col(f"{key}_estimable")
            n = int(rows[key].notna().sum()) if key in rows else 0
            sig = f"{int((p < 0.05).sum())}/{int(p.notna().sum())}" if p is not None else "—"
            bad = f"{int((est == 0).sum())}/{int(est.notna().sum())}" if est is not None else "—"
            spk = col(f"{attribute}.min_speakers")
            body.append([row_label(method, groups, hp), group_cell(groups),
                         metric_label(key), fmt_num(rows[key].mean()) if n else "—",
                         fmt_num(col(f"{key}_bc", pd.Series(dtype=float)).mean()),
                         fmt_num(col(f"{key}_floor", pd.Series(dtype=float)).mean()),
                         sig, bad, fmt_num(spk.min(), 0) if spk is not None else "—"])
    return head, body


def pooled_scores(root: Path | None) -> tuple[list, str]:
    """Every configuration's pooled out-of-fold scores under `root` (scored once per report,
    then shown scenario by scenario), or a note saying why the runs cannot be pooled."""
    if root is None:
        return [], ""
    from emodebias.errors import UserError
    from emodebias.metrics.oof import pooled_oof

    try:
        return pooled_oof(root, n_boot=1000, n_perm=1000), ""
    except UserError as exc:
        return [], f"Pooled out-of-fold scoring skipped: {exc}"


def oof_rows(root: Path | None, wide: pd.DataFrame, attribute: str = "gender",
             gap: str = "tpr_gap", *, pooled: tuple[list, str] | None = None
             ) -> tuple[list, list, str]:
    """Pooled out-of-fold scoring per configuration of `wide` (all folds' test sets as one);
    `pooled` is `pooled_scores(root)` when already computed."""
    head = ["method", "groups", "folds", "speakers/group", "paper", "bias-corr. [95% CI]",
            "p (perm.)", "noise floor"]
    scored, note = pooled_scores(root) if pooled is None else pooled
    if not scored:
        return head, [], note
    keep = set(wide["hash"].astype(str)) if "hash" in wide.columns else set()
    body = []
    for run in scored:
        if not keep & set(run.hashes):  # another scenario's configuration
            continue
        g = run.result.gaps
        row = g[(g["attribute"] == attribute) & (g["metric"] == gap)]
        if row.empty:
            continue
        r = row.iloc[0]
        ci = (f"{fmt_num(r['value_bc'])} [{fmt_num(r['ci_low'])}, {fmt_num(r['ci_high'])}]"
              if r["status"] == "ok" else f"{fmt_num(r['value_bc'])} ({r['status']}: "
              f"{r['reason']})")
        hp = json.dumps(run.config.get("hparams") or {}, sort_keys=True)
        body.append([row_label(run.config["method"], run.config["groups"], hp),
                     group_cell(run.config["groups"]),
                     len(run.folds), r["speakers"], fmt_num(r["value"]), ci,
                     fmt_num(r["p_perm"]), fmt_num(r["noise_floor"])])
    return head, body, OOF_NOTE


GAP_NOTE = ("Gaps average per-class terms by the root mean square over classes. 'paper' is the "
            "plug-in value of the papers (biased upward by sampling noise); 'bias-corr.' is the "
            "bootstrap bias-corrected estimate; the noise floor is the gap that randomly "
            "shuffled groups (speakers kept intact) reach 5% of the time; an interval is not "
            "estimable when a group has fewer than 5 speakers or too many resamples are "
            "unusable.")
OOF_NOTE = ("The tables above score each fold's test set separately (mean over folds); this "
            "table scores the pooled out-of-fold predictions of all folds as one test set over "
            "all speakers (speaker bootstrap and permutation stratified by fold; bias-corrected "
            "percentile interval).")


def convergence_note(wide: pd.DataFrame) -> list[Block]:
    """How many runs selected an epoch in the last tenth of training (they may not have
    converged), by method; nothing when none did."""
    if "late_epoch" not in wide.columns or not wide["late_epoch"].astype(bool).any():
        return []
    late = wide[wide["late_epoch"].astype(bool)]
    by = ", ".join(f"{row_label(m, 'none')} {n}" for m, n in
                   late.groupby("method").size().sort_values(ascending=False).items())
    return [("p", f"Convergence: {len(late)} of {len(wide)} runs selected an epoch in the last "
                  f"10% of training and may not have converged ({by}); consider more epochs or "
                  "a larger learning rate.")]


def scenario_records(records: list[dict], wide: pd.DataFrame) -> list[dict]:
    """The records (read once per report) of one scenario's runs."""
    if "hash" not in wide.columns:
        return []
    keep = set(wide["hash"].astype(str))
    return [rec for rec in records if str(rec.get("hash")) in keep]


ACC_METRICS = ["macro_f1", "hamming_acc", "gender.worst_group_f1"]
GAPS = ("tpr_gap", "fpr_gap", "f1_gap", "dp_maxdev_gap", "worst_group_f1")
GAP_METRICS = [f"gender.{g}" for g in GAPS[:4]]


def attributes(wide: pd.DataFrame) -> list[str]:
    """Attributes with any reported gap, gender first (the headline attribute)."""
    found = {c.split(".")[0] for c in wide.columns
             if c.endswith(".tpr_gap") and wide[c].notna().any()}
    return sorted(found, key=lambda a: (a != "gender", a))


def test_set_rows(table: pd.DataFrame, wide: pd.DataFrame) -> tuple[list, list]:
    """Per attribute and group: test utterances per fold (the support of the positive-rate
    rows, identical for every run of a fold since the test set is never subsampled) and, where
    the records carry them ("speakers" rows), the speakers of each group per fold; records
    without them give the fewest speakers in any group of that attribute per fold instead."""
    t = table[table["metric"] == "ppr"]
    folds = sorted(t["fold"].astype(str).unique(), key=lambda f: (len(f), f))
    spk = table[table["metric"] == "speakers"]
    spk_n = spk.groupby(["attribute", "group", spk["fold"].astype(str)])["value"].max()
    head = ["attribute", "group"] + [f"test n, fold {f}" for f in folds]
    if not spk.empty:
        head += [f"speakers, fold {f}" for f in folds]
    body = []
    if t.empty:
        return head, body
    first = t.groupby("fold")["hash"].first()  # one run per fold: its test set is every run's
    t = t[t["hash"].isin(set(first))]
    n = t.groupby(["attribute", "group", "fold"])["support"].max()
    for (attr, group), per_fold in n.groupby(level=[0, 1]):
        vals = per_fold.droplevel([0, 1])
        vals.index = vals.index.astype(str)
        row = [attr, group] + [fmt_num(vals.get(f, float("nan")), 0) for f in folds]
        if not spk.empty:
            row += [fmt_num(spk_n.get((attr, group, f), float("nan")), 0) for f in folds]
        body.append(row)
    body.sort(key=lambda r: (r[0] != "all", r[0], r[1]))
    have = set(spk["attribute"])
    for attr in sorted({r[0] for r in body} - {"all"} - have):
        col = f"{attr}.min_speakers"
        if col in wide.columns:
            fewest = wide.groupby(wide["fold"].astype(str))[col].min()
            body.append([attr, "fewest speakers in a group"]
                        + [fmt_num(fewest.get(f, float("nan")), 0) for f in folds]
                        + ["—"] * (len(head) - 2 - len(folds)))
    return head, body


DIAG_ATTRIBUTES = ("gender", "age_group", "race")


def group_source_rows(records: list[dict]) -> tuple[list, list]:
    """Per group source the scenario's runs trained on: k (groups found), purity and NMI
    against each known attribute and the smallest group, as `diagnose` gave them at the grid's
    group stage (record info ``groups_diagnostics``), averaged over folds (cluster groups are
    fitted per fold); the smallest group is the minimum over folds. Records without
    diagnostics (older runs, no groups) are left out."""
    per: dict[str, dict[str, dict]] = {}  # source -> fold -> diagnostics rows by attribute
    for rec in records:
        diag = (rec.get("info") or {}).get("groups_diagnostics")
        if diag:
            rows = {r["attribute"]: r for r in diag}
            per.setdefault(rec["spec"]["groups"], {})[str(rec["spec"]["fold"])] = rows
    attrs = [a for a in DIAG_ATTRIBUTES
             if any(a in f for folds in per.values() for f in folds.values())]
    head = ["groups", "folds", "k"] + [f"{w} vs {a}" for a in attrs for w in ("purity", "NMI")]
    head.append("smallest group (utt.)")
    body = []
    for source in sorted(per, key=lambda g: (group_cell(g), g)):
        folds = per[source]
        first = next(iter(next(iter(folds.values())).values()))
        cells = []
        for a in attrs:
            for key in ("purity", "nmi"):
                vals = [f[a].get(key) for f in folds.values() if a in f]
                vals = [float(v) for v in vals if v is not None]
                cells.append(fmt_num(sum(vals) / len(vals)) if vals else "—")
        smallest = min(int(r["size_min"]) for f in folds.values() for r in f.values())
        body.append([group_cell(source), len(folds), first["n_groups"], *cells, smallest])
    return head, body


GROUP_SOURCE_NOTE = ("How well each group source recovers the true attributes (purity: share "
                     "of utterances in their group's majority value; NMI: normalised mutual "
                     "information, ~0 for random groups), over all utterances of the corpus; "
                     "mean over folds. Training uses these groups; evaluation always uses the "
                     "true attributes.")


def tradeoff_key(wide: pd.DataFrame) -> tuple[list, list]:
    """The legend of the numbered trade-off figure, with the plotted values."""
    pts = plots.tradeoff_points(wide)
    head = ["no", "method", "groups", "gender TPRgap↓ [95% CI]", "F1↑ [95% CI]", "Pareto"]
    body = []
    for _, r in pts.iterrows():
        body.append([r["no"], row_label(r["method"], r["groups"], r["hparams"]),
                     group_cell(r["groups"]),
                     f"{fmt_num(r['gap'])} [{fmt_num(r['gap_lo'])}, {fmt_num(r['gap_hi'])}]",
                     f"{fmt_num(r['score'])} [{fmt_num(r['score_lo'])}, "
                     f"{fmt_num(r['score_hi'])}]", "yes" if r["pareto"] else ""])
    return head, body


TRADEOFF_NOTE = ("Numbered points are the rows of the key below (fold means); bars are 95% t "
                 "intervals over folds on both axes; ERM is the black star with dashed "
                 "cross-hairs (up and left of it is better on both); both axes start at 0.")


def build_blocks(tidy: pd.DataFrame, fig_dir: Path, images: list[Path] = (),
                 runs: Path | None = None) -> tuple[list, str]:
    wide = summary_wide(tidy)
    blocks: list[Block] = [("p", f"{len(wide)} runs · generated {time.strftime('%Y-%m-%d %H:%M')}"
                            " · cells are mean ± std over folds; Gain = relative change of the "
                            "level's average vs ERM ((ERM − x)/ERM for gaps, (x − ERM)/ERM for "
                            "F1/ACC); " + GROUPS_NOTE + " Overall/Gain ○ averages every "
                            "debiasing method without demographic labels (clusters and no-group "
                            "methods alike, the IDI protocol). " + MARKS_NOTE),
                           *convergence_note(wide)]
    headline = ""
    records = [] if runs is None else list(iter_records(runs))
    pooled = pooled_scores(runs)
    for i, (key, part) in enumerate(scenarios(wide)):
        title = scenario_title(key)
        blocks.append(("h", 2, title))
        t1 = table1(part, title)
        blocks += [("h", 3, "Gender gaps (IDI Table 1 layout)"), ("table", *t1.to_rows())]
        headline = headline or t1.to_markdown()
        t2 = table2(part, title)
        if t2 is not None and any(m in part.columns for m in t2.metrics[2:]):
            blocks += [("h", 3, "Race and age gaps of the IDI (cluster) methods"),
                       ("table", *t2.to_rows())]
        head, body, note = paired_rows(part)
        if body:
            blocks += [("h", 3, "Paired tests vs ERM over folds"), ("table", head, body),
                       ("p", note)]
        table = tidy[(tidy["part"] == "table") & tidy["hash"].isin(set(part["hash"]))]
        head, body = test_set_rows(table, part)
        if body:
            blocks += [("h", 3, "Test set: utterances and speakers per group"),
                       ("table", head, body)]
        recs = scenario_records(records, part)
        head, body = group_source_rows(recs)
        if body:
            blocks += [("h", 3, "Group sources"), ("table", head, body),
                       ("p", GROUP_SOURCE_NOTE)]
        head, body = fold_rows(part, ACC_METRICS)
        if body:
            blocks += [("h", 3, "Accuracy and worst-group F1: mean over folds, 95% t intervals"),
                       ("table", head, body)]
        for attr in attributes(part):
            # gender's worst-group F1 sits beside F1 and accuracy above
            metrics = [f"{attr}.{g}" for g in (GAPS[:4] if attr == "gender" else GAPS)]
            head, body = fold_rows(part, metrics)
            if body:
                blocks += [("h", 3, f"{attr.capitalize()} gaps: mean over folds, 95% t "
                                    "intervals"), ("table", head, body)]
        head, body = gap_rows(part)
        if body:
            blocks += [("h", 3, "Gender gaps against chance (per fold)"), ("table", head, body),
                       ("p", GAP_NOTE)]
        head, body, note = oof_rows(runs, part, pooled=pooled)
        if body:
            blocks += [("h", 3, "Pooled out-of-fold scoring (all folds' test sets as one)"),
                       ("table", head, body), ("p", note)]
        elif note:
            blocks.append(("p", note))
        png = plots.tradeoff_scatter(part, fig_dir / f"tradeoff_{i}.png", title=title)
        if png:
            blocks += [("h", 3, "Fairness–accuracy trade-off"),
                       ("img", png, f"Fairness–accuracy trade-off, {title}. {TRADEOFF_NOTE}"),
                       ("table", *tradeoff_key(part))]
        png = plots.class_gap_bars(table, fig_dir / f"class_gaps_{i}.png")
        if png:
            blocks += [("h", 3, "Per-class gaps and per-group rates")]
            blocks.append(("img", png, f"Gender TPR and FPR gap per class and method (mean "
                                       f"over folds, whiskers: fold min–max), {title}"))
        png = plots.group_rate_heatmap(table, fig_dir / f"group_rates_{i}.png")
        if png:
            blocks.append(("img", png, f"TPR and FPR per gender group × class (mean over "
                                       f"folds; ERM and at most 7 other rows), {title}"))
        png = plots.q_trajectories(recs, fig_dir / f"q_{i}.png")
        if png:
            blocks += [("h", 3, "DRO group weights over epochs"),
                       ("img", png, f"DRO group weights q over epochs, {title}")]
        png = plots.layer_weights(recs, fig_dir / f"layer_weights_{i}.png")
        if png:
            blocks += [("h", 3, "Learned layer weights"),
                       ("img", png, f"Softmax-normalised layer weights of the head's layer mix "
                                    f"at the selected epoch, mean over runs per method row "
                                    f"(dotted: uniform, where training starts), {title}")]
    blocks += cross_corpus_blocks(tidy)  # grids with test_corpus: (none otherwise)
    if wide["ratio"].nunique() > 1:
        blocks.append(("h", 2, "Imbalance ratios"))
        for (corpus, encoder, direction), part in wide.groupby(["corpus", "encoder", "direction"]):
            for m in STAT_METRICS:
                if m in part.columns:
                    blocks += [("h", 3, f"{metric_label(m)} · {corpus} · {encoder} · {direction}"),
                               ("table", *frame_rows(ratio_table(part, m)))]
        png = plots.gap_vs_ratio(wide, fig_dir / "gap_vs_ratio.png")
        if png:
            blocks.append(("img", png, "Gender TPR gap (top) and macro-F1 (bottom) vs imbalance "
                                       "ratio, one column per imbalance direction (directions "
                                       "are not pooled); mean over folds"))
    png = plots.metrics_vs_k(wide, fig_dir / "metrics_vs_k.png")
    if png:
        blocks += [("h", 2, "Number of clusters"),
                   ("img", png, "Gender TPR gap, macro-F1 and accuracy vs k of the cluster-group "
                                "methods, one row per imbalance direction (directions are not "
                                "pooled; ratios of a direction are averaged); dashed: ERM of "
                                "that direction")]
    if images:
        blocks.append(("h", 2, "Group embeddings (t-SNE)"))
        blocks += [("img", Path(p), Path(p).stem) for p in images]
    return blocks, headline


def heading_ids(blocks: list[Block]) -> list[tuple[int, str, str]]:
    """(level, text, anchor id) of every h2/h3 heading in order; ids are unique, since the
    per-scenario headings repeat, and shared by both renderers so their contents agree."""
    return [(b[1], b[2], f"s{i}") for i, b in enumerate(blocks) if b[0] == "h" and b[1] <= 3]


def _anchor_of(blocks: list[Block]) -> dict[int, str]:
    return {i: f"s{i}" for i, b in enumerate(blocks) if b[0] == "h" and b[1] <= 3}


def render_markdown(title: str, blocks: list[Block], base: Path) -> str:
    anchors = _anchor_of(blocks)
    out = [f"# {title}", "", "## Contents", ""]
    for level, text, ident in heading_ids(blocks):
        out.append("  " * (level - 2) + f"- [{text}](#{ident})")
    out.append("")
    for i, b in enumerate(blocks):
        if b[0] == "h":
            if i in anchors:
                out.append(f'<a id="{anchors[i]}"></a>')
            out += ["#" * b[1] + " " + b[2], ""]
        elif b[0] == "p":
            out += [b[1], ""]
        elif b[0] == "table":
            out += [markdown_table(b[1], b[2]), ""]
        elif b[0] == "img":
            rel = os.path.relpath(Path(b[1]).resolve(), base.resolve())
            out += [f"![{b[2]}]({Path(rel).as_posix()})", ""]
    return "\n".join(out)


CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
       "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
       "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
       "td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}tr:nth-child(even){background:#f6f6f6}"
       "img{max-width:100%}figcaption{color:#555;font-size:13px}"
       "nav ul{list-style:none;padding-left:0}nav li.sub{padding-left:1.5em;font-size:14px}"
       ".wide{overflow-x:auto;max-width:100%}")


def render_html(title: str, blocks: list[Block]) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
           f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{esc(title)}</h1>", "<nav id='contents'><h2>Contents</h2><ul>"]
    anchors = _anchor_of(blocks)
    for level, text, ident in heading_ids(blocks):
        cls = " class='sub'" if level > 2 else ""
        out.append(f"<li{cls}><a href='#{ident}'>{esc(text)}</a></li>")
    out.append("</ul></nav>")
    for i, b in enumerate(blocks):
        if b[0] == "h":
            ident = f" id='{anchors[i]}'" if i in anchors else ""
            out.append(f"<h{b[1]}{ident}>{esc(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{esc(b[1])}</p>")
        elif b[0] == "table":
            rows = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>"
                           for r in b[2])
            head = "".join(f"<th>{esc(str(c))}</th>" for c in b[1])
            out.append(f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{rows}"
                       "</tbody></table></div>")
        elif b[0] == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            out.append(f"<figure><img alt='{esc(b[2])}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{esc(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def find_tsne(root: Path) -> list[Path]:
    """t-SNE figures written anywhere under a benchmark folder (e.g. by `emodebias groups`)."""
    return sorted(p for p in Path(root).rglob("*.png") if "tsne" in p.name.lower())


def _runs_root(out_dir: Path, runs: Path | None) -> Path | None:
    """The grid folder whose ``runs/`` hold the predictions (default: the report's parent,
    as `emodebias report OUT` writes to OUT/report)."""
    if runs is not None:
        return Path(runs)
    parent = Path(out_dir).resolve().parent
    return parent if (parent / "runs").is_dir() else None


def write_report(tidy: pd.DataFrame, out_dir: str | Path, title: str = "emodebias report",
                 images: list[Path] = (), runs: Path | None = None,
                 closing: list[Block] = ()) -> Report:
    """Render `tidy` results (from `bench.results.collect`) to report.md + report.html;
    `closing` blocks (e.g. provenance) end the report, in its table of contents too."""
    if tidy.empty:
        raise ValueError("no run records to report on; run `emodebias bench` first")
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    blocks, headline = build_blocks(tidy, fig_dir, list(images), _runs_root(out_dir, runs))
    blocks += list(closing)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(render_markdown(title, blocks, out_dir))
    page.write_text(render_html(title, blocks))
    tables = out_dir / "report.json"
    tables.write_text(json.dumps(render_json(title, blocks), indent=1, ensure_ascii=False))
    return Report(md, page, headline, tables)


def render_json(title: str, blocks: list[Block]) -> dict:
    """Every table of the report with the section (h2) and subsection (h3) it sits under, its
    header and its cells exactly as shown, so a table can be rebuilt without parsing HTML."""
    section = subsection = ""
    out = []
    for b in blocks:
        if b[0] == "h":
            section, subsection = (b[2], "") if b[1] == 2 else (section, b[2])
        elif b[0] == "table":
            out.append({"section": section, "subsection": subsection,
                        "header": [str(c) for c in b[1]],
                        "rows": [[str(c) for c in r] for r in b[2]]})
    return {"title": title, "tables": out}
