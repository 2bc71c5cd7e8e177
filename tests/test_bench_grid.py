"""Grid files -> RunSpecs: expansion counts, normalisation, hashes, and clear errors."""

from __future__ import annotations

import pytest
import yaml

from emodebias.bench.grid import (
    GridError,
    RunSpec,
    expand_grid,
    load_grid,
    parse_ratio,
    preset_names,
)

BASE = {"corpus": "synthetic", "encoder": "acoustic", "folds": [1, 2], "ratios": ["1:20"],
        "cluster_encoder": "acoustic", "pseudo_model": "pm"}


def test_expansion_counts_and_normalisation() -> None:
    grid = {**BASE, "directions": ["both"], "seeds": [0, 1],
            "runs": [{"method": "erm"},
                     {"method": ["rw", "gdro"], "groups": ["truth", "pseudo", "cluster:k=4"]},
                     {"method": "gdro", "groups": "truth", "hparams": {"eta_q": [0.01, 0.1]}}]}
    specs = expand_grid(grid)
    axes = 2 * 1 * 2 * 2  # folds × ratios × directions × seeds
    assert len(specs) == axes * (1 + 2 * 3 + 2)
    groups = {s.groups for s in specs}
    assert groups == {"none", "truth:gender", "pseudo:pm", "cluster:acoustic:k=4"}
    assert {s.direction for s in specs} == {"female-major", "male-major"}
    assert {s.ratio for s in specs} == {20.0}
    assert {s.fold for s in specs} == {"1", "2"}
    assert {tuple(sorted(s.hparams.items())) for s in specs if s.hparams} == {
        (("eta_q", 0.01),), (("eta_q", 0.1),)}
    assert len({s.hash for s in specs}) == len(specs)


def test_hash_is_content_based_and_names_are_readable() -> None:
    a = RunSpec(corpus="synthetic", fold="1", ratio=20.0, groups="truth:gender", method="rw")
    b = RunSpec.from_dict(a.to_dict())
    assert a.hash == b.hash and len(a.hash) == 12
    assert RunSpec(corpus="synthetic", fold="1", ratio=20.0, groups="truth:gender",
                   method="rw", seed=1).hash != a.hash
    assert a.name == "synthetic.acoustic.f1.1-20.natural.truth-gender.rw.s0"
    # runs that share a split/features/groups share a batch key, whatever their method or seed
    c = RunSpec(corpus="synthetic", fold="1", ratio=20.0, groups="truth:gender", method="gdro",
                seed=3)
    assert c.batch_key == a.batch_key
    assert RunSpec(corpus="synthetic", fold="2", ratio=20.0, groups="truth:gender",
                   method="rw").batch_key != a.batch_key


@pytest.mark.parametrize("value, expected", [("1:20", 20.0), (5, 5.0), ("2:10", 5.0),
                                             ("full", None), (None, None)])
def test_parse_ratio(value, expected) -> None:
    assert parse_ratio(value) == expected


@pytest.mark.parametrize("grid, message", [
    ({"runs": [{"method": "erm"}], "folds": [1]}, "no corpus"),
    ({**BASE, "runs": []}, "non-empty list"),
    ({**BASE, "runs": [{"method": "nope"}]}, "unknown method 'nope'"),
    ({**BASE, "runs": [{"method": "rw"}]}, "needs training groups"),
    ({**BASE, "runs": [{"method": "erm", "groups": "truth"}]}, "uses no groups"),
    ({**BASE, "runs": [{"method": "erm", "lr": 1}]}, "runs[0]: unknown key(s) ['lr']"),
    ({**BASE, "ratioz": [1], "runs": ["erm"]}, "unknown top-level key(s) ['ratioz']"),
    ({**BASE, "ratios": ["1:0.5"], "runs": ["erm"]}, "r >= 1"),
    ({**BASE, "ratios": ["abc"], "runs": ["erm"]}, "bad ratio 'abc'"),
    ({**BASE, "directions": ["up"], "runs": ["erm"]}, "unknown direction 'up'"),
    ({**BASE, "runs": [{"method": "rw", "groups": "cluster:k=1"}]}, "k must be >= 2"),
    ({**BASE, "runs": [{"method": "rw", "groups": "kmeans"}]}, "unknown group source"),
    ({**BASE, "runs": ["erm", "erm"]}, "duplicates one from runs[0]"),
    ({**BASE, "train": {"epoch": 3}, "runs": ["erm"]}, "unknown train setting(s) ['epoch']"),
    ({**BASE, "corpus": {"name": "x", "root": "${data}/y"}, "runs": ["erm"]}, "${data}"),
])
def test_bad_grids_raise_clear_errors(grid, message) -> None:
    with pytest.raises(GridError) as err:
        expand_grid(grid, source="g.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("g.yaml: ")


def test_variables_and_files(tmp_path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**BASE, "variables": {"data": "/d"},
                                    "corpus": {"name": "table", "root": "${data}/c"},
                                    "runs": ["erm"]}))
    specs = load_grid(path)
    assert specs[0].corpus == "table" and specs[0].corpus_opts == {"root": "/d/c"}
    assert load_grid(path, {"data": "/e"})[0].corpus_opts == {"root": "/e/c"}
    with pytest.raises(GridError, match="does not exist"):
        load_grid(tmp_path / "missing.yaml")
    with pytest.raises(GridError, match="neither a grid file nor a preset"):
        load_grid("no-such-preset")


def test_presets_expand_to_the_papers_grids() -> None:
    assert {"idi-table1", "idi-table2", "idi-k-sweep", "emo-debias", "demo"} <= set(preset_names())
    t1 = load_grid("idi-table1", {"labels": "/l", "audio": "/a", "gender_model": "/g"})
    # 17 rows of IDI Table 1 (ERM, Random, LfF, DisEnt, PGDRO, 4 methods × 3 sources) × 5 folds
    assert len(t1) == 17 * 5
    assert {s.ratio for s in t1} == {20.0}
    assert {s.groups for s in t1 if s.method == "rw"} == {
        "truth:gender", "pseudo:/g", "cluster:resemblyzer:k=16"}
    t2 = load_grid("idi-table2", {"labels": "/l", "audio": "/a"})
    assert {s.groups.split("k=")[-1] for s in t2 if s.method != "erm"} == {"16", "32"}
    assert len(t2) == (1 + 4 * 2) * 5
    ks = load_grid("idi-k-sweep", {"labels": "/l", "audio": "/a"})
    assert sorted({int(s.groups.split("k=")[1]) for s in ks if "k=" in s.groups}) == [
        2, 4, 8, 16, 32]
    ed = load_grid("emo-debias", {"labels": "/l", "audio": "/a"})
    assert {s.ratio for s in ed} == {1.0, 5.0, 10.0, 20.0, 40.0}
    assert {s.direction for s in ed} == {"female-major", "male-major"}
    assert {s.fold for s in ed} == {"1", "2", "3", "4", "5"}
    assert len(ed) % (5 * 2 * 5) == 0
    demo = load_grid("demo")
    assert {s.corpus for s in demo} == {"synthetic"}
    assert any(s.groups.startswith("cluster:") for s in demo)
    assert any(s.groups.startswith("truth:") for s in demo)
