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
class FactoredGrad:
    """A weight W [R, D, H]'s gradient in factored form, dW = sum of u^T v over the parts
    (u [R, n, D], v [R, n, H]), gathered over a step's backward calls and handed to the optimiser
    (`StackedAdam.step`), which updates W without ever writing dW (`adam_outer`).

    An encoder's backward adds (mix, dh): rank B. A linear chain's backward adds (dmt, W2^T):
    rank K, and asks for W2's gradient, W_old^T dmt^T + bias, from the same pass over W. A
    chain with detached columns adds W2^T with those columns zeroed (they do not reach W)."""

    # (id(W2), detached) -> [W2, sum dmt, sum bias, W2 with its detached columns zeroed]
    chains: dict[tuple, list] = field(default_factory=dict)
    outers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def add(self, u: torch.Tensor, v: torch.Tensor) -> None:
        self.outers.append((u, v))

    def add_chain(self, dmt: torch.Tensor, w2: torch.Tensor, bias: torch.Tensor,
                  w2_to_w: torch.Tensor, detached: tuple[int, int] | None = None) -> None:
        key = (id(w2), detached)
        part = self.chains.get(key)
        if part is None:
            self.chains[key] = [w2, dmt, bias, w2_to_w]
        else:
            part[1], part[2] = part[1] + dmt, part[2] + bias

    def take(self) -> PendingGrad | None:
        """Every part as one (u, v) with the chains' rows first, or None; clears."""
        if not self.chains and not self.outers:
            return None
        heads, us, vs, start = [], [], [], 0
        for w2, dmt, bias, w2_to_w in self.chains.values():
            k = dmt.shape[1]
            heads.append((w2, bias, start, start + k))
            us.append(dmt)
            vs.append(w2_to_w.detach().mT)
            start += k
        us += [u for u, _ in self.outers]
        vs += [v for _, v in self.outers]
        self.chains, self.outers = {}, []
        u, v = (x[0] if len(x) == 1 else torch.cat(x, 1) for x in (us, vs))
        return PendingGrad(u.contiguous(), v.contiguous(), start, heads)


@dataclass(frozen=True)
class PendingGrad:
    """`FactoredGrad.take`: u [R, n, D], v [R, n, H]; rows < n_out belong to the chains in
    `heads` ((W2, bias, first row, end row) each)."""

    u: torch.Tensor
    v: torch.Tensor
    n_out: int
    heads: list[tuple[torch.Tensor, torch.Tensor, int, int]]


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


def _chain_map(w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The head as one linear map: mt = (w1 w2)^T [R, K, D] and c = b1 w2 + b2 [R, K]."""
    n_runs, d, hid = w1.shape
    k = w2.shape[2]
    mt, c = w1.new_empty(n_runs, k, d), w1.new_empty(n_runs, k)
    work = w1.new_empty(_round4(k) * hid)
    _lib().chain_prepare(_p(w1), _p(b1), _p(w2), _p(b2), n_runs, d, hid, k, _p(mt), _p(c),
                         _p(work))
    return mt, c


def _mix_logits(s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                b2: torch.Tensor, x: BankRows) -> torch.Tensor:
    """`bank_mix_chain`'s logits without a graph, row by row: the mixed rows [R, B, D] of an
    evaluation set are never stored (R runs' copies would not fit any cache)."""
    w1, b1, w2, b2, s = (t.contiguous() for t in (w1, b1, w2, b2, s))
    mt, c = _chain_map(w1, b1, w2, b2)
    n_runs, b, rs = x.layout(len(s))
    n_layers, d = x.bank.shape[1:]
    k = mt.shape[1]
    logits = w1.new_empty(n_runs, b, k)
    buf = w1.new_empty((n_layers + 1) * d)
    _lib().mix_logits(x.address(), x.half, n_layers, d, _p(x.rows), n_runs, b, rs, _p(s), _p(mt),
                      _p(c), k, _p(logits), _p(buf))
    return logits


def _zero_columns(mt: torch.Tensor, w2: torch.Tensor, cols: tuple[int, int] | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """mt [R, K, D] and w2 [R, H, K] with logit columns cols = (start, stop) zeroed: what the
    encoder's gradients (dh, db1, dW1) see when those columns read its output detached."""
    if cols is None:
        return mt, w2
    keep = torch.ones(mt.shape[1], dtype=mt.dtype, device=mt.device)
    keep[cols[0]:cols[1]] = 0
    return mt * keep.unsqueeze(1), (w2 * keep).contiguous()


class _BankMixChain(torch.autograd.Function):
    """logits = mix(x, s) (w1 w2) + b1 w2 + b2 through mt = (w1 w2)^T [R, K, D], as
    `model._LinearChain` does; gradients from `chain_backward` and `mix_backward`. With a
    `FactoredGrad` sink, w1's and w2's gradients go to it instead of autograd. Logit columns
    `detached` = (start, stop) act on the encoder's output detached: their gradient trains w2
    and b2 only."""

    @staticmethod
    def forward(ctx, s, w1, b1, w2, b2, x, sink, detached):  # noqa: ANN001, ANN205
        ctx.w2 = w2  # the parameter itself: a sink hands its gradient to it
        w1, b1, w2, b2 = (t.contiguous() for t in (w1, b1, w2, b2))
        h = _mix(x, s.contiguous())
        mt, c = _chain_map(w1, b1, w2, b2)
        logits = w1.new_empty(*h.shape[:2], mt.shape[1])
        _lib().chain_logits(_p(h), _p(mt), _p(c), *h.shape, mt.shape[1], _p(logits))
        ctx.x, ctx.sink, ctx.detached = x, sink, detached
        ctx.save_for_backward(h, mt, w1, b1, w2)
        return logits

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        h, mt, w1, b1, w2 = ctx.saved_tensors
        mt, w2_to_w = _zero_columns(mt, w2, ctx.detached)
        g = g.contiguous()
        n_runs, d, hid = w1.shape
        b, k = g.shape[1:]
        dh, dmt = torch.empty_like(h), g.new_empty(n_runs, k, d)
        db1, db2 = torch.empty_like(b1), g.new_empty(n_runs, k)
        dw1 = dw2 = None
        if ctx.sink is None:
            dw1, dw2 = torch.empty_like(w1), torch.empty_like(w2)
        work = g.new_empty(2 * _round4(k) * hid)
        _lib().chain_backward(_p(g), _p(h), _p(mt), _p(w1), _p(b1), _p(w2_to_w), n_runs, b, d,
                              hid, k, _p(dh), _p(dmt), _p(db1), _p(db2), _opt(dw1), _opt(dw2),
                              _p(work))
        if ctx.sink is not None:
            ctx.sink.add_chain(dmt, ctx.w2, b1.unsqueeze(2) * db2.unsqueeze(1), w2_to_w,
                               ctx.detached)
        return _mix_grad(ctx.x, dh), dw1, db1, dw2, db2, None, None, None


class _BankMixLinear(torch.autograd.Function):
    """h = mix(x, s) w + b [R, B, H] on bank rows: the encoder of heads that read h_S. With a
    `FactoredGrad` sink, w's gradient goes to it as (mix, dh) instead of autograd."""

    @staticmethod
    def forward(ctx, s, w, b, x, sink):  # noqa: ANN001, ANN205 - autograd signature
        hm = _mix(x, s.contiguous())
        ctx.x, ctx.sink = x, sink
        ctx.save_for_backward(hm, w)
        return torch.baddbmm(b.unsqueeze(1), hm, w)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        hm, w = ctx.saved_tensors
        g = g.contiguous()
        ds = _mix_grad(ctx.x, torch.bmm(g, w.mT))
        dw = None
        if ctx.sink is not None:
            ctx.sink.add(hm, g)
        elif ctx.needs_input_grad[1]:
            dw = torch.bmm(hm.mT, g)
        return ds, dw, g.sum(1), None, None


def bank_mix(s: torch.Tensor, x: BankRows) -> torch.Tensor:
    """Layer mix [R, B, D] of bank rows with softmaxed layer weights s [R, L]."""
    return _BankMix.apply(s, x)


def bank_mix_chain(s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                   b2: torch.Tensor, x: BankRows, sink: FactoredGrad | None = None,
                   detached: tuple[int, int] | None = None) -> torch.Tensor:
    """Logits [R, B, K] of the linear head (mix -> Linear -> Linear) on bank rows; with `sink`,
    w1's and w2's gradients are deferred to it (see `FactoredGrad`); logit columns `detached`
    (start, stop) read the first Linear's output detached (their gradient trains w2, b2)."""
    if not torch.is_grad_enabled():
        return _mix_logits(s, w1, b1, w2, b2, x)
    return _BankMixChain.apply(s, w1, b1, w2, b2, x, sink, detached)


def bank_mix_linear(s: torch.Tensor, w: torch.Tensor, b: torch.Tensor, x: BankRows,
                    sink: FactoredGrad | None = None) -> torch.Tensor:
    """h_S [R, B, H] = mix(x, s) w + b on bank rows; with `sink`, w's gradient is deferred to it."""
    return _BankMixLinear.apply(s, w, b, x, sink)


def adam_outer(w: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: torch.Tensor,
               grad: PendingGrad, active: np.ndarray | None,
               hp: tuple[float, float, float, float, float]) -> torch.Tensor:
    """Adam (L2 weight decay; hp = lr, beta1, beta2, eps, weight decay) on w [R, D, H] in place,
    from the factored gradient u^T v, for the `active` runs (all when None): moments m, v and
    step counts t [R] advance as torch's Adam's would. Returns u[:, :n_out] w_old
    [R, n_out, H] (zeros for idle runs): the chains' W2 gradients, transposed, without bias."""
    n_runs, d, hid = w.shape
    n, n_out = grad.u.shape[1], grad.n_out
    on = np.ones(n_runs, np.uint8) if active is None else np.asarray(active, np.uint8)
    on = np.ascontiguousarray(on)
    args = np.asarray(hp, dtype=np.float64)
    out = w.new_zeros(n_runs, n_out, hid)
    work = w.new_empty(4 * hid)
    _lib().adam_outer(_p(w), _p(m), _p(v), _p(t), _p(grad.u), _p(grad.v), on.ctypes.data,
                      n_runs, d, hid, n, n_out, args.ctypes.data, _p(out), _p(work))
    return out
