"""Read audio for the encoders: any soundfile-readable file -> mono float32 at 16 kHz (soxr).

Policy (EMO-SUPERB, PAPERS.md §1.5): multi-channel audio is averaged to mono, any other rate is
resampled with soxr ("HQ"), and long files are cropped to their first `max_seconds`
(`DEFAULT_MAX_SECONDS`, 10 s, wherever a caller does not say). Padding is the batching code's
job, not this module's. Anything unusable (missing, unreadable, empty, NaN/Inf, shorter than
0.1 s) raises `AudioError` naming the file, so callers
can record the failure per file instead of crashing a whole extraction.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from emodebias.errors import UserError

TARGET_SR = 16_000
MIN_SECONDS = 0.1
# The crop every default keeps of a file (extraction, grid stores, run folders, pseudo-group
# embeddings, audits): EMO-SUPERB's first 10 s. soundfile and soxr are imported where audio is
# read, so modules that only need this default stay light to import.
DEFAULT_MAX_SECONDS = 10.0
# common extension aliases of the formats soundfile reads
_ALIASES = {"AIFF": (".aif", ".aifc"), "NIST": (".sph",), "OGG": (".oga", ".opus"),
            "WAV": (".wave",)}


@functools.cache
def audio_extensions() -> frozenset[str]:
    """Extensions of the container formats this soundfile (libsndfile) build reads, asked
    once, with common aliases; RAW is left out (it has no header to read)."""
    import soundfile as sf

    return frozenset(ext for fmt in sf.available_formats() if fmt != "RAW"
                     for ext in (f".{fmt.lower()}", *_ALIASES.get(fmt, ())))


def is_audio_name(path: str | Path) -> bool:
    """Whether `path` has an extension of a format soundfile can read (case-insensitive)."""
    return Path(path).suffix.lower() in audio_extensions()


class AudioError(UserError):
    """An audio file could not be used; the message names the file and the reason."""


def _header(path: Path) -> tuple[int, int]:
    """(frames, sample rate) from the header; AudioError if missing or not audio."""
    import soundfile as sf

    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for corrupt headers
        raise AudioError(f"{path}: unreadable audio ({exc})") from exc
    return int(info.frames), int(info.samplerate)


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the header alone (cheap; used to batch files by length)."""
    frames, sr = _header(Path(path))
    return frames / sr


def load_audio(
    path: str | Path,
    target_sr: int = TARGET_SR,
    max_seconds: float | None = None,
    min_seconds: float = MIN_SECONDS,
) -> np.ndarray:
    """Return a mono float32 waveform at `target_sr`, cropped to the first `max_seconds`.

    Raises AudioError naming the file when it is missing, unreadable, empty, non-finite or
    shorter than `min_seconds` after cropping and resampling.
    """
    if target_sr <= 0:
        raise ValueError(f"target_sr must be positive, got {target_sr}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
    import soundfile as sf
    import soxr

    path = Path(path)
    _, header_sr = _header(path)
    # Read only what is kept: a long file costs no more than its first `max_seconds`.
    frames = -1 if max_seconds is None else int(round(max_seconds * header_sr))
    try:
        wav, sr = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:  # truncated data can pass the header check and fail here
        raise AudioError(f"{path}: unreadable audio ({exc})") from exc
    if wav.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    if not np.isfinite(wav).all():
        bad = int((~np.isfinite(wav)).any(axis=1).sum())
        raise AudioError(f"{path}: audio contains {bad} NaN or Inf sample(s)")
    wav = wav.mean(axis=1, dtype=np.float32)
    if sr != target_sr:
        wav = soxr.resample(wav, sr, target_sr, quality="HQ")
    if len(wav) < min_seconds * target_sr:
        raise AudioError(
            f"{path}: too short ({len(wav) / target_sr:.3f} s < {min_seconds} s minimum)"
        )
    return np.ascontiguousarray(wav, dtype=np.float32)
