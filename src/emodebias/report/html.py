"""The benchmark report: Markdown (figures beside it) and one self-contained HTML page.

Both are rendered from the same list of blocks (headings, paragraphs, tables, images), so they
always say the same thing; the HTML embeds every figure as base64 PNG and needs no other file.
Contents, per scenario (corpus · encoder · ratio · direction): the Table-1-style table (gender
gaps per supervision level, Overall and Gain rows), the Table-2-style table (race and age gaps
of the cluster-group methods per k) when there are cluster runs with those attributes, paired
tests of each method against ERM over folds (`emodebias.metrics.paired_test`), the averages of
the per-run speaker-bootstrap 95% CIs when the runs computed them (``evaluation: {n_boot: N}``),
and a fairness–accuracy scatter; across scenarios, per-ratio tables and gap-vs-ratio plots
(EMO-Debias grids), gap/accuracy vs k (IDI k sweeps), and any t-SNE figures found.
"""

from __future__ import annotations

import base64
import html
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from emodebias.bench.results import summary_wide
from emodebias.report import plots
from emodebias.report.tables import (
    TABLE1_METRICS,
    fmt_num,
    frame_rows,
    markdown_table,
    metric_label,
    ratio_table,
    row_label,
    scenario_title,
    scenarios,
    supervision,
    table1,
    table2,
)

STAT_METRICS = ("macro_f1", "gender.tpr_gap")


@dataclass
class Report:
    markdown: Path
    html: Path
    headline: str  # the first Table-1 table, as Markdown


Block = tuple  # ("h", level, text) | ("p", text) | ("table", head, body) | ("img", path, caption)


def paired_rows(wide: pd.DataFrame, metrics: tuple[str, ...] = STAT_METRICS) -> tuple[list, list]:
    """Each method row vs ERM over the folds both ran: mean difference and p-values."""
    from emodebias.metrics import paired_test

    erm = wide[(wide["method"] == "erm") & (wide["groups"] == "none")]
    head = ["method", "sup", "metric", "n", "Δ vs ERM", "95% CI of Δ", "p (t)", "p (perm.)"]
    body = []
    if erm.empty:
        return head, body
    for (method, groups, hp), rows in wide.groupby(["method", "groups", "hparams"]):
        if method == "erm" and groups == "none":
            continue
        for m in metrics:
            if m not in wide.columns:
                continue
            a = rows.groupby("fold")[m].mean().dropna()
            b = erm.groupby("fold")[m].mean().dropna()
            common = sorted(set(a.index) & set(b.index))
            if len(common) < 2:
                continue
            t = paired_test({f: a[f] for f in common}, {f: b[f] for f in common})
            body.append([row_label(method, groups, hp), supervision(method, groups),
                         metric_label(m), t["n"], f"{t['mean_diff']:+.3f}",
                         f"[{fmt_num(t['ci_low'])}, {fmt_num(t['ci_high'])}]",
                         f"{t['p_ttest']:.3f}", f"{t['p_permutation']:.3f}"])
    return head, body


def ci_rows(wide: pd.DataFrame, metrics: list[str] = TABLE1_METRICS) -> tuple[list, list]:
    """Per row: mean over folds of each run's bootstrap interval (only where runs have CIs)."""
    present = [m for m in metrics if f"{m}_ci_low" in wide.columns]
    head = ["method", "sup"] + [f"{metric_label(m)} 95% CI" for m in present]
    body = []
    if not present:
        return head, body
    for (method, groups, hp), rows in wide.groupby(["method", "groups", "hparams"]):
        cells = [f"[{fmt_num(rows[f'{m}_ci_low'].mean())}, {fmt_num(rows[f'{m}_ci_high'].mean())}]"
                 for m in present]
        body.append([row_label(method, groups, hp), supervision(method, groups), *cells])
    return head, body


def build_blocks(tidy: pd.DataFrame, fig_dir: Path, images: list[Path] = ()) -> tuple[list, str]:
    wide = summary_wide(tidy)
    blocks: list[Block] = [("p", f"{len(wide)} runs · generated {time.strftime('%Y-%m-%d %H:%M')}"
                            " · cells are mean ± std over folds; Gain = relative change of the "
                            "level's average vs ERM ((ERM − x)/ERM for gaps, (x − ERM)/ERM for "
                            "F1/ACC); ● truth, ◐ pseudo-label, ○ clusters / no groups.")]
    headline = ""
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
        head, body = paired_rows(part)
        if body:
            blocks += [("h", 3, "Paired tests vs ERM over folds"), ("table", head, body)]
        head, body = ci_rows(part)
        if body:
            blocks += [("h", 3, "Speaker-bootstrap 95% CIs (mean over folds)"),
                       ("table", head, body)]
        png = plots.tradeoff_scatter(part, fig_dir / f"tradeoff_{i}.png", title=title)
        if png:
            blocks.append(("img", png, f"Fairness–accuracy trade-off, {title}"))
    if wide["ratio"].nunique() > 1:
        blocks.append(("h", 2, "Imbalance ratios"))
        for (corpus, encoder, direction), part in wide.groupby(["corpus", "encoder", "direction"]):
            for m in STAT_METRICS:
                if m in part.columns:
                    blocks += [("h", 3, f"{metric_label(m)} · {corpus} · {encoder} · {direction}"),
                               ("table", *frame_rows(ratio_table(part, m)))]
        png = plots.gap_vs_ratio(wide, fig_dir / "gap_vs_ratio.png")
        if png:
            blocks.append(("img", png, "Gender TPR gap vs imbalance ratio"))
    png = plots.metrics_vs_k(wide, fig_dir / "metrics_vs_k.png")
    if png:
        blocks += [("h", 2, "Number of clusters"), ("img", png, "Gap and accuracy vs k")]
    if images:
        blocks.append(("h", 2, "Group embeddings (t-SNE)"))
        blocks += [("img", Path(p), Path(p).stem) for p in images]
    return blocks, headline


def render_markdown(title: str, blocks: list[Block], base: Path) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if b[0] == "h":
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
       "td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#f6f6f6}"
       "img{max-width:100%}figcaption{color:#555;font-size:13px}")


def render_html(title: str, blocks: list[Block]) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
           f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{esc(title)}</h1>"]
    for b in blocks:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{esc(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{esc(b[1])}</p>")
        elif b[0] == "table":
            rows = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>"
                           for r in b[2])
            head = "".join(f"<th>{esc(str(c))}</th>" for c in b[1])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            out.append(f"<figure><img alt='{esc(b[2])}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{esc(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def find_tsne(root: Path) -> list[Path]:
    """t-SNE figures written anywhere under a benchmark folder (e.g. by `emodebias groups`)."""
    return sorted(p for p in Path(root).rglob("*.png") if "tsne" in p.name.lower())


def write_report(tidy: pd.DataFrame, out_dir: str | Path, title: str = "emodebias report",
                 images: list[Path] = ()) -> Report:
    """Render `tidy` results (from `bench.results.collect`) to report.md + report.html."""
    if tidy.empty:
        raise ValueError("no run records to report on; run `emodebias bench` first")
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    blocks, headline = build_blocks(tidy, fig_dir, list(images))
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(render_markdown(title, blocks, out_dir))
    page.write_text(render_html(title, blocks))
    return Report(md, page, headline)
