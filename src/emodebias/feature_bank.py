"""The feature rows training reads: a compact bank (or the memory-mapped store itself) and a
picklable reference to a memory-mapped store, so worker processes reopen it instead of copying
it."""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emodebias.model import Rows


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

    Rows keep the store's dtype (float16 or float32; others become float32), row-major
    [n, L, D]: copied once when they fit `max_gb` (and a quarter of the available RAM), else
    each batch's rows are read from the memory-mapped store, so stores larger than RAM still
    train. Batches are `Rows` (bank + indices): the head's compiled functions gather, convert
    and mix them in one pass.
    """

    def __init__(self, features: Any, rows: np.ndarray, device: torch.device, max_gb: float):
        self.source, self.device = features, device
        shape = features.shape
        self.n_layers, self.dim = int(shape[1]), int(shape[2])
        self.dtype = np.dtype(features.dtype)
        if self.dtype not in (np.float16, np.float32):
            self.dtype = np.dtype(np.float32)
        self.rows = np.unique(rows)
        nbytes = len(self.rows) * self.n_layers * self.dim * self.dtype.itemsize
        fits = nbytes <= min(max_gb * 2**30, _available_bytes() / 4)
        self.x = self._preload() if fits else None  # preloaded rows [n, L, D]
        self.lookup = np.full(len(features), -1, dtype=np.int64)
        self.lookup[self.rows] = np.arange(len(self.rows))

    def _preload(self) -> torch.Tensor:
        """Copy the bank's rows once, in chunks."""
        n = len(self.rows)
        x = torch.from_numpy(np.empty((n, self.n_layers, self.dim), self.dtype))
        for s in range(0, n, 4096):
            x[s : s + 4096] = torch.from_numpy(
                np.asarray(self.source[self.rows[s : s + 4096]], self.dtype))
        return x.to(self.device)

    def compact(self, full_rows: np.ndarray) -> torch.Tensor:
        """Bank positions of store rows (which must be in the bank)."""
        return torch.as_tensor(self.lookup[np.asarray(full_rows)], device=self.device)

    def batch(self, rows: torch.Tensor) -> Rows:
        """The features of compact row indices (any shape) as `Rows`: the preloaded bank, or
        the distinct rows read from the store (in file order) for this batch only."""
        if self.x is not None:
            return Rows(self.x, rows)
        flat = rows.reshape(-1).cpu().numpy()
        uniq, inverse = np.unique(flat, return_inverse=True)
        fetched = np.asarray(self.source[self.rows[uniq]], self.dtype)
        x = torch.from_numpy(fetched).to(self.device)
        return Rows(x, torch.as_tensor(inverse.reshape(rows.shape), device=self.device))
