"""The encoder interface: a batch of 16 kHz waveforms -> pooled per-layer features [B, L, D].

Every encoder (SSL, speaker, acoustic) offers the same small surface so the FeatureStore can drive
any of them: `.id` (short name), `.config` (every setting that changes the numbers; it goes into
the store key, so changing any of it never returns stale features), `.n_layers`, `.dim`,
`.sample_rate`, `.info` (descriptive extras for meta.json: layer and feature names), `.to(device)`
and `.encode(waves)`.

Threads. Each encoder says how many CPU threads its `encode` can use (`cpu_threads`): models that
run one short utterance at a time through a small network (Resemblyzer's LSTM) or plain numpy
feature code gain nothing from intra-op threads, and their idle OpenMP/BLAS threads spinning
next to the audio-reading threads made extraction many times slower than with one thread.
`thread_limits` applies the count (torch intra-op threads, and one BLAS thread for numpy/scipy
work) around a whole extraction and restores the previous settings afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emodebias.errors import UserError


class EncoderError(UserError, RuntimeError):
    """An encoder could not be built or run; the message says what to do."""


DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps")


def check_device(device: object, where: str = "--device", available: bool = True) -> str:
    """A torch device this package runs on ('cpu', 'cuda', 'cuda:N', 'mps'), stripped; with
    `available`, also one this machine has."""
    if not isinstance(device, str) or not DEVICE.fullmatch(device.strip()):
        raise EncoderError(f"{where} must be cpu, cuda, cuda:N or mps, got {device!r}")
    device = device.strip()
    if available and device.startswith("cuda"):
        count = torch.cuda.device_count()
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise EncoderError(f"{where} {device}: torch sees {count} CUDA device(s) on this "
                               "machine; use --device cpu, or a CUDA build of torch")
    if available and device == "mps" and not torch.backends.mps.is_available():
        raise EncoderError(f"{where} mps: no Apple GPU available to torch; use --device cpu")
    return device


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by OMP_NUM_THREADS when set
    (worker processes and users who pin threads set it)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        cap = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        cap = 0
    return max(1, min(cores, cap) if cap > 0 else cores)


@contextlib.contextmanager
def thread_limits(torch_threads: int) -> Iterator[None]:
    """Run with `torch_threads` torch intra-op threads and single-threaded BLAS (numpy, scipy,
    librosa work in the encoder and in the audio readers); restore both afterwards."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(torch_threads)))
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


class Encoder(ABC):
    """Frozen feature extractor: `encode(list of mono 16 kHz float32 arrays) -> [B, L, D]`."""

    id: str
    sample_rate: int = 16_000
    # Whether `encode` gains from intra-op threads (batched tensor work); False for per-utterance
    # small models and numpy feature code, which then run on one thread (see module docstring).
    multithreaded: bool = True

    def cpu_threads(self, reader_threads: int = 0) -> int:
        """Torch threads `encode` should use on the CPU while `reader_threads` read audio: one
        for single-threaded encoders, else every available core but one kept for the readers."""
        if not self.multithreaded:
            return 1
        cores = available_cores()
        return max(1, cores - 1) if reader_threads > 0 and cores > 2 else cores

    @property
    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings that determine the output (part of the store key)."""

    @property
    @abstractmethod
    def n_layers(self) -> int: ...

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @property
    def info(self) -> dict[str, Any]:
        """Descriptive metadata (layer names, feature names) written to meta.json, not keyed."""
        return {}

    @property
    def device(self) -> str:
        return "cpu"

    def to(self, device: str) -> Encoder:
        """Move to `device` (cpu / cuda / cuda:N); encoders without a model ignore it."""
        return self

    @abstractmethod
    def encode(self, waves: list[np.ndarray]) -> np.ndarray:
        """Pooled features [len(waves), n_layers, dim] float32, one row per input, same order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, L={self.n_layers}, D={self.dim})"


class ModelEncoder(Encoder):
    """An encoder wrapping one torch module in `self.model`; moving it moves the model."""

    _device: str = "cpu"

    @property
    def device(self) -> str:
        return self._device

    def to(self, device: str) -> ModelEncoder:
        self.model.to(device)
        self._device = str(device)
        return self


def check_waves(waves: list[np.ndarray], min_samples: int = 1) -> list[np.ndarray]:
    """Validate a batch: 1-D finite float arrays, at least `min_samples` long each."""
    out = []
    for i, w in enumerate(waves):
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 1:
            raise ValueError(f"wave {i}: expected a 1-D mono array, got shape {w.shape}")
        if len(w) < min_samples:
            raise ValueError(f"wave {i}: {len(w)} samples, fewer than the {min_samples} needed")
        out.append(w)
    return out


def pad_batch(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with zeros -> (input [B, S] float32, lengths [B] int64)."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    x = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
    for i, w in enumerate(waves):
        x[i, : len(w)] = torch.from_numpy(w)
    return x, lengths


def zero_mean_unit_var(w: np.ndarray) -> np.ndarray:
    """Per-utterance waveform normalisation, as transformers' Wav2Vec2FeatureExtractor does it."""
    return ((w - w.mean()) / np.sqrt(w.var() + 1e-7)).astype(np.float32)


def fingerprint_files(paths: list[Path], edge_bytes: int = 1 << 20) -> str:
    """Cheap content fingerprint of model files: name, size, first and last `edge_bytes` of each.

    Hashing multi-GB checkpoints fully would cost seconds per run; size plus both ends catches
    any realistic replacement of the weights.
    """
    h = hashlib.sha256()
    for p in sorted(paths):
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with p.open("rb") as f:
            h.update(f.read(edge_bytes))
            if size > 2 * edge_bytes:
                f.seek(size - edge_bytes)
                h.update(f.read(edge_bytes))
    return h.hexdigest()[:16]
