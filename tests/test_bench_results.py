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
    RunResult,
    clean_stale,
    collect,
    is_done,
    read_record,
    split_summary_key,
    summary_wide,
    write_run,
)

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
