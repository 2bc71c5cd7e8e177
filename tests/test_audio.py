"""audio.load_audio: every bad input gets a clear AudioError naming the file; good input is
mono float32 at 16 kHz with its content (channel mean, sine frequency) preserved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emodebias.data.audio import AudioError, audio_duration, load_audio


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wav: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / sr)[spec.argmax()])


def test_mono_16k_roundtrip(tmp_path: Path) -> None:
    x = _sine(440, 16000, 0.5)
    p = tmp_path / "a.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    y = load_audio(p)
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_array_equal(y, x)
    assert audio_duration(p) == pytest.approx(0.5)


def test_stereo_is_channel_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    st = rng.uniform(-0.5, 0.5, size=(8000, 2)).astype(np.float32)
    p = tmp_path / "st.wav"
    sf.write(p, st, 16000, subtype="FLOAT")
    y = load_audio(p)
    np.testing.assert_allclose(y, (st[:, 0] + st[:, 1]) / 2, atol=1e-7)


@pytest.mark.parametrize("sr", [8000, 22050, 48000])
def test_resampled_keeps_length_and_frequency(tmp_path: Path, sr: int) -> None:
    p = tmp_path / f"s{sr}.wav"
    sf.write(p, _sine(440, sr, 1.0), sr, subtype="PCM_16")
    y = load_audio(p)
    assert abs(len(y) - 16000) <= 1
    assert _peak_hz(y, 16000) == pytest.approx(440, abs=1.5)
    # amplitude survives resampling (PCM_16 quantisation + filter ripple are tiny)
    assert np.abs(y[1000:-1000]).max() == pytest.approx(0.5, abs=0.01)


def test_crop_to_max_seconds(tmp_path: Path) -> None:
    p = tmp_path / "long.wav"
    sf.write(p, _sine(200, 48000, 12.0), 48000, subtype="PCM_16")
    y = load_audio(p, max_seconds=10)
    assert len(y) == 160000
    assert len(load_audio(p)) == 192000  # no crop by default


def test_missing_file_named(tmp_path: Path) -> None:
    p = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match=r"nope\.wav: file not found"):
        load_audio(p)
    with pytest.raises(AudioError, match="nope.wav"):
        audio_duration(p)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.wav"
    sf.write(p, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match=r"empty\.wav: empty audio"):
        load_audio(p)


def test_zero_byte_and_corrupt_bytes(tmp_path: Path) -> None:
    z = tmp_path / "zero.wav"
    z.write_bytes(b"")
    c = tmp_path / "corrupt.wav"
    c.write_bytes(b"RIFF\x00\x00junkjunk" + bytes(range(256)) * 4)
    for p in (z, c):
        with pytest.raises(AudioError, match=rf"{p.name}: unreadable audio"):
            load_audio(p)


def test_nan_samples(tmp_path: Path) -> None:
    x = _sine(440, 16000, 0.5)
    x[100] = np.nan
    x[200] = np.inf
    p = tmp_path / "nan.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: audio contains 2 NaN or Inf"):
        load_audio(p)


def test_too_short(tmp_path: Path) -> None:
    p = tmp_path / "short.wav"
    sf.write(p, _sine(440, 16000, 0.05), 16000)
    with pytest.raises(AudioError, match=r"short\.wav: too short \(0\.050 s"):
        load_audio(p)
    # exactly the minimum is fine; a crop below the minimum is not
    ok = tmp_path / "ok.wav"
    sf.write(ok, _sine(440, 8000, 0.1), 8000)
    assert len(load_audio(ok)) == 1600
    with pytest.raises(AudioError, match="too short"):
        load_audio(ok, max_seconds=0.05)


def test_bad_arguments(tmp_path: Path) -> None:
    p = tmp_path / "a.wav"
    sf.write(p, _sine(440, 16000, 0.5), 16000)
    with pytest.raises(ValueError, match="target_sr"):
        load_audio(p, target_sr=0)
    with pytest.raises(ValueError, match="max_seconds"):
        load_audio(p, max_seconds=-1)


def test_every_crop_default_is_the_one_constant() -> None:
    """Extraction, grid stores, run folders, pseudo-groups and audits keep the same first
    DEFAULT_MAX_SECONDS of a file unless told otherwise; naming it costs no audio imports."""
    import inspect
    import os
    import subprocess
    import sys

    from emodebias import api, runs
    from emodebias.auditing import models
    from emodebias.bench import pipeline
    from emodebias.cli import features as cli_features
    from emodebias.data.audio import DEFAULT_MAX_SECONDS
    from emodebias.features import store
    from emodebias.groups import pseudo

    def default(fn, name: str = "max_seconds"):
        d = inspect.signature(fn).parameters[name].default
        return getattr(d, "default", d)  # a typer Option holds its default

    assert DEFAULT_MAX_SECONDS == 10.0
    for fn in (store.store_dir, store.extract, api.extract, pseudo.hf_gender_groups,
               cli_features.extract):
        assert default(fn) == DEFAULT_MAX_SECONDS, fn
    assert runs.DEFAULT_MAX_SECONDS is models.DEFAULT_MAX_SECONDS is DEFAULT_MAX_SECONDS
    assert pipeline.MAX_SECONDS is DEFAULT_MAX_SECONDS
    code = ("import sys; from emodebias.data.audio import DEFAULT_MAX_SECONDS; "
            "print('soundfile' in sys.modules or 'soxr' in sys.modules)")
    src = str(Path(inspect.getfile(api)).parents[1])  # wherever this emodebias comes from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == "False"
