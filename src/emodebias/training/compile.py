"""`torch.compile` where it pays, eager PyTorch otherwise.

The head's hot functions (layer mix, the two linear maps) exist once as plain PyTorch
arithmetic (`model.mix_dense`, `model.logits_dense`), compiled here with inductor; in eager mode
the model runs the same sums through autograd functions with hand-written exact gradients that
read the batch in place (`model._LayerSum`, `model._LinearChain`). Both give the same numbers
to float32 rounding (tests compare them).

`EMODEBIAS_COMPILE`: unset or `auto` compiles on CUDA devices only; `1` compiles on every
device; `0` (or `false` / `no` / `off`) never. On CPU, compilation is off by default: each
graph variant (stack size 1 or more, short or long batches, training or evaluation) takes 7-18 s
to compile on 2 cores, and the compiled head is not faster than the eager one there (see
docs/decisions.md). A compilation that fails (no C++ compiler for inductor, an
unsupported backend) is logged once and training continues eagerly. Compiled code is cached
where PyTorch puts it (`TORCHINDUCTOR_CACHE_DIR`, by default ``<tmp>/torchinductor_<user>``);
nothing is written to the user's home.
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


_OFF = ("0", "false", "no", "off")
_FAILED: list[str] = []  # functions whose compilation failed: eager from then on


def enabled(device: torch.device | str | None = None) -> bool:
    """Whether to compile for `device` (the environment is read at each call, so tests can
    switch): `EMODEBIAS_COMPILE=1` always, `0` never, unset / `auto` on CUDA only."""
    value = os.environ.get(ENV, "auto").strip().lower()
    if value in _OFF or _FAILED:
        return False
    if value == "auto":
        return device is not None and torch.device(device).type == "cuda"
    return True


def use_compiled(tensor: torch.Tensor) -> bool:
    """Whether the compiled functions should run for inputs on `tensor`'s device."""
    return enabled(tensor.device)


class Compiled:
    """A function that runs compiled (`torch.compile`, inductor; callers check `enabled`), or
    eagerly once its compilation failed. Shapes that change (batch and stack sizes) are compiled
    once as dynamic after the first, not per size."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._compiled: Callable[..., Any] | None = None
        self.failed = False
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any) -> Any:
        if self.failed:
            return self.fn(*args)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=None)
        try:
            return self._compiled(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: eager from now on
            self.failed = True
            _FAILED.append(self.fn.__name__)
            log.warning("torch.compile is unavailable for %s (%s: %s); training runs in eager "
                        "mode (same numbers, slower); set %s=0 to skip compiling",
                        self.fn.__name__, type(exc).__name__, str(exc).splitlines()[0][:200], ENV)
            return self.fn(*args)


def compiled(fn: Callable[..., Any]) -> Compiled:
    """Decorator form of `Compiled`."""
    return Compiled(fn)
