"""`import emodebias as ed`: light import, the public names, keyword-only options, typing marker,
provenance, and a run trained from Python equal to the one `emodebias train` writes."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import emodebias as ed
from emodebias import provenance
from emodebias.cli import app

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ("load_corpus", "make_split", "make_folds", "extract", "get_encoder", "groups", "fit",
            "fit_many", "evaluate", "load_run")


def test_import_is_light_and_names_load_on_first_use() -> None:
    code = ("import sys, emodebias as ed; heavy = [m for m in ('torch', 'pandas', 'numpy', "
            "'transformers', 'sklearn') if m in sys.modules]; print(heavy); "
            "ed.load_run; print('torch' in sys.modules, 'emodebias.runs' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[:2] == ["[]", "False True"]  # reading runs needs no torch until a head loads


def test_pipeline_names_exist_and_unknown_names_fail() -> None:
    for name in PIPELINE:
        assert name in ed.__all__ and callable(getattr(ed, name)) or name == "groups", name
    assert callable(ed.groups.truth_groups) and callable(ed.groups.cluster_groups)
    assert callable(ed.groups.hf_gender_groups)
    assert set(PIPELINE) <= set(dir(ed))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ed.nope  # noqa: B018


@pytest.mark.parametrize(("name", "data"), [
    ("make_split", 2), ("make_folds", 1), ("extract", 3), ("fit", 4), ("fit_many", 4),
    ("evaluate", 1), ("truth_groups", 1), ("cluster_groups", 2), ("pseudo_groups", 2),
])
def test_options_after_the_data_arguments_are_keyword_only(name, data) -> None:
    params = list(inspect.signature(getattr(ed, name)).parameters.values())
    positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert len(positional) == data, (name, positional)
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[data:]), name


def test_package_ships_py_typed() -> None:
    assert (Path(ed.__file__).parent / "py.typed").is_file()
    text = (ROOT / "pyproject.toml").read_text()
    section = text[text.index("[tool.setuptools.package-data]"):].split("\n[", 1)[0]
    assert '"py.typed"' in section


def test_provenance_fields_and_no_failure_outside_a_checkout(tmp_path) -> None:
    prov = provenance.collect(grid="demo")
    assert prov["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert prov["versions"]["numpy"] == np.__version__ and prov["versions"]["emodebias"]
    assert prov["grid"]["source"] == "preset:demo" and prov["grid"]["hash"]
    if (ROOT / ".git").exists():
        assert len(prov["git_commit"]) == 40
    assert provenance.git_commit(str(tmp_path / "pkg" / "x.py")) is None
    assert provenance.command_line(["/venv/bin/emodebias", "train", "--out", "a b"]) == \
        "emodebias train --out 'a b'"
    rows = dict(provenance.rows(prov))
    assert rows["torch"] == str(prov["versions"]["torch"]) and rows["command"] == prov["command"]
    blocks = [prov, prov, {**prov, "git_commit": "f" * 40}]
    summary = provenance.summarize(blocks)
    assert [s["n_runs"] for s in summary] == [2, 1]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    w = tmp_path_factory.mktemp("api")
    man = ed.load_corpus("synthetic", w / "corpus", n_speakers_per_gender=3,
                         utterances_per_emotion=2, folds=3)
    man.save(w / "manifest" / "manifest.parquet")  # as `prepare --out` (not the corpus cache)
    split = ed.make_split(man, 1, ratio="1:2")
    split.save(w / "split")
    store = ed.extract(man, "acoustic", w / "feats", progress=False)
    groups = ed.truth_groups(man, columns="gender")
    groups.save(w / "groups" / "truth", manifest=man)
    return w, man, split, store, groups


def test_group_constructors(stages) -> None:
    w, man, split, store, truth = stages
    assert truth.source == "truth:gender" and truth.n_groups == 2
    clusters = ed.cluster_groups(w / "feats", 3, manifest=man, split=split, algorithm="kmeans")
    assert clusters.source == "cluster:acoustic:k=3" and clusters.info["n_fit"] == len(
        split.train) + len(split.dev)
    by_fold = ed.cluster_groups(store, 3, manifest=w / "manifest", split="1", algorithm="kmeans")
    assert by_fold.info["n_fit"] > clusters.info["n_fit"]  # the full fold, not the 1:2 subsample
    with pytest.raises(ed.UserError, match="pass the manifest too"):
        ed.cluster_groups(store, 3, split="1")
    f0 = ed.pseudo_groups(man, "f0")
    assert f0.names == ["F", "M"] and f0.info["accuracy"] > 0.8
    with pytest.raises(ed.UserError, match="pass the split"):
        ed.pseudo_groups(man, "f0:fit")
    with pytest.raises(ed.UserError, match="f0, f0:<Hz> or f0:fit"):
        ed.pseudo_groups(man, "f0:high")
    with pytest.raises(ed.UserError, match="pass the feature store"):
        ed.pseudo_groups(man, w / "probe.npz")


def test_fit_from_python_equals_train_from_the_shell(stages) -> None:
    w, man, split, store, groups = stages
    run = ed.fit(store, man, split, "gdro", groups=groups, epochs=3, out=w / "py")
    res = CliRunner().invoke(app, ["train", "--features", str(w / "feats"), "--manifest",
                                   str(w / "manifest"), "--split", str(w / "split"), "--method",
                                   "gdro", "--groups", str(w / "groups"), "--epochs", "3",
                                   "--out", str(w / "cli")])
    assert res.exit_code == 0, res.output
    cli = ed.load_run(w / "cli")
    assert cli.hash == run.hash and cli.summary == run.summary
    np.testing.assert_array_equal(cli.predictions["probs"], run.predictions["probs"])
    saved = json.loads((w / "py" / "record.json").read_text())
    assert saved["kind"] == "train" and saved["hash"] == run.hash
    # stage outputs may be given as the folders the CLI writes
    again = ed.fit(w / "feats", w / "manifest", w / "split", "gdro", groups=w / "groups",
                   epochs=3)
    assert again.hash == run.hash and again.path is None
    with pytest.raises(ed.UserError, match="was loaded from"):
        cli.save(w / "copy")


def test_fit_many_and_evaluate(stages) -> None:
    w, man, split, store, groups = stages
    runs = ed.fit_many(store, man, split, ["erm", {"method": "rw", "seed": 1}], groups=groups,
                       epochs=2, out=w / "many")
    assert [r.path.name for r in runs] == ["0-erm-s0", "1-rw-s1"]
    assert runs[0].record["spec"]["groups"] == "none"
    assert runs[1].record["spec"]["groups"] == "truth:gender"
    assert [r.hash for r in ed.load_runs(w / "many")] == [r.hash for r in runs]
    metrics = ed.evaluate(runs[1], manifest=man)
    assert metrics.summary["macro_f1"] == pytest.approx(runs[1].summary["macro_f1"])
    from_folder = ed.evaluate(w / "many" / "1-rw-s1", manifest=man)
    assert from_folder.summary["macro_f1"] == pytest.approx(metrics.summary["macro_f1"])
    assert isinstance(runs[1].table.columns.tolist(), list) and len(runs[1].table) > 0
    with pytest.raises(ed.UserError, match="holds 2 runs"):
        ed.load_run(w / "many")


def test_a_loaded_run_predicts_audio_files(stages) -> None:
    w, man, *_ = stages
    run = ed.load_run(w / "py")
    paths = list(man.df["path"][:2]) + [str(w / "missing.wav")]
    probs = run.predict(paths)
    assert probs.shape == (3, 6) and np.allclose(probs[:2].sum(1), 1, atol=1e-5)
    assert np.isnan(probs[2]).all()
    # the encoder is rebuilt from the record: same numbers as the stored features give
    store = ed.open_store(w / "feats")
    rows = store.rows(list(man.df["utt_id"][:2]))
    np.testing.assert_allclose(probs[:2], run.predict_features(store.features[rows]),
                               atol=1e-5)
