"""FeatureStore: every utterance encoded once, pooled per layer, kept on disk as a float16 memmap.

A store is one directory:
- `features.npy`: float16 [N, L, D] in manifest row order (read memory-mapped, so corpora larger
  than RAM work);
- `meta.json`: encoder id, config (incl. revision), layer names, dim, sample rate, `max_seconds`,
  manifest content hash, the store `key` (a hash of all of these), `utt_ids` (row order),
  `failures` ({utt_id: reason}), `complete`, the resume marker (`batches_done`, `plan_hash`) and,
  once complete, `content_hash` (a digest of the stored numbers and of which rows failed);
- `plan.json`: the batch plan and the durations it was made from (for resuming);
- `groups/`: clusters cached from these features (`emodebias.groups.cluster`), keyed by
  `content_hash`, and removed whenever the store is rewritten;
- `.lock`: the write lock. `extract` holds it while writing, so a second writer of the same
  folder waits for the first (or gives up after `lock_timeout`) instead of interleaving rows.

Staleness: the key covers the manifest content hash (ids, paths, labels), the encoder id and
config, and `max_seconds`. `extract` into a directory holding another key raises; with
`overwrite=True` it always starts over. `FeatureStore.open(dir, manifest=..., encoder=...)` and
`check_inputs(store, manifest, split, groups)` raise on a mismatch, naming both sides: a store
made from another manifest with the same utterance ids (other paths or labels) is refused.
`store_dir(root, manifest, encoder)` names a keyed subdirectory for caches.

Failures: a file that cannot be used (missing, unreadable, empty, < 0.1 s: `emodebias.data.audio`
raises AudioError) keeps its row, filled with NaN, and its reason goes to `meta["failures"]`;
`.valid_mask` excludes them. NaN (not zeros) so a consumer that ignores the mask fails loudly.
Failures can heal: `retry_failed=True` (`extract --retry-failed`) encodes the failed rows of a
complete store again. A store in which every file failed is an error, not an empty result.

Extraction: files are ordered by duration (longest first, so memory errors show up at once) and
packed into batches of at most `batch_seconds` of padded audio; audio for the next batches is read
and resampled by worker threads while the encoder runs. Rows are written to the memmap and, after
the first batch and then every `checkpoint_seconds`, flushed before `meta.json` (the resume
marker) is atomically replaced. A rerun after a crash or kill continues from the marker with the
same deterministic plan, so the final store is identical, bit for bit, to an uninterrupted run.
A rerun with other batch settings keeps the finished batches and plans the rest anew; only a
change of the audio itself (other durations, files that became readable or unreadable) makes a
resume impossible, and the error names the changed files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from emodebias.data.audio import DEFAULT_MAX_SECONDS, TARGET_SR, AudioError, load_audio
from emodebias.data.manifest import Manifest
from emodebias.errors import UserError
from emodebias.features.encoders.base import Encoder, thread_limits
from emodebias.fileio import folder_lock, replacing, write_text_atomic

FORMAT_VERSION = 1
META_FILE = "meta.json"
FEATURES_FILE = "features.npy"
PLAN_FILE = "plan.json"  # the batch plan and the durations it was made from (for resuming)
GROUPS_CACHE = "groups"  # clusters cached from this store (removed when the store is rewritten)
log = logging.getLogger(__name__)


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
              max_seconds: float | None = DEFAULT_MAX_SECONDS) -> Path:
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
        raise StoreError(f"{path / META_FILE} is damaged: not valid JSON ({exc}); extract the "
                         "store again with --overwrite") from None


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
        failures = meta.get("failures") or {}
        if meta["utt_ids"] and len(failures) >= len(meta["utt_ids"]):
            first = next(iter(failures.items()))
            raise StoreError(f"{path}: every one of the {len(failures)} files failed extraction "
                             f"(e.g. {first[0]}: {first[1]}); fix the audio and rerun "
                             "`emodebias extract` with --retry-failed")
        store = cls(path, meta, features)
        store.check(manifest, encoder, max_seconds)
        return store

    def check(self, manifest: Manifest | None = None, encoder: Encoder | None = None,
              max_seconds: float | None = None, manifest_name: str | Path | None = None) -> None:
        """Raise StoreError unless this store was made from `manifest` with `encoder`.

        The manifest is compared by content hash (ids, paths, labels): a store made from another
        manifest that happens to share the utterance ids is refused too.
        """
        recorded = self.meta.get("manifest_hash")  # None: a hand-made store, not compared
        if manifest is not None:
            manifest.require_made_from(
                recorded, f"features {self.path} were",
                f"extract features for {manifest_name or 'this manifest'} into a new --out",
                name=manifest_name, error=StoreError)
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

    @property
    def content_id(self) -> str:
        """Identity of the stored numbers: the content digest written when extraction finished
        (stores written before it existed fall back to the file's size and mtime)."""
        if self.meta.get("content_hash"):
            return str(self.meta["content_hash"])
        st = (self.path / FEATURES_FILE).stat()
        return f"{self.key}-{st.st_size}-{st.st_mtime_ns}"

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


def store_state(path: str | Path) -> tuple[str, str]:
    """(state, why) of a store folder: "complete", "incomplete", "missing" or "damaged".

    Lets a cache that remembers "this store was built" notice that the store was deleted or
    damaged since, and build it again instead of failing on every rerun.
    """
    path = Path(path)
    if not (path / META_FILE).is_file():
        return "missing", f"no {META_FILE} in {path}"
    try:
        meta = json.loads((path / META_FILE).read_text())
        if not meta.get("complete"):
            return "incomplete", f"{meta.get('batches_done')}/{meta.get('n_batches')} batches"
        features = np.load(path / FEATURES_FILE, mmap_mode="r")
        expected = (len(meta["utt_ids"]), meta["n_layers"], meta["dim"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return "damaged", f"{type(exc).__name__}: {exc}"
    if features.shape != expected:
        return "damaged", f"{FEATURES_FILE} has shape {features.shape}, meta says {expected}"
    return "complete", ""


def check_inputs(store: Any, manifest: Manifest, split: Any = None, groups: Any = None,
                 *, manifest_name: str | Path | None = None, split_name: str | Path | None = None,
                 groups_name: str | Path | None = None) -> None:
    """Refuse a store, split or group assignment made from another manifest (one-line errors).

    Call this wherever a store, a manifest, a split and training groups meet (training data
    assembly): the store's manifest hash, the split's recorded manifest hash and ids, and the
    groups' manifest hash and coverage of the training utterances are compared.
    """
    if hasattr(store, "check"):  # stand-ins without a recorded manifest are not compared
        store.check(manifest, manifest_name=manifest_name)
    if split is not None and hasattr(split, "check"):
        split.check(manifest, source=split_name, manifest_name=manifest_name)
    if groups is not None and hasattr(groups, "check"):
        needed = list(split.train) if split is not None else None
        groups.check(manifest, source=groups_name, manifest_name=manifest_name, needed=needed)


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


def _rounded(durations: np.ndarray) -> list[float | None]:
    """Durations as saved and compared (0.1 ms; None for unusable files)."""
    return [round(float(d), 4) if np.isfinite(d) else None for d in durations]


def _plan_hash(batches: list[list[int]], durations: np.ndarray) -> str:
    blob = json.dumps([batches, _rounded(durations)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- progress
class _Progress:
    """Files done, audio hours done, ETA; silent when disabled."""

    def __init__(self, enabled: bool, total_files: int, total_hours: float, label: str) -> None:
        from emodebias.progress import Bar

        self.total_hours, self.hours = total_hours, 0.0
        self.bar = Bar(total_files, label, enabled=enabled, detail=self._detail())

    def _detail(self) -> str:
        return f"files · {self.hours:.2f}/{self.total_hours:.2f} h audio"

    def advance(self, files: int, hours: float) -> None:
        self.hours += hours
        self.bar.advance(files, self._detail())

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------- extraction
def _durations(paths: list[str], utt_ids: list[str], rows: list[int], max_seconds: float | None,
               skip_bad: bool, num_workers: int) -> tuple[np.ndarray, dict[str, str]]:
    """Header durations of `rows` (NaN elsewhere and for unusable files) and their failures."""
    failures: dict[str, str] = {}
    durations = np.full(len(paths), np.nan)
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        futures = {i: pool.submit(_duration, paths[i], max_seconds) for i in rows}
        for i, fut in futures.items():
            try:
                durations[i] = fut.result()
            except AudioError as exc:
                if not skip_bad:
                    raise
                failures[utt_ids[i]] = str(exc)
    return durations, failures


def _encode_batches(batches: list[list[int]], paths: list[str], utt_ids: list[str],
                    encoder: Encoder, max_seconds: float | None, mm: np.ndarray,
                    failures: dict[str, str], skip_bad: bool, num_workers: int,
                    on_batch: Callable[[list[int]], None]) -> None:
    """Encode `batches` into the rows of `mm`, reading audio ahead on worker threads.

    Unusable files and non-finite features become NaN rows with a reason in `failures`;
    `on_batch(rows)` runs after each batch's rows are written (progress, checkpoints).
    """
    shape = mm.shape

    def load(i: int) -> np.ndarray | AudioError:
        try:
            return load_audio(paths[i], encoder.sample_rate, max_seconds)
        except AudioError as exc:
            return exc

    pool = ThreadPoolExecutor(max(1, num_workers))
    pending: deque[tuple[list[int], list[Future]]] = deque()
    todo = iter(batches)

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
            on_batch(rows)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _write_plan(out: Path, batches: list[list[int]], durations: np.ndarray) -> str:
    """Save the batch plan with the durations it was made from; returns its hash."""
    blob = {"batches": batches, "durations": _rounded(durations)}
    write_text_atomic(out / PLAN_FILE, json.dumps(blob))
    return _plan_hash(batches, durations)


def _resume_plan(out: Path, previous: dict[str, Any], durations: np.ndarray,
                 paths: list[str]) -> list[list[int]]:
    """The interrupted extraction's plan, after checking the audio is what it was.

    Batch settings do not matter here (a rerun may change them); only a change of the files
    themselves (other durations, files that became unreadable or readable) does.
    """
    now = _rounded(durations)
    try:
        saved = json.loads((out / PLAN_FILE).read_text())
        old = [[int(i) for i in b] for b in saved["batches"]]
        before = list(saved["durations"])
    except (OSError, ValueError, KeyError, TypeError):  # no readable plan: replay the old one
        before = now
        old = plan_batches(durations, float(previous.get("batch_seconds", 60.0)),
                           int(previous.get("max_batch", 256)))
    old_dur = np.array([np.nan if d is None else d for d in before], dtype=float)
    changed = ([p for p, a, b in zip(paths, before, now, strict=True) if a != b]
               if len(before) == len(now) else paths)
    if changed or _plan_hash(old, old_dur) != previous.get("plan_hash"):
        what = (f"{len(changed)} file(s) have other durations or read errors now, e.g. "
                f"{changed[0]}" if changed else "its batch plan cannot be recovered")
        raise StoreError(f"{out}: the audio changed since the interrupted extraction ({what}); "
                         "start over with --overwrite")
    return old


def _clear_store(out: Path) -> None:
    """Remove a store's files and everything cached from them (groups/), keeping the lock."""
    for name in (META_FILE, FEATURES_FILE, PLAN_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / GROUPS_CACHE, ignore_errors=True)


def _content_digest(out: Path, failures: dict[str, str]) -> str:
    """Hash of the stored numbers and of which rows failed: the key of caches derived from them."""
    h = hashlib.sha256()  # hardware-accelerated on current CPUs: ~2x blake2b, reads dominate
    with open(out / FEATURES_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    h.update(json.dumps(sorted(failures)).encode())
    return h.hexdigest()[:16]


def extract(
    manifest: Manifest,
    encoder: Encoder,
    out_dir: str | Path,
    batch_seconds: float = 60.0,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    device: str | None = None,
    progress: bool = True,
    skip_bad: bool = True,
    overwrite: bool = False,
    num_workers: int = 2,
    checkpoint_seconds: float = 10.0,
    max_batch: int = 256,
    retry_failed: bool = False,
    lock_timeout: float | None = None,
) -> FeatureStore:
    """Encode every manifest row into the store at `out_dir` (resumable; see module docstring).

    `device` moves the encoder first (None keeps its device). `skip_bad=False` raises on the
    first unusable file instead of recording it. A complete store with the same key is returned
    as is (with `retry_failed`, its failed rows are encoded again first); a store with another
    key raises unless `overwrite`, which always starts over. The store folder is locked while
    written: a second writer waits (`lock_timeout` None) or raises after `lock_timeout` s.
    A store in which every file failed raises StoreError (nothing usable was produced).
    """
    if not checkpoint_seconds >= 0:
        raise StoreError(f"checkpoint_seconds must be >= 0, got {checkpoint_seconds}")
    if not batch_seconds > 0:
        raise StoreError(f"batch_seconds must be > 0, got {batch_seconds}")
    out = Path(out_dir)
    with folder_lock(out, "feature store", lock_timeout,
                     hint="wait for that extraction to finish or use another --out"):
        if device is not None:
            encoder.to(device)
        with thread_limits(encoder.cpu_threads(num_workers)):  # no oversubscribed cores
            return _extract_locked(manifest, encoder, out, batch_seconds, max_seconds, progress,
                                   skip_bad, overwrite, num_workers, checkpoint_seconds,
                                   max_batch, retry_failed)


def _extract_locked(manifest: Manifest, encoder: Encoder, out: Path, batch_seconds: float,
                    max_seconds: float | None, progress: bool, skip_bad: bool, overwrite: bool,
                    num_workers: int, checkpoint_seconds: float, max_batch: int,
                    retry_failed: bool) -> FeatureStore:
    """`extract` under the store's write lock."""
    manifest_hash = manifest.content_hash()
    key = store_key(manifest_hash, encoder, max_seconds)
    utt_ids, paths = manifest.utt_ids, manifest.df["path"].astype(str).tolist()
    shape = (len(utt_ids), encoder.n_layers, encoder.dim)

    previous = _read_meta(out) if (out / META_FILE).is_file() and not overwrite else None
    if previous is not None and previous.get("key") != key:
        raise StoreError(
            f"{out} already holds features for encoder {previous.get('encoder')!r} and "
            f"manifest {previous.get('manifest_hash')} (key {previous.get('key')}); this run "
            f"is {encoder.id!r} on manifest {manifest_hash} (key {key}). Use another output "
            "directory (see store_dir) or overwrite=True / --overwrite")
    if previous is None:
        _clear_store(out)
    elif previous.get("complete"):
        if retry_failed and previous.get("failures"):
            _retry_failed(out, previous, encoder, paths, utt_ids, max_seconds, batch_seconds,
                          max_batch, skip_bad, num_workers, progress)
        return FeatureStore.open(out)

    rows_all = list(range(len(paths)))
    durations, failures = _durations(paths, utt_ids, rows_all, max_seconds, skip_bad,
                                     num_workers)
    batches = plan_batches(durations, batch_seconds, max_batch)
    start = 0
    if previous is not None:
        old = _resume_plan(out, previous, durations, paths)
        start = int(previous["batches_done"])
        if old != batches:  # other batch settings: keep finished batches, re-plan the rest
            rest = durations.copy()
            rest[[i for b in old[:start] for i in b]] = np.nan
            batches = old[:start] + plan_batches(rest, batch_seconds, max_batch)
            log.info("%s: resuming after %d finished batches with the new batch settings",
                     out, start)
        failures = {**failures, **previous["failures"]}
    plan_hash = _write_plan(out, batches, durations)
    n_unplanned = len(failures)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "key": key, "encoder": encoder.id,
        "config": encoder.config, "info": encoder.info, "n_layers": encoder.n_layers,
        "dim": encoder.dim, "sample_rate": encoder.sample_rate, "max_seconds": max_seconds,
        "manifest_hash": manifest_hash, "dtype": "float16", "utt_ids": utt_ids,
        "failures": failures, "complete": False, "batches_done": start,
        "n_batches": len(batches), "plan_hash": plan_hash, "batch_seconds": batch_seconds,
        "max_batch": max_batch, "audio_seconds": float(np.nansum(durations)),
    }
    if previous is not None:
        mm = np.lib.format.open_memmap(out / FEATURES_FILE, mode="r+")
        if mm.shape != shape:
            raise StoreError(f"{out / FEATURES_FILE} has shape {mm.shape}, expected {shape}; "
                             "start over with --overwrite")
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
    t0 = last_checkpoint = time.perf_counter()
    done = start

    def checkpoint() -> None:
        mm.flush()
        meta["batches_done"] = done
        _write_meta(out, meta)

    def on_batch(rows: list[int]) -> None:
        nonlocal done, last_checkpoint
        done += 1
        bar.advance(len(rows), sum(durations[i] for i in rows) / 3600)
        # the first batch is always kept, so a kill early in a long extraction loses little
        if done == start + 1 or time.perf_counter() - last_checkpoint >= checkpoint_seconds:
            checkpoint()
            last_checkpoint = time.perf_counter()

    try:
        _encode_batches(batches[start:], paths, utt_ids, encoder, max_seconds, mm, failures,
                        skip_bad, num_workers, on_batch)
    except BaseException:
        bar.close()
        checkpoint()  # batches finished before the error are kept: a rerun resumes after them
        raise
    bar.close()
    mm.flush()
    meta["complete"] = True
    meta["failures"] = {u: failures[u] for u in utt_ids if u in failures}  # manifest order
    meta["content_hash"] = _content_digest(out, meta["failures"])
    meta["run"] = {"wall_seconds": round(time.perf_counter() - t0, 3), "resumed_at_batch": start,
                   "device": encoder.device}
    checkpoint()
    return FeatureStore.open(out)


def _retry_failed(out: Path, meta: dict[str, Any], encoder: Encoder, paths: list[str],
                  utt_ids: list[str], max_seconds: float | None, batch_seconds: float,
                  max_batch: int, skip_bad: bool, num_workers: int, progress: bool) -> None:
    """Encode the failed rows of a complete store again; rows that now work are healed.

    meta.json is replaced once, at the end: until then the store stays the complete store it
    was (a healed row's features are not used while meta.json still lists it as failed).
    """
    row_of = {u: i for i, u in enumerate(utt_ids)}
    rows = [row_of[u] for u in meta["failures"]]
    durations, failures = _durations(paths, utt_ids, rows, max_seconds, skip_bad, num_workers)
    mm = np.lib.format.open_memmap(out / FEATURES_FILE, mode="r+")
    bar = _Progress(progress, len(rows), float(np.nansum(durations)) / 3600,
                    f"retry {encoder.id}")
    try:
        _encode_batches(plan_batches(durations, batch_seconds, max_batch), paths, utt_ids,
                        encoder, max_seconds, mm, failures, skip_bad, num_workers,
                        lambda b: bar.advance(len(b), sum(durations[i] for i in b) / 3600))
    finally:
        bar.close()
    mm.flush()  # rows that failed again were NaN-filled where they failed
    healed = [u for u in meta["failures"] if u not in failures]
    log.info("%s: %d of %d failed rows re-extracted", out, len(healed), len(rows))
    meta["failures"] = {u: failures[u] for u in utt_ids if u in failures}
    meta["content_hash"] = _content_digest(out, meta["failures"])
    meta["retried"] = {"rows": len(rows), "healed": len(healed)}
    shutil.rmtree(out / GROUPS_CACHE, ignore_errors=True)  # made from the old rows
    _write_meta(out, meta)
