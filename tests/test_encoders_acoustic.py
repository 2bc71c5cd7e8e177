"""Acoustic functionals checked against librosa / scipy and against signals with known pitch."""

from __future__ import annotations

import numpy as np
import pytest

from emodebias.features.encoders import get_encoder
from emodebias.features.encoders.acoustic import (
    AcousticEncoder,
    deltas,
    estimate_f0,
    mel_filterbank,
)

librosa = pytest.importorskip("librosa")
SR = 16_000


def harmonic(f0: float, seconds: float = 1.0, n_harm: int = 5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, n_harm + 1))
            ).astype(np.float32)


def librosa_log_mel(w: np.ndarray) -> np.ndarray:
    """Same frames as ours: librosa centres the 400-sample window in 512, so shift by 56."""
    y = np.concatenate([np.zeros(56), w.astype(np.float64)])
    s = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=512, win_length=400, hop_length=160,
                                       window="hann", center=False, power=2.0, n_mels=40,
                                       htk=True, norm=None, fmin=20.0, fmax=8000.0)
    return np.log(s.T + 1e-8)


def test_mel_filterbank_matches_librosa_htk():
    ours = mel_filterbank(SR, 512, 40, 20.0, 8000.0)
    ref = librosa.filters.mel(sr=SR, n_fft=512, n_mels=40, fmin=20.0, fmax=8000.0, htk=True,
                              norm=None)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_log_mel_and_statistics_match_librosa():
    rng = np.random.default_rng(0)
    w = (0.1 * rng.standard_normal(SR) + harmonic(140.0)).astype(np.float32)
    enc = AcousticEncoder()
    ref = librosa_log_mel(w)
    np.testing.assert_allclose(enc.log_mel(w), ref, atol=1e-4)
    feats = enc.encode([w])[0, 0]
    names = enc.feature_names
    assert len(names) == enc.dim == feats.shape[0] == 40 * 4 + 20 * 4 + 5 + 6
    col = {n: i for i, n in enumerate(names)}
    np.testing.assert_allclose(feats[[col[f"logmel{i}_mean"] for i in range(40)]],
                               ref.mean(0), atol=1e-4)
    np.testing.assert_allclose(feats[[col[f"logmel{i}_std"] for i in range(40)]],
                               ref.std(0), atol=1e-4)
    mfcc = librosa.feature.mfcc(S=ref.T, n_mfcc=20, dct_type=2, norm="ortho").T
    np.testing.assert_allclose(feats[[col[f"mfcc{i}_mean"] for i in range(20)]],
                               mfcc.mean(0), atol=1e-3)
    d = librosa.feature.delta(mfcc, width=5, order=1, axis=0, mode="nearest")
    np.testing.assert_allclose(feats[[col[f"mfcc{i}_dstd"] for i in range(20)]], d.std(0),
                               atol=1e-3)
    np.testing.assert_allclose(feats[[col[f"mfcc{i}_dabs"] for i in range(20)]],
                               np.abs(d).mean(0), atol=1e-3)


def test_deltas_equal_htk_regression_formula():
    x = np.random.default_rng(1).standard_normal((30, 3))
    ref = librosa.feature.delta(x, width=5, order=1, axis=0, mode="nearest")
    np.testing.assert_allclose(deltas(x), ref, atol=1e-10)
    t = 7  # interior frame, by hand: sum_k k (x[t+k] - x[t-k]) / (2 * (1 + 4))
    hand = (1 * (x[t + 1] - x[t - 1]) + 2 * (x[t + 2] - x[t - 2])) / 10
    np.testing.assert_allclose(deltas(x)[t], hand)


@pytest.mark.parametrize("f0", [85.0, 150.0, 220.0, 350.0])
def test_f0_of_harmonic_tones(f0):
    est = estimate_f0(harmonic(f0))
    voiced = est[est > 0]
    assert len(voiced) / len(est) > 0.9
    assert abs(np.median(voiced) - f0) / f0 < 0.02


def test_f0_noise_and_silence_are_unvoiced():
    noise = np.random.default_rng(2).standard_normal(SR).astype(np.float32) * 0.1
    assert (estimate_f0(noise) > 0).mean() < 0.1
    silent = np.zeros(SR, np.float32)
    assert (estimate_f0(silent) == 0).all()
    feats = AcousticEncoder().encode([silent, noise])
    assert np.isfinite(feats).all()
    names = AcousticEncoder().feature_names
    assert feats[0, 0, names.index("f0_voiced_frac")] == 0.0


def test_f0_statistics_separate_low_and_high_voices():
    enc = AcousticEncoder()
    names = enc.feature_names
    low, high = enc.encode([harmonic(110.0), harmonic(220.0)])[:, 0, names.index("log2f0_p50")]
    assert abs((high - low) - 1.0) < 0.03  # one octave apart


def test_batch_equals_one_by_one_and_is_deterministic():
    rng = np.random.default_rng(3)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (1600, 5000, 16000, 399)]
    enc = get_encoder("acoustic")
    together = enc.encode(waves)
    alone = np.concatenate([enc.encode([w]) for w in waves])
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-6)
    assert np.array_equal(together, enc.encode(waves))
    assert together.shape == (4, 1, enc.dim) and together.dtype == np.float32


def test_config_and_validation():
    assert AcousticEncoder(n_mels=32).config != AcousticEncoder().config
    assert AcousticEncoder(f0=False).dim == AcousticEncoder().dim - 6
    with pytest.raises(ValueError, match="n_mfcc"):
        AcousticEncoder(n_mels=10, n_mfcc=20)
    with pytest.raises(ValueError, match="1-D"):
        AcousticEncoder().encode([np.zeros((2, 100), np.float32)])


def test_egemaps_optional_extra_agrees_on_pitch():
    pytest.importorskip("opensmile")
    enc = get_encoder("egemaps")
    assert (enc.n_layers, enc.dim) == (1, 88) and "research" in enc.info["licence"]
    feats = enc.encode([harmonic(220.0), harmonic(110.0)])
    assert feats.shape == (2, 1, 88) and np.isfinite(feats).all()
    col = enc.info["feature_names"].index("F0semitoneFrom27.5Hz_sma3nz_amean")
    # 220 Hz is 36 semitones above 27.5 Hz, 110 Hz is 24
    np.testing.assert_allclose(feats[:, 0, col], [36.0, 24.0], atol=0.5)
