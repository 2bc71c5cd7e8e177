"""Losses shared by every method: class-balanced soft-target CE, GCE, group reductions.

All functions work on stacked runs: tensors carry a leading run dimension R (per-sample values
are [R, B], class weights [R, K], memberships [R, B, G]); R = 1 is a single run.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from emodebias.data.labels import binarize, class_balanced_weights


def class_weights_for(soft: np.ndarray) -> np.ndarray:
    """Cui et al. class weights [K] of a (manipulated) training set given its soft labels [N, K]."""
    return class_balanced_weights(binarize(np.asarray(soft)))


def soft_ce(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Per-sample soft-target cross-entropy −Σ_c y'_c log softmax(z)_c: [..., K] -> [...]."""
    return -(soft * F.log_softmax(logits, dim=-1)).sum(-1)


def class_balanced_ce(
    logits: torch.Tensor, soft: torch.Tensor, class_w: torch.Tensor
) -> torch.Tensor:
    """EMO-SUPERB per-sample loss ℓ_i = s_i·CE_i with s_i = Σ_c w_c y'_ic (PAPERS §2).

    logits, soft: [R, B, K]; class_w: [R, K] (or [K]). Returns [R, B]; L_SER is its mean over B.
    """
    if class_w.dim() == 1:
        class_w = class_w.unsqueeze(0)
    s = (soft * class_w.unsqueeze(-2)).sum(-1)
    return s * soft_ce(logits, soft)


def target_prob(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Multi-label "true-class probability" p_y = Σ_c y'_c softmax(z)_c (PAPERS §6.12)."""
    return (soft * F.softmax(logits, dim=-1)).sum(-1)


def gce(
    logits: torch.Tensor, soft: torch.Tensor, q: float | torch.Tensor = 0.7,
    ce: torch.Tensor | None = None, times_q: bool = True,
) -> torch.Tensor:
    """Generalised CE (Zhang & Sabuncu 2018) in the reference code's form, per sample:
    CE_i · sg(p_y)^q · q, with p_y = target_prob detached (alinlab/LfF module/loss.py
    GeneralizedCELoss; copied unchanged in kakaoenterprise/Learning-Debiased-Disentangled
    module/loss.py). mvandenhi/Signal-is-Harder util.py drops the ×q factor: times_q=False.

    `ce` is the per-sample CE the weight multiplies (PAPERS §3.6: "use the soft-target base
    loss for CE"); default: the plain soft-target CE of `logits`. For one-hot targets the
    gradient is q·p_y^q·∇CE = q·∇[(1 − p_y^q)/q]; for soft targets it is q·p_y^q·s·(softmax − y'),
    whose per-sample minimiser stays y' (the closed form (1 − p_y^q)/q would instead push all
    mass onto argmax y', inconsistent with the soft CE used for LfF's difficulty EMA).
    """
    if ce is None:
        ce = soft_ce(logits, soft)
    p = target_prob(logits, soft).detach().clamp_min(0.0)
    w = p.pow(q)
    return ce * (w * q if times_q else w)


def membership(
    groups: torch.Tensor, n_groups: int, probs: torch.Tensor | None = None
) -> torch.Tensor:
    """Group memberships [..., G]: soft `probs` if given, else one-hot of `groups` (-1 -> all 0)."""
    if probs is not None:
        return probs.float()
    known = groups >= 0
    onehot = F.one_hot(groups.clamp_min(0), n_groups).float()
    return onehot * known.unsqueeze(-1).float()


def group_reduce(
    values: torch.Tensor, member: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group weighted means that survive empty groups.

    values [R, B] (or [R, B, F] for vector values), member [R, B, G] (one-hot or soft),
    optional per-sample weights [R, B]. Returns (means [R, G] or [R, G, F], mass [R, G]);
    a group with no mass in the batch gets mean 0 (never NaN) and mass 0.
    """
    m = member if weights is None else member * weights.unsqueeze(-1)
    mass = m.sum(-2)  # [R, G]
    if values.dim() == member.dim() - 1:
        total = (m * values.unsqueeze(-1)).sum(-2)
        return total / mass.clamp_min(1e-12) * (mass > 0), mass
    total = torch.einsum("rbg,rbf->rgf", m, values)
    return total / mass.clamp_min(1e-12).unsqueeze(-1) * (mass > 0).unsqueeze(-1), mass


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the last dim of `values` where `mask` holds; 0 where nothing is selected."""
    mask = mask.float()
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with value 0 and gradient 0 at 0 (plain sqrt has an infinite gradient there)."""
    return torch.where(x > 0, x.clamp_min(1e-300 if x.dtype == torch.float64 else 1e-30).sqrt(),
                       torch.zeros_like(x))


def soft_rate_gap(probs: torch.Tensor, targets: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """Differentiable RMS-over-classes rate gap between groups, per run [R].

    probs [R, B, K] (softmax outputs), targets [R, B, K] in {0, 1} (the positives for a TPR gap,
    the negatives for an FPR gap), member [R, B, G] group memberships (rows of no group: zeros).
    The soft rate of class c in group g is R~_{c,g} = Σ_{i∈g} t_ic p_ic / Σ_{i∈g} t_ic; per class
    the gap is Σ_g |R~_{c,g} − R~_c| over groups with targets (R~_c pooled over them: FairLib's
    multi-group aggregation, |R~_a − R~_b| for two groups), then sqrt of the mean square over the
    classes where at least two groups have targets. On one-hot (0/1) predictions it equals the
    reported hard gap; λ·gap does not grow with K.
    """
    w = member.unsqueeze(-1) * targets.unsqueeze(-2)  # [R, B, G, K]
    mass = w.sum(1)  # [R, G, K]
    present = mass > 0
    rate = (w * probs.unsqueeze(-2)).sum(1) / mass.clamp_min(1e-12)
    pooled = (rate * mass).sum(1) / mass.sum(1).clamp_min(1e-12)  # [R, K]
    dev = ((rate - pooled.unsqueeze(1)).abs() * present).sum(1)  # [R, K]
    ok = (present.sum(1) >= 2).to(probs.dtype)
    return safe_sqrt((dev.pow(2) * ok).sum(-1) / ok.sum(-1).clamp_min(1.0))
