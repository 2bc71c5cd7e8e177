"""Group distributionally robust optimisation (PAPERS §3.3–3.5): GDRO, GADRO, PGDRO.

Online algorithm of Sagawa et al. 2020 (kohpangwei/group_DRO loss.py): per batch, L̂_g is the
mean loss of group g (0 when g is absent), q_g <- q_g·exp(η_q·(L̂_g + C/√n_g)) renormalised,
and the loss is Σ_g q_g·L̂_g. The adjustment C/√n_g (GADRO, C = 4) enters the q update only.
Groups are demographic groups only (not class × group). Training rows with an unknown group
(-1, or all-zero soft membership) belong to no group and so do not enter the robust loss.
"""

from __future__ import annotations

import torch

from emodebias.losses import group_reduce, membership
from emodebias.methods.base import Batch, Method, register


@register("gdro")
class GDRO(Method):
    """Group DRO with hard groups; q starts uniform; η_q = 0.01 (Sagawa's robust_step_size)."""

    family = "dro"
    supervision = "hard"
    HPARAMS = {"eta_q": 0.01, "adj": 0.0}

    def build(self) -> None:
        super().build()
        g = self.ctx.n_groups
        self.register_buffer("q", torch.full((self.n_runs, g), 1.0 / g))
        self.register_buffer("n_g", torch.as_tensor(self._train_mass(), dtype=torch.float32))

    def _train_mass(self):
        """n_g [R, G]: training rows per group (soft mass for PGDRO)."""
        grp = torch.as_tensor(self.ctx.train_groups)
        return membership(grp, self.ctx.n_groups).sum(1)

    def members(self, batch: Batch) -> torch.Tensor:
        return membership(batch.group, self.ctx.n_groups)

    def robust(self, group_loss: torch.Tensor) -> torch.Tensor:
        """Exponentiated-gradient q update from L̂_g [R, G], then Σ_g q_g L̂_g -> [R]."""
        adj = self.hp_vec("adj").unsqueeze(-1)
        adjusted = group_loss.detach() + adj / self.n_g.clamp_min(1.0).sqrt()
        q = self.q * torch.exp(self.hp_vec("eta_q").unsqueeze(-1) * adjusted)
        self.q = q / q.sum(-1, keepdim=True)
        return (group_loss * self.q).sum(-1)

    def loss(self, batch: Batch) -> torch.Tensor:
        logits = self.head.logits(batch.x)
        per_sample = batch.weight * self.base_loss(logits, batch.soft)
        group_loss, _ = group_reduce(per_sample, self.members(batch))
        return self.robust(group_loss)

    def epoch_log(self) -> dict[str, list]:
        return {"q": self.q.tolist()}


@register("gadro")
class GADRO(GDRO):
    """GDRO with Sagawa's generalisation adjustment C/√n_g in the q update, C = 4 ([IDI] Eq. 3)."""

    HPARAMS = {**GDRO.HPARAMS, "adj": 4.0}


@register("pgdro")
class PGDRO(GDRO):
    """PG-DRO (Ghosal & Li 2023): soft groups π_i; L̂_g = Σ π_ig ℓ_i / Σ π_ig, n_g = Σ π_ig.

    Uses the group probabilities when given; hard groups act as one-hot memberships.
    """

    supervision = "soft"

    def _train_mass(self):
        if self.ctx.train_group_probs is not None:
            return torch.as_tensor(self.ctx.train_group_probs).sum(1)
        return super()._train_mass()

    def members(self, batch: Batch) -> torch.Tensor:
        return membership(batch.group, self.ctx.n_groups, batch.group_probs)
