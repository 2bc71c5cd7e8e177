"""Fairness regularisers added to L_SER (PAPERS §3.11): GR in two readings and a class-conditional
MMD.

[ED]'s GR formula could not be read, so GR exists in two named readings (both marked
`reading_dependent`): ``gr`` penalises a differentiable surrogate of the reported TPR gap (soft
TPRs of class × group on the batch), ``gr_loss`` FairLib's loss gap of class × group cells to
their class. ``gr_loss`` and MMD compare cells of the strict-majority class; rows without one or
with an unknown group take part in L_SER only.
"""

from __future__ import annotations

import torch

from emodebias.data.labels import TIE_TOL
from emodebias.training.losses import group_reduce, membership, soft_rate_gap
from emodebias.training.methods.base import Batch, Method, cell_ids, register
from emodebias.training.search import LogUniform, SearchSpace


def cell_members(batch: Batch, n_classes: int, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot memberships of class × group cells [R, B, C·G] and of classes [R, B, C]."""
    cell = cell_ids(batch.majority, batch.group, n_groups)
    cls = torch.where(cell >= 0, batch.majority, -1)
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


@register("gr_loss")
class GRLoss(Method):
    """Gap Regularisation, loss-gap reading (FairLib's group-difference loss, DyBTObj="EO"):
    L = L_SER + λ_GR·Σ_c Σ_g |L̄_{c,g} − L̄_c| with batch means of ℓ over class c = c_i.
    [ED]'s formula is unreadable (PAPERS §3.11); its sum over classes makes λ grow with K."""

    family = "regularisation"
    supervision = "hard"
    reading_dependent = True
    HPARAMS = {"lambda_gr": 1.0}
    SEARCH = SearchSpace({"lambda_gr": LogUniform(0.01, 10.0)})

    def loss(self, batch: Batch) -> torch.Tensor:
        logits = self.head.logits(batch.x)
        per_sample = self.base_loss(logits, batch.soft)
        ser = (batch.weight * per_sample).mean(-1)
        gaps = cell_gaps(per_sample, batch, self.ctx.n_classes, self.ctx.n_groups)
        return ser + self.hp_vec("lambda_gr") * gaps.abs().sum((-2, -1))


@register("gr")
class GR(Method):
    """Gap Regularisation, gap-surrogate reading: the reported TPR gap made differentiable,
    L = L_SER + λ_GR·(TPRgap~ + β·FPRgap~), with soft rates of the softmax outputs on the batch
    (`losses.soft_rate_gap`: RMS over classes, FairLib's multi-group form, so λ does not scale
    with K). β = `fpr_weight` (0: Equal Opportunity; > 0 adds the Equalised-Odds FPR term).
    Targets are the labels binarised at 1/K; rows of unknown group enter L_SER only."""

    family = "regularisation"
    supervision = "hard"
    reading_dependent = True
    HPARAMS = {"lambda_gr": 1.0, "fpr_weight": 0.0}
    SEARCH = SearchSpace({"lambda_gr": LogUniform(0.01, 10.0)})

    def build(self) -> None:
        super().build()
        # whether any run of the stack has the FPR term: fixed for the stack, so decided once
        self.fpr_term = any(h["fpr_weight"] != 0 for h in self.hps)

    def penalty(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """TPRgap~ + β·FPRgap~ per run [R]."""
        probs = torch.softmax(logits, -1)
        k = self.ctx.n_classes
        pos = (batch.soft > 1.0 / k - TIE_TOL).to(probs.dtype)
        member = membership(batch.group, self.ctx.n_groups).to(probs.dtype)
        gap = soft_rate_gap(probs, pos, member)
        if self.fpr_term:
            gap = gap + self.hp_vec("fpr_weight") * soft_rate_gap(probs, 1.0 - pos, member)
        return gap

    def loss(self, batch: Batch) -> torch.Tensor:
        logits = self.head.logits(batch.x)
        ser = (batch.weight * self.base_loss(logits, batch.soft)).mean(-1)
        return ser + self.hp_vec("lambda_gr") * self.penalty(logits, batch)


@register("mmd")
class CondMMD(Method):
    """Class-conditional linear-kernel MMD on h_S (an Equal-Opportunity representation penalty):
    L = L_SER + λ·Σ_c Σ_g ‖μ_{c,g} − μ_c‖² / V, μ the batch mean of h_S in the cell / class and
    V the batch's total variance of h_S (not detached), so shrinking h_S cannot cheat it."""

    extra = True

    family = "regularisation"
    supervision = "hard"
    HPARAMS = {"lambda_mmd": 1.0}
    SEARCH = SearchSpace({"lambda_mmd": LogUniform(0.01, 10.0)})

    def loss(self, batch: Batch) -> torch.Tensor:
        logits, h = self.head(batch.x)
        ser = (batch.weight * self.base_loss(logits, batch.soft)).mean(-1)
        gaps = cell_gaps(h, batch, self.ctx.n_classes, self.ctx.n_groups)
        variance = (h - h.mean(1, keepdim=True)).pow(2).sum(-1).mean(-1).clamp_min(1e-8)
        return ser + self.hp_vec("lambda_mmd") * gaps.pow(2).sum((-3, -2, -1)) / variance
