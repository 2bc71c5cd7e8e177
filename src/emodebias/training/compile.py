"""`torch.compile` where it is available and enabled, eager PyTorch otherwise.

The training step's hot functions (the head's layer mix and linear maps over feature-bank
rows, the stacked Adam update) are plain PyTorch functions wrapped here. Compiled, inductor
fuses the float16 gather, the layer mix and the elementwise Adam passes into a few loops; eager
mode runs the same functions op by op and gives the same numbers to float32 rounding.

`EMODEBIAS_COMPILE=0` (or `false` / `no` / `off`) keeps everything eager. A compilation that
fails (no C++ compiler for inductor on CPU, an unsupported backend) is logged once and the
function runs eagerly from then on. Compiled code is cached where PyTorch puts it
(`TORCHINDUCTOR_CACHE_DIR`, by default ``<tmp>/torchinductor_<user>``); nothing is written to
the user's home.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

ENV = "EMODEBIAS_COMPILE"


def enabled() -> bool:
    """Whether compilation is on (the environment is read at each call, so tests can switch)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class Compiled:
    """A function that runs compiled (`torch.compile`, inductor) when `enabled()`, else eagerly;
    shapes that change (batch and stack sizes) are compiled once as dynamic, not per size."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._compiled: Callable[..., Any] | None = None
        self.failed = False
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any) -> Any:
        if self.failed or not enabled():
            return self.fn(*args)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=None)
        try:
            return self._compiled(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: eager from now on
            self.failed = True
            log.warning("torch.compile is unavailable for %s (%s: %s); training runs in eager "
                        "mode (same numbers, slower); set %s=0 to skip compiling",
                        self.fn.__name__, type(exc).__name__, str(exc).splitlines()[0][:200], ENV)
            return self.fn(*args)


def compiled(fn: Callable[..., Any]) -> Compiled:
    """Decorator form of `Compiled`."""
    return Compiled(fn)
