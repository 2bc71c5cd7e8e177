"""Read audio for the encoders: any soundfile-readable file -> mono float32 at 16 kHz (soxr)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

TARGET_SR = 16_000
MIN_SECONDS = 0.1


class AudioError(ValueError):
    """An audio file could not be used; the message names the file and the reason."""


def load_audio(
    path: str | Path,
    target_sr: int = TARGET_SR,
    max_seconds: float | None = None,
    min_seconds: float = MIN_SECONDS,
) -> np.ndarray:
    """Return a mono float32 waveform at `target_sr`, cropped to the first `max_seconds`.

    Stereo is averaged to mono; other rates are resampled with soxr (high quality). Empty,
    unreadable, non-finite or shorter-than-`min_seconds` audio raises AudioError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt files
        raise AudioError(f"{path}: unreadable audio ({exc})") from exc
    if wav.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    wav = wav.mean(axis=1)
    if max_seconds is not None:
        wav = wav[: int(round(max_seconds * sr))]
    if sr != target_sr:
        wav = soxr.resample(wav, sr, target_sr, quality="HQ").astype(np.float32)
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: audio contains NaN or Inf samples")
    if len(wav) < min_seconds * target_sr:
        raise AudioError(f"{path}: too short ({len(wav) / target_sr:.3f} s < {min_seconds} s)")
    return np.ascontiguousarray(wav, dtype=np.float32)
