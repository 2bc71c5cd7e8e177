"""Adversarial debiasing on h_S (PAPERS §3.9–3.10): ADV and MADV (diverse adversaries).

Gradient reversal (Ganin & Lempitsky 2015): each discriminator D_j minimises CE(D_j(h_S), g)
while the head receives −(λ_adv / N)·∇CE, i.e. the head minimises L_SER − (λ_adv/N)·Σ_j CE_j.
Discriminators are FairLib MLPs (2 hidden layers of 300, ReLU) with their own Adam lr 1e-3.
MADV adds the orthogonality term λ_div·Σ_{j<j'} DiffLoss(H_j, H_j') on the discriminators'
last hidden activations (their gradient stops at h_S, so it trains the discriminators only), with
DiffLoss = mean((Ĥ_j Ĥ_j'ᵀ)²) on row-L2-normalised activations (Han et al. EACL 2021).
Rows with an unknown group (-1) are left out of the adversary's CE.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from emodebias.training.losses import masked_mean
from emodebias.training.methods.base import Batch, Method, register
from emodebias.training.model import HIDDEN, StackedMLP
from emodebias.training.search import LogUniform, SearchSpace


class _GradReverse(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by −scale (scale [R, 1, 1])."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return -scale * grad, None


def grad_reverse(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Gradient reversal with a per-run scale [R] for x [R, B, H]."""
    return _GradReverse.apply(x, scale.view(-1, 1, 1))


def diff_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Orthogonality loss mean((Â Bᵀ)²) per run on row-normalised [R, B, H] activations -> [R]."""
    a = a / (a.norm(dim=-1, keepdim=True).detach() + 1e-6)
    b = b / (b.norm(dim=-1, keepdim=True).detach() + 1e-6)
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean((-2, -1))


@register("adv")
class ADV(Method):
    """One gender (group) discriminator on h_S through a gradient-reversal layer, λ_adv = 1."""

    family = "adversarial"
    supervision = "hard"
    HPARAMS = {"lambda_adv": 1.0, "n_adv": 1, "adv_hidden": 300, "adv_layers": 2,
               "lambda_div": 0.0, "adv_lr": 1e-3}
    SEARCH = SearchSpace({"lambda_adv": LogUniform(0.01, 10.0)})  # adv_lr is structural
    STRUCTURAL = frozenset({"adv_lr"})

    def build(self) -> None:
        super().build()
        c = self.ctx
        hidden = [self.hp_one("adv_hidden")] * self.hp_one("adv_layers")
        self.discs = nn.ModuleList(
            StackedMLP(c.init_gens, HIDDEN, hidden, c.n_groups) for _ in range(self.hp_one("n_adv"))
        )

    def param_groups(self, lr: float) -> list[dict]:
        return [
            {"params": list(self.head.parameters()), "lr": lr},
            {"params": list(self.discs.parameters()), "lr": self.hp_one("adv_lr")},
        ]

    def adversary_loss(self, h: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """Σ_j masked-mean CE of D_j on reversed h_S, plus the diversity term -> [R]."""
        n = len(self.discs)
        reversed_h = grad_reverse(h, self.hp_vec("lambda_adv") / n)
        known = group >= 0
        target = group.clamp_min(0)
        total = torch.zeros(h.shape[0], device=h.device)
        lam_div = self.hp_vec("lambda_div")
        diverse = n > 1 and any(float(h["lambda_div"]) > 0 for h in self.hps)
        # with the diversity term, the activations feeding it train the discriminators only
        # (as on detached h_S): one forward per discriminator, two gradient streams back
        hidden = []
        for disc in self.discs:
            out, last = disc.forward_split(reversed_h) if diverse else disc(reversed_h)
            ce = F.cross_entropy(out.transpose(1, 2), target, reduction="none")
            total = total + masked_mean(ce, known)
            hidden.append(last)
        if diverse:
            div = sum(diff_loss(a, c) for a, c in itertools.combinations(hidden, 2))
            total = total + lam_div * div
        return total

    def loss(self, batch: Batch) -> torch.Tensor:
        logits, h = self.head(batch.x)
        ser = (batch.weight * self.base_loss(logits, batch.soft)).mean(-1)
        return ser + self.adversary_loss(h, batch.group)


@register("madv")
class MADV(ADV):
    """N = 3 diverse adversaries with the orthogonality term (λ_div = 1; [ED] values unknown)."""

    HPARAMS = {**ADV.HPARAMS, "n_adv": 3, "lambda_div": 1.0}
    SEARCH = SearchSpace({**ADV.SEARCH, "lambda_div": LogUniform(0.01, 10.0)})

