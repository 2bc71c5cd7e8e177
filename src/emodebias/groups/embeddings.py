"""Embeddings for group inference, read from a FeatureStore (one vector per utterance).

A speaker-encoder store has one layer (L = 1); for an SSL store the caller picks a layer or the
mean over layers. Rows the store marked as failed are reported, never silently used: they keep
their (zero) vector but are returned in a mask so callers can exclude them and give them -1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from emodebias.errors import UserError


class EmbeddingError(UserError):
    """The embeddings cannot be used as asked (bad layer, misaligned ids, ...)."""


def store_layer(features: np.ndarray, layer: int | str = "mean",
                chunk: int = 4096) -> np.ndarray:
    """[N, L, D] (memmap ok) -> float32 [N, D]: one layer (negative = from the end) or the mean.

    Reads in chunks so a memory-mapped store larger than RAM is never loaded whole.
    """
    if features.ndim == 2:
        return np.asarray(features, dtype=np.float32)
    if features.ndim != 3:
        raise EmbeddingError(f"features must be [N, L, D] or [N, D], got shape {features.shape}")
    n, n_layers, dim = features.shape
    if isinstance(layer, str) and layer != "mean":
        try:
            layer = int(layer)
        except ValueError as exc:
            raise EmbeddingError(f"layer must be 'mean' or an int, got {layer!r}") from exc
    if not isinstance(layer, str) and not -n_layers <= layer < n_layers:
        raise EmbeddingError(f"layer {layer} out of range for a store with {n_layers} layer(s)")
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        block = np.asarray(features[s : s + chunk], dtype=np.float32)
        out[s : s + chunk] = block.mean(axis=1) if layer == "mean" else block[:, layer]
    return out


def load_embeddings(store: Any, layer: int | str = "mean",
                    utt_ids: list[str] | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(X [N, D] float32, utt_ids, ok [N] bool) from a FeatureStore or its directory.

    `ok` is False for rows the store recorded as failed or that are not finite. With `utt_ids`
    the rows are reordered to those ids (unknown ids raise, naming them).
    """
    if isinstance(store, (str, Path)):
        from emodebias.features.store import FeatureStore

        store = FeatureStore.open(store)
    ids = list(store.utt_ids)
    rows = np.arange(len(ids))
    if utt_ids is not None:
        rows = np.asarray(store.rows(list(utt_ids)), dtype=np.int64)
        ids = list(utt_ids)
    x = store_layer(store.features, layer)[rows]
    failed = set(getattr(store, "failures", None) or {})
    ok = np.isfinite(x).all(axis=1) & np.array([u not in failed for u in ids], dtype=bool)
    return x, ids, ok


def store_dir(store: Any) -> Path | None:
    """The directory a FeatureStore lives in (for caching groups beside it), if it says."""
    if isinstance(store, (str, Path)):
        return Path(store)
    for attr in ("path", "dir", "directory", "root"):
        value = getattr(store, attr, None)
        if isinstance(value, (str, Path)):
            return Path(value)
    return None


def encoder_name(store: Any) -> str:
    """Short encoder id of a store, for GroupAssignment.source strings."""
    meta = getattr(store, "meta", None) or {}
    return str(meta.get("encoder", "embeddings"))
