"""The head's layer mix and linear chain as native CPU kernels over feature-bank rows.

A batch is passed as `BankRows` (row indices into the bank, never a gathered copy): the kernels
read each feature row in place (float16 rows are converted on the fly), so a training step streams
the batch's features once forward and once backward instead of copying them to a float32 batch
first, and the W1-sized products run as cache-friendly row loops instead of skinny GEMMs. The
gradients are the same sums as the PyTorch path (`model._LayerSum`, `model._LinearChain`), summed
in another order: equal to float32 rounding (tests compare both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from emodebias import kernels


@dataclass(frozen=True)
class BankRows:
    """Feature rows of a bank [N, L, D] (float16 / float32, C-contiguous; a CPU tensor or a
    numpy array such as a memory-mapped store): per-run rows [R, B], or rows [B] that every run
    reads (evaluation). Behaves like the float32 features [*rows.shape, L, D] it stands for."""

    bank: torch.Tensor | np.ndarray
    rows: torch.Tensor  # int64, contiguous

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.rows.shape, *self.bank.shape[1:]))

    @property
    def half(self) -> int:
        return int(self.bank.dtype in (np.float16, torch.float16))

    def address(self) -> int:
        b = self.bank
        return b.data_ptr() if isinstance(b, torch.Tensor) else b.ctypes.data

    def dense(self) -> torch.Tensor:
        """The float32 features [*rows.shape, L, D] (a copy), for consumers without a kernel."""
        flat = self.rows.reshape(-1)
        if isinstance(self.bank, torch.Tensor):
            x = self.bank.index_select(0, flat)
        else:
            x = torch.from_numpy(np.asarray(self.bank[flat.numpy()]))
        return x.to(torch.float32).reshape(self.shape)

    def layout(self, n_runs: int) -> tuple[int, int, int]:
        """(R, B, row stride between runs) for kernels: 0 when every run reads the same rows."""
        if self.rows.dim() == 1:
            return n_runs, len(self.rows), 0
        if self.rows.shape[0] != n_runs:
            raise ValueError(f"rows for {self.rows.shape[0]} runs given to {n_runs} runs")
        return n_runs, self.rows.shape[1], self.rows.shape[1]


@dataclass
class ChainGradSink:
    """A head's weight gradients in factored form, summed over a step's backward calls and
    handed to the optimiser (`StackedAdam.step`), which updates W1 without ever writing its
    gradient: dw1 = dmt^T w2^T and dw2 = w1^T dmt^T + bias, with w1, w2 as in the forward."""

    parts: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def add(self, dmt: torch.Tensor, bias: torch.Tensor) -> None:
        self.parts.append((dmt, bias))

    def take(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(dmt [R, K, D], bias [R, H, K]) summed, or None when nothing is pending; clears."""
        if not self.parts:
            return None
        dmt, bias = (sum(x[1:], x[0]) for x in zip(*self.parts, strict=True))
        self.parts.clear()
        return dmt, bias


def _round4(k: int) -> int:
    return (k + 3) // 4 * 4


def _p(t: torch.Tensor) -> int:
    return t.data_ptr()


def _opt(t: torch.Tensor | None) -> int | None:
    """An optional output's address (None = NULL: not computed)."""
    return None if t is None else t.data_ptr()


def _lib() -> Any:
    lib = kernels.library()
    if lib is None:
        raise RuntimeError("native kernels are unavailable (see emodebias.kernels)")
    return lib


def _mix(x: BankRows, s: torch.Tensor) -> torch.Tensor:
    n_runs, b, rs = x.layout(len(s))
    n_layers, d = x.bank.shape[1:]
    h = s.new_empty(n_runs, b, d)
    buf = s.new_empty(n_layers * d)
    _lib().mix_forward(x.address(), x.half, n_layers, d, _p(x.rows), n_runs, b, rs, _p(s), _p(h),
                       _p(buf))
    return h


def _mix_grad(x: BankRows, g: torch.Tensor) -> torch.Tensor:
    n_runs, b, rs = x.layout(len(g))
    n_layers, d = x.bank.shape[1:]
    ds = g.new_empty(n_runs, n_layers)
    _lib().mix_backward(x.address(), x.half, n_layers, d, _p(x.rows), n_runs, b, rs, _p(g),
                        _p(ds))
    return ds


class _BankMix(torch.autograd.Function):
    """h[r, b] = sum_l s[r, l] x[rows[r, b], l]; ds[r, l] = sum_b <x[rows[r, b], l], dh[r, b]>."""

    @staticmethod
    def forward(ctx, s, x):  # noqa: ANN001, ANN205 - autograd signature
        ctx.x = x
        return _mix(x, s.contiguous())

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        return _mix_grad(ctx.x, g.contiguous()), None


class _BankMixChain(torch.autograd.Function):
    """logits = mix(x, s) (w1 w2) + b1 w2 + b2 through mt = (w1 w2)^T [R, K, D], as
    `model._LinearChain` does; gradients from `chain_backward` and `mix_backward`. With a
    `ChainGradSink`, w1's and w2's gradients go to the sink (factored) instead of autograd."""

    @staticmethod
    def forward(ctx, s, w1, b1, w2, b2, x, sink):  # noqa: ANN001, ANN205 - autograd signature
        lib = _lib()
        w1, b1, w2, b2 = (t.contiguous() for t in (w1, b1, w2, b2))
        n_runs, d, hid = w1.shape
        k = w2.shape[2]
        h = _mix(x, s.contiguous())
        mt, c = w1.new_empty(n_runs, k, d), w1.new_empty(n_runs, k)
        work = w1.new_empty(_round4(k) * hid)
        lib.chain_prepare(_p(w1), _p(b1), _p(w2), _p(b2), n_runs, d, hid, k, _p(mt), _p(c),
                          _p(work))
        logits = w1.new_empty(n_runs, h.shape[1], k)
        lib.chain_logits(_p(h), _p(mt), _p(c), n_runs, h.shape[1], d, k, _p(logits))
        ctx.x, ctx.sink = x, sink
        ctx.save_for_backward(h, mt, w1, b1, w2)
        return logits

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        h, mt, w1, b1, w2 = ctx.saved_tensors
        g = g.contiguous()
        n_runs, d, hid = w1.shape
        b, k = g.shape[1:]
        dh, dmt = torch.empty_like(h), g.new_empty(n_runs, k, d)
        db1, db2 = torch.empty_like(b1), g.new_empty(n_runs, k)
        dw1 = dw2 = None
        if ctx.sink is None:
            dw1, dw2 = torch.empty_like(w1), torch.empty_like(w2)
        work = g.new_empty(2 * _round4(k) * hid)
        _lib().chain_backward(_p(g), _p(h), _p(mt), _p(w1), _p(b1), _p(w2), n_runs, b, d, hid, k,
                              _p(dh), _p(dmt), _p(db1), _p(db2), _opt(dw1), _opt(dw2), _p(work))
        if ctx.sink is not None:
            ctx.sink.add(dmt, b1.unsqueeze(2) * db2.unsqueeze(1))
        return _mix_grad(ctx.x, dh), dw1, db1, dw2, db2, None, None


def bank_mix(s: torch.Tensor, x: BankRows) -> torch.Tensor:
    """Layer mix [R, B, D] of bank rows with softmaxed layer weights s [R, L]."""
    return _BankMix.apply(s, x)


def bank_mix_chain(s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                   b2: torch.Tensor, x: BankRows, sink: ChainGradSink | None = None
                   ) -> torch.Tensor:
    """Logits [R, B, K] of the linear head (mix -> Linear -> Linear) on bank rows; with `sink`,
    w1's and w2's gradients are deferred to it (see `ChainGradSink`)."""
    return _BankMixChain.apply(s, w1, b1, w2, b2, x, sink)


def adam_chain(w1: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: torch.Tensor,
               w2: torch.Tensor, dmt: torch.Tensor, active: np.ndarray | None,
               hp: tuple[float, float, float, float, float]) -> torch.Tensor:
    """Adam (L2 weight decay; hp = lr, beta1, beta2, eps, weight decay) on w1 [R, D, H] in
    place, from the factored gradient dmt^T w2^T, for the `active` runs (all when None): moments
    m, v and step counts t [R] advance as torch's Adam's would. Returns w1_old^T dmt^T
    [R, H, K], w2's gradient without its b1 term."""
    n_runs, d, hid = w1.shape
    k = w2.shape[2]
    on = np.ones(n_runs, np.uint8) if active is None else np.asarray(active, np.uint8)
    on = np.ascontiguousarray(on)
    args = np.asarray(hp, dtype=np.float64)
    dw2 = w2.new_empty(w2.shape)
    work = w1.new_empty(2 * _round4(k) * hid + 4 * hid)
    dmt, w2 = dmt.contiguous(), w2.contiguous()
    _lib().adam_chain(_p(w1), _p(m), _p(v), _p(t), _p(w2), _p(dmt), on.ctypes.data,
                      n_runs, d, hid, k, args.ctypes.data, _p(dw2), _p(work))
    return dw2
