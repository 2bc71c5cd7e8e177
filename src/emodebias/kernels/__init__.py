"""Native CPU kernels (head.c), compiled on first use with the system C compiler.

The shared library is cached per source, compiler flags and CPU (it is built with
``-march=native``) under ``$EMODEBIAS_KERNEL_CACHE`` (default ``~/.cache/emodebias/kernels``),
written to a temporary name and renamed, so concurrent worker processes never load a half-written
file. Without a compiler, or with ``EMODEBIAS_KERNELS=0``, `library()` is None and training uses
the pure-PyTorch path (same numbers within float32 rounding).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("head.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared", "-std=gnu11")

_P, _I = ctypes.c_void_p, ctypes.c_int64
# argument types of each exported function (pointers as addresses)
SIGNATURES: dict[str, tuple] = {
    "mix_forward": (_P, ctypes.c_int, _I, _I, _P, _I, _I, _I, _P, _P, _P),
    "mix_backward": (_P, ctypes.c_int, _I, _I, _P, _I, _I, _I, _P, _P),
    "chain_prepare": (_P, _P, _P, _P, _I, _I, _I, _I, _P, _P, _P),
    "chain_logits": (_P, _P, _P, _I, _I, _I, _I, _P),
    "mix_logits": (_P, ctypes.c_int, _I, _I, _P, _I, _I, _I, _P, _P, _P, _I, _P, _P),
    "chain_backward": (_P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P),
    "adam_outer": (_P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _P, _P, _P),
}


def _cpu_id() -> str:
    """What -march=native depends on: the machine and its CPU flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{platform.machine()} {flags}"


def _cache_dir() -> Path:
    env = os.environ.get("EMODEBIAS_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "emodebias" / "kernels"


def _compiler() -> str | None:
    return next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)),
                None)


def build(cache: Path | None = None, extra_flags: tuple[str, ...] = ()) -> Path:
    """Compile head.c (if not cached) and return the shared library's path; raises on failure.
    `extra_flags` are appended (tests build the portable float16 path with -mno-f16c)."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (tried $CC, cc, gcc, clang)")
    flags = FLAGS + tuple(extra_flags)
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + repr((cc, flags, _cpu_id())).encode()).hexdigest()[:16]
    out = (cache or _cache_dir()) / f"head-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE.name}: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load(path: Path) -> ctypes.CDLL:
    """A built library with its functions' argument types declared."""
    lib = ctypes.CDLL(str(path))
    for name, args in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = list(args), None
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None when disabled (EMODEBIAS_KERNELS=0) or not buildable."""
    if os.environ.get("EMODEBIAS_KERNELS", "1") == "0":
        return None
    try:
        return load(build())
    except (RuntimeError, OSError) as exc:
        log.warning("native kernels unavailable, using the PyTorch path: %s", exc)
        return None
