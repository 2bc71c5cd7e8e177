"""The reference pages cannot drift from the code: docs/grid.md names exactly the keys the grid
loader accepts (and its examples load), docs/results.md documents exactly the columns `collect`
writes and the fields of a real record.json, docs/cli.md equals a fresh generation from the typer
app, and every page is linked from docs/README.md, links only to files that exist, and cites no
internal issue or session numbers."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from emodebias.bench import grid as grid_module
from emodebias.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))


def section(text: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level (lines in
    code fences, such as YAML comments, are not headings)."""
    level = len(heading.split(" ", 1)[0])
    lines = text[text.index(heading + "\n") + len(heading) + 1 :].splitlines(keepends=True)
    out, fenced = [], False
    for line in lines:
        fenced ^= line.startswith("```")
        match = re.match(r"(#+) ", line)
        if not fenced and match and len(match.group(1)) <= level:
            break
        out.append(line)
    return "".join(out)


def table_keys(text: str) -> list[str]:
    """First-column `names` of a Markdown table."""
    return re.findall(r"^\| `([^`]+)` \|", text, re.M)


# ----------------------------------------------------------------------------- grid.md
GRID_DOC = (DOCS / "grid.md").read_text()


def test_grid_doc_has_a_section_for_exactly_the_top_level_keys() -> None:
    keys = set(re.findall(r"^### `([a-z_]+)`$", section(GRID_DOC, "## Top-level keys"), re.M))
    assert keys == grid_module.SHARED_KEYS


def test_grid_doc_names_every_entry_train_and_evaluation_key() -> None:
    entries = section(GRID_DOC, "## Run entries")
    for key in grid_module.ENTRY_KEYS:
        assert f"`{key}`" in entries, key
    from emodebias.training import TrainConfig

    train = set(table_keys(section(GRID_DOC, "## Training settings")))
    assert train == {f.name for f in dataclasses.fields(TrainConfig)} | set(
        grid_module.TRAIN_RULES)
    defaults = TrainConfig()
    for row in re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]*) \|", section(
            GRID_DOC, "## Training settings"), re.M):
        name, doc_default = row[0], row[1].strip().strip("`")
        if doc_default:  # the documented default is the code's
            value = getattr(defaults, name)
            assert doc_default == str(value) or float(doc_default) == value, name
    evaluation = set(table_keys(section(GRID_DOC, "## Evaluation settings")))
    assert evaluation == set(grid_module.EVALUATION_RULES)


def test_grid_doc_examples_load(tmp_path) -> None:
    store = tmp_path / "feats"
    store.mkdir()
    (store / "meta.json").write_text("{}")  # only its presence is checked when a grid loads
    examples = re.findall(r"^```yaml\n(.*?)^```", GRID_DOC, re.S | re.M)
    assert len(examples) >= 3
    counts = []
    for code in examples:
        specs = grid_module.expand_grid(yaml.safe_load(code), code.splitlines()[0],
                                        {"table": "t.csv", "feats": str(store)})
        counts.append(len(specs))
    stated = re.search(r": (\d+) runs\.", section(GRID_DOC, "## A complete example"))
    assert counts[0] == int(stated.group(1))
    reuse = grid_module.expand_grid(yaml.safe_load(examples[1]), "reuse",
                                    {"table": "t.csv", "feats": str(store)})
    assert {s.device for s in reuse} == {"cuda"}
    assert reuse[0].features == {"wavlm-base-plus": str(store.resolve())}
    assert reuse[0].hash == dataclasses.replace(reuse[0], device="cpu", features={}).hash


def test_grid_doc_presets_and_dry_run_are_real() -> None:
    for name in re.findall(r"`(demo|demo-quick|idi-[\w-]+|emo-debias)`", GRID_DOC):
        assert name in grid_module.preset_names(), name
    res = CliRunner().invoke(app, ["bench", "demo-quick", "--dry-run"])
    assert res.exit_code == 0, res.output


# ----------------------------------------------------------------------------- results.md
RESULTS_DOC = (DOCS / "results.md").read_text()
SUFFIXES = ("_estimable", "_floor", "_p", "_bc", "_ci_low", "_ci_high")


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A real run folder (`ed.fit` with out=) collected by `emodebias collect`."""
    import emodebias as ed

    w = tmp_path_factory.mktemp("results")
    man = ed.load_corpus("synthetic", w / "corpus", n_speakers_per_gender=3,
                         utterances_per_emotion=1, folds=3, seconds=(0.6, 0.9))
    store = ed.extract(man, "acoustic", w / "feats", progress=False)
    ed.fit(store, man, ed.make_split(man, 1), "gdro", groups=ed.groups.truth_groups(man, "gender"),
           epochs=2, n_boot=20, out=w / "runs" / "gdro")
    res = CliRunner().invoke(app, ["collect", str(w / "runs")])
    assert res.exit_code == 0, res.output
    return w / "runs", pd.read_parquet(w / "runs" / "results.parquet")


def test_results_doc_columns_are_the_collected_columns(collected) -> None:
    _, tidy = collected
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \|", section(RESULTS_DOC, "### Columns"), re.M)
    assert [name for name, _ in rows] == list(tidy.columns)
    kinds = {"text": "OUSTV", "float": "f", "int": "iu", "bool": "b"}
    for name, kind in rows:
        assert tidy[name].dtype.kind in kinds[kind] or (
            kind == "text" and pd.api.types.is_string_dtype(tidy[name])), (name, tidy[name].dtype)


def test_results_doc_names_every_metric(collected) -> None:
    _, tidy = collected
    metrics = section(RESULTS_DOC, "### Metrics")
    for metric in tidy["metric"].unique():
        base = metric
        for suffix in SUFFIXES:
            base = base.removesuffix(suffix)
        assert f"`{base}`" in metrics or f"`{metric}`" in metrics, metric


def test_results_doc_record_fields_and_folder_layout(collected) -> None:
    runs, _ = collected
    run = runs / "gdro"
    rec = json.loads((run / "record.json").read_text())
    documented = set()
    for cell in re.findall(r"^\| ((?:`\w+`(?:, )?)+) \|", section(RESULTS_DOC, "### `record.json`"),
                           re.M):
        documented |= set(re.findall(r"`(\w+)`", cell))
    assert documented == set(rec)
    for key in rec["spec"]:
        if key not in ("block", "device", "features"):
            assert f"`{key}`" in RESULTS_DOC, key
    with np.load(run / "predictions.npz") as z:
        for key in z.files:
            assert f"`{key}`" in section(RESULTS_DOC, "## The run folder"), key
    for name in ("record.json", "predictions.npz", "model/", *(p.name for p in
                                                             (run / "model").iterdir())):
        assert name in section(RESULTS_DOC, "## The run folder"), name


# ----------------------------------------------------------------------------- cli.md
def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" /
                                                  "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_doc_is_a_fresh_generation() -> None:
    gen = _generator()
    assert (DOCS / "cli.md").read_text() == gen.generate(), \
        "docs/cli.md is stale: run .venv/bin/python scripts/gen_cli_docs.py"


def test_cli_doc_covers_every_command() -> None:
    import typer

    text = (DOCS / "cli.md").read_text()
    command = typer.main.get_command(app)
    for name, sub in command.commands.items():
        body = section(text, f"## `emodebias {name}`")
        for param in sub.params:
            for opt in param.opts:
                if opt.startswith("-"):
                    assert opt in body, (name, opt)
    assert "Options of --corpus table" in section(text, "## `emodebias prepare`")


# ----------------------------------------------------------------------------- all pages
def test_every_page_is_linked_from_the_index_and_links_resolve() -> None:
    index = (DOCS / "README.md").read_text()
    linked = {(DOCS / m).resolve() for m in re.findall(r"\]\(([^)#]+\.md)\)", index)}
    assert set(PAGES) - {DOCS / "README.md"} <= linked, set(PAGES) - linked
    readme = (ROOT / "README.md").read_text()
    docs_section = section(readme, "## Documentation")
    assert "docs/README.md" in docs_section
    assert readme.index("## Documentation") < readme.index("## Citation")
    for page in [*PAGES, ROOT / "README.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_no_internal_issue_or_session_numbers(page) -> None:
    text = page.read_text()
    assert not re.search(r"\b(issue|session)s? #?\d", text, re.I), page
    assert not re.search(r"\(issues? \d", text, re.I), page


# Pages whose owners still have to replace references to files outside the package.
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_no_files_that_are_not_shipped(page) -> None:
    """Docs are read in a clone or an installed copy: nothing outside the repository."""
    assert "../shared" not in page.read_text() and "spec/" not in page.read_text(), page
