"""Debiasing without group labels via a biased learner (PAPERS §3.6–3.8) and JTT.

Multi-label adaptation (PAPERS §3.6, §6.12): the trained CE terms are the class-balanced
soft-target base loss (the bias head's GCE multiplies the same per-sample base loss as the main
head, as in the references where both use one criterion), the GCE weight uses the "true-class
probability" p_y = Σ_c y'_c softmax_c (see `losses.gce`), the difficulty EMA tracks the plain
soft-target CE, and the class used for LfF/DisEnt's class-wise normalisation is the
strict-majority class c_i (rows without one form their own bucket).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from emodebias.errors import UserError
from emodebias.training.data import TrainingError
from emodebias.training.losses import gce, soft_ce, target_prob
from emodebias.training.methods.base import AuxTrainer, Batch, Method, Prepared, register
from emodebias.training.model import HIDDEN, Encoder, SERHead, SharedRows, StackedLinear
from emodebias.training.search import IntRange, LogUniform, SearchSpace, Uniform


class SampleEMA(nn.Module):
    """Per-sample loss EMA of LfF (alinlab/LfF util.EMA) for R runs × n training positions.

    update: v <- α·v + (1 − α·updated)·new (the first update stores `new`), then updated = 1.
    `normalised` divides by the class-wise max of v over the whole training list.
    """

    def __init__(self, labels: np.ndarray, n_classes: int) -> None:
        super().__init__()
        labels = np.where(labels >= 0, labels, n_classes)  # no-majority rows: own bucket
        self.n_buckets = n_classes + 1
        self.register_buffer("labels", torch.as_tensor(labels, dtype=torch.long))
        self.register_buffer("value", torch.zeros(labels.shape))
        self.register_buffer("updated", torch.zeros(labels.shape))

    def update(self, index: torch.Tensor, new: torch.Tensor, alpha: torch.Tensor) -> None:
        """index, new [R, B]; alpha [R]."""
        a = alpha.unsqueeze(-1)
        old = self.value.gather(1, index)
        upd = self.updated.gather(1, index)
        self.value.scatter_(1, index, a * old + (1 - a * upd) * new.detach())
        self.updated.scatter_(1, index, torch.ones_like(upd))

    def normalised(self, index: torch.Tensor) -> torch.Tensor:
        """v[index] / max_{j: class j = class i} v[j] -> [R, B]."""
        top = self.value.new_zeros(self.value.shape[0], self.n_buckets)
        top = top.scatter_reduce(1, self.labels, self.value, reduce="amax", include_self=True)
        cls = self.labels.gather(1, index)
        return self.value.gather(1, index) / top.gather(1, cls).clamp_min(1e-8)


def relative_difficulty(
    ema_b: SampleEMA, ema_d: SampleEMA, index: torch.Tensor, ce_b: torch.Tensor,
    ce_d: torch.Tensor, alpha: torch.Tensor,
) -> torch.Tensor:
    """LfF weight W = CE_b / (CE_b + CE_d + 1e-8) on EMA'd, class-max-normalised losses."""
    ema_b.update(index, ce_b, alpha)
    ema_d.update(index, ce_d, alpha)
    nb, nd = ema_b.normalised(index), ema_d.normalised(index)
    return nb / (nb + nd + 1e-8)


class _BiasedPair(Method):
    """A main head plus an identical biased head trained with GCE (LfF, SiH)."""

    family = "biased-learner"
    supervision = "none"
    GCE_TIMES_Q: bool = True  # LfF's GeneralizedCELoss has the ×q factor, SiH's does not

    def build(self) -> None:
        super().build()
        c = self.ctx
        self.bias_head = SERHead(c.init_gens, c.n_layers, c.dim, c.n_classes)

    def bias_terms(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(main logits, bias logits, mean GCE of the bias head [R])."""
        logits = self.head.logits(batch.x)
        logits_b = self.bias_head.logits(batch.x)
        q = self.hp_vec("q").unsqueeze(-1)
        ce_b = self.base_loss(logits_b, batch.soft)
        return logits, logits_b, gce(logits_b, batch.soft, q, ce_b, self.GCE_TIMES_Q).mean(-1)


@register("lff")
class LfF(_BiasedPair):
    """Learning from Failure (Nam et al. 2020): loss = mean GCE_b + mean W·ℓ_d; evaluates d."""

    HPARAMS = {"q": 0.7, "ema": 0.7}
    SEARCH = SearchSpace({"q": Uniform(0.1, 0.9), "ema": Uniform(0.5, 0.99)})

    def build(self) -> None:
        super().build()
        maj, k = self.ctx.train_majority, self.ctx.n_classes
        self.ema_b, self.ema_d = SampleEMA(maj, k), SampleEMA(maj, k)

    def loss(self, batch: Batch) -> torch.Tensor:
        logits, logits_b, gce_b = self.bias_terms(batch)
        w = relative_difficulty(
            self.ema_b, self.ema_d, batch.index, soft_ce(logits_b, batch.soft).detach(),
            soft_ce(logits, batch.soft).detach(), self.hp_vec("ema"),
        )
        return gce_b + (w * batch.weight * self.base_loss(logits, batch.soft)).mean(-1)


@register("sih")
class SiH(_BiasedPair):
    """Signal is Harder (Vandenhirtz et al. 2023) without the VAE decoder (PAPERS §3.8):
    loss = mean((1 − p̂_b(y))^q · ℓ_s) + mean(GCE_b), focal weight detached
    (mvandenhi/Signal-is-Harder train.py); its GCE is CE·p^q without LfF's ×q (util.py)."""

    HPARAMS = {"q": 0.7}
    SEARCH = SearchSpace({"q": Uniform(0.1, 0.9)})
    GCE_TIMES_Q = False

    def loss(self, batch: Batch) -> torch.Tensor:
        logits, logits_b, gce_b = self.bias_terms(batch)
        p_b = target_prob(logits_b, batch.soft).detach()
        focal = (1 - p_b).pow(self.hp_vec("q").unsqueeze(-1))
        return gce_b + (focal * batch.weight * self.base_loss(logits, batch.soft)).mean(-1)


@register("disent")
class DisEnt(Method):
    """Disentangled feature augmentation (Lee et al. 2021, learner.py) on two head branches.

    Branches z_l (intrinsic) and z_b (bias) are layer-mix + Linear(D→256); C_i and C_b act on
    [z_l, z_b] (512-d) with cross-detaching. After `curr_step` steps z_b is permuted within the
    batch (per-run permutation): L_swap = W·CE(C_i([z_l, z̃_b]), y) + λ_swap_b·GCE(C_b(...), ỹ).
    Total = L_dis + λ_swap·L_swap; the evaluated model is C_i([z_l, z_b]).

    C_i and C_b (Linear(512 → K) each, drawn as nn.Linear) are stored by branch: w_l [R, 256, 2K]
    maps z_l to its share of [C_i | C_b]'s logits, w_b maps z_b, `bias` [R, 2K] holds both
    biases. Every prediction, the swapped ones included, is then a sum of two per-row linear
    maps of the features.
    """

    family = "biased-learner"
    supervision = "none"
    HPARAMS = {"q": 0.7, "ema": 0.7, "lambda_dis": 1.0, "lambda_swap_b": 1.0,
               "lambda_swap": 1.0, "curr_step": 0}
    SEARCH = SearchSpace({"q": Uniform(0.1, 0.9), "lambda_dis": LogUniform(0.1, 10.0),
                          "lambda_swap": LogUniform(0.1, 10.0)})

    @classmethod
    def reads_step(cls, hp: dict) -> bool:
        """The swap starts after `curr_step` global steps; with 0 it starts at every run's
        second step whatever the stack, so runs of any length stack."""
        return hp["curr_step"] > 0

    def build(self) -> None:
        c = self.ctx
        self.enc_l = Encoder(c.init_gens, c.n_layers, c.dim)
        self.enc_b = Encoder(c.init_gens, c.n_layers, c.dim)
        cls_i = StackedLinear(c.init_gens, 2 * HIDDEN, c.n_classes)
        cls_b = StackedLinear(c.init_gens, 2 * HIDDEN, c.n_classes)
        w_i, w_b = cls_i.weight.detach(), cls_b.weight.detach()
        self.w_l = nn.Parameter(torch.cat([w_i[:, :HIDDEN], w_b[:, :HIDDEN]], 2))
        self.w_b = nn.Parameter(torch.cat([w_i[:, HIDDEN:], w_b[:, HIDDEN:]], 2))
        self.bias = nn.Parameter(torch.cat([cls_i.bias.detach(), cls_b.bias.detach()], 1))
        self.ema_b = SampleEMA(c.train_majority, c.n_classes)
        self.ema_d = SampleEMA(c.train_majority, c.n_classes)
        self.curr_step = self.hp_one("curr_step")  # shared by the stack: read once, not per step

    def classify(self, z_l: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """[C_i | C_b]([z_l, z_b]) -> [R, B, 2K] (no detaching)."""
        return torch.bmm(z_l, self.w_l) + torch.bmm(z_b, self.w_b) + self.bias.unsqueeze(1)

    def logits(self, x: torch.Tensor | SharedRows) -> torch.Tensor:
        """C_i([z_l, z_b])."""
        return self.classify(self.enc_l(x), self.enc_b(x))[..., : self.ctx.n_classes]

    def branch_parts(self, x: torch.Tensor | SharedRows) -> tuple[torch.Tensor, torch.Tensor]:
        """z_l w_l and z_b w_b [R, B, 2K], cross-detached as learner.py: C_b's columns of z_l's
        part and C_i's columns of z_b's part train the classifiers only."""
        k = self.ctx.n_classes
        z_l, z_b = self.enc_l(x), self.enc_b(x)
        return (torch.cat([z_l @ self.w_l[..., :k], z_l.detach() @ self.w_l[..., k:]], -1),
                torch.cat([z_b.detach() @ self.w_b[..., :k], z_b @ self.w_b[..., k:]], -1))

    def swap_perm(self, batch_size: int) -> torch.Tensor:
        """One permutation per run from that run's loop generator -> [R, B]."""
        perms = [torch.randperm(batch_size, generator=g) for g in self.ctx.loop_gens]
        return torch.stack(perms).to(self.class_w.device)

    def terms(self, batch: Batch, perm: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The loss components [R] (L_dis, L_swap, total) for a given swap permutation."""
        k = self.ctx.n_classes
        part_l, part_b = self.branch_parts(batch.x)
        bias = self.bias.unsqueeze(1)
        pred = part_l + part_b + bias
        pred_i, pred_b = pred[..., :k], pred[..., k:]
        w = relative_difficulty(
            self.ema_b, self.ema_d, batch.index, soft_ce(pred_b, batch.soft).detach(),
            soft_ce(pred_i, batch.soft).detach(), self.hp_vec("ema"),
        )
        q = self.hp_vec("q").unsqueeze(-1)
        weighted_ce = w * batch.weight
        l_dis = (weighted_ce * self.base_loss(pred_i, batch.soft)).mean(-1) + self.hp_vec(
            "lambda_dis") * gce(pred_b, batch.soft, q, self.base_loss(pred_b, batch.soft)).mean(-1)
        out = {"dis": l_dis, "swap": torch.zeros_like(l_dis), "total": l_dis}
        if perm is None:
            return out
        pred = part_l + part_b.gather(1, perm.unsqueeze(-1).expand_as(part_b)) + bias
        pred_mix_i, pred_mix_b = pred[..., :k], pred[..., k:]
        soft_swap = batch.soft.gather(1, perm.unsqueeze(-1).expand_as(batch.soft))
        l_swap = (weighted_ce * self.base_loss(pred_mix_i, batch.soft)).mean(-1) + self.hp_vec(
            "lambda_swap_b") * gce(
            pred_mix_b, soft_swap, q, self.base_loss(pred_mix_b, soft_swap)).mean(-1)
        out["swap"] = l_swap
        out["total"] = l_dis + self.hp_vec("lambda_swap") * l_swap
        return out

    def loss(self, batch: Batch) -> torch.Tensor:
        swap = self.step > self.curr_step
        perm = self.swap_perm(batch.x.shape[1]) if swap else None
        return self.terms(batch, perm)["total"]


def argmax_errors(probs: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """Multi-label error for JTT: the top predicted class is not a positive class of the target."""
    k = soft.shape[1]
    top = probs.argmax(1)
    return ~(soft[np.arange(len(soft)), top] > 1.0 / k)


def jtt_upsample(idx: np.ndarray, errors: np.ndarray, up: int) -> np.ndarray:
    """The training list plus `up` extra copies of each error row, as anniesch/jtt run_expt.py
    (ConcatDataset([train_data, Subset(train_data, aug_indices * up_weight)])): an error row
    appears 1 + up times, so the paper's λ_up values (its --up_weight) carry over unchanged."""
    return np.concatenate([idx, np.tile(idx[errors], up)])


@register("jtt")
class JTT(Method):
    """Just Train Twice (Liu et al. 2021): ERM for T epochs (last epoch, no selection), then
    retrain from scratch with the identification model's training errors added λ_up more times
    (1 + λ_up copies in all, as the reference code; see `jtt_upsample`).

    Defaults T = 5, λ_up = 6 are ours (the paper tunes them per dataset: T 1–60, λ_up 6–100);
    an error is a top-1 prediction that is not a positive class of the multi-label target.
    """

    extra = True

    family = "biased-learner"
    supervision = "none"
    HPARAMS = {"id_epochs": 5, "up": 6}
    SEARCH = SearchSpace({"up": IntRange(2, 20), "id_epochs": IntRange(1, 10)})
    PER_RUN_HPARAMS = frozenset({"id_epochs", "up"})  # read by `prepare` only

    @classmethod
    def prepare(cls, data, hp, gen, config) -> Prepared:
        raise TypeError("JTT trains identification models: call prepare_many(items, "
                        "trainer=...) with the trainer's AuxTrainer")

    @classmethod
    def prepare_many(cls, items, workers: int = 1, trainer: AuxTrainer | None = None,
                     ) -> list[Prepared | UserError]:
        """The identification models (ERM, `id_epochs` epochs, last epoch) of every run in one
        stacked training by `trainer`, then each run's list with its training errors
        repeated; a run whose identification model failed gets its error."""
        if trainer is None:
            raise TypeError("JTT needs the trainer's AuxTrainer to train its identification "
                            "models")
        seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) for _, _, gen, _ in items]
        runs = [(data, "erm", seed, replace(config, epochs=hp["id_epochs"], select="last"))
                for (data, hp, _, config), seed in zip(items, seeds, strict=True)]
        probs = trainer.fit_predict(runs, workers=workers)
        out: list[Prepared | UserError] = []
        for (data, hp, _, _), seed, p in zip(items, seeds, probs, strict=True):
            if isinstance(p, UserError):
                out.append(TrainingError(f"the JTT identification model (ERM, {hp['id_epochs']} "
                                         f"epochs) failed: {p}"))
                continue
            idx = np.asarray(data.train_idx, dtype=np.int64)
            errors = argmax_errors(p, np.asarray(data.soft)[idx])
            out.append(Prepared(jtt_upsample(idx, errors, hp["up"]), None,
                                {"errors": int(errors.sum()), "id_seed": seed}))
        return out
