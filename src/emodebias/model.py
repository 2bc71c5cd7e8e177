"""The SER head (EMO-SUPERB / s3prl downstream) with a leading run dimension R.

Every parameter is stacked over R independent runs (layer weights [R, L], W1 [R, D, 256],
W2 [R, 256, K]) so a grid of heads trains as one batched computation; R = 1 is one run.
Run r is initialised from its own generator only, so a run gives the same numbers alone or
stacked. Inputs are pooled per-layer features: [R, B, L, D] (per-run batches), [B, L, D] (one
batch shared by every run, e.g. the dev set), or `Rows` of a feature bank (what training
passes). Pooling commutes with the linear projector, so pooled features give exactly the
frame-level head's output. The head's functions over bank rows run compiled where
`torch.compile` works (`training.compile`), eagerly otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from emodebias.training.compile import compiled

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


@dataclass(frozen=True)
class Rows:
    """Feature rows of a bank [N, L, D] (float16 or float32, row-major) read through indices:
    per-run rows [R, B], or rows [B] every run reads (evaluation). Behaves like the float32
    features [*idx.shape, L, D] it stands for; the head's compiled functions gather, convert
    and mix them in one pass, so no float32 copy of a batch is made."""

    bank: torch.Tensor
    idx: torch.Tensor  # int64

    @classmethod
    def of(cls, x: torch.Tensor | Rows) -> Rows:
        """Dense features [B, L, D] or [R, B, L, D] as rows of themselves."""
        if isinstance(x, Rows):
            return x
        lead = x.shape[:-2]
        bank = x.reshape(-1, *x.shape[-2:])
        return cls(bank, torch.arange(len(bank), device=x.device).view(lead))

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.idx.shape, *self.bank.shape[1:]))

    def per_run(self, n_runs: int) -> torch.Tensor:
        """Indices [R, B] (shared rows repeated for each run)."""
        if self.idx.dim() == 2:
            return self.idx
        return self.idx.unsqueeze(0).expand(n_runs, -1).contiguous()

    def dense(self) -> torch.Tensor:
        """The float32 features (a copy)."""
        return self.bank[self.idx].float()


@compiled
def mix_rows(bank: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """softmax(weight)-weighted layer sum of bank rows idx [R, B] -> [R, B, D] float32."""
    w = torch.softmax(weight, dim=-1)
    return (bank[idx].float() * w[:, None, :, None]).sum(-2)


@compiled
def head_logits(bank: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor, w1: torch.Tensor,
                b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Layer mix -> affine -> affine of bank rows idx [R, B] -> logits [R, B, K]: one graph,
    so compiled it reads each float16 row once and fuses the elementwise work around the
    two batched products (forward and backward)."""
    w = torch.softmax(weight, dim=-1)
    h = (bank[idx].float() * w[:, None, :, None]).sum(-2)
    return affine(affine(h, w1, b1), w2, b2)


class LayerMix(nn.Module):
    """s3prl Featurizer: softmax-weighted sum over layers, weights initialised to zeros."""

    def __init__(self, n_runs: int, n_layers: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_runs, n_layers))

    def forward(self, x: torch.Tensor | Rows) -> torch.Tensor:
        """x [R, B, L, D], `Rows`, or one batch for all runs [B, L, D] -> [R, B, D]."""
        rows = Rows.of(x)
        return mix_rows(rows.bank, rows.per_run(len(self.weight)), self.weight)


class Encoder(nn.Module):
    """Layer mix -> Linear(D → 256): the pooled 256-d representation h_S."""

    def __init__(self, gens: list[torch.Generator], n_layers: int, dim: int, hidden: int = HIDDEN):
        super().__init__()
        self.mix = LayerMix(len(gens), n_layers)
        self.proj = StackedLinear(gens, dim, hidden)

    def forward(self, x: torch.Tensor | Rows) -> torch.Tensor:
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

    def forward(self, x: torch.Tensor | Rows) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits [R, B, K], h_S [R, B, 256]), for losses that read h_S."""
        h = self.encoder(x)
        return self.out(h), h

    def logits(self, x: torch.Tensor | Rows) -> torch.Tensor:
        """Logits [R, B, K] only (h_S is not returned, so it need not be kept)."""
        enc, rows = self.encoder, Rows.of(x)
        return head_logits(rows.bank, rows.per_run(len(enc.mix.weight)), enc.mix.weight,
                           enc.proj.weight, enc.proj.bias, self.out.weight, self.out.bias)


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
