"""Worker processes that use one BLAS/OpenMP thread and die with the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys


def init_worker(threads: int = 1) -> None:
    """Process-pool initializer: `threads` BLAS/OpenMP/torch threads, and exit when the parent
    dies (Linux parent-death signal), so killing a grid never leaves orphans computing."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
