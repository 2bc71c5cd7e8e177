"""Cross-corpus grids: train on the synthetic corpus, score on (a subset of) real EmoDB through
class maps. The grid is docs/grid.md's "Cross-corpus evaluation" example, run by the CLI; its
numbers are checked against a computation by hand (sklearn), its caches against a rerun, and its
refusals (shared speakers, bad class maps) as one-line errors."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import f1_score
from typer.testing import CliRunner

from emodebias.bench import cross_corpus
from emodebias.bench.grid import GridError, expand_grid
from emodebias.cli import app

DOC = (Path(__file__).resolve().parents[1] / "docs" / "grid.md").read_text()
GRID = yaml.safe_load(re.search(r"^```yaml\n(# cross-corpus\.yaml\n.*?)^```", DOC,
                                re.S | re.M).group(1))
EVERY = 5  # every 5th EmoDB file: 107 of 535, all 10 speakers


def emodb_subset(shared_data: Path, dest: Path) -> Path:
    (dest / "wav").mkdir(parents=True)
    for wav in sorted((shared_data / "emodb" / "wav").glob("*.wav"))[::EVERY]:
        (dest / "wav" / wav.name).symlink_to(wav)
    return dest


def bench(grid: dict, path: Path, out: Path, emodb: Path, *extra: str):
    path.write_text(yaml.safe_dump(grid))
    return CliRunner().invoke(app, ["bench", str(path), "-o", str(out), "--var",
                                    f"emodb={emodb}", *extra])


def error_line(res) -> str:
    assert res.exit_code == 2, res.output
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error")]
    return line


@pytest.fixture(scope="module")
def ran(shared_data, tmp_path_factory):
    """The documented grid, run and reported by the CLI (2 runs, EmoDB subset)."""
    w = tmp_path_factory.mktemp("cc")
    emodb = emodb_subset(shared_data, w / "emodb")
    res = bench(GRID, w / "cross-corpus.yaml", w / "out", emodb)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["report", str(w / "out")])
    assert res.exit_code == 0, res.output
    return w, w / "out", emodb


def test_grid_reports_in_and_cross_corpus_rows(ran) -> None:
    _, out, _ = ran
    tidy = pd.read_parquet(out / "results.parquet")
    evals = tidy.groupby(["eval_corpus", "eval_classes"])["part"].agg(set).to_dict()
    assert evals == {("synthetic", "all"): {"summary", "table"},
                     ("synthetic", "shared"): {"shared_summary", "shared_table"},
                     ("emodb", "shared"): {"shared_summary", "shared_table"}}
    assert tidy["hash"].nunique() == 2
    tables = json.loads((out / "report" / "report.json").read_text())["tables"]
    cc = [t for t in tables if t["section"] == "In-corpus vs cross-corpus"]
    assert len(cc) == 2
    rows, change = cc[0]["rows"], cc[1]["rows"]
    labels = {r[2] for r in rows}
    assert labels == {"in-corpus (synthetic, all classes)",
                      "in-corpus (synthetic, shared classes)",
                      "cross-corpus (emodb, shared classes)"}
    assert len(rows) == 6 and len(change) == 2  # ERM and RW
    assert all(r[4] != "—" and r[5] != "—" for r in rows)  # utterances, speakers
    assert {r[5] for r in rows if r[2].startswith("cross")} == {"10"}  # EmoDB's speakers
    assert {r[2] for r in change} == {"emodb"}
    assert "Δ F1↑" in cc[1]["header"] and all(r[5].startswith(("+", "-")) for r in change)
    md = (out / "report" / "report.md").read_text()
    assert "## In-corpus vs cross-corpus" in md


def _by_hand_targets(manifest, ids: np.ndarray, class_map: dict, shared: list[str]) -> np.ndarray:
    """Binary shared-class targets from the votes: a shared class is positive when its share of
    the mapped votes exceeds 1/K (smoothing keeps that order)."""
    rows = manifest.df.set_index("utt_id").loc[ids]
    shares = np.stack([sum(rows[f"votes_{c}"].to_numpy(float) for c, t in class_map.items()
                           if t == s) for s in shared], 1)
    shares /= shares.sum(1, keepdims=True)
    return shares > 1 / len(shared)


def _by_hand_probs(probs: np.ndarray, classes: list[str], class_map: dict,
                   shared: list[str]) -> np.ndarray:
    mass = np.stack([probs[:, [classes.index(c) for c, t in class_map.items() if t == s]]
                     .sum(1) for s in shared], 1)
    return mass / mass.sum(1, keepdims=True)


def test_cross_corpus_metrics_equal_an_independent_computation(ran) -> None:
    from emodebias.data.corpora import load_corpus

    _, out, emodb = ran
    shared = GRID["shared_classes"]
    test_map, train_map = GRID["test_corpus"][0]["class_map"], GRID["train_class_map"]
    manifest = load_corpus("emodb", emodb)
    kept = manifest.df[manifest.df["intended"] != "boredom"]
    for run in sorted((out / "runs").iterdir()):
        rec = json.loads((run / "record.json").read_text())
        ins, cross = rec["evaluations"]
        assert (ins["role"], ins["corpus"], cross["role"], cross["corpus"]) == (
            "in-corpus", "synthetic", "cross-corpus", "emodb")
        with np.load(run / cross["predictions"]) as z:
            ids, probs = z["utt_ids"], z["probs"]
            assert list(z["model_classes"]) == rec["classes"]
        assert sorted(ids) == sorted(kept["utt_id"])  # the whole corpus but boredom
        assert cross["left_out"] == {"no_shared_label": int((manifest.df["intended"] ==
                                                              "boredom").sum()),
                                     "no_shared_prediction": 0}
        assert cross["n_speakers"] == kept["speaker"].nunique() == 10
        y = _by_hand_targets(manifest, ids, test_map, shared)
        p = _by_hand_probs(probs, rec["classes"], train_map, shared) > 1 / len(shared)
        f1 = f1_score(y, p, average="macro", zero_division=0)
        assert cross["summary"]["macro_f1"] == pytest.approx(f1, abs=1e-6)
        # the in-corpus side: the run's own test predictions, projected the same way
        with np.load(run / "predictions.npz") as z:
            own_ids, own = z["utt_ids"], z["probs"]
        from emodebias.bench.grid import RunSpec
        from emodebias.data.manifest import Manifest

        key = RunSpec.from_dict(rec["spec"]).corpus_key
        syn = Manifest.load(out / "cache" / "manifests" / f"{key}.parquet")
        y = _by_hand_targets(syn, own_ids, train_map, shared)
        p = _by_hand_probs(own, rec["classes"], train_map, shared) > 1 / len(shared)
        assert ins["summary"]["macro_f1"] == pytest.approx(
            f1_score(y, p, average="macro", zero_division=0), abs=1e-6)


def test_rerun_and_new_runs_reuse_the_test_corpus_store(ran, monkeypatch) -> None:
    import emodebias.features.store

    w, out, emodb = ran
    again = w / "again"
    shutil.copytree(out, again)
    calls: list[int] = []
    real = cross_corpus.predict
    monkeypatch.setattr(cross_corpus, "predict",
                        lambda *a, **k: calls.append(1) or real(*a, **k))

    def no_extraction(*args, **kwargs):
        raise AssertionError("a cached feature store was extracted again")

    monkeypatch.setattr(emodebias.features.store, "extract", no_extraction)
    res = bench(GRID, w / "g.yaml", again, emodb)
    assert res.exit_code == 0 and not calls, res.output
    res = bench({**GRID, "seeds": [0, 1]}, w / "g.yaml", again, emodb)  # 2 new runs
    assert res.exit_code == 0, res.output
    assert len(calls) == 2 and len(list((again / "runs").iterdir())) == 4


def test_test_speakers_never_appear_in_the_training_corpus(ran, tmp_path) -> None:
    from emodebias.data.corpora import load_corpus

    _, _, emodb = ran
    manifest = load_corpus("emodb", emodb)
    ids = manifest.utt_ids
    with pytest.raises(cross_corpus.CrossCorpusError, match="speaker"):
        cross_corpus.check_speakers(manifest, manifest, ids[:3])
    syn = load_corpus("synthetic", tmp_path / "syn", n_speakers_per_gender=3,
                      utterances_per_emotion=1, seconds=(0.5, 0.6))
    cross_corpus.check_speakers(syn, manifest, ids)  # namespaced ids: disjoint
    res = bench({**GRID, "test_corpus": ["synthetic"], "shared_classes": ["angry", "sad"],
                 "train_class_map": None}, tmp_path / "g.yaml", tmp_path / "o", emodb)
    assert "is a training corpus of this grid" in error_line(res)


def test_bad_class_maps_are_one_line_errors(ran, tmp_path) -> None:
    w, out, emodb = ran
    base = {k: v for k, v in GRID.items() if k != "variables"}
    test = GRID["test_corpus"][0]
    for change, message in (
            ({"shared_classes": None}, "test_corpus needs shared_classes"),
            ({"test_corpus": None}, "need test_corpus"),
            ({"shared_classes": ["anger"]}, "at least 2 distinct"),
            ({"train_class_map": {"angry": "rage"}}, r"targets \['rage'\] are not among"),
            ({"train_class_map": str(tmp_path / "none.yaml")}, "no such class map file"),
            ({"train_class_map": "angry=anger,angry=fear"}, "mapped twice"),
            ({"test_corpus": [{**test, "class_map": 3}]}, "a class map is a mapping"),
            ({"test_corpus": [test, test]}, "listed twice")):
        with pytest.raises(GridError, match=message) as exc:
            expand_grid({**base, **change}, "g.yaml", {"emodb": str(emodb)})
        assert "\n" not in str(exc.value) and str(exc.value).startswith("g.yaml: ")
    plain = expand_grid({k: v for k, v in base.items() if k not in (
        "test_corpus", "shared_classes", "train_class_map")})
    assert all("cross_corpus" not in s.to_dict() for s in plain)  # hashes as before
    # maps checked against the corpora's classes, before any run (stages cached: quick)
    for change, message in (
            ({"test_corpus": [{**test, "class_map": {"furious": "anger"}}]},
             r"class map names \['furious'\], which the test corpus 'emodb' classes lack"),
            ({"shared_classes": [*GRID["shared_classes"], "surprise"]},
             r"shared classes \['surprise'\] have no training corpus 'synthetic' class")):
        fresh = tmp_path / f"o{len(message)}"
        shutil.copytree(out / "cache", fresh / "cache")
        res = bench({**GRID, **change}, tmp_path / "g.yaml", fresh, emodb)
        assert re.search(message, error_line(res)), res.stderr
        assert not list(fresh.glob("runs/*"))


def test_a_fold_scores_its_test_part_and_untrained_methods_are_not_scored(ran) -> None:
    _, out, emodb = ran
    base = {k: v for k, v in GRID.items() if k != "variables"}
    spec = expand_grid({**base, "test_corpus": [{**GRID["test_corpus"][0], "fold": 2}]},
                       "g.yaml", {"emodb": str(emodb)})[0]
    (test,) = spec.cross_corpus["tests"]
    assert test["fold"] == "2" and "fold" not in test["opts"]
    manifest, store, ids = cross_corpus._test_stages(spec, test, out / "cache")  # cached stages
    assert ids == manifest.split_ids("2", "test") and 0 < len(ids) < len(manifest)
    info: dict = {}
    assert cross_corpus.evaluate_run(dataclasses.replace(spec, method="random"), None, None, [],
                                     out / "cache", info) == []
    assert "trains no model" in info["cross_corpus"]
