"""`emodebias train`: the run folder it writes, the stage folders it accepts, its errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from emodebias.bench.results import collect, find_run_dirs, read_record
from emodebias.cli import app
from emodebias.cli.training import metrics_lines
from emodebias.features.store import FeatureStore
from emodebias.runs import load_run


def invoke(*args: str, code: int = 0):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny synthetic corpus through prepare, split, extract and groups (truth + 2 clusters)."""
    w = tmp_path_factory.mktemp("train")
    invoke("prepare", "--corpus", "synthetic", "--root", str(w / "corpus"), "--out",
           str(w / "corpus"), "--opt", "n_speakers_per_gender=3", "--opt",
           "utterances_per_emotion=2", "--opt", "folds=3")
    invoke("split", "--manifest", str(w / "corpus"), "--fold", "1", "--ratio", "1:2", "--out",
           str(w / "split"))
    invoke("extract", "--manifest", str(w / "corpus"), "--encoder", "acoustic", "--out",
           str(w / "feats"), "--no-progress")
    invoke("groups", "--manifest", str(w / "corpus"), "--source", "truth", "--out",
           str(w / "groups" / "truth"))
    invoke("groups", "--manifest", str(w / "corpus"), "--features", str(w / "feats"),
           "--source", "cluster", "--k", "2,3", "--split", str(w / "split"), "--out",
           str(w / "groups" / "cluster"))
    return w


def train(w, *extra: str, code: int = 0):
    return invoke("train", "--features", str(w / "feats"), "--manifest", str(w / "corpus"),
                  "--split", str(w / "split"), "--epochs", "3", *extra, code=code)


def test_train_writes_one_run_folder_every_consumer_reads(work) -> None:
    out = work / "runs" / "gdro"
    res = train(work, "--method", "gdro", "--groups", str(work / "groups" / "truth"),
                "--out", str(out))
    epochs = [line for line in res.stderr.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 3, res.stderr
    assert all(re.fullmatch(r"epoch \d/3 dev loss \d+\.\d{3}", e) for e in epochs), epochs
    assert "macro_f1" in res.stdout and "tpr_gap" in res.stdout and f"wrote {out}" in res.stdout
    rec = read_record(out)
    assert rec["kind"] == "train" and rec["spec"]["method"] == "gdro"
    assert rec["spec"]["groups"] == "truth:gender" and rec["spec"]["fold"] == "1"
    assert rec["classes"] == ["angry", "sad", "disgust", "fear", "neutral", "happy"]
    assert rec["encoder"]["name"] == "acoustic" and rec["encoder"]["options"]["n_mels"] == 40
    assert rec["train_config"]["epochs"] == 3 and 1 <= rec["best_epoch"] <= 3
    assert set(rec["inputs"]) == {"manifest", "features", "split", "groups"}
    prov = rec["provenance"]
    assert set(prov["versions"]) == {"emodebias", "torch", "transformers", "numpy", "python"}
    assert prov["versions"]["torch"] and "command" in prov
    summary = rec["metrics"]["summary"]
    assert 0 <= summary["macro_f1"] <= 1 and "gender.tpr_gap" in summary
    assert {r["attribute"] for r in rec["metrics"]["table"]} >= {"gender"}
    run = load_run(out)
    # the saved head reproduces the saved test predictions from the store's rows
    store = FeatureStore.open(work / "feats")
    rows = store.rows(run.predictions["utt_ids"])
    again = run.predict_features(store.features[rows])
    np.testing.assert_allclose(again, run.predictions["probs"], atol=1e-5)
    assert collect(out)["hash"].unique().tolist() == [rec["hash"]]


def test_same_inputs_same_identity_and_rerun_replaces(work) -> None:
    out = work / "runs" / "erm"
    train(work, "--method", "erm", "--out", str(out))
    first = read_record(out)
    train(work, "--method", "erm", "--out", str(out))
    again = read_record(out)
    assert again["hash"] == first["hash"] and again["created"] >= first["created"]
    assert again["metrics"]["summary"] == first["metrics"]["summary"]  # deterministic
    other = work / "runs" / "erm-s1"
    train(work, "--method", "erm", "--seed", "1", "--out", str(other))
    assert read_record(other)["hash"] != first["hash"]
    assert len(find_run_dirs(work / "runs")) >= 2


def test_stage_folders_and_files_are_accepted(work) -> None:
    out = work / "runs" / "rw"
    cluster = work / "groups" / "cluster" / "cluster_acoustic_k2"
    invoke("train", "--features", str(work / "feats" / "meta.json"), "--manifest",
           str(work / "corpus" / "manifest.parquet"), "--split", str(work / "split" / "split.json"),
           "--method", "rw", "--groups", str(cluster), "--epochs", "2", "--out", str(out))
    rec = read_record(out)
    assert rec["spec"]["groups"] == "cluster:acoustic:k=2" and rec["spec"]["ratio"] == 2.0
    fold = work / "runs" / "fold"
    train(work, "--split", "2", "--out", str(fold))  # a fold name of the manifest (last wins)
    assert read_record(fold)["spec"]["fold"] == "2" and read_record(fold)["spec"]["ratio"] is None


def test_erm_ignores_groups_and_says_so(work) -> None:
    out = work / "runs" / "erm-groups"
    res = train(work, "--groups", str(work / "groups" / "truth"), "--out", str(out))
    assert "uses no groups" in res.stderr
    assert read_record(out)["spec"]["groups"] == "none"


@pytest.mark.parametrize(("args", "message"), [
    (("--groups", "{w}/groups/cluster"), "holds 2 group assignments: cluster_acoustic_k2, "
                                         "cluster_acoustic_k3; pass one of them"),
    (("--groups", "{w}/groups"), "no group assignment here or in its sub-folders (it holds: "
                                 "cluster, truth)"),
    (("--groups", "{w}/nowhere"), "no such file or folder"),
    (("--split", "9"), "nor a fold of the manifest (folds: 1, 2, 3)"),
    (("--split", "{w}/nowhere/split.json"), "no such file or folder"),
    (("--method", "magic"), "unknown method 'magic'; registered: "),
    (("--method", "gdro", "--hp", "eta_q=fast", "--groups", "{w}/groups/truth"), "method 'gdro'"),
    (("--method", "rw", "--hp", "nope=1", "--groups", "{w}/groups/truth"),
     "unknown hyperparameter 'nope'"),
    (("--method", "gdro"), "needs hard group labels"),
])
def test_user_mistakes_are_one_line_errors(work, args, message) -> None:
    res = train(work, *[a.format(w=work) for a in args], "--out", str(work / "bad"), code=2)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert not (work / "bad").exists()


def test_out_must_be_a_run_folder_or_new(work) -> None:
    (work / "afile").write_text("x")
    res = train(work, "--out", str(work / "afile"), code=2)
    assert "is a file" in res.stderr
    (work / "userdata").mkdir()
    (work / "userdata" / "notes.txt").write_text("keep me")
    res = train(work, "--out", str(work / "userdata"), code=2)
    assert "not a run folder" in res.stderr and (work / "userdata" / "notes.txt").is_file()


def test_epoch_log_and_metrics_table_format(work) -> None:
    res = train(work, "--out", str(work / "runs" / "log"))
    epochs = re.findall(r"^epoch (\d+)/3 dev loss (\S+)$", res.stderr, flags=re.M)
    assert [e for e, _ in epochs] == ["1", "2", "3"] and all(float(v) > 0 for _, v in epochs)
    lines = metrics_lines({"macro_f1": 0.5, "macro_f1.ci_low": 0.4, "macro_f1.ci_high": 0.6,
                           "hamming_acc": 0.75, "gender.tpr_gap": 0.125,
                           "gender.tpr_gap_estimable": 0.0, "age_group.tpr_gap": None})
    assert lines[0].split() == ["macro_f1", "0.500", "[0.400,", "0.600]"]
    assert lines[2].split() == ["tpr_gap"]
    assert lines[3].split() == ["gender", "0.125†"] and lines[4].split() == ["age_group", "nan"]
    assert "not estimable" in lines[-1]
    assert json.loads(json.dumps(lines))  # plain text lines


def test_methods_marks_reading_dependent_ones() -> None:
    from emodebias.training.methods import REGISTRY

    res = invoke("methods")
    marked = {line.split()[1] for line in res.stdout.splitlines()
              if line.startswith("│") and " * " in line.split("│")[1] + " "}
    declared = {n for n, cls in REGISTRY.items() if cls.reading_dependent}
    assert marked == declared == {"gr", "gr_loss"}
    assert "reading-dependent" in res.stdout.splitlines()[-1]
