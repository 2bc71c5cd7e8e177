"""Worker processes that use one BLAS/OpenMP thread and die with the process that started them."""

from __future__ import annotations

import os
import sys
import threading
import time


def _watch_parent(parent: int, interval: float = 1.0) -> None:
    """Exit as soon as the parent process is gone (this process is re-parented)."""
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def init_worker(threads: int = 1) -> None:
    """Process-pool initializer: `threads` BLAS/OpenMP/torch threads, and exit when the parent
    dies (a daemon thread watches the parent id), so killing a grid never leaves orphans
    computing."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    parent = os.getppid()
    if parent == 1:  # the parent died before this worker started
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="parent-watch").start()
