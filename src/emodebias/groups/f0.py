"""Median-F0 threshold baseline for pseudo-gender (a pseudo-label source without any model).

Pitch is YIN (60-400 Hz; numpy, the recipe of librosa.yin, without its numba start-up cost) on
frames whose RMS energy is above 20% of the loudest frame (a cheap voicing gate; librosa's pYIN
is ~20x slower and was no better on EmoDB). P(F) is a logistic
function of log median F0: sigmoid((log f0 - log threshold) / scale). The default threshold
160 Hz lies between typical adult male (~120 Hz) and female (~210 Hz) speaking F0; `fit_f0`
learns threshold and scale by logistic regression on labelled utterances. Emotional speech moves
F0 a lot (angry male voices go well above 160 Hz), so expect ~75% accuracy on acted corpora.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from emodebias.groups.assignment import GroupAssignment
from emodebias.groups.pseudo import (
    NAMES,
    PseudoLabelError,
    iter_audio,
    make_assignment,
    record_failures,
)

if TYPE_CHECKING:
    from emodebias.data.manifest import Manifest

FMIN, FMAX = 60.0, 400.0
FRAME, HOP = 1024, 256
VOICED_RMS = 0.2


@dataclass
class F0Threshold:
    """Decision rule on median F0: female when F0 > threshold_hz."""

    threshold_hz: float = 160.0
    scale: float = 0.15  # in log-Hz: P(F) goes from 0.27 to 0.73 within +-15% of the threshold

    def p_female(self, f0: np.ndarray) -> np.ndarray:
        f0 = np.asarray(f0, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return 1.0 / (1.0 + np.exp(-(np.log(f0) - np.log(self.threshold_hz)) / self.scale))


def yin(wav: np.ndarray, sample_rate: int = 16_000, fmin: float = FMIN, fmax: float = FMAX,
        frame_length: int = FRAME, hop_length: int = HOP, threshold: float = 0.1) -> np.ndarray:
    """YIN F0 per frame (de Cheveigné & Kawahara 2002), numpy only (librosa.yin's recipe).

    Difference function via FFT, cumulative-mean normalisation, first dip below `threshold`
    (else the global minimum) within [sr/fmax, sr/fmin], parabolic refinement of the lag.
    """
    from scipy import fft

    min_lag = max(1, int(np.floor(sample_rate / fmax)))
    max_lag = min(int(np.ceil(sample_rate / fmin)), frame_length - 1)
    frames = np.lib.stride_tricks.sliding_window_view(
        np.asarray(wav, np.float32), frame_length)[::hop_length]
    win = frame_length - max_lag  # integration window
    power = np.cumsum(np.pad(frames.astype(np.float64) ** 2, ((0, 0), (1, 0))), axis=1)
    energy0 = power[:, win]  # sum of x[t]^2 over the window at lag 0
    energy_lag = power[:, win:win + max_lag + 1] - power[:, : max_lag + 1]  # sum x[t+tau]^2
    n_fft = 1 << int(np.ceil(np.log2(frame_length + win)))
    spec_a = fft.rfft(frames, n_fft)  # float32 in, complex64 out: twice numpy's speed
    spec_b = fft.rfft(frames[:, :win][:, ::-1], n_fft)
    cross = fft.irfft(spec_a * spec_b, n_fft)[:, win - 1 : win + max_lag].astype(np.float64)
    diff = np.maximum(energy0[:, None] + energy_lag - 2 * cross, 0.0)
    cum = np.cumsum(diff[:, 1:], axis=1) / np.arange(1, max_lag + 1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] / np.maximum(cum, 1e-12)
    band = cmnd[:, min_lag : max_lag + 1]
    is_dip = np.zeros_like(band, dtype=bool)
    is_dip[:, 1:-1] = (band[:, 1:-1] < band[:, :-2]) & (band[:, 1:-1] <= band[:, 2:])
    below = is_dip & (band < threshold)
    lag = np.where(below.any(1), below.argmax(1), band.argmin(1))
    rows = np.arange(len(band))
    left = band[rows, np.clip(lag - 1, 0, band.shape[1] - 1)]
    mid = band[rows, lag]
    right = band[rows, np.clip(lag + 1, 0, band.shape[1] - 1)]
    denom = left - 2 * mid + right
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (left - right) / np.where(denom == 0, 1, denom),
                     0.0)
    return sample_rate / (lag + min_lag + np.clip(shift, -1, 1))


def median_f0(wav: np.ndarray, sample_rate: int = 16_000) -> float:
    """Median YIN F0 (Hz) over energetic frames; NaN when no frame passes the gate."""
    wav = np.asarray(wav, np.float64)
    if len(wav) < FRAME:
        return float("nan")
    f0 = yin(wav, sample_rate)
    frames = np.lib.stride_tricks.sliding_window_view(wav, FRAME)[::HOP]
    rms = np.sqrt((frames ** 2).mean(axis=1))
    if not np.isfinite(rms).all() or rms.max() <= 0:
        return float("nan")
    voiced = rms > VOICED_RMS * rms.max()
    return float(np.median(f0[voiced]))


def median_f0_all(manifest: Manifest, max_seconds: float | None = None,
                  progress: bool = False) -> tuple[np.ndarray, dict[str, str]]:
    """Median F0 per manifest row (NaN where unusable) and {utt_id: reason} for failures."""
    ids = manifest.utt_ids
    f0 = np.full(len(ids), np.nan)
    failures: dict[str, str] = {}
    for i, wav, err in iter_audio(manifest, 16_000, max_seconds, progress, "median F0"):
        if wav is None:
            failures[ids[i]] = err
            continue
        f0[i] = median_f0(wav)
        if not np.isfinite(f0[i]):
            failures[ids[i]] = "no voiced frame"
    return f0, failures


def fit_f0(f0: np.ndarray, genders: np.ndarray | list) -> F0Threshold:
    """Threshold and scale from a 1-D logistic regression of gender on log F0."""
    from sklearn.linear_model import LogisticRegression

    g = np.asarray(genders, dtype=object)
    use = np.isfinite(np.asarray(f0, float)) & np.isin(g, NAMES)
    y = (g[use] == "F").astype(int)
    if len(np.unique(y)) < 2:
        raise PseudoLabelError("fitting the F0 threshold needs utterances of both genders")
    x = np.log(np.asarray(f0, float)[use])[:, None]
    lr = LogisticRegression(C=1e4, max_iter=1000).fit(x, y)
    w, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if w <= 0:
        raise PseudoLabelError("F0 does not rise with P(female) in the fitting data; "
                               "keep the default threshold")
    return F0Threshold(float(np.exp(-b / w)), 1.0 / w)


def f0_groups(manifest: Manifest, rule: F0Threshold | None = None,
              fit_ids: list[str] | None = None, max_seconds: float | None = None,
              progress: bool = False) -> GroupAssignment:
    """Pseudo-gender by median F0: the given `rule`, one fitted on `fit_ids`, or 160 Hz."""
    f0, failures = median_f0_all(manifest, max_seconds, progress)
    fitted = rule is None and fit_ids is not None
    if fitted:
        rows = manifest.index_of(list(fit_ids))
        rule = fit_f0(f0[rows], manifest.df["gender"].to_numpy(dtype=object)[rows])
    rule = rule or F0Threshold()
    info = {"kind": "f0", "threshold_hz": rule.threshold_hz, "scale": rule.scale,
            "fitted": fitted, "median_f0": np.round(f0, 2).tolist()}
    record_failures(info, failures)
    return make_assignment(manifest.utt_ids, rule.p_female(f0), np.isfinite(f0), "pseudo:f0",
                           info, manifest)
