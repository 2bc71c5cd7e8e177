"""Adam over stacked parameters [R, ...], run by run (torch's fused / foreach kernels)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.optim.adam import adam as _adam_fn


class StackedAdam:
    """torch's Adam (L2 weight decay) over stacked parameters [R, ...], run by run: each run's
    slices carry their own step count, and runs left out of a step (masked) keep parameters,
    moments and step count, so a run gives the same numbers whatever it is stacked with.
    Uses the fused kernel where the device supports it, else the foreach one."""

    def __init__(self, groups: list[dict[str, Any]], n_runs: int, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.groups = [(list(g["params"]), float(g["lr"])) for g in groups]
        self.n_runs, self.wd, self.betas, self.eps = n_runs, weight_decay, betas, eps
        self.m = [[torch.zeros_like(p) for p in ps] for ps, _ in self.groups]
        self.v = [[torch.zeros_like(p) for p in ps] for ps, _ in self.groups]
        # one step tensor per (parameter, run): the kernels increment every listed tensor
        self.t = [[torch.zeros(n_runs, dtype=torch.float32, device=p.device) for p in ps]
                  for ps, _ in self.groups]
        # per-run views of (parameter, m, v, step), made once: [group][param] -> 4 tuples of R
        self.views = [[tuple(x.detach().unbind(0) for x in four)
                       for four in zip(ps, ms, vs, ts, strict=True)]
                      for (ps, _), ms, vs, ts in zip(self.groups, self.m, self.v, self.t,
                                                    strict=True)]
        self.fused: bool | None = None

    def zero_grad(self) -> None:
        for ps, _ in self.groups:
            for p in ps:
                p.grad = None

    @torch.no_grad()
    def step(self, active: np.ndarray | None = None) -> None:
        """Update every run, or only the runs where `active` [R] (host bool array) holds."""
        runs = range(self.n_runs) if active is None else np.flatnonzero(active).tolist()
        for (params, lr), views in zip(self.groups, self.views, strict=True):
            lists: tuple[list[torch.Tensor], ...] = ([], [], [], [], [])
            for p, (ps, ms, vs, ts) in zip(params, views, strict=True):
                if p.grad is None:
                    continue
                gs = p.grad.unbind(0)
                for r in runs:
                    for out, x in zip(lists, (ps, gs, ms, vs, ts), strict=True):
                        out.append(x[r])
            if lists[0]:
                self._adam(lists, lr)

    def _adam(self, lists: tuple[list[torch.Tensor], ...], lr: float) -> None:
        kw = {"amsgrad": False, "beta1": self.betas[0], "beta2": self.betas[1], "lr": lr,
              "weight_decay": self.wd, "eps": self.eps, "maximize": False}
        if self.fused is None:  # the fused kernel where this device has one
            try:
                _adam_fn(*lists[:4], [], lists[4], fused=True, **kw)
                self.fused = True
                return
            except (RuntimeError, NotImplementedError):
                self.fused = False
        _adam_fn(*lists[:4], [], lists[4], fused=self.fused,
                              foreach=not self.fused, **kw)
