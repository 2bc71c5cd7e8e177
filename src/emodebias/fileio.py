"""Atomic file writes (readers, and a rerun after a crash, see the old file or the whole new one)
and folder write locks (two writers of one folder wait for each other instead of interleaving)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from emodebias.errors import UserError

log = logging.getLogger(__name__)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A per-process temporary path beside `path` to write; renamed over `path` when the block
    succeeds, removed when it raises."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def write_text_atomic(path: Path, text: str) -> Path:
    """`path.write_text(text)`, atomically (see `replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


LOCK_FILE = ".lock"


class FolderLockedError(UserError):
    """Another process holds the write lock of a folder (and we would not wait longer)."""


@contextmanager
def folder_lock(folder: Path, what: str, timeout: float | None = None,
                hint: str = "wait for it to finish or write somewhere else") -> Iterator[Path]:
    """Hold the exclusive write lock of `folder` (a `.lock` file in it) for the block.

    Two writers of one folder would interleave their files; with the lock the second one waits
    (`timeout` None: as long as it takes, saying so once on the log) or, after `timeout`
    seconds (0: at once), raises FolderLockedError naming the folder. The lock is an OS file
    lock, so a killed holder releases it with its last file descriptor.
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if timeout is not None and timeout <= 0:
            raise FolderLockedError(f"{folder} is being written by another process ({what} lock "
                                    f"{folder / LOCK_FILE} is held); {hint}") from None
        log.warning("%s is being written by another process; waiting for it to finish", folder)
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise FolderLockedError(
                f"{folder} is still being written by another process after {timeout:g} s "
                f"({what} lock {folder / LOCK_FILE} is held); {hint}") from None
    try:
        yield folder
    finally:
        lock.release()
