"""Report rendering: Markdown + self-contained HTML, figures, paired tests, Pareto front."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import stats

from emodebias.bench.grid import RunSpec
from emodebias.bench.results import tidy_frame
from emodebias.report.html import write_report
from emodebias.report.plots import pareto_front


def record(method, groups, fold, ratio=20.0, direction="natural", **summary):
    spec = RunSpec(corpus="c", encoder="e", fold=str(fold), ratio=ratio, direction=direction,
                   groups=groups, method=method)
    return {"hash": spec.hash, "name": spec.name, "spec": spec.to_dict(), "best_epoch": 1,
            "wall_time": 1.0, "metrics": {"summary": summary, "table": []}}


ERM_F1 = {1: .60, 2: .70, 3: .65}
RW_F1 = {1: .62, 2: .69, 3: .68}


def records():
    recs = []
    for f in (1, 2, 3):
        for ratio in (5.0, 20.0):
            recs.append(record("erm", "none", f, ratio, macro_f1=ERM_F1[f], hamming_acc=.8,
                               **{"gender.tpr_gap": .3, "gender.dp_maxdev_gap": .1}))
            recs.append(record("rw", "truth:gender", f, ratio, macro_f1=RW_F1[f],
                               hamming_acc=.79,
                               **{"gender.tpr_gap": .2, "gender.dp_maxdev_gap": .05,
                                  "macro_f1.ci_low": .5, "macro_f1.ci_high": .8}))
        for k, gap in ((4, .25), (8, .22)):
            recs.append(record("gdro", f"cluster:acoustic:k={k}", f, macro_f1=.6, hamming_acc=.78,
                               **{"gender.tpr_gap": gap, "race.tpr_gap": .1,
                                  "age_group.tpr_gap": .12}))
    return recs


def test_pareto_front_by_hand() -> None:
    gap = np.array([.1, .2, .3, .1, .2])
    f1 = np.array([.6, .7, .65, .5, .7])
    assert pareto_front(gap, f1).tolist() == [True, True, False, False, True]


def test_report_markdown_and_self_contained_html(tmp_path) -> None:
    tsne = tmp_path / "cache" / "groups_tsne.png"
    tsne.parent.mkdir()
    import matplotlib.pyplot as plt

    plt.figure(figsize=(1, 1))
    plt.savefig(tsne)
    plt.close("all")
    rep = write_report(tidy_frame(records()), tmp_path / "report", title="T", images=[tsne])
    md = rep.markdown.read_text()
    page = rep.html.read_text()
    # scenario 1:20 holds ERM, RW (truth) and GDRO-IDI at k=4, 8
    assert "## c · e · 1:20 · natural" in md and "## c · e · 1:5 · natural" in md
    assert "| ERM | – | 0.650 ± 0.050 |" in rep.headline
    # paired test RW vs ERM on F1 over 3 folds: d = (.02, -.01, .03)
    d = np.array([RW_F1[f] - ERM_F1[f] for f in (1, 2, 3)])
    p = stats.ttest_rel(list(RW_F1.values()), list(ERM_F1.values())).pvalue
    assert f"| RW | ● truth:gender | F1↑ | 3 | {d.mean():+.3f} |" in md
    # exact sign-flip p: 4 of the 8 sign patterns reach |mean| (+++, ---, +-+, -+-)
    assert f"| {p:.3f} | 0.500 |" in md
    # mean over folds with a t interval over the 3 folds (not an average of per-run intervals)
    rw_f1 = np.array(list(RW_F1.values()))
    half = stats.t.ppf(0.975, 2) * rw_f1.std(ddof=1) / np.sqrt(3)
    assert (f"| RW | ● truth:gender | 3 | {rw_f1.mean():.3f} [{rw_f1.mean() - half:.3f}, "
            f"{rw_f1.mean() + half:.3f}] |") in md
    # 3 pairs: the exact sign-flip test cannot go below p = 2/8
    assert "| 0.2500 |" in md and "cannot show a significant difference at α = 0.05" in md
    assert "Race and age gaps" in md
    # every attribute with a gap gets its own fold-interval table (race: .1 in all 3 folds)
    assert "### Race gaps: mean over folds, 95% t intervals" in md
    assert "| GDRO-IDI | ○ cluster k=8 (acoustic) | 3 | 0.100 [0.100, 0.100] |" in md
    assert "| GDRO-IDI | ○ cluster k=4 (acoustic) | 3 | 0.120 [0.120, 0.120] |" in md
    rw = f"{np.mean(list(RW_F1.values())):.3f} ± {np.std(list(RW_F1.values()), ddof=1):.3f}"
    assert "Imbalance ratios" in md and f"| RW | ● truth:gender | {rw} | {rw} |" in md
    # the two cluster runs of GDRO are told apart by k everywhere
    assert "| GDRO-IDI | ○ cluster k=4 (acoustic) | — | 0.600 ± 0.000 |" in md
    assert "| GDRO-IDI | ○ cluster k=8 (acoustic) | — | 0.600 ± 0.000 |" in md
    for k in (4, 8):
        assert f"| GDRO-IDI | ○ cluster k={k} (acoustic) | F1↑ | 3 |" in md  # paired tests
    figs = sorted(p.name for p in (tmp_path / "report" / "figures").glob("*.png"))
    assert figs == ["gap_vs_ratio.png", "metrics_vs_k.png", "tradeoff_0.png", "tradeoff_1.png"]
    for name in figs:
        assert f"figures/{name})" in md
    # HTML: every figure embedded, nothing linked
    assert page.count("data:image/png;base64,") == len(figs) + 1
    assert not re.search(r"src='(?!data:)", page)
    assert "<td>Gain</td><td>●</td>" in page


def test_report_marks_extras_reading_dependent_methods_and_late_runs(tmp_path) -> None:
    recs = [record("erm", "none", f, macro_f1=.6, hamming_acc=.8, **{"gender.tpr_gap": .3})
            for f in (1, 2)]
    for f in (1, 2):
        for method in ("gr", "jtt", "rw"):
            recs.append(record(method, "truth:gender" if method != "jtt" else "none", f,
                               macro_f1=.6, hamming_acc=.8, **{"gender.tpr_gap": .2}))
    recs[2]["info"] = {"convergence": {"late": True}}  # gr, fold 1
    recs[4]["info"] = {"convergence": {"late": True}}  # rw, fold 1
    tidy = tidy_frame(recs)
    assert tidy.drop_duplicates("hash")["late_epoch"].sum() == 2
    md = write_report(tidy, tmp_path / "r", title="T").markdown.read_text()
    rows = {line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")}
    assert {"GR*", "JTT⁺", "RW", "ERM"} <= rows
    assert "Convergence: 2 of 8 runs selected an epoch in the last 10%" in md
    assert "(GR* 1, RW 1)" in md or "(RW 1, GR* 1)" in md
    assert "* reading-dependent" in md and "⁺ an extra" in md


def test_full_and_numeric_ratios_mix_in_numeric_order(tmp_path) -> None:
    """A grid with the full training set beside 1:r cells reports them all, ratios as numbers
    (1:5 before 1:20), not as text."""
    recs = [record(m, g, f, r, macro_f1=.5, hamming_acc=.7, **{"gender.tpr_gap": gap})
            for f in (1, 2) for r in (20.0, None, 5.0)
            for m, g, gap in (("erm", "none", .2), ("rw", "truth:gender", .1))]
    md = write_report(tidy_frame(recs), tmp_path / "r").markdown.read_text()
    heads = [line for line in md.splitlines() if line.startswith("## c · e")]
    assert heads == ["## c · e · full · natural", "## c · e · 1:5 · natural",
                     "## c · e · 1:20 · natural"]


CLASSES = ("ang", "sad")


def rich_record(method, groups, fold, seed_val, ratio=5.0, direction="natural"):
    """A run with per-group × class rates and per-class gaps in its table (values derived
    from `seed_val` so every run differs)."""
    rec = record(method, groups, fold, ratio, direction,
                 macro_f1=.5 + seed_val, hamming_acc=.7,
                 **{"gender.tpr_gap": .2 + seed_val, "gender.fpr_gap": .1 + seed_val / 2,
                    "gender.f1_gap": .15 + seed_val, "gender.dp_maxdev_gap": .05 + seed_val,
                    "gender.worst_group_f1": .4 + seed_val, "gender.min_speakers": 3 + fold})
    table = []
    for g, n in (("F", 10 + fold), ("M", 20 + fold)):
        for c in CLASSES:
            table += [{"attribute": "gender", "group": g, "cls": c, "metric": "tpr",
                       "value": .5 + seed_val, "support": n // 2},
                      {"attribute": "gender", "group": g, "cls": c, "metric": "fpr",
                       "value": .2 + seed_val, "support": n - n // 2},
                      {"attribute": "gender", "group": g, "cls": c, "metric": "ppr",
                       "value": .3, "support": n}]
    for c in CLASSES:
        table += [{"attribute": "all", "group": "all", "cls": c, "metric": "ppr", "value": .3,
                   "support": 30 + 2 * fold}]
        for m in ("tpr_gap", "fpr_gap"):
            table.append({"attribute": "gender", "group": "all", "cls": c, "metric": m,
                          "value": seed_val + (0.1 if c == "ang" else 0.2), "support": 30})
    rec["metrics"]["table"] = table
    return rec


def rich_records():
    runs = [("erm", "none", 0.0), ("lff", "none", 0.01), ("rw", "truth:gender", 0.02),
            ("rw", "pseudo:wavlm-gender", 0.03), ("rw", "cluster:ecapa:k=2", 0.04),
            ("rw", "cluster:ecapa:k=16", 0.05)]
    return [rich_record(m, g, f, v + f / 100) for f in (1, 2, 3) for m, g, v in runs]


def fold_ci(values):
    x = np.asarray(values, float)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return f"{x.mean():.3f} [{x.mean() - half:.3f}, {x.mean() + half:.3f}]"


def test_group_sources_marks_toc_and_new_tables(tmp_path) -> None:
    from PIL import Image

    rep = write_report(tidy_frame(rich_records()), tmp_path / "r", title="T")
    md, page = rep.markdown.read_text(), rep.html.read_text()
    # every row names its group source; the three kinds of supervision have distinct marks
    for cell in ("| ERM | – |", "| LfF | – |", "| RW | ● truth:gender |",
                 "| RW | ◐ pseudo:wavlm-gender |", "| RW-IDI | ○ cluster k=2 (ecapa) |",
                 "| RW-IDI | ○ cluster k=16 (ecapa) |"):
        assert cell in md, cell
    assert "○ no groups" not in md and "| LfF | ○" not in md
    # table of contents: every entry links to a heading id, in both renderings
    toc = re.findall(r"^\s*- \[(.+)\]\(#(s\d+)\)$", md, flags=re.M)
    assert len(toc) >= 8
    for text, ident in toc:
        assert f'<a id="{ident}"></a>\n#' in md and f"# {text}" in md
        assert re.search(rf"<h[23] id='{ident}'>", page)
        assert f"<a href='#{ident}'>" in page
    # gaps and worst-group F1 with 95% t intervals over folds, equal to an independent
    # computation: RW (truth) has value .02 + f/100 + offset in fold f
    rw = [0.02 + f / 100 for f in (1, 2, 3)]
    assert (f"| RW | ● truth:gender | 3 | {fold_ci([.2 + v for v in rw])} | "
            f"{fold_ci([.1 + v / 2 for v in rw])} | {fold_ci([.15 + v for v in rw])} | "
            f"{fold_ci([.05 + v for v in rw])} |") in md
    assert f"| {fold_ci([.4 + v for v in rw])} |" in md  # worst-group F1
    # the test set: utterances per group per fold, fewest speakers per group
    assert "| gender | F | 11 | 12 | 13 |" in md and "| gender | M | 21 | 22 | 23 |" in md
    assert "| all | all | 32 | 34 | 36 |" in md
    assert "| gender | fewest speakers in a group | 4 | 5 | 6 |" in md
    # the trade-off key numbers the points, ERM first, with both intervals
    assert (f"| 1 | ERM | – | {fold_ci([.2 + f / 100 for f in (1, 2, 3)])} | "
            f"{fold_ci([.5 + f / 100 for f in (1, 2, 3)])} |") in md
    figs = {p.name for p in (tmp_path / "r" / "figures").glob("*.png")}
    assert {"tradeoff_0.png", "class_gaps_0.png", "group_rates_0.png"} <= figs
    for name in figs:  # every figure decodes to a non-trivial image
        with Image.open(tmp_path / "r" / "figures" / name) as im:
            im.load()
            assert im.size[0] > 300 and im.size[1] > 200
            assert len(np.unique(np.asarray(im.convert("L")))) > 4  # not blank
    assert page.count("data:image/png;base64,") == len(figs)


def test_directions_are_not_pooled_in_ratio_and_k_figures(tmp_path) -> None:
    recs = [rich_record(m, g, f, v, ratio=r, direction=d)
            for f in (1, 2) for r in (5.0, 20.0) for d in ("natural", "reversed")
            for m, g, v in (("erm", "none", 0.0), ("gdro", "cluster:e:k=2", 0.1),
                            ("gdro", "cluster:e:k=16", 0.2))]
    md = write_report(tidy_frame(recs), tmp_path / "r").markdown.read_text()
    assert "one column per imbalance direction (directions are not pooled)" in md
    assert "one row per imbalance direction (directions are not pooled" in md
    figs = tmp_path / "r" / "figures"
    import matplotlib.image as mpimg

    ratio, k = mpimg.imread(figs / "gap_vs_ratio.png"), mpimg.imread(figs / "metrics_vs_k.png")
    assert ratio.shape[1] > ratio.shape[0]  # two direction columns side by side
    assert k.shape[0] > 500  # two direction rows


def test_tradeoff_points_number_rows_with_fold_intervals_and_front() -> None:
    from emodebias.bench.results import summary_wide
    from emodebias.report.plots import tradeoff_points

    pts = tradeoff_points(summary_wide(tidy_frame(rich_records())))
    assert list(pts["no"]) == list(range(1, 7)) and pts.iloc[0]["label"] == "ERM –"
    assert len(set(pts["label"])) == 6  # the two cluster runs (k=2, k=16) stay apart
    assert pareto_front(pts["gap"], pts["score"]).tolist() == pts["pareto"].tolist()
    rw = pts.set_index("label").loc["RW ● truth:gender"]
    vals = [.2 + .02 + f / 100 for f in (1, 2, 3)]
    lo, hi = map(float, fold_ci(vals).split("[")[1].rstrip("]").split(", "))
    assert rw["gap"] == pytest.approx(np.mean(vals))
    assert rw["gap_lo"] == pytest.approx(lo, abs=6e-4)
    assert rw["gap_hi"] == pytest.approx(hi, abs=6e-4)


def test_report_json_holds_every_table_under_its_section(tmp_path) -> None:
    import json

    rep = write_report(tidy_frame(rich_records()), tmp_path / "r", title="T")
    data = json.loads(rep.tables.read_text())
    md = rep.markdown.read_text()
    assert data["title"] == "T"
    assert len(data["tables"]) == md.count("\n|---|")  # one entry per Markdown table
    t1 = next(t for t in data["tables"] if t["subsection"] == "Gender gaps (IDI Table 1 layout)")
    assert t1["section"] == "c · e · 1:5 · natural"
    assert t1["header"][:3] == ["method", "groups", "F1↑"]
    erm = next(r for r in t1["rows"] if r[0] == "ERM")
    f1 = [.5 + f / 100 for f in (1, 2, 3)]
    assert erm[:3] == ["ERM", "–", f"{np.mean(f1):.3f} ± {np.std(f1, ddof=1):.3f}"]
    for t in data["tables"]:
        assert "| " + " | ".join(t["rows"][0]) + " |" in md  # the same cells as the Markdown


def test_a_multi_ratio_two_direction_k_sweep_report_lists_every_section(tmp_path) -> None:
    """Golden outline: several ratios, both directions and k in {2, 16} give every section, in
    numeric ratio order, each scenario with its full set of tables and figures."""
    recs = [rich_record(m, g, f, v, ratio=r, direction=d)
            for f in (1, 2) for r in (20.0, 5.0) for d in ("natural", "reversed")
            for m, g, v in (("erm", "none", 0.0), ("gdro", "cluster:e:k=2", 0.1),
                            ("gdro", "cluster:e:k=16", 0.2))]
    md = write_report(tidy_frame(recs), tmp_path / "r").markdown.read_text()
    heads = [line for line in md.splitlines() if line.startswith("#")]
    per_scenario = ["### Gender gaps (IDI Table 1 layout)", "### Paired tests vs ERM over folds",
                    "### Test set: utterances and speakers per group",
                    "### Accuracy and worst-group F1: mean over folds, 95% t intervals",
                    "### Gender gaps: mean over folds, 95% t intervals",
                    "### Fairness–accuracy trade-off", "### Per-class gaps and per-group rates"]
    want = ["# emodebias report", "## Contents"]
    for r in ("1:5", "1:20"):
        for d in ("natural", "reversed"):
            want += [f"## c · e · {r} · {d}", *per_scenario]
    want += ["## Imbalance ratios"]
    want += [f"### {m} · c · e · {d}" for d in ("natural", "reversed")
             for m in ("F1↑", "gender TPRgap↓")]
    want += ["## Number of clusters"]
    assert heads == want
    assert "| GDRO-IDI | ○ cluster k=2 (e) |" in md and "| GDRO-IDI | ○ cluster k=16 (e) |" in md
