"""Atomic file writes: readers (and a rerun after a crash) see the old file or the whole new one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
