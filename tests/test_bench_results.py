"""Run records: atomic commit, validation, stale temporaries, tidy table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from emodebias.bench.grid import RunSpec
from emodebias.bench.results import (
    RecordError,
    RunResult,
    clean_stale,
    collect,
    commit_run,
    find_run_dirs,
    is_done,
    read_record,
    run_hash,
    split_summary_key,
    summary_wide,
    write_run,
)
from emodebias.errors import UserError

SPEC = RunSpec(corpus="synthetic", fold="1", ratio=20.0, groups="truth:gender", method="rw")


def result(spec=SPEC, f1=0.5):
    return RunResult(spec=spec, summary={"macro_f1": f1, "gender.tpr_gap": 0.2,
                                         "gender.tpr_gap.ci_low": 0.1},
                     table=[{"metric": "tpr", "attribute": "gender", "group": "F", "cls": "sad",
                             "value": 0.75, "support": 8}],
                     best_epoch=4, test_ids=["u1", "u2"], test_probs=np.eye(2),
                     test_targets=np.eye(2), classes=["a", "b"])


def test_write_read_round_trip_and_first_commit_wins(tmp_path) -> None:
    d = write_run(tmp_path, result())
    assert is_done(tmp_path, SPEC) and d.name == SPEC.hash
    rec = read_record(d)
    assert rec["spec"] == SPEC.to_dict() and rec["best_epoch"] == 4
    assert rec["train_config"]["epochs"] == 50 and rec["classes"] == ["a", "b"]
    assert rec["encoder"] == {"name": "acoustic", "options": {}}
    with np.load(d / "predictions.npz") as z:
        assert z["utt_ids"].tolist() == ["u1", "u2"] and np.array_equal(z["probs"], np.eye(2))
    write_run(tmp_path, result(f1=0.9))  # same spec again: the committed record stays
    assert read_record(d)["metrics"]["summary"]["macro_f1"] == 0.5
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [SPEC.hash]


def test_tampered_or_broken_records_name_the_file(tmp_path) -> None:
    d = write_run(tmp_path, result())
    rec = json.loads((d / "record.json").read_text())
    rec["spec"]["seed"] = 7
    (d / "record.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=f"{d}/record.json: spec does not match its hash"):
        read_record(d)
    (d / "record.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read run record"):
        read_record(d)


def test_uncommitted_temporaries_are_ignored_and_cleaned(tmp_path) -> None:
    write_run(tmp_path, result())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    other = RunSpec(corpus="synthetic", fold="2", method="erm")
    stale = write_run(tmp_path / "x", result(other)).rename(
        tmp_path / "runs" / f"{other.hash}.tmp-{dead}-abcd")
    live = tmp_path / "runs" / f"{other.hash}.tmp-{os.getpid()}-beef"
    live.mkdir()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; not reaped until wait()
    stat = Path(f"/proc/{zombie.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    by_zombie = tmp_path / "runs" / f"{other.hash}.tmp-{zombie.pid}-cafe"
    by_zombie.mkdir()
    assert collect(tmp_path)["hash"].unique().tolist() == [SPEC.hash]  # temporaries are not runs
    assert clean_stale(tmp_path) == 2  # dead and zombie (killed, unreaped) writers
    zombie.wait()
    assert not stale.exists() and not by_zombie.exists()
    assert live.exists()  # a live writer's directory is left alone


def test_tidy_table_and_wide_summary(tmp_path) -> None:
    write_run(tmp_path, result())
    tidy = collect(tmp_path)
    assert set(tidy["part"]) == {"summary", "table"}
    row = tidy[(tidy["part"] == "table")].iloc[0]
    assert (row["metric"], row["attribute"], row["group"], row["cls"], row["value"]) == (
        "tpr", "gender", "F", "sad", 0.75)
    wide = summary_wide(tidy)
    assert wide.loc[0, "gender.tpr_gap"] == 0.2 and wide.loc[0, "gender.tpr_gap_ci_low"] == 0.1
    assert wide.loc[0, "ratio"] == 20.0 and wide.loc[0, "method"] == "rw"
    assert split_summary_key("macro_f1.ci_high") == (None, "macro_f1_ci_high")
    assert split_summary_key("age_group.dp_gap") == ("age_group", "dp_gap")


def test_run_folders_are_found_wherever_they_are(tmp_path) -> None:
    """A run folder, a folder of `train` outputs, a grid folder, or a folder above them."""
    grid = tmp_path / "grid"
    grid_run = write_run(grid, result())
    (grid / "cache" / "x" / "runs" / "y").mkdir(parents=True)  # stage caches are not searched
    (grid / "cache" / "x" / "runs" / "y" / "record.json").write_text("{")
    trained = tmp_path / "train"
    other = RunSpec(corpus="synthetic", fold="2", method="erm")
    a = commit_run(trained / "erm", RunResult(**{**vars(result(other)), "kind": "train",
                                                "inputs": {"manifest": "m1"}}))
    b = commit_run(trained / "nested" / "gdro", result(SPEC, f1=0.7))
    (trained / "erm.tmp-1-abcd").mkdir()  # a killed writer's leftovers
    (trained / "erm.tmp-1-abcd" / "record.json").write_text("{")
    assert find_run_dirs(grid_run) == [grid_run]
    assert find_run_dirs(grid) == [grid_run]
    assert find_run_dirs(trained) == [a, b]
    assert find_run_dirs(tmp_path) == [grid_run, a, b]
    with pytest.raises(RecordError, match="no such run folder"):
        find_run_dirs(tmp_path / "missing")
    tidy = collect(tmp_path)
    # grid_run and b hold the same spec (same hash): counted once; a differs by its inputs
    assert sorted(tidy["hash"].unique()) == sorted({SPEC.hash, read_record(a)["hash"]})
    kinds = tidy.drop_duplicates("hash").set_index("hash")["kind"]
    assert kinds[read_record(a)["hash"]] == "train" and kinds[SPEC.hash] == "grid"
    assert set(tidy["run"]) == {"grid/runs/" + SPEC.hash, "train/erm"}


def test_inputs_are_part_of_a_train_runs_identity(tmp_path) -> None:
    base = RunResult(**{**vars(result()), "kind": "train", "inputs": {"manifest": "m1"}})
    assert base.hash == run_hash(SPEC, {"manifest": "m1"}) != SPEC.hash
    assert run_hash(SPEC, {"manifest": "m2"}) != base.hash and run_hash(SPEC, {}) == SPEC.hash
    d = commit_run(tmp_path / "run", base)
    rec = json.loads((d / "record.json").read_text())
    rec["inputs"]["manifest"] = "m2"  # claims other inputs than it was trained on
    (d / "record.json").write_text(json.dumps(rec))
    with pytest.raises(RecordError, match="does not match its hash"):
        read_record(d)


def test_commit_run_replaces_runs_but_never_other_files(tmp_path) -> None:
    d = commit_run(tmp_path / "run", result(f1=0.5))
    assert commit_run(d, result(f1=0.9)) == d  # without replace the first commit stays
    assert read_record(d)["metrics"]["summary"]["macro_f1"] == 0.5
    commit_run(d, result(f1=0.9), replace=True)
    assert read_record(d)["metrics"]["summary"]["macro_f1"] == 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporaries left
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / f"run.tmp-{dead}-abcd").mkdir()  # a killed `train` left these
    (tmp_path / f"run.old-{dead}-abcd").mkdir()
    (tmp_path / f"run.tmp-{os.getpid()}-beef").mkdir()  # a live writer's
    commit_run(d, result(f1=0.8), replace=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", f"run.tmp-{os.getpid()}-beef"]
    (tmp_path / f"run.tmp-{os.getpid()}-beef").rmdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        commit_run(tmp_path / "file", result(), replace=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not a run folder"):
        commit_run(tmp_path / "mine", result(), replace=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_records_carry_provenance(tmp_path) -> None:
    """Grid runs carry the grid invocation's provenance (written by the runner); others their
    own process's."""
    from emodebias.bench.runner import prepare_out

    prepare_out(tmp_path, [SPEC], grid="demo-quick")
    rec = read_record(write_run(tmp_path, result()))
    prov = rec["provenance"]
    assert prov["grid"]["source"] == "preset:demo-quick" and len(prov["grid"]["hash"]) == 16
    assert set(prov["versions"]) == {"emodebias", "torch", "transformers", "numpy", "python"}
    assert prov["versions"]["numpy"] == np.__version__
    own = read_record(commit_run(tmp_path / "own", result()))["provenance"]
    assert own["grid"] is None and own["command"]
