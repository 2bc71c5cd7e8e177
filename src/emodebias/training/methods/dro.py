"""Group distributionally robust optimisation (PAPERS §3.3–3.5): GDRO, GADRO, PGDRO.

Online algorithm of Sagawa et al. 2020 (kohpangwei/group_DRO loss.py): per batch, L̂_g is the
mean loss of group g (0 when g is absent), q_g <- q_g·exp(η_q·(L̂_g + C/√n_g)) renormalised,
and the loss is Σ_g q_g·L̂_g. The adjustment C/√n_g (GADRO, C = 4) enters the q update only.

Two recipes, chosen by hyperparameters declared beside each class (docs/decisions.md says which
the paper presets use and why):

- ``group_by``: ``class_group`` makes each DRO group a (strict-majority class, training group)
  cell, as Sagawa et al. define groups (``group_array = y·n_attr + attr`` in the reference data
  code) and PG-DRO does; ``group`` uses the training groups alone (2 genders or k clusters), the
  literal reading of [IDI] Eq. 2.
- ``sampler``: ``balanced`` draws each epoch n rows with replacement, row i with probability
  ∝ 1/n_{group(i)} (the reference's ``--reweight_groups`` WeightedRandomSampler, used by every
  command of its README; PG-DRO draws by the argmax of the soft membership); ``shuffle`` is a
  plain permutation.

``gdro`` / ``gadro`` / ``pgdro`` run the reference recipe; ``gdro_groups`` / ``gadro_groups`` /
``pgdro_groups`` the groups-only one. Training rows with an unknown group (-1, all-zero soft
membership) or, for ``class_group``, no strict-majority class belong to no DRO group: they do
not enter the robust loss (counted in the run's info) and form their own bucket in the sampler.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from emodebias.training.losses import group_reduce, membership
from emodebias.training.methods.base import Batch, Method, Prepared, cell_ids, register
from emodebias.training.search import LogUniform, SearchSpace, Uniform

GROUP_BY = ("class_group", "group")
SAMPLERS = ("balanced", "shuffle")


def dro_members(majority: torch.Tensor, groups: torch.Tensor, n_classes: int, n_groups: int,
                group_by: str, probs: torch.Tensor | None = None) -> torch.Tensor:
    """DRO-group memberships [..., G'] (G' = K·G for class_group, G for group): one-hot or soft
    (π_i spread over its class's cells); rows without a group or class get all zeros."""
    if group_by == "group":
        return membership(groups, n_groups, probs)
    if probs is None:
        return membership(cell_ids(majority, groups, n_groups), n_classes * n_groups)
    cls = membership(majority, n_classes)  # -1 (no strict majority) -> all zeros
    return (cls.unsqueeze(-1) * probs.float().unsqueeze(-2)).flatten(-2)


def dro_hard_ids(majority: np.ndarray, groups: np.ndarray, n_groups: int, group_by: str,
                 probs: np.ndarray | None = None) -> np.ndarray:
    """Hard DRO group of each row (-1 = none): the group, or the argmax of its soft membership
    (as PG-DRO's balanced sampler), crossed with the strict-majority class for class_group."""
    g = np.asarray(groups, dtype=np.int64).copy()
    if probs is not None:
        p = np.asarray(probs)
        g = np.where(p.sum(-1) > 0, p.argmax(-1), -1)
    if group_by == "group":
        return g
    return cell_ids(np.asarray(majority, dtype=np.int64), g, n_groups)


def balanced_weights(ids: np.ndarray) -> np.ndarray:
    """Per-row draw weights 1/n_{bucket(i)} (rows of group -1 form one more bucket): every
    bucket is drawn equally often in expectation, as the reference sampler's len/count."""
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


@register("gdro")
class GDRO(Method):
    """Group DRO as its authors run it: (class, group) cells, group-balanced sampler, q uniform
    at start, η_q = 0.01 (the reference's robust_step_size). With ``supervision = "soft"``
    (PGDRO) the memberships are the group probabilities where the data has them."""

    family = "dro"
    supervision = "hard"
    HPARAMS: dict[str, Any] = {"eta_q": 0.01, "adj": 0.0, "group_by": "class_group",
                               "sampler": "balanced"}
    SEARCH = SearchSpace({"eta_q": LogUniform(1e-3, 1e-1)})

    @classmethod
    def resolve(cls, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        hp = super().resolve(overrides)
        for key, allowed in (("group_by", GROUP_BY), ("sampler", SAMPLERS)):
            if hp[key] not in allowed:
                raise ValueError(f"method {cls.name!r}: {key} must be one of {allowed}, "
                                 f"not {hp[key]!r}")
        return hp

    @classmethod
    def prepare(cls, data, hp, gen, config) -> Prepared:
        idx = np.asarray(data.train_idx, dtype=np.int64)
        probs = data.group_probs if cls.supervision == "soft" else None
        ids = dro_hard_ids(data.majority[idx], data.groups[idx], data.n_groups, hp["group_by"],
                           None if probs is None else probs[idx])
        info = {"group_by": hp["group_by"], "sampler": hp["sampler"],
                "rows_outside_dro_groups": int((ids < 0).sum())}
        sample = balanced_weights(ids) if hp["sampler"] == "balanced" else None
        return Prepared(idx, None, info, sample)

    @property
    def n_dro(self) -> int:
        g = self.ctx.n_groups
        return g if self.group_by == "group" else self.ctx.n_classes * g

    def build(self) -> None:
        self.group_by = self.hp_one("group_by")  # structural: read once, not every step
        super().build()
        n = self.n_dro
        self.register_buffer("q", torch.full((self.n_runs, n), 1.0 / n))
        self.register_buffer("n_g", self._train_mass().float())

    def _train_mass(self) -> torch.Tensor:
        """n_g [R, G']: training rows per DRO group (soft mass for PGDRO)."""
        c = self.ctx
        return self._members(torch.as_tensor(c.train_majority), torch.as_tensor(c.train_groups),
                             None if c.train_group_probs is None
                             else torch.as_tensor(c.train_group_probs)).sum(1)

    def _members(self, majority: torch.Tensor, groups: torch.Tensor,
                 probs: torch.Tensor | None) -> torch.Tensor:
        """DRO-group memberships; hard unless the class reads soft groups (PGDRO)."""
        return dro_members(majority, groups, self.ctx.n_classes, self.ctx.n_groups,
                           self.group_by, probs if self.supervision == "soft" else None)

    def robust(self, group_loss: torch.Tensor) -> torch.Tensor:
        """Exponentiated-gradient q update from L̂_g [R, G'], then Σ_g q_g L̂_g -> [R]."""
        adj = self.hp_vec("adj").unsqueeze(-1)
        adjusted = group_loss.detach() + adj / self.n_g.clamp_min(1.0).sqrt()
        q = self.q * torch.exp(self.hp_vec("eta_q").unsqueeze(-1) * adjusted)
        self.q = q / q.sum(-1, keepdim=True)
        return (group_loss * self.q).sum(-1)

    def loss(self, batch: Batch) -> torch.Tensor:
        logits = self.head.logits(batch.x)
        per_sample = batch.weight * self.base_loss(logits, batch.soft)
        members = self._members(batch.majority, batch.group, batch.group_probs)
        group_loss, _ = group_reduce(per_sample, members)
        return self.robust(group_loss)

    def epoch_log(self) -> dict[str, list]:
        return {"q": self.q.tolist()}

    @classmethod
    def run_info(cls, hp: dict[str, Any], history: list[dict], data) -> dict:
        """The q trajectory (end of each epoch) and what each entry of q is."""
        classes = list(data.classes or [f"c{c}" for c in range(data.n_classes)])
        groups = [f"g{g}" for g in range(max(data.n_groups, 1))]
        labels = groups if hp["group_by"] == "group" else [
            f"{c}|{g}" for c in classes for g in groups]
        return {"q_trajectory": [h["q"] for h in history if "q" in h], "q_groups": labels}


@register("gadro")
class GADRO(GDRO):
    """GDRO with Sagawa's generalisation adjustment C/√n_g in the q update, C = 4 ([IDI] Eq. 3)."""

    HPARAMS = {**GDRO.HPARAMS, "adj": 4.0}
    SEARCH = SearchSpace({"eta_q": LogUniform(1e-3, 1e-1), "adj": Uniform(0.0, 8.0)})


@register("pgdro")
class PGDRO(GDRO):
    """PG-DRO (Ghosal & Li 2023): soft groups π_i; L̂_g = Σ π_ig ℓ_i / Σ π_ig, n_g = Σ π_ig.

    Uses the group probabilities when given (pseudo-label memberships); hard groups act as
    one-hot memberships (then it equals GDRO).
    """

    supervision = "soft"


_GROUPS_ONLY = {"group_by": "group", "sampler": "shuffle"}


@register("gdro_groups")
class GDROGroups(GDRO):
    """GDRO over the training groups alone with a shuffled loader ([IDI] Eq. 2 read literally)."""

    HPARAMS = {**GDRO.HPARAMS, **_GROUPS_ONLY}


@register("gadro_groups")
class GADROGroups(GADRO):
    """GADRO over the training groups alone with a shuffled loader."""

    HPARAMS = {**GADRO.HPARAMS, **_GROUPS_ONLY}


@register("pgdro_groups")
class PGDROGroups(PGDRO):
    """PGDRO over the training groups alone with a shuffled loader."""

    HPARAMS = {**PGDRO.HPARAMS, **_GROUPS_ONLY}
