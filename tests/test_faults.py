"""Fault injection: each way a wrong input, a concurrent writer, a kill or a damaged file could
corrupt data or give a silent wrong result is reproduced here, and the error, warning or
recovery asserted. Property-based tests feed random malformed split files and grid values to
their loaders: the result is a valid object or a one-line UserError, never another exception.
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
import pandas as pd
import pytest
import soundfile as sf
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from emodebias.bench.grid import GridError, expand_grid, load_grid
from emodebias.bench.results import iter_records
from emodebias.bench.runner import run_local
from emodebias.data.manifest import Manifest
from emodebias.data.splits import Split, SplitError
from emodebias.errors import UserError
from emodebias.features.encoders.acoustic import AcousticEncoder
from emodebias.features.store import FeatureStore, StoreError, check_inputs, extract, store_state
from emodebias.fileio import FolderLockedError, folder_lock
from emodebias.groups.assignment import GroupAssignment, GroupError
from emodebias.groups.cluster import ClusterError, cached_cluster_groups, fit_clusters, parse_ks
from emodebias.training import TrainData

SR = 16_000
TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
TOY = "test_bench_runner:toy_executor"


def tone(seconds: float, f0: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * f0 * t) + 0.01 * noise).astype(np.float32)


def write_wavs(folder: Path, n: int, shift: float = 0.0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"u{i:02d}.wav"
        sf.write(p, tone(0.4 + 0.05 * i, 90 + 15 * i + shift, seed=i), SR)
        paths.append(p)
    return paths


def manifest_of(paths: list[Path], ids: list[str] | None = None) -> Manifest:
    ids = ids or [p.stem for p in paths]
    soft = np.tile([[0.7, 0.3]], (len(paths), 1))
    df = pd.DataFrame({"utt_id": ids, "path": [str(p) for p in paths],
                       "speaker": [f"s{i % 4}" for i in range(len(paths))],
                       "soft_neu": soft[:, 0], "soft_ang": soft[:, 1]})
    return Manifest(df, classes=["neu", "ang"], corpus="test")


@pytest.fixture
def wavs(tmp_path) -> list[Path]:
    return write_wavs(tmp_path / "audio", 12)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]),
            "OMP_NUM_THREADS": "1"}


def same_store(a: Path, b: Path) -> None:
    assert (a / "features.npy").read_bytes() == (b / "features.npy").read_bytes()
    ma, mb = (json.loads((p / "meta.json").read_text()) for p in (a, b))
    assert {k: v for k, v in ma.items() if k != "run"} == {k: v for k, v in mb.items()
                                                            if k != "run"}


def one_line_user_error(exc: BaseException) -> None:
    assert isinstance(exc, UserError), repr(exc)
    assert "\n" not in str(exc) and str(exc)


# ----------------------------------------------------------------------- concurrent writers
SLOW_EXTRACT = """
import os, sys, time
from emodebias.features.encoders.acoustic import AcousticEncoder
from emodebias.data.manifest import Manifest
from emodebias.features.store import extract

class Slow(AcousticEncoder):
    calls = 0

    def encode(self, waves):
        Slow.calls += 1
        time.sleep(float(sys.argv[4]))
        while Slow.calls > 1 and sys.argv[6] != "-" and not os.path.exists(sys.argv[6]):
            time.sleep(0.05)  # held after its first batch until the test opens the gate
        return super().encode(waves)

timeout = None if sys.argv[3] == "wait" else float(sys.argv[3])
extract(Manifest.load(sys.argv[1]), Slow(), sys.argv[2], batch_seconds=1.0, progress=False,
        lock_timeout=timeout, checkpoint_seconds=float(sys.argv[5]))
"""


def start_extract(man_path: Path, out: Path, timeout: str = "wait", sleep: float = 0.15,
                  checkpoint: float = 0.0, gate: Path | None = None,
                  stderr: Path | None = None) -> subprocess.Popen:
    """`extract` in another process; with `gate`, it stops after its first batch until the
    gate file exists; with `stderr`, its error output goes to that file."""
    err = open(stderr, "w") if stderr else subprocess.PIPE  # noqa: SIM115 (child owns it)
    return subprocess.Popen([sys.executable, "-c", SLOW_EXTRACT, str(man_path), str(out),
                             timeout, str(sleep), str(checkpoint), str(gate or "-")],
                            stderr=err, text=True, env=env())


def wait_for(predicate, proc: subprocess.Popen, limit: float = 60.0) -> None:
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"condition not reached; writer: {proc.poll()} "
                         f"{proc.stderr.read() if proc.poll() is not None else ''}")


def meta_batches(out: Path) -> int:
    try:
        return int(json.loads((out / "meta.json").read_text())["batches_done"])
    except (OSError, ValueError, KeyError):
        return -1


def test_two_extracts_into_one_store_wait_instead_of_interleaving(wavs, tmp_path):
    man = manifest_of(wavs)
    man_path = man.save(tmp_path / "m.parquet")
    out, gate, log = tmp_path / "store", tmp_path / "gate", tmp_path / "second.err"
    first = start_extract(man_path, out, gate=gate)
    wait_for(lambda: meta_batches(out) >= 1, first)  # the first one is writing, held
    second = start_extract(man_path, out, sleep=0.0, stderr=log)
    wait_for(lambda: "being written by another process" in log.read_text(), second)
    gate.touch()
    assert first.wait(120) == 0, first.stderr.read()
    assert second.wait(120) == 0, log.read_text()
    reference = extract(man, AcousticEncoder(), tmp_path / "reference", batch_seconds=1.0,
                        progress=False)
    same_store(out, reference.path)  # not a mix of two writers' rows


def test_second_extract_with_no_patience_fails_with_one_line(wavs, tmp_path):
    man_path = manifest_of(wavs).save(tmp_path / "m.parquet")
    out = tmp_path / "store"
    first = start_extract(man_path, out, gate=tmp_path / "never")
    try:
        wait_for(lambda: meta_batches(out) >= 1, first)
        second = start_extract(man_path, out, timeout="0", sleep=0.0)
        assert second.wait(60) != 0
        last = second.stderr.read().strip().splitlines()[-1]
        assert "FolderLockedError" in last and f"{out} is being written by another" in last
    finally:
        first.kill()
        first.wait()


def test_library_lock_timeout(tmp_path):
    with folder_lock(tmp_path / "x", "test"):
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from emodebias.fileio import folder_lock\n"
             "with folder_lock(sys.argv[1], 'test', timeout=0.2): pass", str(tmp_path / "x")],
            capture_output=True, text=True, env=env())
    assert proc.returncode != 0 and "still being written" in proc.stderr
    with folder_lock(tmp_path / "x", "test", timeout=0):  # released: free again
        pass


def test_a_grid_stage_lock_makes_another_process_wait(tmp_path):
    """Two grids sharing a cache build a stage once: the second waits for the first's lock."""
    from emodebias.bench.pipeline import file_lock

    script = ("import sys, time; from pathlib import Path\n"
              "from emodebias.bench.pipeline import file_lock\n"
              "print('ready', flush=True); t = time.monotonic()\n"
              "with file_lock(Path(sys.argv[1]), sys.argv[2]): print(time.monotonic() - t)")
    with file_lock(tmp_path, "features-x"):
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), "features-x"],
                                stdout=subprocess.PIPE, text=True, env=env())
        assert proc.stdout.readline().strip() == "ready"  # imported; now asking for the lock
        time.sleep(1.0)
        assert proc.poll() is None  # still waiting while the lock is held
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and float(out) >= 0.9
    other = subprocess.run([sys.executable, "-c", script, str(tmp_path), "split-y"],
                           capture_output=True, text=True, env=env(), timeout=60)
    assert other.returncode == 0 and float(other.stdout.split()[-1]) < 0.9  # no wait


# ----------------------------------------------------------------------- store <-> manifest
def test_store_from_another_manifest_with_the_same_ids_is_refused(wavs, tmp_path):
    man = manifest_of(wavs)
    store = extract(man, AcousticEncoder(), tmp_path / "st", progress=False)
    other = manifest_of(list(reversed(wavs)), ids=man.utt_ids)  # same ids, other files
    with pytest.raises(StoreError) as err:
        check_inputs(store, other, manifest_name="other.parquet")
    one_line_user_error(err.value)
    assert other.content_hash() in str(err.value) and man.content_hash() in str(err.value)
    assert str(store.path) in str(err.value) and "other.parquet" in str(err.value)
    with pytest.raises(StoreError, match="another manifest"):
        FeatureStore.open(store.path, manifest=other)
    check_inputs(store, man)  # its own manifest is fine
    # where training data is assembled (train, bench, the API) and where clusters are made
    split = Split("1", man.utt_ids[:6], man.utt_ids[6:8], man.utt_ids[8:])
    with pytest.raises(StoreError, match="another manifest"):
        TrainData.from_objects(store, other, split)
    with pytest.raises(StoreError, match="another manifest"):
        cached_cluster_groups(store, 2, manifest=other)
    assert len(TrainData.from_objects(store, man, split).train_idx) == 6


def test_train_command_refuses_a_store_of_another_manifest(wavs, tmp_path):
    from emodebias.cli import app

    man = manifest_of(wavs)
    extract(man, AcousticEncoder(), tmp_path / "st", progress=False)
    other = manifest_of(list(reversed(wavs)), ids=man.utt_ids)
    other_path = other.save(tmp_path / "other.parquet")
    Split("1", man.utt_ids[:6], man.utt_ids[6:8], man.utt_ids[8:]).save(tmp_path / "split")
    res = CliRunner().invoke(app, ["train", "--features", str(tmp_path / "st"), "--manifest",
                                   str(other_path), "--split", str(tmp_path / "split"),
                                   "--epochs", "1", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert "another manifest" in res.output and not (tmp_path / "run" / "record.json").exists()


# ----------------------------------------------------------------------- cluster caches
def test_cluster_cache_follows_the_store_content_and_overwrite_clears_it(tmp_path):
    paths = write_wavs(tmp_path / "audio", 16)
    man = manifest_of(paths)
    store = extract(man, AcousticEncoder(), tmp_path / "st", progress=False)
    old = cached_cluster_groups(store, 3, algorithm="kmeans", seed=0)
    assert len(list((store.path / "groups").iterdir())) == 1
    # same ids and paths, other audio: re-extracted with --overwrite
    write_wavs(tmp_path / "audio", 16, shift=400.0)
    rewritten = extract(man, AcousticEncoder(), store.path, progress=False, overwrite=True)
    assert not (store.path / "groups").exists()  # the old clusters went with the old store
    assert rewritten.content_id != store.content_id
    new = cached_cluster_groups(rewritten, 3, algorithm="kmeans", seed=0)
    fresh_store = extract(man, AcousticEncoder(), tmp_path / "fresh", progress=False)
    fresh = cached_cluster_groups(fresh_store, 3, algorithm="kmeans", seed=0, cache=False)
    np.testing.assert_array_equal(new.ids, fresh.ids)
    assert new.info["inertia"] != pytest.approx(old.info["inertia"])
    assert new.manifest_hash == man.content_hash()


@pytest.mark.parametrize("k", [0, -3, 1, True, 2.5])
def test_bad_k_is_refused(k):
    x = np.random.default_rng(0).standard_normal((20, 3))
    with pytest.raises(ClusterError) as err:
        fit_clusters(x, [str(i) for i in range(20)], k)
    one_line_user_error(err.value)


@pytest.mark.parametrize("text", ["", "0", "-3", "1", "2,x", "2,2", " , "])
def test_bad_k_option_is_refused(text):
    with pytest.raises(ClusterError) as err:
        parse_ks(text)
    one_line_user_error(err.value)
    assert parse_ks("2, 4,16") == [2, 4, 16]


def test_groups_command_refuses_bad_k_and_another_manifests_store(wavs, tmp_path):
    from emodebias.cli import app

    man = manifest_of(wavs)
    man_path = man.save(tmp_path / "m.parquet")
    extract(man, AcousticEncoder(), tmp_path / "st", progress=False)
    base = ["groups", "-m", str(man_path), "-s", "cluster", "-f", str(tmp_path / "st"),
            "-o", str(tmp_path / "g")]
    for k in ("0", "-3", "", "1", "2,x"):
        res = CliRunner().invoke(app, [*base, "--k", k])
        assert res.exit_code == 2 and "Traceback" not in res.output, (k, res.output)
        assert "--k" in res.output
    other_path = manifest_of(list(reversed(wavs)), ids=man.utt_ids).save(tmp_path / "o.parquet")
    res = CliRunner().invoke(app, [*base[:2], str(other_path), *base[3:], "--k", "2"])
    assert res.exit_code == 2 and "another manifest" in res.output
    res = CliRunner().invoke(app, [*base, "--k", "2", "--attributes", "speaker"])
    assert res.exit_code == 0, res.output
    saved = GroupAssignment.load(next((tmp_path / "g").glob("cluster*")))
    assert saved.manifest_hash == man.content_hash()


# ----------------------------------------------------------------------- groups <-> manifest
def test_groups_from_another_manifest_are_refused(wavs, tmp_path):
    man = manifest_of(wavs)
    ids = man.utt_ids
    saved = GroupAssignment(ids, np.arange(len(ids)) % 2, ["F", "M"], "truth:gender")
    saved.save(tmp_path / "g", manifest=man)
    loaded = GroupAssignment.load(tmp_path / "g")
    assert loaded.manifest_hash == man.content_hash()
    loaded.check(man)
    other = manifest_of(list(reversed(wavs)), ids=ids)
    with pytest.raises(GroupError) as err:
        loaded.check(other, source=tmp_path / "g", manifest_name="other.parquet")
    one_line_user_error(err.value)
    assert "other.parquet" in str(err.value) and str(tmp_path / "g") in str(err.value)
    # no recorded hash: coverage decides; partial overlap and no overlap are both refused
    partial = GroupAssignment(ids[:5], np.zeros(5), ["F", "M"], "truth:gender")
    with pytest.raises(GroupError, match="lack 7 of the 12"):
        partial.check(man, source="groups/")
    partial.check(man, needed=ids[:5])  # enough for a split that trains on those five
    foreign = GroupAssignment(["x1", "x2"], [0, 1], ["F", "M"], "truth:gender")
    with pytest.raises(GroupError, match="share no utterance"):
        foreign.check(man)
    split = Split("1", ids[:6], ids[6:8], ids[8:])
    store = extract(man, AcousticEncoder(), tmp_path / "st", progress=False)
    with pytest.raises(GroupError, match="lack 1 of the 6"):
        check_inputs(store, man, split, GroupAssignment(ids[1:], np.zeros(11), ["F"], "t"))
    with pytest.raises(GroupError, match="share no utterance"):  # not "pass --groups DIR"
        TrainData.from_objects(store, man, split, foreign)


def test_damaged_group_files_are_one_line_errors(tmp_path):
    with pytest.raises(GroupError, match="no group assignment"):
        GroupAssignment.load(tmp_path)
    GroupAssignment(["a"], [0], ["F"], "t").save(tmp_path)
    (tmp_path / "groups.json").write_text("{not json")
    with pytest.raises(GroupError, match="damaged"):
        GroupAssignment.load(tmp_path)


# ----------------------------------------------------------------------- split files
GOOD_SPLIT = {"fold": "1", "train": ["a", "b"], "dev": ["c"], "test": ["d", "e"]}


@pytest.mark.parametrize("change, message", [
    ({"test": ["d", "a"]}, "in both train and test"),
    ({"dev": ["c", "d"]}, "in both dev and test"),
    ({"train": ["a", "b", "a"]}, "'train' lists utterance 'a' more than once"),
    ({"test": []}, "test part is empty"),
    ({"train": []}, "train part is empty"),
    ({"trian": ["x"]}, "unknown key"),
    ({"test": "d"}, "must be a list"),
    ({"test": [["d"]]}, "non-id"),
    ({"ratio": 0.5}, "r >= 1"),
    ({"ratio": "1:0.5"}, "r >= 1"),  # written as make_split, grids and the CLI read it
    ({"ratio": [20]}, "bad ratio"),
    ({"direction": "up"}, "direction"),
    ({"seed": 1.5}, "seed"),
    ({"fold": None}, "fold"),
])
def test_malformed_split_files_are_one_line_errors(tmp_path, change, message):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({**GOOD_SPLIT, **change}))
    with pytest.raises(SplitError, match=message) as err:
        Split.load(path)
    one_line_user_error(err.value)
    assert str(path) in str(err.value)


def test_unreadable_or_missing_split_files(tmp_path):
    (tmp_path / "split.json").write_text("{")
    with pytest.raises(SplitError, match="not a readable JSON split"):
        Split.load(tmp_path)
    with pytest.raises(SplitError, match="no split file"):
        Split.load(tmp_path / "nothing.json")
    (tmp_path / "split.json").write_text(json.dumps([1, 2]))
    with pytest.raises(SplitError, match="must be a JSON object"):
        Split.load(tmp_path)


def test_split_checked_against_the_manifest(wavs, tmp_path):
    man = manifest_of(wavs)
    ids = man.utt_ids
    Split("1", ids[:6], ids[6:8], ids[8:], manifest_hash=man.content_hash()).save(tmp_path)
    split = Split.load(tmp_path)
    split.check(man)
    other = manifest_of(list(reversed(wavs)), ids=ids)
    with pytest.raises(SplitError, match="made from another manifest"):
        split.check(other)
    with pytest.raises(SplitError, match=r"1 test utterance\(s\) are not in"):
        Split("1", ids[:6], [], ["ghost"]).check(man)


# ----------------------------------------------------------------------- grids
@pytest.mark.parametrize("ratio", ["0:1", [[]], "1:inf", "1:0", "inf", "nan", True, {}])
def test_bad_grid_ratios_fail_at_load(ratio):
    grid = {"corpus": "synthetic", "folds": [1], "ratios": [ratio], "runs": ["erm"]}
    with pytest.raises(GridError) as err:
        expand_grid(grid)
    one_line_user_error(err.value)


@pytest.mark.parametrize("key, value", [
    ("train", {"epochs": -1}), ("train", {"epochs": 0}), ("train", {"batch_size": 0}),
    ("train", {"lr": -1}), ("train", {"lr": "1e-4"}), ("train", {"epochs": 2.5}),
    ("train", {"select": "best"}), ("evaluation", {"n_boot": -1}),
    ("evaluation", {"bootstrap": 10}), ("seeds", [1.5]), ("seeds", []), ("folds", []),
    ("folds", [[1]]), ("split_seed", [1, 2]), ("variables", [1]), ("name", 3),
])
def test_bad_grid_values_fail_at_load(tmp_path, key, value):
    grid = {"corpus": "synthetic", "folds": [1], "runs": ["erm"], key: value}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(GridError) as err:
        load_grid(path)
    one_line_user_error(err.value)
    assert str(path) in str(err.value)


def test_bad_hyperparameters_fail_at_load():
    base = {"corpus": "synthetic", "folds": [1], "runs": []}
    for hp, match in (({"etaa": 1.0}, "has no hyperparameter 'etaa'"),
                      ({"eta_q": "fast"}, "must be a finite float"),
                      ({"eta_q": [0.1, float("inf")]}, "must be a finite float")):
        base["runs"] = [{"method": "gdro", "groups": "truth", "hparams": hp}]
        with pytest.raises(GridError, match=match):
            expand_grid(base)


TOY_GRID = {"corpus": "synthetic", "encoder": "acoustic", "folds": [1, 2], "ratios": ["1:20"],
            "runs": ["erm", {"method": "rw", "groups": "truth"}]}


def test_a_grid_into_another_grids_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    first = expand_grid(TOY_GRID)
    assert run_local(first, out, executor=TOY, progress=False).ok
    other = expand_grid({**TOY_GRID, "folds": [3]})
    with pytest.raises(GridError, match="not in this grid") as err:
        run_local(other, out, executor=TOY, progress=False)
    one_line_user_error(err.value)
    # the same grid extended (a superset of its runs) resumes in place
    extended = expand_grid({**TOY_GRID, "folds": [1, 2, 3]})
    summary = run_local(extended, out, executor=TOY, progress=False)
    assert (summary.skipped, summary.completed) == (len(first), len(extended) - len(first))


SLOW_GRID = """
import os, sys
sys.path.insert(0, sys.argv[2])
from emodebias.bench.grid import expand_grid
from emodebias.bench.runner import run_local
import json
os.environ["TOY_SLEEP"] = "0.8"
print("start", flush=True)
s = run_local(expand_grid(json.loads(sys.argv[3])), sys.argv[1], executor="{toy}", progress=False)
print("done", s.completed, flush=True)
""".replace("{toy}", TOY)


def test_a_second_grid_into_a_running_grids_folder_fails_at_once(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_GRID, str(out), str(TESTS),
                             json.dumps(TOY_GRID)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env())
    try:
        wait_for(lambda: (out / "specs.jsonl").is_file(), proc)
        with pytest.raises(FolderLockedError, match="being written by another process") as err:
            run_local(expand_grid(TOY_GRID), out, executor=TOY, progress=False)
        one_line_user_error(err.value)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert stdout.split()[-1] == str(len(expand_grid(TOY_GRID)))  # the first ran every run


def test_a_damaged_record_is_set_aside_and_redone(tmp_path, caplog):
    out = tmp_path / "out"
    specs = expand_grid(TOY_GRID)
    run_local(specs, out, executor=TOY, progress=False)
    victim = out / "runs" / specs[0].hash / "record.json"
    victim.write_text('{"hash": "trunc')
    summary = run_local(specs, out, executor=TOY, progress=False)
    assert (summary.skipped, summary.completed) == (len(specs) - 1, 1)
    assert "damaged record" in caplog.text
    assert len(list((out / "damaged").iterdir())) == 1
    assert len(list(iter_records(out))) == len(specs)  # readable again, nothing pooled twice


def test_a_done_marker_whose_store_was_deleted_is_rebuilt(tmp_path, caplog):
    import shutil

    from emodebias.bench.grid import RunSpec
    from emodebias.bench.pipeline import stage_features, stage_manifest

    cache = tmp_path / "cache"
    spec = RunSpec(corpus="synthetic", corpus_opts={"n_speakers_per_gender": 2,
                                                    "utterances_per_emotion": 1, "folds": 3})
    manifest = stage_manifest(spec, cache)
    store = stage_features(manifest, "acoustic", {}, cache)
    shutil.rmtree(store.path)
    again = stage_features(manifest, "acoustic", {}, cache)
    assert "marked done but is missing" in caplog.text
    assert store_state(again.path)[0] == "complete"
    (again.path / "meta.json").write_text("{damaged")
    assert store_state(again.path)[0] == "damaged"
    assert stage_features(manifest, "acoustic", {}, cache).failures == again.failures


def test_a_failed_test_utterance_no_longer_fails_its_fold(tmp_path):
    from emodebias.bench.pipeline import stage_manifest

    grid = {"corpus": {"name": "synthetic", "folds": 5, "n_speakers_per_gender": 5,
                       "utterances_per_emotion": 6, "seconds": [0.8, 1.2]},
            "encoder": "acoustic", "folds": [1], "train": {"epochs": 2}, "runs": ["erm"]}
    specs = expand_grid(grid)
    out = tmp_path / "out"
    manifest = stage_manifest(specs[0], out / "cache")
    df = manifest.df
    test_id = df.loc[df["split_1"] == "test", "utt_id"].iloc[0]
    train_id = df.loc[df["split_1"] == "train", "utt_id"].iloc[0]
    for u in (test_id, train_id):  # unreadable audio
        Path(df.loc[df["utt_id"] == u, "path"].iloc[0]).write_bytes(b"RIFF junk")
    summary = run_local(specs, out, progress=False)
    assert summary.ok, summary.failed
    (rec,) = list(iter_records(out))
    failed = rec["info"]["failed_features"]
    assert failed["test"] == [test_id] and failed["train"] == [train_id]
    n_test = int((df["split_1"] == "test").sum())
    assert rec["info"]["n_test"] == n_test - 1


# ----------------------------------------------------------------------- failures heal
def test_retry_failed_heals_rows_that_work_now(wavs, tmp_path):
    missing = tmp_path / "audio" / "late.wav"
    man = manifest_of([*wavs, missing])
    out = tmp_path / "st"
    store = extract(man, AcousticEncoder(), out, progress=False)
    assert list(store.failures) == ["late"]
    cached_cluster_groups(store, 2)
    again = extract(man, AcousticEncoder(), out, progress=False)  # a plain rerun keeps it
    assert list(again.failures) == ["late"]
    sf.write(missing, tone(0.7, 200), SR)
    healed = extract(man, AcousticEncoder(), out, progress=False, retry_failed=True)
    assert healed.failures == {} and healed.meta["retried"] == {"rows": 1, "healed": 1}
    assert not (out / "groups").exists()  # clusters of the old rows are gone
    assert healed.content_id != store.content_id
    fresh = extract(man, AcousticEncoder(), tmp_path / "fresh", progress=False)
    np.testing.assert_array_equal(np.asarray(healed.features), np.asarray(fresh.features))


def test_a_damaged_store_is_named_and_overwrite_repairs_it(wavs, tmp_path):
    man = manifest_of(wavs)
    out = extract(man, AcousticEncoder(), tmp_path / "st", progress=False).path
    (out / "meta.json").write_text('{"complete": tr')
    assert store_state(out)[0] == "damaged"
    for attempt in (lambda: FeatureStore.open(out),
                    lambda: extract(man, AcousticEncoder(), out, progress=False)):
        with pytest.raises(StoreError, match="damaged.*--overwrite") as err:
            attempt()
        one_line_user_error(err.value)
    repaired = extract(man, AcousticEncoder(), out, progress=False, overwrite=True)
    assert store_state(out)[0] == "complete" and not repaired.failures


def test_retry_failed_from_the_command_line(wavs, tmp_path):
    from emodebias.cli import app

    missing = tmp_path / "audio" / "late.wav"
    man_path = manifest_of([*wavs, missing]).save(tmp_path / "m.parquet")
    args = ["extract", "-m", str(man_path), "-o", str(tmp_path / "st"), "--no-progress"]
    assert "1 failed" in CliRunner().invoke(app, args).output
    sf.write(missing, tone(0.7, 200), SR)
    res = CliRunner().invoke(app, [*args, "--retry-failed"])
    assert res.exit_code == 0 and "0 failed" in res.output, res.output


def test_every_file_failed_is_an_error_not_an_empty_store(tmp_path):
    from emodebias.cli import app

    man = manifest_of([tmp_path / f"gone{i}.wav" for i in range(3)])
    with pytest.raises(StoreError, match="every one of the 3 files failed") as err:
        extract(man, AcousticEncoder(), tmp_path / "st", progress=False)
    one_line_user_error(err.value)
    with pytest.raises(StoreError, match="every one"):  # what `train` opens: no IndexError
        FeatureStore.open(tmp_path / "st")
    man_path = man.save(tmp_path / "m.parquet")
    res = CliRunner().invoke(app, ["extract", "-m", str(man_path), "-o",
                                   str(tmp_path / "cli"), "--no-progress"])
    assert res.exit_code == 2 and "every one of the 3 files failed" in res.output


# ----------------------------------------------------------------------- resume and checkpoints
def crash_after(n: int) -> AcousticEncoder:
    enc = AcousticEncoder()
    real, calls = enc.encode, {"n": 0}

    def crashing(waves):
        calls["n"] += 1
        if calls["n"] > n:
            raise RuntimeError("simulated crash")
        return real(waves)

    enc.encode = crashing
    return enc


def test_rerun_with_other_batch_seconds_keeps_finished_batches(wavs, tmp_path):
    man = manifest_of(wavs)
    out = tmp_path / "st"
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(man, crash_after(3), out, batch_seconds=1.0, progress=False,
                checkpoint_seconds=0)
    resumed = extract(man, AcousticEncoder(), out, batch_seconds=4.0, progress=False)
    assert resumed.meta["run"]["resumed_at_batch"] == 3
    # ... and it crashed again after the re-plan: still resumable, from the new plan
    fresh = extract(man, AcousticEncoder(), tmp_path / "fresh", progress=False)
    np.testing.assert_array_equal(np.asarray(resumed.features), np.asarray(fresh.features))
    out2 = tmp_path / "st2"
    with pytest.raises(RuntimeError):
        extract(man, crash_after(2), out2, batch_seconds=1.0, progress=False,
                checkpoint_seconds=0)
    with pytest.raises(RuntimeError):
        extract(man, crash_after(1), out2, batch_seconds=2.0, progress=False,
                checkpoint_seconds=0)
    twice = extract(man, AcousticEncoder(), out2, batch_seconds=3.0, progress=False)
    assert twice.meta["run"]["resumed_at_batch"] == 3
    np.testing.assert_array_equal(np.asarray(twice.features), np.asarray(fresh.features))


def test_a_real_audio_change_is_named_with_command_line_advice(wavs, tmp_path):
    man = manifest_of(wavs)
    out = tmp_path / "st"
    with pytest.raises(RuntimeError):
        extract(man, crash_after(2), out, batch_seconds=1.0, progress=False)
    sf.write(wavs[3], tone(2.5, 100), SR)  # another duration now
    with pytest.raises(StoreError) as err:
        extract(man, AcousticEncoder(), out, batch_seconds=1.0, progress=False)
    one_line_user_error(err.value)
    assert "1 file(s)" in str(err.value) and str(wavs[3]) in str(err.value)
    assert "--overwrite" in str(err.value)


def test_sigkill_early_keeps_the_first_batches(wavs, tmp_path):
    man = manifest_of(wavs)
    man_path = man.save(tmp_path / "m.parquet")
    out = tmp_path / "st"
    # a long cadence: only the always-kept first batch can have been saved before the kill
    proc = start_extract(man_path, out, sleep=0.4, checkpoint=1e9)
    try:
        wait_for(lambda: meta_batches(out) >= 1, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert meta_batches(out) == 1
    assert not json.loads((out / "meta.json").read_text())["complete"]
    resumed = extract(man, AcousticEncoder(), out, batch_seconds=1.0, progress=False)
    assert resumed.meta["run"]["resumed_at_batch"] == 1
    reference = extract(man, AcousticEncoder(), tmp_path / "ref", batch_seconds=1.0,
                        progress=False)
    same_store(out, reference.path)


def test_checkpoint_seconds_option(wavs, tmp_path):
    from emodebias.cli import app

    man_path = manifest_of(wavs).save(tmp_path / "m.parquet")
    base = ["extract", "-m", str(man_path), "-o", str(tmp_path / "st"), "--no-progress"]
    assert CliRunner().invoke(app, [*base, "--checkpoint-seconds", "-1"]).exit_code == 2
    res = CliRunner().invoke(app, [*base, "--checkpoint-seconds", "0.5"])
    assert res.exit_code == 0, res.output
    with pytest.raises(StoreError, match="checkpoint_seconds"):
        extract(manifest_of(wavs), AcousticEncoder(), tmp_path / "x", checkpoint_seconds=-1)


# ----------------------------------------------------------------------- property-based
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=True)
    | st.text(max_size=6) | st.sampled_from(["1:20", "0:1", "1:inf", "full", "2:1", "1:0", "a"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6)
IDS = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]) | st.integers(0, 3), max_size=5)
SPLIT_KEYS = ["fold", "train", "dev", "test", "ratio", "direction", "seed", "majority_gender",
              "info", "manifest_hash", "bogus"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(SPLIT_KEYS), IDS | JSONISH, max_size=8)
       | st.fixed_dictionaries({"fold": st.just("1"), "train": IDS, "dev": IDS, "test": IDS})
       | JSONISH)
def test_random_split_files_load_or_fail_with_one_line(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("split") / "split.json"
    path.write_text(json.dumps(raw))
    try:
        split = Split.load(path)
    except SplitError as exc:
        one_line_user_error(exc)
        return
    parts = [split.train, split.dev, split.test]
    assert split.train and split.test
    assert all(isinstance(u, str) for p in parts for u in p)
    flat = [u for p in parts for u in p]
    assert len(flat) == len(set(flat))  # no repeats, no overlap


GRID_KEYS = ["ratios", "folds", "seeds", "split_seed", "directions", "encoder", "train",
             "evaluation", "variables", "corpus", "runs", "name", "pseudo_model"]
TRAIN_VALUES = st.dictionaries(st.sampled_from(["epochs", "batch_size", "lr", "weight_decay",
                                                "select", "max_stack"]), JSONISH,
                               max_size=3)
RUN_ENTRIES = st.lists(st.sampled_from(["erm", "rw"]) | st.fixed_dictionaries(
    {"method": st.sampled_from(["gdro", "rw", "adv"]),
     "groups": st.sampled_from(["truth", "cluster:k=2", "none"]) | JSONISH,
     "hparams": st.dictionaries(st.sampled_from(["eta_q", "adj", "lambda_adv"]), JSONISH,
                                max_size=2)}) | JSONISH, max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(GRID_KEYS), JSONISH, max_size=3), TRAIN_VALUES,
       RUN_ENTRIES)
def test_random_grid_values_expand_or_fail_with_one_line(override, train, runs):
    grid = {"corpus": "synthetic", "folds": [1], "cluster_encoder": "acoustic",
            "runs": runs or ["erm"], "train": train, **override}
    try:
        specs = expand_grid(yaml.safe_load(yaml.safe_dump(grid)))
    except GridError as exc:
        one_line_user_error(exc)
        return
    for s in specs:  # what was accepted can run: finite ratio >= 1, positive epochs
        assert s.ratio is None or (np.isfinite(s.ratio) and s.ratio >= 1)
        assert s.train.get("epochs", 1) >= 1 and s.train.get("batch_size", 1) >= 1
        assert isinstance(s.seed, int) and not isinstance(s.seed, bool)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(GRID_KEYS), JSONISH, max_size=3), TRAIN_VALUES)
def test_random_grid_files_through_the_bench_command(tmp_path, override, train):
    from emodebias.cli import app

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"corpus": "synthetic", "folds": [1], "runs": ["erm"],
                                    "train": train, **override}))
    res = CliRunner().invoke(app, ["bench", str(path), "--dry-run", "--out",
                                   str(tmp_path / "out")])
    assert res.exit_code in (0, 2), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    if res.exit_code == 2:
        assert "error" in res.output.lower() and "Traceback" not in res.output


def test_manifest_hash_follows_which_labels_belong_to_which_class() -> None:
    """Swapping two classes' label columns changes the labels, so it must change the hash."""
    df = pd.DataFrame({"utt_id": ["a", "b"], "path": ["a.wav", "b.wav"], "speaker": ["s", "t"],
                       "soft_x": [0.9, 0.2], "soft_y": [0.1, 0.8]})
    swapped = df.rename(columns={"soft_x": "soft_y", "soft_y": "soft_x"})
    one = Manifest(df, ["x", "y"], corpus="t")
    two = Manifest(swapped, ["x", "y"], corpus="t")
    assert one.content_hash() != two.content_hash()
    reordered = Manifest(df[["utt_id", "path", "speaker", "soft_y", "soft_x"]], ["x", "y"],
                         corpus="t")
    assert reordered.content_hash() == one.content_hash()  # column order alone is no change


CELLS = st.one_of(st.none(), st.text(max_size=6), st.integers(-3, 12),
                  st.floats(allow_nan=True, allow_infinity=True), st.booleans())
TABLE_COLUMNS = ["path", "speaker", "emotion", "gender", "utt_id", "soft_a", "soft_b", "split"]


def _command_result(res) -> None:
    """Exit 0, or exit 2 with one `error:` line; never a traceback or another exception."""
    assert res.exit_code in (0, 2), (res.exit_code, res.output, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    if res.exit_code == 2:
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in res.output, res.output


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.fixed_dictionaries({}, optional={c: CELLS for c in TABLE_COLUMNS}),
                max_size=6),
       st.lists(st.sampled_from(["label=emotion", "soft=soft_a,soft_b", "utt_id=path",
                                 "split=split", "speaker=gender", "label=nope", "bogus=1",
                                 "require_audio=maybe"]), max_size=3))
def test_random_tables_through_prepare(tmp_path, rows, opts):
    """Malformed own-corpus tables: a manifest that validates, or one line and exit 2."""
    import tempfile

    from emodebias.cli import app

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    pd.DataFrame(rows).to_csv(folder / "t.csv", index=False)
    args = ["prepare", "--corpus", "table", "--root", str(folder / "t.csv"), "--out",
            str(folder / "o"), "--no-require-audio"]
    res = CliRunner().invoke(app, [*args, *[a for o in opts for a in ("--opt", o)]])
    _command_result(res)
    if res.exit_code == 0:
        m = Manifest.load(folder / "o")
        assert len(m) >= 1 and len(set(m.utt_ids)) == len(m)
        assert np.allclose(m.soft_labels().sum(axis=1), 1.0, atol=1e-3)


NUMBERS = st.sampled_from(["0", "-1", "-3", "1e9", "nan", "inf", "", "x", "1.5", "2"])


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([
    ("train", ["--epochs", "--batch-size", "--lr", "--n-boot", "--seed"]),
    ("extract", ["--batch-seconds", "--max-seconds", "--workers", "--checkpoint-seconds"]),
    ("groups", ["--k", "--min-size", "--seed"]),
    ("split", ["--ratio", "--seed"]),
    ("evaluate", ["--n-boot", "--n-perm", "--min-speakers", "--threshold"]),
    ("bench", ["--workers", "--max-batch"]),
]), st.data())
def test_random_option_values_give_a_result_or_one_line(tmp_path, command, data):
    """Bad numbers for each command's numeric options, on inputs that do not exist: a usage
    error (exit 2, one line), never a traceback."""
    from emodebias.cli import app

    name, options = command
    option = data.draw(st.sampled_from(options))
    value = data.draw(NUMBERS)
    base = {"train": ["--features", str(tmp_path / "f"), "--manifest", str(tmp_path / "m"),
                      "--split", "1", "--out", str(tmp_path / "o")],
            "extract": ["--manifest", str(tmp_path / "m"), "--encoder", "acoustic",
                        "--out", str(tmp_path / "o")],
            "groups": ["--manifest", str(tmp_path / "m"), "--source", "truth",
                       "--out", str(tmp_path / "o")],
            "split": ["--manifest", str(tmp_path / "m"), "--fold", "1",
                      "--out", str(tmp_path / "o")],
            "evaluate": ["--predictions", str(tmp_path / "p.csv")],
            "bench": ["demo-quick", "--dry-run", "--out", str(tmp_path / "o")]}[name]
    res = CliRunner().invoke(app, [name, *base, option, value])
    _command_result(res)
    assert res.exit_code == 2 or name == "bench"  # every input here is missing or bad


def test_a_hyperparameter_named_twice_is_refused() -> None:
    """1 and "1" are one name once read as text: refused, not one of them silently dropped."""
    grid = {"corpus": "synthetic", "folds": [1], "runs": [
        {"method": "gdro", "hparams": {1: [0.1], "1": [0.2]}}]}
    with pytest.raises(GridError, match="repeated name"):
        expand_grid(grid)
