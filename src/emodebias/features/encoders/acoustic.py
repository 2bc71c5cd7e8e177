"""Dependency-light acoustic functionals: log-mel, MFCC, energy and F0 statistics (no model).

The default encoder of the built-in demo: numpy + scipy only, deterministic, a few milliseconds per
utterance on one CPU core. Output is one "layer" (L = 1) holding every statistic concatenated (the
layer-weighted head needs equal D across layers, so feature families are not split into layers);
`.info["feature_names"]` names each of the D columns.

Frames: 25 ms Hann windows every 10 ms (n_fft 512, no centre padding), power spectrum, HTK-mel
triangular filters (no area normalisation, like `librosa.filters.mel(htk=True, norm=None)`),
natural log with a 1e-8 floor; MFCC = orthonormal DCT-II of the log-mel, first `n_mfcc`.
Per band / coefficient: mean, std, mean |delta| and std of delta (delta = the standard regression
over +-2 frames; the mean of a delta is ~0 and carries nothing, so its mean magnitude is used).
Energy: log frame RMS -> mean, std, 10/50/90th percentiles.
F0 (at 8 kHz): normalised autocorrelation over 40 ms Hann frames divided by the window's own
autocorrelation (Boersma 1993), search 50-500 Hz, shortest lag within 90% of the best peak,
voiced when the peak >= `voicing_threshold` and the frame is within 40 dB of the loudest frame
-> voiced fraction and mean, std, 10/50/90th percentiles of log2 F0 over voiced frames (zeros
when nothing is voiced).
Scales differ across families (log power ~ -18..5, log2 Hz ~ 6..9): standardise before training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import soxr
from numpy.lib.stride_tricks import sliding_window_view
from scipy.fft import dct, irfft, rfft

from emodebias.features.encoders.base import Encoder, check_waves

STATS = ("mean", "std", "dabs", "dstd")


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """HTK-mel triangular filters [n_mels, n_fft // 2 + 1], peak 1, no area normalisation."""
    freqs = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lo) / (mid - lo)
    down = (hi - freqs[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down))


def frames(wave: np.ndarray, win: int, hop: int) -> np.ndarray:
    """[T, win] view of the full frames (no padding); a wave shorter than one frame gives one."""
    if len(wave) < win:
        wave = np.pad(wave, (0, win - len(wave)))
    return sliding_window_view(wave, win)[::hop]


def deltas(x: np.ndarray, width: int = 2) -> np.ndarray:
    """Regression deltas along axis 0 over +-`width` frames (edges repeated), as in HTK."""
    padded = np.pad(x, ((width, width), (0, 0)), mode="edge")
    n = len(x)
    num = sum(k * (padded[width + k : width + k + n] - padded[width - k : width - k + n])
              for k in range(1, width + 1))
    return num / (2.0 * sum(k * k for k in range(1, width + 1)))


def _band_stats(x: np.ndarray) -> np.ndarray:
    d = deltas(x)
    return np.concatenate([x.mean(0), x.std(0), np.abs(d).mean(0), d.std(0)])


def estimate_f0(
    wave: np.ndarray,
    sr: int = 16_000,
    fmin: float = 50.0,
    fmax: float = 500.0,
    hop: int = 160,
    voicing_threshold: float = 0.45,
    octave_ratio: float = 0.9,
) -> np.ndarray:
    """Per-frame F0 in Hz (0 = unvoiced) of one waveform; see `estimate_f0_many`."""
    return estimate_f0_many([wave], sr, fmin, fmax, hop, voicing_threshold, octave_ratio)[0]


def estimate_f0_many(
    waves: list[np.ndarray],
    sr: int = 16_000,
    fmin: float = 50.0,
    fmax: float = 500.0,
    hop: int = 160,
    voicing_threshold: float = 0.45,
    octave_ratio: float = 0.9,
) -> list[np.ndarray]:
    """Per-frame F0 (Hz, 0 = unvoiced) by window-corrected normalised autocorrelation.

    Runs at 8 kHz (F0 <= 500 Hz needs no more) with the frames of all waves in one FFT call.
    """
    if sr > 8000:
        hop = max(1, round(hop * 8000 / sr))
        waves = [soxr.resample(np.asarray(w, np.float32), sr, 8000, quality="HQ") for w in waves]
        sr = 8000
    win = int(0.04 * sr)
    per = [frames(np.asarray(w, dtype=np.float32), win, hop) for w in waves]
    fr = np.concatenate(per)
    fr = fr - fr.mean(axis=1, keepdims=True)
    window = np.hanning(win).astype(np.float32)
    nfft = 1 << int(np.ceil(np.log2(2 * win)))
    acf = irfft(np.abs(rfft(fr * window, nfft)) ** 2, nfft)[:, :win].astype(np.float64)
    wacf = irfft(np.abs(rfft(window.astype(np.float64), nfft)) ** 2, nfft)[:win]
    energy = acf[:, 0]
    lag_lo, lag_hi = int(np.floor(sr / fmax)), min(int(np.ceil(sr / fmin)), win // 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        seg = acf[:, lag_lo : lag_hi + 1] / np.maximum(energy[:, None], 1e-20)
        seg = seg / (wacf[lag_lo : lag_hi + 1] / wacf[0])[None, :]
    seg = np.where(np.isfinite(seg), seg, -np.inf)
    peak = seg.max(axis=1)
    # a periodic signal correlates ~equally at every multiple of its period: take the shortest
    # lag whose local maximum comes within `octave_ratio` of the best (avoids octave-down errors)
    local_max = np.zeros_like(seg, dtype=bool)
    local_max[:, 1:-1] = (seg[:, 1:-1] >= seg[:, :-2]) & (seg[:, 1:-1] >= seg[:, 2:])
    good = local_max & (seg >= octave_ratio * peak[:, None])
    best = np.where(good.any(axis=1), good.argmax(axis=1), seg.argmax(axis=1))
    lag = (best + lag_lo).astype(np.float64)
    idx = np.where((best > 0) & (best < seg.shape[1] - 1))[0]  # parabolic peak interpolation
    a, b, c = seg[idx, best[idx] - 1], seg[idx, best[idx]], seg[idx, best[idx] + 1]
    denom = a - 2 * b + c
    ok = np.isfinite(denom) & (np.abs(denom) > 1e-12)
    lag[idx[ok]] += np.clip(0.5 * (a[ok] - c[ok]) / denom[ok], -0.5, 0.5)
    bounds = np.cumsum([len(p) for p in per])[:-1]
    out = []
    for e, pk, lg in zip(np.split(energy, bounds), np.split(peak, bounds), np.split(lag, bounds),
                          strict=True):
        loud = e > e.max() * 1e-4 if e.max() > 0 else np.zeros(len(e), dtype=bool)
        out.append(np.where(loud & (pk >= voicing_threshold), sr / lg, 0.0))
    return out


class AcousticEncoder(Encoder):
    """Log-mel / MFCC / energy / F0 statistics: one [1, D] vector per utterance."""

    id = "acoustic"
    multithreaded = False  # numpy on one batch: more BLAS threads gained nothing measured

    def __init__(self, n_mels: int = 40, n_mfcc: int = 20, fmin: float = 20.0,
                 fmax: float = 8000.0, f0: bool = True) -> None:
        if not 0 < n_mfcc <= n_mels:
            raise ValueError(f"need 0 < n_mfcc <= n_mels, got n_mfcc={n_mfcc}, n_mels={n_mels}")
        self.n_mels, self.n_mfcc, self.fmin, self.fmax, self.f0 = n_mels, n_mfcc, fmin, fmax, f0
        self.win, self.hop, self.n_fft = 400, 160, 512
        self._fb_t = np.ascontiguousarray(
            mel_filterbank(self.sample_rate, self.n_fft, n_mels, fmin, fmax).T)
        self._window = np.hanning(self.win + 1)[:-1].astype(np.float32)  # periodic, as librosa

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": "acoustic", "version": 1, "n_mels": self.n_mels, "n_mfcc": self.n_mfcc,
                "fmin": self.fmin, "fmax": self.fmax, "f0": self.f0}

    @property
    def feature_names(self) -> list[str]:
        names = [f"logmel{i}_{s}" for s in STATS for i in range(self.n_mels)]
        names += [f"mfcc{i}_{s}" for s in STATS for i in range(self.n_mfcc)]
        names += [f"logrms_{s}" for s in ("mean", "std", "p10", "p50", "p90")]
        if self.f0:
            names += ["f0_voiced_frac"] + [f"log2f0_{s}" for s in ("mean", "std", "p10", "p50",
                                                                    "p90")]
        return names

    @property
    def info(self) -> dict[str, Any]:
        return {"layer_names": ["acoustic"], "feature_names": self.feature_names}

    @property
    def n_layers(self) -> int:
        return 1

    @property
    def dim(self) -> int:
        return len(self.feature_names)

    def log_mel(self, wave: np.ndarray) -> np.ndarray:
        """[T, n_mels] natural-log mel power of one waveform."""
        return self._log_mel_frames(frames(np.asarray(wave, dtype=np.float32), self.win, self.hop))

    def _log_mel_frames(self, fr: np.ndarray) -> np.ndarray:
        spec = np.abs(rfft(fr * self._window, self.n_fft)) ** 2  # float32: 3x faster FFTs
        return np.log(spec.astype(np.float64) @ self._fb_t + 1e-8)

    def encode(self, waves: list[np.ndarray]) -> np.ndarray:
        """All frames of the batch go through one FFT; statistics are taken per utterance."""
        waves = check_waves(waves, min_samples=1)
        per = [frames(w, self.win, self.hop) for w in waves]
        fr = np.concatenate(per)
        bounds = np.cumsum([len(p) for p in per])[:-1]
        logmel = self._log_mel_frames(fr)
        mfcc = dct(logmel, type=2, norm="ortho", axis=1)[:, : self.n_mfcc]
        logrms = np.log(np.sqrt((fr.astype(np.float64) ** 2).mean(axis=1)) + 1e-8)
        f0s = (estimate_f0_many(waves, self.sample_rate, hop=self.hop) if self.f0
               else [None] * len(waves))
        rows = []
        for lm, mf, lr, f0 in zip(np.split(logmel, bounds), np.split(mfcc, bounds),
                                  np.split(logrms, bounds), f0s, strict=True):
            parts = [_band_stats(lm), _band_stats(mf),
                     [lr.mean(), lr.std(), *np.percentile(lr, [10, 50, 90])]]
            if f0 is not None:
                voiced = f0[f0 > 0]
                if len(voiced):
                    lf = np.log2(voiced)
                    parts.append([len(voiced) / len(f0), lf.mean(), lf.std(),
                                  *np.percentile(lf, [10, 50, 90])])
                else:
                    parts.append(np.zeros(6))
            rows.append(np.concatenate([np.asarray(p, dtype=np.float64) for p in parts]))
        return np.stack(rows)[:, None, :].astype(np.float32)
