"""The SER head (EMO-SUPERB / s3prl downstream) with a leading run dimension R.

Every parameter is stacked over R independent runs (layer weights [R, L], W1 [R, D, 256],
W2 [R, 256, K]) so a grid of heads trains as one batched computation; R = 1 is one run.
Run r is initialised from its own generator only, so a run gives the same numbers alone or
stacked. Inputs are pooled per-layer features: [R, B, L, D] (per-run batches) or [B, L, D]
(one batch shared by every run, e.g. the dev set). Pooling commutes with the linear projector,
so pooled features give exactly the frame-level head's output. Compiled (`training.compile`),
the head is plain PyTorch arithmetic in one graph; eager, it uses the autograd functions below
(same sums, re-associated, with hand-written exact gradients that read the batch in place).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from emodebias.training.compile import compiled, use_compiled

HIDDEN = 256


def _uniform(gens: list[torch.Generator], shape: tuple[int, ...], bound: float) -> torch.Tensor:
    """[R, *shape] with run r drawn from gens[r] only (nn.Linear's default U(−b, b))."""
    return torch.stack([(torch.rand(shape, generator=g) * 2 - 1) * bound for g in gens])


def affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x [R, B, d_in] @ weight [R, d_in, d_out] + bias [R, d_out], one batched product."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight)


class StackedLinear(nn.Module):
    """R independent Linear(d_in → d_out) layers applied as one batched matmul."""

    def __init__(self, gens: list[torch.Generator], d_in: int, d_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.weight = nn.Parameter(_uniform(gens, (d_in, d_out), bound))
        self.bias = nn.Parameter(_uniform(gens, (d_out,), bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [R, B, d_in] or shared [B, d_in] -> [R, B, d_out]."""
        if x.dim() == 2:
            return torch.einsum("bi,rio->rbo", x, self.weight) + self.bias.unsqueeze(1)
        return affine(x, self.weight, self.bias)


class _LinearChain(torch.autograd.Function):
    """y = (h W1 + b1) W2 + b2 without forming h W1: through Mᵀ = W2ᵀ W1ᵀ [R, K, D].

    With K (classes) far below the batch size, every product is K-rows-by-something: about a
    third of the multiply-adds of the two-layer form, and none of the slow N = K (skinny) GEMMs
    autograd would pick. Gradients are exact (the same sums, re-associated):
    dMᵀ = Gᵀ h, dh = G Mᵀ, dW1 = dM W2ᵀ, dW2 = (dMᵀ W1)ᵀ + b1ᵀ Σ_b G, db1 = Σ_b G W2ᵀ.
    """

    @staticmethod
    def forward(ctx, h, w1, b1, w2, b2):  # noqa: ANN001, ANN205 - autograd signature
        mt = torch.bmm(w2.mT, w1.mT)
        bias = torch.baddbmm(b2.unsqueeze(1), b1.unsqueeze(1), w2)
        ctx.save_for_backward(h, w1, b1, w2, mt)
        return torch.bmm(mt, h.mT).mT + bias

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        h, w1, b1, w2, mt = ctx.saved_tensors
        s = g.sum(1)  # [R, K]
        dh = torch.bmm(g, mt) if ctx.needs_input_grad[0] else None
        dmt = torch.bmm(g.mT, h)  # [R, K, D]
        dw1 = torch.bmm(dmt.mT, w2.mT)
        dw2 = torch.bmm(dmt, w1).mT + b1.unsqueeze(2) * s.unsqueeze(1)
        db1 = torch.bmm(s.unsqueeze(1), w2.mT).squeeze(1)
        return dh, dw1, db1, dw2, s


def linear_chain(h: torch.Tensor, first: StackedLinear, second: StackedLinear) -> torch.Tensor:
    """second(first(h)) for h [R, B, d_in], computed as one linear map (see `_LinearChain`)."""
    return _LinearChain.apply(h, first.weight, first.bias, second.weight, second.bias)


class _LayerSum(torch.autograd.Function):
    """h[r] = w[r] @ x[r] for x [R, L, N] (layer-major rows): dw[r] = x[r] @ g[r], one
    row-major matrix-vector product per run; autograd's transposed product, or one batched
    product, reads x several times slower on CPU."""

    @staticmethod
    def forward(ctx, w, x):  # noqa: ANN001, ANN205 - autograd signature
        ctx.save_for_backward(w, x)
        return torch.bmm(w.unsqueeze(1), x).squeeze(1)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        w, x = ctx.saved_tensors
        dw = None
        if ctx.needs_input_grad[0]:
            dw = torch.stack([torch.mv(x[r], g[r]) for r in range(len(x))])
        dx = w.unsqueeze(-1) * g.unsqueeze(1) if ctx.needs_input_grad[1] else None
        return dw, dx


@dataclass(frozen=True)
class SharedRows:
    """Per-run inputs [R, B, L, D] stored once per distinct batch: run r reads x[group[r]].

    Runs of one grid cell draw the same batches (same rows and seed: ERM / RW / GDRO / GADRO of
    a fold), so a step reads each feature row once instead of once per run (FeatureBank is
    memory-bandwidth bound on CPU)."""

    x: torch.Tensor  # [J, B, L, D]
    group: tuple[int, ...]  # [R] -> 0..J-1

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.group), *self.x.shape[1:]))

    def dense(self) -> torch.Tensor:
        """The [R, B, L, D] tensor (a copy)."""
        return self.x[list(self.group)]


class _GroupedLayerSum(torch.autograd.Function):
    """h[r] = w[r] @ x[group[r]] for x [J, L, N]: one [R_j, L] @ [L, N] product per distinct
    input (x read once for its R_j runs); dw[runs of j] = (x[j] @ g[runs of j]ᵀ)ᵀ."""

    @staticmethod
    def forward(ctx, w, x, members):  # noqa: ANN001, ANN205 - autograd signature
        ctx.save_for_backward(x)
        ctx.members = members
        out = w.new_empty(w.shape[0], x.shape[-1])
        for j, idx in enumerate(members):
            out.index_copy_(0, idx, w.index_select(0, idx) @ x[j])
        return out

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        dw = g.new_empty(g.shape[0], x.shape[1])
        for j, idx in enumerate(ctx.members):
            dw.index_copy_(0, idx, (x[j] @ g.index_select(0, idx).T).T)
        return dw, None, None


class LayerMix(nn.Module):
    """s3prl Featurizer: softmax-weighted sum over layers, weights initialised to zeros."""

    def __init__(self, n_runs: int, n_layers: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_runs, n_layers))

    def forward(self, x: torch.Tensor | SharedRows) -> torch.Tensor:
        """x [R, B, L, D], `SharedRows`, or one batch for all runs [B, L, D] -> [R, B, D].

        Compiled (`training.compile`), one fused graph. Eager, layer-major inputs (each
        layer's [B, D] block contiguous, as FeatureBank returns them) mix with one matrix
        product per run read in place; other layouts use a batched [1, L] @ [L, D] product per
        row, also without reordering x.
        """
        if use_compiled(self.weight):
            return mix_dense(_dense(x, len(self.weight)), self.weight)
        w = torch.softmax(self.weight, dim=-1)
        b, n_layers, d = x.shape[-3:]
        if isinstance(x, SharedRows):
            u = x.x
            if not (u.stride(-1) == 1 and u.stride(-3) == d):
                return self.forward(x.dense())
            group = torch.as_tensor(x.group, device=w.device)
            members = [torch.nonzero(group == j).flatten() for j in range(len(u))]
            xv = u.transpose(1, 2).view(len(u), n_layers, b * d)
            return _GroupedLayerSum.apply(w, xv, members).view(-1, b, d)
        if x.dim() == 3:  # [R, L] @ [L, B*D] (a copy only when x is not layer-major)
            return (w @ x.transpose(0, 1).reshape(n_layers, b * d)).view(-1, b, d)
        if x.stride(-1) == 1 and x.stride(-3) == d:
            xv = x.transpose(1, 2).view(x.shape[0], n_layers, b * d)
            return _LayerSum.apply(w, xv).view(-1, b, d)
        return torch.matmul(w[:, None, None, :], x).squeeze(-2)


def _dense(x: torch.Tensor | SharedRows, n_runs: int) -> torch.Tensor:
    """Per-run features [R, B, L, D] for the compiled functions."""
    if isinstance(x, SharedRows):
        return x.dense()
    return x.expand(n_runs, *x.shape) if x.dim() == 3 else x


@compiled
def mix_dense(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """softmax(weight)-weighted layer sum of x [R, B, L, D] -> [R, B, D] (the reference
    arithmetic that the eager path's `_LayerSum` computes with hand-written gradients)."""
    return (x * torch.softmax(weight, dim=-1)[:, None, :, None]).sum(-2)


@compiled
def logits_dense(x: torch.Tensor, weight: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                 w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Layer mix -> affine -> affine of x [R, B, L, D] -> logits [R, B, K], one graph."""
    h = (x * torch.softmax(weight, dim=-1)[:, None, :, None]).sum(-2)
    return affine(affine(h, w1, b1), w2, b2)


class Encoder(nn.Module):
    """Layer mix -> Linear(D → 256): the pooled 256-d representation h_S."""

    def __init__(self, gens: list[torch.Generator], n_layers: int, dim: int, hidden: int = HIDDEN):
        super().__init__()
        self.mix = LayerMix(len(gens), n_layers)
        self.proj = StackedLinear(gens, dim, hidden)

    def forward(self, x: torch.Tensor | SharedRows) -> torch.Tensor:
        return self.proj(self.mix(x))


class SERHead(nn.Module):
    """Layer mix -> Linear(D → 256) -> Linear(256 → K), no nonlinearity (EMO-SUPERB head)."""

    def __init__(
        self, gens: list[torch.Generator], n_layers: int, dim: int, n_classes: int,
        hidden: int = HIDDEN,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(gens, n_layers, dim, hidden)
        self.out = StackedLinear(gens, hidden, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits [R, B, K], h_S [R, B, 256]), for losses that read h_S."""
        h = self.encoder(x)
        return self.out(h), h

    def logits(self, x: torch.Tensor | SharedRows) -> torch.Tensor:
        """Logits [R, B, K] only: the same map as `forward`; eager, through one linear map
        at a third of its cost (`_LinearChain`)."""
        enc = self.encoder
        if use_compiled(enc.mix.weight):
            return logits_dense(_dense(x, len(enc.mix.weight)), enc.mix.weight, enc.proj.weight,
                                enc.proj.bias, self.out.weight, self.out.bias)
        return linear_chain(enc.mix(x), enc.proj, self.out)


class StackedMLP(nn.Module):
    """R independent MLPs (Linear+ReLU hidden layers, then a linear output); e.g. discriminators."""

    def __init__(self, gens: list[torch.Generator], d_in: int, hidden: list[int], d_out: int):
        super().__init__()
        dims = [d_in, *hidden]
        pairs = zip(dims, dims[1:], strict=False)
        self.hidden = nn.ModuleList(StackedLinear(gens, a, b) for a, b in pairs)
        self.out = StackedLinear(gens, dims[-1], d_out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (output [R, B, d_out], last hidden activation [R, B, hidden[-1]])."""
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.out(x), x

    def forward_split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward`, except that x gets its gradient from the output only: the last hidden
        activation's gradient trains the weights but stops at x (as if that activation had
        been computed from x.detach()), without a second pass over a detached copy."""
        layers = [*self.hidden, self.out]
        params = [p for layer in layers for p in (layer.weight, layer.bias)]
        return _SplitMLP.apply(x, *params)


class _SplitMLP(torch.autograd.Function):
    """ReLU MLP (weight, bias pairs; the last layer linear) -> (output, last hidden). Backward
    carries two gradient streams through the layers: output + hidden (the weights') and
    output only (x's), sharing the forward activations and the ReLU masks."""

    @staticmethod
    def forward(ctx, x, *params):  # noqa: ANN001, ANN205 - autograd signature
        acts = [x]
        for i in range(0, len(params) - 2, 2):
            acts.append(torch.relu(affine(acts[-1], params[i], params[i + 1])))
        out = affine(acts[-1], params[-2], params[-1])
        ctx.save_for_backward(*acts, *params)
        ctx.n_acts = len(acts)
        return out, acts[-1]

    @staticmethod
    def backward(ctx, g_out, g_last):  # noqa: ANN001, ANN205
        saved = ctx.saved_tensors
        acts, params = saved[: ctx.n_acts], saved[ctx.n_acts :]
        grads = [None] * len(params)
        grads[-2], grads[-1] = torch.bmm(acts[-1].mT, g_out), g_out.sum(1)
        only = torch.bmm(g_out, params[-2].mT)  # the output's stream
        both = only + g_last
        for i in range(len(params) - 4, -1, -2):  # hidden layers, last first
            mask = acts[i // 2 + 1] > 0
            both, only = both * mask, only * mask
            grads[i], grads[i + 1] = torch.bmm(acts[i // 2].mT, both), both.sum(1)
            w = params[i].mT
            only = torch.bmm(only, w)
            if i:
                both = torch.bmm(both, w)
        return (only, *grads)


def run_slice(state: dict[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
    """The state of run r from a stacked state dict (each tensor keeps a run dim of size 1)."""
    return {k: v[r : r + 1].detach().cpu().clone() for k, v in state.items()}
