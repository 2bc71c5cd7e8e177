"""Fairness regularisers added to L_SER (PAPERS §3.11): GR and a class-conditional MMD.

Both compare class × group cells with their class (an Equal-Opportunity target) on the batch,
skipping cells absent from it. Rows without a strict-majority class or with an unknown group
take part in L_SER only.
"""

from __future__ import annotations

import torch

from emodebias.losses import group_reduce, membership
from emodebias.methods.base import Batch, Method, register


def cell_members(batch: Batch, n_classes: int, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot memberships of class × group cells [R, B, C·G] and of classes [R, B, C]."""
    known = (batch.majority >= 0) & (batch.group >= 0)
    cell = torch.where(known, batch.majority * n_groups + batch.group, -1)
    cls = torch.where(known, batch.majority, -1)
    return membership(cell, n_classes * n_groups), membership(cls, n_classes)


def cell_gaps(values: torch.Tensor, batch: Batch, n_classes: int, n_groups: int) -> torch.Tensor:
    """Cell mean − class mean for each present cell: [R, C, G] (or [R, C, G, F]); 0 if absent."""
    cells, classes = cell_members(batch, n_classes, n_groups)
    cell_mean, cell_mass = group_reduce(values, cells)
    class_mean, _ = group_reduce(values, classes)
    shape = (values.shape[0], n_classes, n_groups, *values.shape[2:])
    cell_mean = cell_mean.reshape(shape)
    present = (cell_mass.reshape(shape[:3]) > 0).float()
    if values.dim() == 3:
        present = present.unsqueeze(-1)
        class_mean = class_mean.unsqueeze(2)
    else:
        class_mean = class_mean.unsqueeze(-1)
    return (cell_mean - class_mean) * present


@register("gr")
class GR(Method):
    """Gap Regularisation — PLACEHOLDER formula (PAPERS §3.11; the [ED] paper's is unknown):
    L = L_SER + λ_GR·Σ_c Σ_g |L̄_{c,g} − L̄_c| with batch means of ℓ over class c = c_i.
    Replace once the paper text is available."""

    family = "regularisation"
    supervision = "hard"
    HPARAMS = {"lambda_gr": 1.0}

    def loss(self, batch: Batch) -> torch.Tensor:
        logits = self.head.logits(batch.x)
        per_sample = self.base_loss(logits, batch.soft)
        ser = (batch.weight * per_sample).mean(-1)
        gaps = cell_gaps(per_sample, batch, self.ctx.n_classes, self.ctx.n_groups)
        return ser + self.hp_vec("lambda_gr") * gaps.abs().sum((-2, -1))


@register("mmd")
class CondMMD(Method):
    """Class-conditional linear-kernel MMD on h_S (an Equal-Opportunity representation penalty):
    L = L_SER + λ·Σ_c Σ_g ‖μ_{c,g} − μ_c‖² / V, μ the batch mean of h_S in the cell / class and
    V the batch's total variance of h_S (not detached), so shrinking h_S cannot cheat it."""

    family = "regularisation"
    supervision = "hard"
    HPARAMS = {"lambda_mmd": 1.0}

    def loss(self, batch: Batch) -> torch.Tensor:
        logits, h = self.head(batch.x)
        ser = (batch.weight * self.base_loss(logits, batch.soft)).mean(-1)
        gaps = cell_gaps(h, batch, self.ctx.n_classes, self.ctx.n_groups)
        variance = (h - h.mean(1, keepdim=True)).pow(2).sum(-1).mean(-1).clamp_min(1e-8)
        return ser + self.hp_vec("lambda_mmd") * gaps.pow(2).sum((-3, -2, -1)) / variance
