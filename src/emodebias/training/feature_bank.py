"""The feature rows training reads: a compact bank (or the memory-mapped store itself) and a
picklable reference to a memory-mapped store, so worker processes reopen it instead of copying
it."""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emodebias.training.model import SharedRows


@dataclass(frozen=True)
class MemmapRef:
    """Where a read-only memory map's bytes live: enough to map them again elsewhere."""

    filename: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @classmethod
    def of(cls, a: Any) -> MemmapRef | None:
        """The reference of a memmap that maps a whole C-ordered file region, else None."""
        if isinstance(a, np.memmap) and a.filename and isinstance(a.base, mmap.mmap) \
                and a.flags.c_contiguous:
            return cls(str(a.filename), a.dtype.str, tuple(a.shape), int(a.offset))
        return None

    def open(self) -> np.memmap:
        return np.memmap(self.filename, np.dtype(self.dtype), "r", self.offset, self.shape)


@dataclass(frozen=True)
class RunGroups:
    """Runs that read the same rows: group[r] is run r's group, `first` [J] one run of each
    group (a device tensor, to select the groups' rows)."""

    first: torch.Tensor
    group: tuple[int, ...]

    @classmethod
    def of(cls, rows: np.ndarray, lengths: np.ndarray, device: torch.device) -> RunGroups:
        """Runs whose padded row lists [R, n] (host) and lengths [R] are equal."""
        key = np.concatenate([np.asarray(lengths).reshape(-1, 1), rows], 1)
        _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
        return cls(torch.as_tensor(first, device=device), tuple(inverse.reshape(-1).tolist()))


def store_id(features: Any) -> tuple:
    """Identity of a feature array: its file region for memory maps, else the object."""
    ref = MemmapRef.of(features)
    return ("file", ref) if ref else ("object", id(features))


def _available_bytes() -> float:
    """MemAvailable from /proc/meminfo (inf where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


class FeatureBank:
    """The feature rows a set of stacks needs, compacted and on the device.

    Rows are copied once as float32, layer-major [L, n, D], when they fit `max_gb` (and a
    quarter of the available RAM); else each batch is read from the memory-mapped store, so
    stores larger than RAM still train. Batches are float32 tensors [*rows.shape, L, D]
    (layer-major views: each layer's rows contiguous, see `LayerMix`), or `SharedRows` when
    runs read the same rows.
    """

    def __init__(self, features: Any, rows: np.ndarray, device: torch.device, max_gb: float):
        self.source, self.device = features, device
        shape = features.shape
        self.n_layers, self.dim = int(shape[1]), int(shape[2])
        self.rows = np.unique(rows)
        nbytes = len(self.rows) * self.n_layers * self.dim * 4
        fits = nbytes <= min(max_gb * 2**30, _available_bytes() / 4)
        self.x = self._preload() if fits else None  # preloaded rows [L, n, D] float32
        self._buf: torch.Tensor | None = None
        self.lookup = np.full(len(features), -1, dtype=np.int64)
        self.lookup[self.rows] = np.arange(len(self.rows))

    def _preload(self) -> torch.Tensor:
        """Copy the bank's rows once, in chunks, layer-major."""
        n = len(self.rows)
        x = torch.from_numpy(np.empty((self.n_layers, n, self.dim), np.float32))
        for s in range(0, n, 4096):
            chunk = torch.from_numpy(np.asarray(self.source[self.rows[s : s + 4096]], np.float32))
            x[:, s : s + len(chunk)] = chunk.transpose(0, 1)
        return x.to(self.device)

    def _buffer(self, n: int) -> torch.Tensor:
        """[L, n, D] in one reused allocation: a fresh tensor per batch costs more in page
        faults than the gather itself."""
        size = self.n_layers * n * self.dim
        if self._buf is None or self._buf.numel() < size:
            self._buf = torch.empty(size, device=self.device)
        return self._buf[:size].view(self.n_layers, n, self.dim)

    def batch(self, rows: torch.Tensor, shared: RunGroups | None = None,
              ) -> torch.Tensor | SharedRows:
        """Features of per-run rows [R, B]: when `shared` (found on the host by the caller)
        names runs that read the same rows, each distinct row list once (`SharedRows`), else
        `features(rows)`."""
        if shared is None or len(shared.first) == len(rows):
            return self.features(rows)
        return SharedRows(self.features(rows.index_select(0, shared.first)), shared.group)

    def compact(self, full_rows: np.ndarray) -> torch.Tensor:
        """Bank positions of store rows (which must be in the bank)."""
        return torch.as_tensor(self.lookup[np.asarray(full_rows)], device=self.device)

    def features(self, rows: torch.Tensor) -> torch.Tensor:
        """Float32 features [*rows.shape, L, D] for compact row indices (preloaded: a
        layer-major view into a buffer that the next call reuses)."""
        flat = rows.reshape(-1)
        if self.x is not None:
            x = torch.index_select(self.x, 1, flat, out=self._buffer(len(flat)))
            return x.view(self.n_layers, *rows.shape, self.dim).movedim(0, -2)
        full = self.rows[flat.cpu().numpy()]
        order = np.argsort(full, kind="stable")
        fetched = np.empty((len(full), self.n_layers, self.dim), dtype=self.source.dtype)
        fetched[order] = self.source[full[order]]
        x = torch.from_numpy(fetched).to(self.device)
        return x.to(torch.float32).reshape(*rows.shape, self.n_layers, self.dim)
