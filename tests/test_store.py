"""FeatureStore + extract: bad audio, row order, staleness, resume (exception and kill -9), real
EmoDB audio, and the `emodebias extract` command."""

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
import soxr
import torch
from typer.testing import CliRunner

from emodebias.data.audio import AudioError, load_audio
from emodebias.data.manifest import Manifest
from emodebias.features.encoders import get_encoder
from emodebias.features.encoders.acoustic import AcousticEncoder
from emodebias.features.store import FeatureStore, StoreError, extract, plan_batches, store_dir

SR = 16_000


def tone(seconds: float, f0: float, sr: int = SR, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (amp * np.sin(2 * np.pi * f0 * t) + 0.01 * noise).astype(np.float32)


def make_manifest(rows: list[tuple[str, Path]]) -> Manifest:
    df = pd.DataFrame({"utt_id": [u for u, _ in rows], "path": [str(p) for _, p in rows],
                       "speaker": ["s1"] * len(rows)})
    return Manifest(df, classes=["neu", "ang"], corpus="test")


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("audio")
    for i in range(10):  # ordinary files, 0.3 - 1.2 s
        sf.write(d / f"ok{i}.wav", tone(0.3 + 0.1 * i, 100 + 20 * i, seed=i), SR)
    sf.write(d / "empty.wav", np.zeros(0, np.float32), SR)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" + os.urandom(300))
    left, right = tone(0.8, 150, 44_100), tone(0.8, 300, 44_100, seed=9)
    sf.write(d / "stereo44k.wav", np.stack([left, right], axis=1), 44_100)
    sf.write(d / "rate8k.wav", tone(1.0, 180, 8_000), 8_000)
    sf.write(d / "rate48k.wav", tone(1.0, 210, 48_000), 48_000)
    sf.write(d / "short.wav", tone(0.05, 200), SR)
    # 25 s: a quiet 120 Hz first 10 s, then loud 300 Hz: the crop must keep only the first part
    sf.write(d / "long.wav", np.concatenate([tone(10.0, 120, amp=0.05), tone(15.0, 300)]), SR)
    return d


BAD = {"empty", "corrupt", "short", "missing"}
ODD = ["stereo44k", "rate8k", "rate48k", "long"]


@pytest.fixture(scope="module")
def manifest(audio_dir) -> Manifest:
    names = [f"ok{i}" for i in range(10)] + ODD + sorted(BAD)
    return make_manifest([(n, audio_dir / f"{n}.wav") for n in names])


@pytest.fixture(scope="module")
def store(manifest, tmp_path_factory) -> FeatureStore:
    return extract(manifest, AcousticEncoder(), tmp_path_factory.mktemp("s") / "st",
                   batch_seconds=3.0, progress=False)


def read_ref(path: Path) -> np.ndarray:
    """Independent mono/resample/crop: soundfile + soxr, not emodebias.data.audio."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)[: int(10 * sr)]
    return soxr.resample(mono, sr, SR).astype(np.float32) if sr != SR else mono


def test_bad_audio_is_recorded_never_dropped(store, manifest, audio_dir):
    n = len(manifest)
    assert store.features.shape == (n, 1, AcousticEncoder().dim)
    assert store.features.dtype == np.float16
    assert store.utt_ids == manifest.utt_ids
    assert set(store.failures) == BAD
    for utt, reason in store.failures.items():
        assert f"{utt}.wav" in reason
    assert "too short" in store.failures["short"] and "empty" in store.failures["empty"]
    valid = store.valid_mask
    assert valid.sum() == n - len(BAD)
    rows = store.rows(sorted(BAD))
    assert not valid[rows].any() and np.isnan(store.features[rows]).all()
    assert np.isfinite(store.features[valid]).all()


def test_each_row_holds_its_own_file(store, audio_dir):
    enc = AcousticEncoder()
    for utt in [f"ok{i}" for i in range(10)] + ODD:
        ref = enc.encode([read_ref(audio_dir / f"{utt}.wav")])[0]
        got = store.features[store.rows([utt])[0]].astype(np.float32)
        np.testing.assert_allclose(got, ref.astype(np.float16).astype(np.float32), rtol=2e-3,
                                   atol=2e-3, err_msg=utt)
    # the crop really happened: the full 25 s file gives other features
    full, _ = sf.read(str(audio_dir / "long.wav"), dtype="float32")
    got = store.features[store.rows(["long"])[0]].astype(np.float32)
    assert np.abs(enc.encode([full])[0] - got).max() > 0.5


def test_rows_lookup(store):
    np.testing.assert_array_equal(store.rows(["ok3", "ok0"]), [3, 0])
    with pytest.raises(KeyError, match="nope"):
        store.rows(["ok1", "nope"])


def test_fail_on_bad_audio_raises_with_the_file(manifest, tmp_path):
    with pytest.raises(AudioError, match=r"(corrupt|empty|missing|short)\.wav"):
        extract(manifest, AcousticEncoder(), tmp_path / "st", progress=False, skip_bad=False)


def test_plan_batches_by_hand():
    durations = np.array([1.0, 5.0, 2.0, np.nan, 5.0, 3.0])
    assert plan_batches(durations, batch_seconds=10.0) == [[1, 4], [0, 2, 5]]
    assert plan_batches(durations, batch_seconds=10.0, max_batch=2) == [[1, 4], [2, 5], [0]]
    assert plan_batches(durations, batch_seconds=0.5) == [[1], [4], [5], [2], [0]]


def test_never_stale(manifest, store, tmp_path, audio_dir):
    # same key: returned as is, the encoder is not even called
    enc = AcousticEncoder()
    enc.encode = None  # would fail if called
    again = extract(manifest, enc, store.path, progress=False)
    assert again.key == store.key
    # other encoder config into the same directory: refused, or replaced with overwrite=True
    with pytest.raises(StoreError, match="already holds"):
        extract(manifest, AcousticEncoder(n_mels=32), store.path, progress=False)
    with pytest.raises(StoreError, match="not acoustic"):
        FeatureStore.open(store.path, encoder=AcousticEncoder(n_mels=32))
    with pytest.raises(StoreError, match="max_seconds|not acoustic"):
        store.check(encoder=AcousticEncoder(), max_seconds=5.0)
    other = make_manifest([("ok0", audio_dir / "ok1.wav")])  # same id, other file
    with pytest.raises(StoreError, match="manifest"):
        FeatureStore.open(store.path, manifest=other)
    FeatureStore.open(store.path, manifest=manifest, encoder=AcousticEncoder())  # fine
    # keyed cache directories differ whenever the numbers would
    root = tmp_path / "cache"
    dirs = {store_dir(root, manifest, AcousticEncoder()),
            store_dir(root, manifest, AcousticEncoder(n_mels=32)),
            store_dir(root, other, AcousticEncoder()),
            store_dir(root, manifest, AcousticEncoder(), max_seconds=5.0)}
    assert len(dirs) == 4
    small = make_manifest([("ok0", audio_dir / "ok0.wav"), ("ok1", audio_dir / "ok1.wav")])
    out = tmp_path / "small"
    extract(small, AcousticEncoder(), out, progress=False)
    replaced = extract(small, AcousticEncoder(n_mels=32), out, progress=False, overwrite=True)
    assert replaced.meta["config"]["n_mels"] == 32
    assert replaced.dim == AcousticEncoder(n_mels=32).dim


def volatile_free(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k != "run"}


def assert_same_store(a: Path, b: Path) -> None:
    assert (a / "features.npy").read_bytes() == (b / "features.npy").read_bytes()
    assert volatile_free(json.loads((a / "meta.json").read_text())) == volatile_free(
        json.loads((b / "meta.json").read_text()))


@pytest.mark.parametrize("checkpoint_seconds", [0.0, 1e9])
def test_resume_after_crash_equals_uninterrupted(manifest, store, tmp_path, checkpoint_seconds):
    enc = AcousticEncoder()
    real_encode, calls = enc.encode, {"n": 0}

    def crashing(waves):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real_encode(waves)

    enc.encode = crashing
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(manifest, enc, out, batch_seconds=3.0, progress=False,
                checkpoint_seconds=checkpoint_seconds)
    meta = json.loads((out / "meta.json").read_text())
    assert not meta["complete"] and meta["batches_done"] == 2 < meta["n_batches"]
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore.open(out)
    resumed = extract(manifest, AcousticEncoder(), out, batch_seconds=3.0, progress=False)
    assert resumed.meta["run"]["resumed_at_batch"] == 2
    assert_same_store(out, store.path)


KILL_SCRIPT = """
import sys, time
from emodebias.features.encoders.acoustic import AcousticEncoder
from emodebias.data.manifest import Manifest
from emodebias.features.store import extract

class Slow(AcousticEncoder):
    def encode(self, waves):
        time.sleep(0.25)
        return super().encode(waves)

extract(Manifest.load(sys.argv[1]), Slow(), sys.argv[2], batch_seconds=1.5, progress=False,
        checkpoint_seconds=0.0)
"""


def test_resume_after_kill_9_equals_uninterrupted(manifest, tmp_path):
    man_path = manifest.save(tmp_path / "manifest.parquet")
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(man_path), str(out)],
                            stderr=subprocess.PIPE)
    meta_file, deadline = out / "meta.json", time.time() + 90
    try:
        while time.time() < deadline and proc.poll() is None:
            if meta_file.is_file():
                try:
                    if json.loads(meta_file.read_text())["batches_done"] >= 3:
                        break
                except (json.JSONDecodeError, KeyError):
                    pass
            time.sleep(0.02)
        assert proc.poll() is None, f"finished before the kill: {proc.stderr.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    meta = json.loads(meta_file.read_text())
    assert not meta["complete"] and 3 <= meta["batches_done"] < meta["n_batches"]
    extract(manifest, AcousticEncoder(), out, batch_seconds=1.5, progress=False)
    reference = extract(manifest, AcousticEncoder(), tmp_path / "reference", batch_seconds=1.5,
                        progress=False)
    assert_same_store(out, reference.path)


def test_ssl_store_matches_per_utterance_encoding(manifest, tmp_path):
    from conftest import tiny_wavlm_config
    from transformers import WavLMModel

    torch.manual_seed(0)
    cfg = tiny_wavlm_config(2)
    WavLMModel(cfg).save_pretrained(tmp_path / "tiny")
    small = Manifest(manifest.df.iloc[[0, 5, 9, 10, 12, 16]], manifest.classes)
    enc = get_encoder(tmp_path / "tiny", layers="0,2")
    big = extract(small, enc, tmp_path / "big", batch_seconds=100.0, progress=False)
    one = extract(small, enc, tmp_path / "one", batch_seconds=0.1, progress=False)
    assert big.meta["n_batches"] == 1 and one.meta["n_batches"] == len(small) - 1
    assert big.features.shape == (6, 2, 32) and set(big.failures) == {"missing"}
    for utt in small.utt_ids:
        if utt in big.failures:
            continue
        path = small.df.loc[small.df.utt_id == utt, "path"].iloc[0]
        ref = enc.encode([load_audio(path, max_seconds=10)])[0]
        for st in (big, one):
            np.testing.assert_allclose(st.features[st.rows([utt])[0]].astype(np.float32), ref,
                                       rtol=2e-3, atol=2e-3, err_msg=utt)


# --------------------------------------------------------------------------- real audio
EMODB_FEMALE = {"08", "09", "13", "14", "16"}


@pytest.fixture(scope="module")
def emodb_manifest(shared_data) -> Manifest:
    files = sorted((shared_data / "emodb" / "wav").glob("*.wav"))
    assert len(files) == 535
    df = pd.DataFrame({"utt_id": [f.stem for f in files], "path": [str(f) for f in files],
                       "speaker": [f.stem[:2] for f in files]})
    return Manifest(df, classes=list("WLEAFTN"), corpus="emodb")


def test_emodb_acoustic_store(emodb_manifest, tmp_path):
    st = extract(emodb_manifest, AcousticEncoder(), tmp_path / "emodb", progress=False)
    assert st.features.shape == (535, 1, AcousticEncoder().dim) and not st.failures
    feats = np.asarray(st.features, dtype=np.float32)[:, 0]
    assert np.isfinite(feats).all()
    assert st.meta["audio_seconds"] == pytest.approx(535 * 2.0, rel=1e-3)  # every file is 2.0 s
    # real signal: median F0 of the female speakers is higher than of the male speakers
    p50 = feats[:, AcousticEncoder().feature_names.index("log2f0_p50")]
    female = np.array([u[:2] in EMODB_FEMALE for u in st.utt_ids])
    assert 2 ** np.median(p50[female]) > 1.4 * 2 ** np.median(p50[~female])
    # deterministic: a second extraction (other batching) of a subset gives the same rows
    sub = Manifest(emodb_manifest.df.iloc[::9], emodb_manifest.classes)
    again = extract(sub, AcousticEncoder(), tmp_path / "again", batch_seconds=7.0,
                    progress=False)
    np.testing.assert_array_equal(np.asarray(again.features),
                                  np.asarray(st.features)[st.rows(sub.utt_ids)])


def threads_seen(encoder, monkeypatch) -> list[tuple[int, set[int]]]:
    """Record (torch threads, BLAS threads) at every `encoder.encode` call."""
    from threadpoolctl import threadpool_info

    seen: list[tuple[int, set[int]]] = []
    real = encoder.encode

    def encode(waves):
        blas = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
        seen.append((torch.get_num_threads(), blas))
        return real(waves)

    monkeypatch.setattr(encoder, "encode", encode)
    return seen


def test_emodb_resemblyzer_subset(emodb_manifest, tmp_path, monkeypatch):
    """Real speech; Resemblyzer runs on one torch and one BLAS thread whatever the defaults
    (its idle threads spinning next to the readers made extraction many times slower)."""
    pytest.importorskip("resemblyzer")
    sub = Manifest(emodb_manifest.df.iloc[::50], emodb_manifest.classes)
    enc = get_encoder("resemblyzer")
    seen = threads_seen(enc, monkeypatch)
    before = torch.get_num_threads()
    torch.set_num_threads(4)  # as on a many-core machine
    try:
        st = extract(sub, enc, tmp_path / "rz", progress=False, num_workers=2)
        assert torch.get_num_threads() == 4  # restored afterwards
    finally:
        torch.set_num_threads(before)
    assert seen and all(t == (1, {1}) for t in seen), seen
    assert st.features.shape == (len(sub), 1, 256) and not st.failures
    feats = np.asarray(st.features, dtype=np.float32)
    assert np.isfinite(feats).all()
    np.testing.assert_allclose(np.linalg.norm(feats[:, 0], axis=1), 1.0, atol=2e-3)


class Batched(AcousticEncoder):
    """An acoustic encoder that claims to use intra-op threads (as the SSL models do)."""

    multithreaded = True


@pytest.mark.parametrize("omp, alone, with_readers", [(None, 8, 7), ("3", 3, 2), ("1", 1, 1)])
def test_multithreaded_encoders_leave_a_core_to_the_readers(tmp_path, monkeypatch, omp, alone,
                                                             with_readers):
    import emodebias.features.encoders.base as base

    monkeypatch.setattr(base.os, "sched_getaffinity", lambda pid: set(range(8)))
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    enc = Batched()
    assert (enc.cpu_threads(0), enc.cpu_threads(2)) == (alone, with_readers)
    assert AcousticEncoder().cpu_threads(2) == 1
    seen = threads_seen(enc, monkeypatch)
    sf.write(tmp_path / "a.wav", tone(0.5, 150), SR)
    extract(make_manifest([("a", tmp_path / "a.wav")]), enc, tmp_path / "s", progress=False,
            num_workers=2)
    assert seen == [(with_readers, {1})]


# --------------------------------------------------------------------------- CLI
def test_cli_extract(manifest, tmp_path):
    from emodebias.cli import app

    man_path = manifest.save(tmp_path / "m.parquet")
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(app, ["extract", "--manifest", str(man_path), "--encoder", "acoustic",
                              "--out", str(out), "--no-progress", "--batch-seconds", "5"])
    assert res.exit_code == 0, res.output
    st = FeatureStore.open(out, manifest=manifest, encoder=AcousticEncoder())
    assert set(st.failures) == BAD
    assert "4 failed" in res.output and "corrupt" in res.output
    res = runner.invoke(app, ["extract", "-m", str(man_path), "-e", "acoustic", "-o", str(out),
                              "--max-seconds", "5", "--no-progress"])
    assert res.exit_code == 2 and "already holds" in res.output
    res = runner.invoke(app, ["extract", "-m", str(man_path), "-e", "acoustic", "-o", str(out),
                              "--layers", "0,1", "--no-progress"])
    assert res.exit_code == 2 and "SSL" in res.output
