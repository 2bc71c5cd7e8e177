"""Training that tells the truth: runs that learn nothing fail with a clear error (one failed
run does not stop its stack), non-finite features are named, group methods refuse training
sets without two groups, late selection is flagged, and thin group support warns."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from test_train import random_data
from typer.testing import CliRunner

from emodebias.data.manifest import Manifest
from emodebias.data.splits import group_support_warnings, make_split
from emodebias.errors import UserError
from emodebias.training import (
    FeatureError,
    RunConfig,
    TrainConfig,
    TrainingError,
    fit,
    fit_many,
    fit_stream,
)
from emodebias.training.methods import GroupSupervisionError

CFG = TrainConfig(epochs=3, batch_size=16, lr=1e-3)


def test_empty_dev_fails_and_the_rest_of_the_stack_trains() -> None:
    data = random_data()
    no_dev = replace(data, dev_idx=np.zeros(0, dtype=np.int64))
    with pytest.raises(TrainingError, match="dev part is empty"):
        fit(no_dev, "erm", config=CFG)
    out = dict(fit_stream([(no_dev, [RunConfig("erm", {}, 0, CFG)]),
                           (data, [RunConfig("erm", {}, 0, CFG)])]))
    assert isinstance(out[0], TrainingError) and isinstance(out[0], UserError)
    assert out[1].info["stack_size"] == 2 and np.isfinite(out[1].test_probs).all()
    alone = fit(data, "erm", config=CFG)
    np.testing.assert_allclose(out[1].test_probs, alone.test_probs, atol=1e-5)


def test_zero_epochs_and_divergence_fail() -> None:
    data = random_data()
    with pytest.raises(TrainingError, match="epochs is 0"):
        fit(data, "erm", config=replace(CFG, epochs=0))
    with pytest.raises(TrainingError, match="finite dev loss"):
        fit(data, "erm", config=replace(CFG, lr=1e30))


def test_non_finite_features_name_the_utterances() -> None:
    data = random_data()
    feats = np.array(data.features)
    feats[85, 1, 3] = np.nan  # a dev row
    feats[3, 0, 0] = np.inf  # a train row
    feats[119, 0, 0] = np.nan  # a test row
    bad = replace(data, features=feats, utt_ids=[f"utt{i}" for i in range(len(feats))])
    with pytest.raises(FeatureError, match=r"3 utterance\(s\).*train 1, dev 1, test 1.*utt3, "
                                           r"utt85, utt119"):
        fit(bad, "erm", config=CFG)
    # rows no run reads do not matter
    fine = replace(bad, train_idx=np.arange(4, 80), test_idx=np.arange(100, 119),
                   dev_idx=np.arange(86, 100))
    assert np.isfinite(fit(fine, "erm", config=CFG).test_probs).all()


@pytest.mark.parametrize("method", ["rw", "ds", "gr", "gdro", "gadro", "pgdro", "adv", "gr_loss"])
def test_group_methods_refuse_a_one_group_training_set(method: str) -> None:
    data = random_data()
    one_gender = replace(data, groups=np.where(np.arange(len(data.groups)) < 80, 0, 1))
    with pytest.raises(GroupSupervisionError, match=r"only group\(s\) \[0\] of 2"):
        fit(one_gender, method, config=CFG)
    single = replace(data, groups=np.zeros(len(data.groups), dtype=np.int64), n_groups=1)
    with pytest.raises(GroupSupervisionError, match="at least two"):
        fit(single, method, config=CFG)
    fit(data, "erm", config=CFG)  # methods without groups are unaffected


def test_late_selection_is_flagged() -> None:
    data = random_data()
    res = fit(data, "erm", config=TrainConfig(epochs=2, batch_size=16, lr=1e-4))
    conv = res.info["convergence"]
    assert conv["selected_epoch"] == res.best_epoch and conv["epochs"] == 2
    assert conv["late"] == (res.best_epoch == 2)  # last 10% of 2 epochs: the last one
    res = fit(data, "erm", config=TrainConfig(epochs=30, batch_size=16, lr=3e-2))
    dev = [h["dev_loss"] for h in res.history]
    assert res.best_epoch == 1 + int(np.argmin(dev)) and res.best_epoch <= 27
    assert res.info["convergence"]["late"] is False
    last = fit(data, "erm", config=TrainConfig(epochs=3, batch_size=16, select="last"))
    assert last.info["convergence"]["late"] is False  # chosen on purpose, not a symptom


def test_fit_many_raises_after_the_others_finish() -> None:
    data = random_data()
    runs = [RunConfig("erm", {}, 0, CFG), RunConfig("erm", {}, 1, replace(CFG, epochs=0))]
    with pytest.raises(TrainingError):
        fit_many(data, runs)


# ----------------------------------------------------------------------------- split support
def toy_manifest() -> Manifest:
    rows = []
    for g, n_spk in (("F", 6), ("M", 6)):
        for s in range(n_spk):
            for u in range(8):
                a = 0.95 if (g == "M") == (u % 4 != 0) else 0.05
                rows.append({"utt_id": f"{g}{s}_{u}", "path": f"{g}{s}_{u}.wav",
                             "speaker": f"{g}{s}", "gender": g, "soft_a": a, "soft_b": 1 - a,
                             "split_1": ["train", "train", "train", "train", "dev", "test"][s]})
    return Manifest(pd.DataFrame(rows), ["a", "b"], corpus="toy")


def test_group_support_warnings_name_part_group_and_counts() -> None:
    m = toy_manifest()
    full = make_split(m, "1")
    assert group_support_warnings(m, full, min_utterances=5, min_speakers=1) == []
    warned = group_support_warnings(m, full)  # dev: one speaker per gender
    assert len(warned) == 2 and all("dev part has 8" in w and "1 speaker(s)" in w for w in warned)
    skewed = make_split(m, "1", ratio=20, direction="male-major")
    msgs = group_support_warnings(m, skewed, min_speakers=1)
    # 1:20 male-major: F keeps floor(24/20) + floor(8/20) = 1 train utterance
    n_f = sum(1 for u in skewed.train if u.startswith("F"))
    assert n_f == 1
    train_f = [w for w in msgs if "train part" in w and "gender=F" in w]
    assert len(train_f) == 2
    assert "has 1 gender=F utterance(s) from 1 speaker(s)" in train_f[1]
    # per emotion: b's 8 male train utterances give floor(8/20) = 0 female ones
    n_mb = sum(1 for u in skewed.train if u.startswith("M") and u.endswith(("_0", "_4")))
    assert train_f[0].endswith(f"train part has no gender=F utterance of b (gender=M: {n_mb})")
    assert not [w for w in msgs if "train part" in w and "gender=M utterance" in w]
    assert group_support_warnings(m, skewed, min_speakers=1, per_emotion=False) == [
        w for w in msgs if "utterance of" not in w]


def test_split_command_prints_the_warning(tmp_path) -> None:
    from emodebias.cli import app

    m = toy_manifest()
    path = m.save(tmp_path / "manifest.parquet")
    res = CliRunner().invoke(app, ["split", "--manifest", str(path), "--fold", "1", "--ratio",
                                   "1:20", "--direction", "male-major", "--out",
                                   str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "train part has 1 gender=F" in res.output


def test_grid_records_a_failed_training_and_the_run_facts(tmp_path) -> None:
    """In a grid, a run that selects nothing is a failure record, not a done run; finished runs
    carry the convergence flag, the split's support warnings and GDRO's q trajectory; extras
    runs are marked in their record."""
    import json

    import yaml

    from emodebias.bench.grid import load_grid
    from emodebias.bench.runner import run_local

    grid = {"name": "tiny", "corpus": {"name": "synthetic", "folds": 5,
                                       "n_speakers_per_gender": 5, "utterances_per_emotion": 4,
                                       "seconds": [0.5, 0.7]},
            "encoder": "acoustic", "folds": [1], "ratios": ["1:5"],
            "train": {"epochs": 3, "lr": 1.0e-2},
            "runs": ["erm", {"method": "gdro", "groups": "truth"}],
            "extras": [{"method": "rw", "groups": "truth",
                        "train": {"epochs": 3, "lr": 1.0e+30}}]}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    specs = load_grid(path)
    summary = run_local(specs, tmp_path / "out", progress=False)
    assert len(summary.failed) == 1 and "finite dev loss" in summary.failed[0]["error"]
    (failure,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "failures").glob("*")]
    assert failure["spec"]["method"] == "rw" and failure["spec"]["block"] == "extras"
    assert "TrainingError" in failure["error"]
    records = (tmp_path / "out").glob("runs/*/record.json")
    recs = {r["spec"]["method"]: r for r in (json.loads(p.read_text()) for p in records)}
    assert set(recs) == {"erm", "gdro"} and all("block" not in r["spec"] for r in recs.values())
    for r in recs.values():
        assert r["info"]["convergence"]["selected_epoch"] == r["best_epoch"]
        assert isinstance(r["info"]["warnings"], list)
    q = recs["gdro"]["info"]["q_trajectory"]
    assert len(q) == 3 and len(q[0]) == 6 * 2 == len(recs["gdro"]["info"]["q_groups"])


def test_select_last_keeps_the_last_epoch_without_a_dev_part() -> None:
    data = random_data()
    no_dev = replace(data, dev_idx=np.zeros(0, dtype=np.int64))
    res = fit(no_dev, "erm", config=replace(CFG, select="last"))
    assert res.best_epoch == CFG.epochs and res.dev_probs.shape == (0, data.n_classes)
    assert np.isfinite(res.test_probs).all()
    # dev-loss selection has nothing to select on: one line naming the empty dev part
    with pytest.raises(TrainingError, match="dev part is empty") as err:
        fit(no_dev, "erm", config=CFG)
    assert "\n" not in str(err.value)


def test_a_failed_jtt_identification_model_fails_only_its_run() -> None:
    """A UserError in JTT's identification training (here a diverging model) is that run's
    result; the other runs, JTT's included, train."""
    data = random_data()
    jtt = {"id_epochs": 2, "up": 2}
    out = dict(fit_stream(data, [RunConfig("jtt", jtt, 0, replace(CFG, lr=1e30)),
                                 RunConfig("jtt", jtt, 1, CFG), RunConfig("erm", {}, 0, CFG)]))
    assert isinstance(out[0], TrainingError) and "identification model" in str(out[0])
    assert "\n" not in str(out[0])
    for pos in (1, 2):
        assert np.isfinite(out[pos].test_probs).all()
    np.testing.assert_allclose(out[1].test_probs,
                               fit(data, "jtt", jtt, 1, CFG).test_probs, atol=1e-5)
