"""FeatureStore: every utterance encoded once, pooled per layer, kept on disk as a float16 memmap.

A store is one directory:
- `features.npy`: float16 [N, L, D] in manifest row order (read memory-mapped, so corpora larger
  than RAM work);
- `meta.json`: encoder id, config (incl. revision), layer names, dim, sample rate, `max_seconds`,
  manifest content hash, the store `key` (a hash of all of these), `utt_ids` (row order),
  `failures` ({utt_id: reason}), `complete`, and the resume marker (`batches_done`, `plan_hash`).

Staleness: the key covers the manifest content hash (ids, paths, labels), the encoder id and
config, and `max_seconds`. `extract` into a directory holding another key raises (or, with
`overwrite=True`, starts over); `FeatureStore.open(dir, manifest=..., encoder=...)` raises on a
mismatch. `store_dir(root, manifest, encoder)` names a keyed subdirectory for caches.

Failures: a file that cannot be used (missing, unreadable, empty, < 0.1 s: `emodebias.audio`
raises AudioError) keeps its row, filled with NaN, and its reason goes to `meta["failures"]`;
`.valid_mask` excludes them. NaN (not zeros) so a consumer that ignores the mask fails loudly.

Extraction: files are ordered by duration (longest first, so memory errors show up at once) and
packed into batches of at most `batch_seconds` of padded audio; audio for the next batches is read
and resampled by worker threads while the encoder runs. Rows are written to the memmap and, every
`checkpoint_seconds`, flushed before `meta.json` (the resume marker) is atomically replaced. A
rerun after a crash or kill continues from the marker with the same deterministic plan, so the
final store is identical, bit for bit, to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from emodebias.audio import TARGET_SR, AudioError, load_audio
from emodebias.encoders.base import Encoder
from emodebias.errors import UserError
from emodebias.fileio import replacing
from emodebias.manifest import Manifest

FORMAT_VERSION = 1
META_FILE = "meta.json"
FEATURES_FILE = "features.npy"


class StoreError(UserError, RuntimeError):
    """A feature store is missing, incomplete, or belongs to another manifest/encoder."""


def store_key(manifest_hash: str, encoder: Encoder, max_seconds: float | None) -> str:
    """Hash of everything that determines the stored numbers."""
    blob = json.dumps({"manifest": manifest_hash, "encoder": encoder.id,
                       "config": encoder.config, "max_seconds": max_seconds,
                       "sample_rate": encoder.sample_rate, "format": FORMAT_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def store_dir(root: str | Path, manifest: Manifest, encoder: Encoder,
              max_seconds: float | None = 10.0) -> Path:
    """A keyed subdirectory of `root` for (manifest, encoder, max_seconds): a cache location."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in encoder.id)
    return Path(root) / f"{slug}-{store_key(manifest.content_hash(), encoder, max_seconds)}"


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / META_FILE).read_text())
    except FileNotFoundError:
        raise StoreError(f"no feature store at {path} (missing {META_FILE}); "
                         "create one with `emodebias extract`") from None
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path / META_FILE} is not valid JSON ({exc})") from exc


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    with replacing(path / META_FILE) as tmp, tmp.open("w") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class FeatureStore:
    """An extracted store: `.features` [N, L, D] float16 memmap in `.utt_ids` order."""

    path: Path
    meta: dict[str, Any]
    features: np.ndarray
    _index: dict[str, int] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path, manifest: Manifest | None = None,
             encoder: Encoder | None = None, max_seconds: float | None = None) -> FeatureStore:
        """Open a complete store; given `manifest`/`encoder`, refuse a store made for others."""
        path = Path(path)
        meta = _read_meta(path)
        if not meta.get("complete"):
            raise StoreError(f"{path}: extraction incomplete ({meta.get('batches_done')}/"
                             f"{meta.get('n_batches')} batches); rerun `emodebias extract` "
                             "with the same arguments to resume")
        features = np.load(path / FEATURES_FILE, mmap_mode="r")
        expected = (len(meta["utt_ids"]), meta["n_layers"], meta["dim"])
        if features.shape != expected or features.dtype != np.float16:
            raise StoreError(f"{path / FEATURES_FILE}: shape {features.shape} {features.dtype}, "
                             f"meta.json says {expected} float16")
        store = cls(path, meta, features)
        store.check(manifest, encoder, max_seconds)
        return store

    def check(self, manifest: Manifest | None = None, encoder: Encoder | None = None,
              max_seconds: float | None = None) -> None:
        """Raise StoreError unless this store was made from `manifest` with `encoder`."""
        if manifest is not None and manifest.content_hash() != self.meta["manifest_hash"]:
            raise StoreError(f"{self.path} was extracted from manifest "
                             f"{self.meta['manifest_hash']}, not from this one "
                             f"({manifest.content_hash()}); extract it again")
        if encoder is not None:
            ms = self.meta["max_seconds"] if max_seconds is None else max_seconds
            if store_key(self.meta["manifest_hash"], encoder, ms) != self.meta["key"]:
                raise StoreError(f"{self.path} holds {self.meta['encoder']} features with config "
                                 f"{self.meta['config']}, not {encoder.id} {encoder.config}")

    @property
    def utt_ids(self) -> list[str]:
        return self.meta["utt_ids"]

    @property
    def failures(self) -> dict[str, str]:
        """utt_id -> why it could not be encoded (its row is NaN)."""
        return self.meta["failures"]

    @property
    def valid_mask(self) -> np.ndarray:
        """bool [N]: rows that hold features (False for failures)."""
        bad = set(self.failures)
        return np.array([u not in bad for u in self.utt_ids], dtype=bool)

    @property
    def n_layers(self) -> int:
        return int(self.meta["n_layers"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def key(self) -> str:
        return self.meta["key"]

    def rows(self, utt_ids: list[str] | np.ndarray) -> np.ndarray:
        """Row indices of `utt_ids`; unknown ids raise KeyError naming them."""
        if self._index is None:
            self._index = {u: i for i, u in enumerate(self.utt_ids)}
        rows = [self._index.get(str(u), -1) for u in utt_ids]
        missing = [str(u) for u, r in zip(utt_ids, rows, strict=True) if r < 0]
        if missing:
            raise KeyError(f"{len(missing)} utt_id(s) not in the feature store {self.path}, "
                           f"e.g. {missing[:5]}")
        return np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.utt_ids)


# --------------------------------------------------------------------------- planning
def _duration(path: str, max_seconds: float | None) -> float:
    """Seconds the encoder will see (header only); unusable files raise AudioError."""
    try:
        info = sf.info(path)
        seconds = info.frames / info.samplerate
    except Exception:  # let load_audio produce the canonical error message
        seconds = len(load_audio(path, TARGET_SR, max_seconds)) / TARGET_SR
    if seconds <= 0:
        load_audio(path, TARGET_SR, max_seconds)  # raises "empty audio"
    return min(seconds, max_seconds) if max_seconds else seconds


def plan_batches(durations: np.ndarray, batch_seconds: float, max_batch: int = 256
                 ) -> list[list[int]]:
    """Longest first; each batch's padded size (n * longest) stays within `batch_seconds`.

    NaN durations (failures) are left out. Ties break on row index, so the plan is deterministic.
    """
    rows = [i for i in np.lexsort((np.arange(len(durations)), -np.nan_to_num(durations, nan=-1)))
            if np.isfinite(durations[i])]
    batches: list[list[int]] = []
    current: list[int] = []
    for i in rows:
        longest = durations[current[0]] if current else durations[i]
        if current and (longest * (len(current) + 1) > batch_seconds or len(current) >= max_batch):
            batches.append(sorted(current))
            current = []
        current.append(int(i))
    if current:
        batches.append(sorted(current))
    return batches


def _plan_hash(batches: list[list[int]], durations: np.ndarray) -> str:
    blob = json.dumps([batches, [round(float(d), 4) if np.isfinite(d) else None
                                 for d in durations]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- progress
class _Progress:
    """Files done, audio hours done, ETA (rich); silent when disabled."""

    def __init__(self, enabled: bool, total_files: int, total_hours: float, label: str) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("files · {task.fields[hours]:.2f}/" f"{total_hours:.2f} h"),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self.bar.start()
        self.task = self.bar.add_task(label, total=total_files, hours=0.0)
        self.hours = 0.0

    def advance(self, files: int, hours: float) -> None:
        if self.enabled:
            self.hours += hours
            self.bar.update(self.task, advance=files, hours=self.hours)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()


# --------------------------------------------------------------------------- extraction
def extract(
    manifest: Manifest,
    encoder: Encoder,
    out_dir: str | Path,
    batch_seconds: float = 60.0,
    max_seconds: float | None = 10.0,
    device: str | None = None,
    progress: bool = True,
    skip_bad: bool = True,
    overwrite: bool = False,
    num_workers: int = 2,
    checkpoint_seconds: float = 30.0,
    max_batch: int = 256,
) -> FeatureStore:
    """Encode every manifest row into the store at `out_dir` (resumable; see module docstring).

    `device` moves the encoder first (None keeps its device). `skip_bad=False` raises on the
    first unusable file instead of recording it. A complete store with the same key is returned
    as is; a store with another key raises unless `overwrite`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if device is not None:
        encoder.to(device)
    manifest_hash = manifest.content_hash()
    key = store_key(manifest_hash, encoder, max_seconds)
    utt_ids, paths = manifest.utt_ids, manifest.df["path"].astype(str).tolist()
    shape = (len(utt_ids), encoder.n_layers, encoder.dim)

    previous = _read_meta(out) if (out / META_FILE).is_file() else None
    if previous is not None and previous.get("key") != key:
        if not overwrite:
            raise StoreError(
                f"{out} already holds features for encoder {previous.get('encoder')!r} and "
                f"manifest {previous.get('manifest_hash')} (key {previous.get('key')}); this run "
                f"is {encoder.id!r} on manifest {manifest_hash} (key {key}). Use another output "
                "directory (see store_dir) or overwrite=True / --overwrite")
        previous = None
    if previous is not None and previous.get("complete"):
        return FeatureStore.open(out)

    # plan: header durations (parallel), failures found now are recorded up front
    failures: dict[str, str] = {}
    durations = np.full(len(paths), np.nan)
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        futures = [pool.submit(_duration, p, max_seconds) for p in paths]
        for i, fut in enumerate(futures):
            try:
                durations[i] = fut.result()
            except AudioError as exc:
                if not skip_bad:
                    raise
                failures[utt_ids[i]] = str(exc)
    batches = plan_batches(durations, batch_seconds, max_batch)
    n_unplanned = len(failures)
    plan_hash = _plan_hash(batches, durations)

    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "key": key, "encoder": encoder.id,
        "config": encoder.config, "info": encoder.info, "n_layers": encoder.n_layers,
        "dim": encoder.dim, "sample_rate": encoder.sample_rate, "max_seconds": max_seconds,
        "manifest_hash": manifest_hash, "dtype": "float16", "utt_ids": utt_ids,
        "failures": failures, "complete": False, "batches_done": 0, "n_batches": len(batches),
        "plan_hash": plan_hash, "batch_seconds": batch_seconds,
        "audio_seconds": float(np.nansum(durations)),
    }
    start = 0
    if previous is not None:
        if previous.get("plan_hash") != plan_hash:
            raise StoreError(f"{out}: the audio files changed since the interrupted extraction "
                             "(different durations or failures); rerun with overwrite=True")
        start = int(previous["batches_done"])
        meta["failures"] = failures = {**failures, **previous["failures"]}
        mm = np.lib.format.open_memmap(out / FEATURES_FILE, mode="r+")
        if mm.shape != shape:
            raise StoreError(f"{out / FEATURES_FILE} has shape {mm.shape}, expected {shape}")
    else:
        mm = np.lib.format.open_memmap(out / FEATURES_FILE, mode="w+", dtype=np.float16,
                                       shape=shape)
    row_of = {u: i for i, u in enumerate(utt_ids)}
    for u in failures:
        mm[row_of[u]] = np.nan
    _write_meta(out, meta)

    done_seconds = float(sum(durations[i] for b in batches[:start] for i in b))
    bar = _Progress(progress, len(paths), meta["audio_seconds"] / 3600, f"extract {encoder.id}")
    bar.advance(n_unplanned + sum(len(b) for b in batches[:start]), done_seconds / 3600)
    t0, last_checkpoint = time.perf_counter(), time.perf_counter()
    done = start

    def checkpoint() -> None:
        mm.flush()
        meta["batches_done"] = done
        _write_meta(out, meta)

    def load(i: int) -> np.ndarray | AudioError:
        try:
            return load_audio(paths[i], encoder.sample_rate, max_seconds)
        except AudioError as exc:
            return exc

    pool = ThreadPoolExecutor(max(1, num_workers))
    pending: deque[tuple[list[int], list[Future]]] = deque()
    todo = iter(batches[start:])

    def submit_next() -> None:
        rows = next(todo, None)
        if rows is not None:
            pending.append((rows, [pool.submit(load, i) for i in rows]))

    try:
        for _ in range(2):
            submit_next()
        while pending:
            rows, futs = pending.popleft()
            submit_next()
            good, waves = [], []
            for i, fut in zip(rows, futs, strict=True):
                res = fut.result()
                if isinstance(res, AudioError):
                    if not skip_bad:
                        raise res
                    failures[utt_ids[i]] = str(res)
                    mm[i] = np.nan
                else:
                    good.append(i)
                    waves.append(res)
            if waves:
                feats = encoder.encode(waves)
                if feats.shape != (len(waves), *shape[1:]):
                    raise StoreError(f"encoder {encoder.id} returned {feats.shape}, expected "
                                     f"{(len(waves), *shape[1:])}")
                half = feats.astype(np.float16)
                finite = np.isfinite(half).reshape(len(waves), -1).all(axis=1)
                for j in np.where(~finite)[0]:
                    failures[utt_ids[good[j]]] = (f"{paths[good[j]]}: non-finite features (NaN, "
                                                  "or beyond float16 range)")
                    half[j] = np.nan
                mm[good] = half
            done += 1
            bar.advance(len(rows), sum(durations[i] for i in rows) / 3600)
            if time.perf_counter() - last_checkpoint >= checkpoint_seconds:
                checkpoint()
                last_checkpoint = time.perf_counter()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        checkpoint()  # batches finished before the error are kept: a rerun resumes after them
        raise
    pool.shutdown(wait=True)
    bar.close()
    meta["complete"] = True
    meta["failures"] = {u: failures[u] for u in utt_ids if u in failures}  # manifest order
    meta["run"] = {"wall_seconds": round(time.perf_counter() - t0, 3), "resumed_at_batch": start,
                   "device": encoder.device}
    checkpoint()
    return FeatureStore.open(out)
