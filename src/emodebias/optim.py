"""Adam over stacked parameters [R, ...] with per-run learning rates, weight decays and masks.

torch.optim.Adam (fused or foreach) takes one learning rate per call and steps every element it
is given: per-run learning rates and weight decays (hyperparameter-search trials stacked in one
training) and per-run masked steps would need a call per run. This Adam is the same update
(torch's formula, L2 weight decay) written over the run dimension: lr, weight decay and the step
count are [R] tensors, and a run left out of a step (masked) keeps parameters, moments and step
count, so a run gives the same numbers whatever it is stacked with. The update of one parameter
is one compiled function (`training.compile`): one fused pass over p, g, m and v.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from emodebias.training.compile import compiled


@compiled
def adam_update(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                t: torch.Tensor, lr: torch.Tensor, wd: torch.Tensor, active: torch.Tensor,
                beta1: float, beta2: float, eps: float) -> None:
    """One Adam step on [R, n] views (in place); runs where `active` [R] is False keep
    everything. lr, wd, t are [R]."""
    keep = active.unsqueeze(1)
    g = g + wd.unsqueeze(1) * p
    m_new = torch.lerp(m, g, 1 - beta1)
    v_new = v * beta2 + (1 - beta2) * g * g
    t_new = t + active.to(t.dtype)
    bc1 = 1 - torch.pow(beta1, t_new)
    bc2 = torch.sqrt(1 - torch.pow(beta2, t_new))
    denom = torch.sqrt(v_new) / bc2.unsqueeze(1) + eps
    p_new = p - (lr / bc1).unsqueeze(1) * (m_new / denom)
    p.copy_(torch.where(keep, p_new, p))
    m.copy_(torch.where(keep, m_new, m))
    v.copy_(torch.where(keep, v_new, v))
    t.copy_(t_new)


class StackedAdam:
    """Adam (torch's update, L2 weight decay) over stacked parameters [R, ...], per run.

    `groups` are torch-style dicts (params, lr); a group's lr is a float or an [R] tensor, and
    `weight_decay` a float or an [R] tensor: runs of a stack may differ in both. Each parameter
    keeps a per-run step count `t[group][param]` [R]."""

    def __init__(self, groups: list[dict[str, Any]], n_runs: int,
                 weight_decay: float | torch.Tensor = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.n_runs, self.betas, self.eps = n_runs, betas, eps
        self.groups: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        for g in groups:
            ps = list(g["params"])
            device = ps[0].device if ps else torch.device("cpu")
            self.groups.append((ps, self._per_run(g["lr"], device)))
        device = self.groups[0][0][0].device if self.groups and self.groups[0][0] else None
        self.wd = self._per_run(weight_decay, device or torch.device("cpu"))
        self.m = [[torch.zeros_like(p) for p in ps] for ps, _ in self.groups]
        self.v = [[torch.zeros_like(p) for p in ps] for ps, _ in self.groups]
        self.t = [[torch.zeros(n_runs, dtype=torch.float32, device=p.device) for p in ps]
                  for ps, _ in self.groups]
        self._all = torch.ones(n_runs, dtype=torch.bool, device=device)

    def _per_run(self, value: float | torch.Tensor, device: torch.device) -> torch.Tensor:
        out = torch.as_tensor(value, dtype=torch.float32, device=device)
        return out.expand(self.n_runs).contiguous() if out.dim() == 0 else out.to(device)

    def zero_grad(self) -> None:
        for ps, _ in self.groups:
            for p in ps:
                p.grad = None

    @torch.no_grad()
    def step(self, active: np.ndarray | torch.Tensor | None = None) -> None:
        """Update every run, or only the runs where `active` [R] holds."""
        mask = self._all if active is None else torch.as_tensor(active, device=self._all.device)
        b1, b2 = self.betas
        for (params, lr), ms, vs, ts in zip(self.groups, self.m, self.v, self.t, strict=True):
            for p, m, v, t in zip(params, ms, vs, ts, strict=True):
                if p.grad is None:
                    continue
                n = self.n_runs
                adam_update(p.view(n, -1), p.grad.reshape(n, -1), m.view(n, -1), v.view(n, -1),
                            t, lr, self.wd, mask, b1, b2, self.eps)
