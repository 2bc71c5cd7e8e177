"""Adam over stacked parameters [R, ...] with per-run learning rates, weight decays and masks."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch.optim.adam import adam as _adam_fn


class StackedAdam:
    """torch's Adam (L2 weight decay) over stacked parameters [R, ...], run by run.

    Runs of a stack may differ in learning rate and weight decay (the trials of a search):
    `groups` are torch-style dicts whose lr is a float or an [R] sequence / tensor, and
    `weight_decay` a float or an [R] sequence. torch's Adam takes one lr per call, so each step
    makes one call (fused kernel where the device has one, else foreach) per distinct (lr,
    weight decay) over the per-run slices of those runs; each slice keeps its own step count,
    and runs left out of a step (masked) keep parameters, moments and step count, so a run gives
    the same numbers whatever it is stacked with."""

    def __init__(self, groups: list[dict[str, Any]], n_runs: int,
                 weight_decay: float | Any = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.n_runs, self.betas, self.eps = n_runs, betas, eps
        self.groups = [(list(g["params"]), self._per_run(g["lr"])) for g in groups]
        self.wd = self._per_run(weight_decay)
        self.m = [[torch.zeros_like(p) for p in ps] for ps, _ in self.groups]
        self.v = [[torch.zeros_like(p) for p in ps] for ps, _ in self.groups]
        # one step count per (parameter, run): the kernels increment each run's slice
        self.t = [[torch.zeros(n_runs, dtype=torch.float32, device=p.device) for p in ps]
                  for ps, _ in self.groups]
        # per-run views of (parameter, m, v, step), made once: [group][param] -> 4 tuples of R
        self.views = [[tuple(x.detach().unbind(0) for x in four)
                       for four in zip(ps, ms, vs, ts, strict=True)]
                      for (ps, _), ms, vs, ts in zip(self.groups, self.m, self.v, self.t,
                                                    strict=True)]
        # while every run of a parameter has made every step, their step counts are one 0-dim
        # tensor and the whole stacked tensor takes one Adam call (elementwise: the same
        # numbers as run by run); None once a masked step parts them
        self.shared_t: list[list[torch.Tensor | None]] = [
            [torch.zeros((), dtype=torch.float32, device=p.device) for p in ps]
            for ps, _ in self.groups]
        self.uniform = len(set(self.wd)) == 1
        self.fused: bool | None = None

    def _per_run(self, value: Any) -> list[float]:
        """A float or [R] values -> R floats."""
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        if np.ndim(value) == 0:
            return [float(value)] * self.n_runs
        out = [float(v) for v in value]
        if len(out) != self.n_runs:
            raise ValueError(f"{len(out)} per-run values for {self.n_runs} runs")
        return out

    def zero_grad(self) -> None:
        for ps, _ in self.groups:
            for p in ps:
                p.grad = None

    @torch.no_grad()
    def step(self, active: np.ndarray | None = None) -> None:
        """Update every run, or only the runs where `active` [R] (host bool array) holds."""
        runs = range(self.n_runs) if active is None else np.flatnonzero(active).tolist()
        for gi, ((params, lrs), views) in enumerate(zip(self.groups, self.views, strict=True)):
            calls: dict[tuple[float, float], tuple[list[torch.Tensor], ...]] = defaultdict(
                lambda: ([], [], [], [], []))
            whole = active is None and self.uniform and len(set(lrs)) == 1
            grads: list[Any] = []
            for pi, p in enumerate(params):
                shared = self.shared_t[gi][pi]
                if p.grad is None:
                    grads.append(None)
                elif whole and shared is not None:  # the whole stacked tensor at once
                    lists = calls[(lrs[0], self.wd[0])]
                    for out, x in zip(lists, (p, p.grad, self.m[gi][pi], self.v[gi][pi], shared),
                                      strict=True):
                        out.append(x)
                    grads.append(None)
                else:
                    if shared is not None:  # from now on, per-run step counts
                        self.t[gi][pi].fill_(shared)
                        self.shared_t[gi][pi] = None
                    grads.append(p.grad.unbind(0))
            for r in runs:
                lists = calls[(lrs[r], self.wd[r])]
                for (ps, ms, vs, ts), gs in zip(views, grads, strict=True):
                    if gs is None:
                        continue
                    for out, x in zip(lists, (ps, gs, ms, vs, ts), strict=True):
                        out.append(x[r])
            for (lr, wd), lists in calls.items():
                if lists[0]:
                    self._adam(lists, lr, wd)

    def _adam(self, lists: tuple[list[torch.Tensor], ...], lr: float, wd: float) -> None:
        kw = {"amsgrad": False, "beta1": self.betas[0], "beta2": self.betas[1], "lr": lr,
              "weight_decay": wd, "eps": self.eps, "maximize": False}
        if self.fused is None:  # the fused kernel where this device has one
            try:
                _adam_fn(*lists[:4], [], lists[4], fused=True, **kw)
                self.fused = True
                return
            except (RuntimeError, NotImplementedError):
                self.fused = False
        _adam_fn(*lists[:4], [], lists[4], fused=self.fused, foreach=not self.fused, **kw)
