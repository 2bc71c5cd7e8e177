"""Runners: resumable after SIGKILL (record for record), failures kept and retried, Ray = local.

The executor here is a registered test-only run function (`toy_executor`, resolved by dotted
path inside the workers): deterministic numbers from the spec, with a short sleep so a kill
lands mid-grid. The real pipeline is exercised by tests/test_demo.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from emodebias.bench.grid import expand_grid
from emodebias.bench.results import VOLATILE, RunResult, collect, iter_records
from emodebias.bench.runner import RunFailure, plan_tasks, run_local

TESTS = Path(__file__).resolve().parent
EXECUTOR = "test_bench_runner:toy_executor"
GRID = {"corpus": "synthetic", "encoder": "acoustic", "folds": [1, 2, 3], "ratios": ["1:20"],
        "cluster_encoder": "acoustic",
        "runs": ["erm", {"method": ["rw", "gdro"], "groups": ["truth", "cluster:k=4"]}]}


def toy_executor(specs, out):
    """Deterministic per-spec numbers; fails on purpose for methods in $TOY_FAIL."""
    fail = set(os.environ.get("TOY_FAIL", "").split(","))
    for s in specs:
        time.sleep(float(os.environ.get("TOY_SLEEP", "0")))
        if s.method in fail:
            yield RunFailure(s, ValueError(f"planned failure of {s.method}"))
            continue
        if f"{s.method}/{s.fold}/{s.groups}" == os.environ.get("TOY_DIE"):
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
        rng = np.random.default_rng(int(s.hash, 16) % 2**32)
        probs = rng.dirichlet(np.ones(3), size=4)
        yield RunResult(spec=s, summary={"macro_f1": float(probs[0, 0]),
                                         "gender.tpr_gap": float(probs[1, 1])},
                        table=[{"metric": "f1", "attribute": "gender", "group": "F",
                                "cls": None, "value": float(probs[2, 2]), "support": 4}],
                        best_epoch=int(rng.integers(1, 50)), test_ids=list("abcd"),
                        test_probs=probs, classes=["x", "y", "z"])


def specs():
    return expand_grid(GRID)


def committed(out: Path) -> int:
    """Committed runs (a killed writer's `<hash>.tmp-*` dir may hold a record.json too)."""
    return sum(".tmp-" not in p.parent.name for p in (out / "runs").glob("*/record.json"))


def stable(out: Path) -> list[dict]:
    recs = [{k: v for k, v in r.items() if k not in VOLATILE} for r in iter_records(out)]
    return sorted(recs, key=lambda r: r["hash"])


def test_plan_tasks_keeps_cells_whole_and_deals_them_over_workers() -> None:
    # 3 folds x {erm (no groups), rw+gdro (truth), rw+gdro (cluster)}: 9 cells, one train key
    cells = {s.batch_key for s in specs()}
    assert len(cells) == 9
    assert [len(t) for t in plan_tasks(specs())] == [15]  # one fit_many call stacks them all
    for workers, max_batch in ((2, 256), (3, 256), (1, 4)):
        tasks = plan_tasks(specs(), max_batch=max_batch, workers=workers)
        assert sorted(s.hash for t in tasks for s in t) == sorted(s.hash for s in specs())
        owner = {s.batch_key: i for i, t in enumerate(tasks) for s in t}
        assert all(owner[s.batch_key] == i for i, t in enumerate(tasks) for s in t)  # whole
        assert len(tasks) >= max(workers, 4 if max_batch == 4 else 1)
        assert max(len(t) for t in tasks) <= max_batch
        assert max(len(t) for t in tasks) - min(len(t) for t in tasks) <= 2  # balanced
    assert sorted(len(t) for t in plan_tasks(specs(), max_batch=1)) == [1] * 15


def test_cli_default_task_size_is_the_runners() -> None:
    from emodebias.bench.runner import MAX_BATCH
    from emodebias.cli.bench import MAX_BATCH as CLI_MAX_BATCH

    assert CLI_MAX_BATCH == MAX_BATCH


def test_failures_are_recorded_and_retried(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("TOY_FAIL", "gdro")
    summary = run_local(specs(), tmp_path, workers=1, executor=EXECUTOR, progress=False)
    assert summary.completed == 9 and len(summary.failed) == 6
    fails = sorted((tmp_path / "failures").glob("*.json"))
    assert len(fails) == 6
    assert "planned failure of gdro" in json.loads(fails[0].read_text())["error"]
    monkeypatch.setenv("TOY_FAIL", "")
    again = run_local(specs(), tmp_path, workers=1, executor=EXECUTOR, progress=False)
    assert (again.skipped, again.completed, again.failed) == (9, 6, [])
    assert not list((tmp_path / "failures").glob("*.json"))
    df = collect(tmp_path)
    assert df["hash"].nunique() == 15 and (tmp_path / "results.parquet").is_file()


def _grid_script(out: Path, workers: int) -> list[str]:
    code = ("import sys; from emodebias.bench.grid import expand_grid; "
            "from emodebias.bench.runner import run_local; import test_bench_runner as t; "
            f"run_local(expand_grid(t.GRID), {str(out)!r}, workers={workers}, "
            f"executor={EXECUTOR!r}, progress=False, max_batch=1)")
    return [sys.executable, "-c", code]


def test_sigkill_midway_then_rerun_gives_the_uninterrupted_records(tmp_path,
                                                                    monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path]),
           "TOY_SLEEP": "0.3"}
    ref, out = tmp_path / "ref", tmp_path / "killed"
    run_local(specs(), ref, executor=EXECUTOR, progress=False)  # uninterrupted, in-process
    proc = subprocess.Popen(_grid_script(out, 2), env=env, start_new_session=True)
    deadline = time.time() + 40
    while time.time() < deadline and committed(out) < 4:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its workers, at once
    proc.wait()
    n_before = committed(out)
    assert 4 <= n_before < 15, "the kill must land mid-grid"
    again = run_local(specs(), out, executor=EXECUTOR, progress=False)  # the rerun
    assert again.skipped == n_before and again.completed == 15 - n_before and again.ok
    assert not list((out / "runs").glob("*.tmp-*"))
    assert committed(out) == 15
    assert stable(out) == stable(ref)
    a = collect(ref).sort_values(["hash", "part", "metric"]).reset_index(drop=True)
    b = collect(out).sort_values(["hash", "part", "metric"]).reset_index(drop=True)
    cols = [c for c in a.columns if c != "wall_time"]
    assert a[cols].equals(b[cols])


def test_ray_backend_gives_the_local_records(tmp_path) -> None:
    ray = pytest.importorskip("ray")
    from emodebias.bench.ray_runner import run_ray

    small = expand_grid({**GRID, "folds": [1]})
    run_local(small, tmp_path / "local", executor=EXECUTOR, progress=False)
    pythonpath = os.pathsep.join([str(TESTS), *sys.path])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    try:
        summary = run_ray(small, tmp_path / "ray", executor=EXECUTOR, progress=False)
    finally:
        ray.shutdown()
    assert summary.completed == len(small) and summary.ok
    assert stable(tmp_path / "ray") == stable(tmp_path / "local")


def test_a_dead_worker_fails_only_its_own_runs(tmp_path, monkeypatch) -> None:
    """One worker killed mid-grid: its task's runs fail (and are redone next time); every other
    run of the grid completes."""
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), *sys.path]))
    monkeypatch.setenv("TOY_DIE", "gdro/2/truth:gender")
    monkeypatch.setenv("TOY_SLEEP", "0.05")
    summary = run_local(specs(), tmp_path, workers=2, executor=EXECUTOR, progress=False,
                        max_batch=1)
    assert [f["name"] for f in summary.failed] == [
        s.name for s in specs() if (s.method, s.fold, s.groups) == ("gdro", "2", "truth:gender")]
    assert "worker" in summary.failed[0]["error"] and committed(tmp_path) == 14
    monkeypatch.setenv("TOY_DIE", "")
    again = run_local(specs(), tmp_path, workers=2, executor=EXECUTOR, progress=False)
    assert (again.skipped, again.completed, again.failed) == (14, 1, [])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_runner_alone_stops_its_workers(tmp_path, sig) -> None:
    """The signal goes to the runner's pid only (not its process group): the workers must not
    go on to finish the grid, and none outlives the runner."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path]),
           "TOY_SLEEP": "0.4"}
    out = tmp_path / "g"
    proc = subprocess.Popen(_grid_script(out, 2), env=env, start_new_session=True,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 40
    while time.time() < deadline and committed(out) < 2:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert workers, "the runner has worker processes"
    os.kill(proc.pid, sig)
    proc.wait(timeout=20)
    n = committed(out)
    time.sleep(1.5)  # long enough for a surviving worker to commit more runs
    assert committed(out) == n < 15
    assert not [w for w in workers if _alive(w)]
    again = run_local(specs(), out, executor=EXECUTOR, progress=False)  # resumes what is left
    assert again.skipped == n and again.ok and committed(out) == 15


def _children(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(k) for k in kids.read_text().split()] if kids.is_file() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
