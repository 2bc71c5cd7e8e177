"""Adam over stacked parameters [R, ...], run by run (torch's fused / foreach kernels)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.optim.adam import adam as _adam_fn

from emodebias.fused import FactoredGrad, adam_outer


class StackedAdam:
    """torch's Adam (L2 weight decay) over stacked parameters [R, ...], run by run: each run's
    slices carry their own step count, and runs left out of a step (masked) keep parameters,
    moments and step count, so a run gives the same numbers whatever it is stacked with.
    While no step has been masked, each stacked tensor takes one Adam call (the same elementwise
    update as run by run). Uses the fused kernel where the device supports it, else the foreach
    one.

    `factored` lists weights whose gradients arrive in factored form (`FactoredGrad`, native
    kernels): such a W is updated by `fused.adam_outer` without its gradient ever being written,
    and a linear chain's W2 gets its gradient from the same pass; a W that also has an ordinary
    gradient gets the factored part added to it instead."""

    def __init__(self, groups: list[dict[str, Any]], n_runs: int, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 factored: list[tuple[torch.Tensor, FactoredGrad]] = ()) -> None:
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
        # the step count every run of a parameter shares while no step has been masked (0-dim
        # tensors, for one whole-tensor Adam call; None once the runs' counts part)
        self.shared_t: list[list[torch.Tensor | None]] = [
            [torch.zeros((), dtype=torch.float32, device=p.device) for p in ps]
            for ps, _ in self.groups]
        self.fused: bool | None = None
        self.factored = list(factored)
        # where each parameter's state lives: id -> (group, index)
        self.where = {id(p): (gi, pi) for gi, (ps, _) in enumerate(self.groups)
                      for pi, p in enumerate(ps)}

    def zero_grad(self) -> None:
        for ps, _ in self.groups:
            for p in ps:
                p.grad = None

    @torch.no_grad()
    def step(self, active: np.ndarray | None = None) -> None:
        """Update every run, or only the runs where `active` [R] (host bool array) holds."""
        for w, sink in self.factored:
            self._factored_step(w, sink, active)
        runs = range(self.n_runs) if active is None else np.flatnonzero(active).tolist()
        for gi, ((params, lr), views) in enumerate(zip(self.groups, self.views, strict=True)):
            lists: tuple[list[torch.Tensor], ...] = ([], [], [], [], [])
            for pi, (p, (ps, ms, vs, ts)) in enumerate(zip(params, views, strict=True)):
                if p.grad is None:
                    continue
                shared = self.shared_t[gi][pi]
                if shared is not None and active is None:  # the whole stacked tensor at once
                    whole = (p, p.grad, self.m[gi][pi], self.v[gi][pi], shared)
                    for out, x in zip(lists, whole, strict=True):
                        out.append(x)
                    continue
                if shared is not None:  # a masked step: from now on, per-run step counts
                    self.t[gi][pi].fill_(shared)
                    self.shared_t[gi][pi] = None
                gs = p.grad.unbind(0)
                for r in runs:
                    for out, x in zip(lists, (ps, gs, ms, vs, ts), strict=True):
                        out.append(x[r])
            if lists[0]:
                self._adam(lists, lr)

    def _factored_step(self, w: torch.Tensor, sink: FactoredGrad,
                       active: np.ndarray | None) -> None:
        pending = sink.take()
        if pending is None:
            return
        if w.grad is not None:  # W also has an ordinary gradient: add the factored one
            w.grad += torch.bmm(pending.u.mT, pending.v)
            out = torch.bmm(pending.u[:, : pending.n_out], w)
        else:
            gi, pi = self.where[id(w)]
            hp = (self.groups[gi][1], *self.betas, self.eps, self.wd)
            out = adam_outer(w.data, self.m[gi][pi], self.v[gi][pi], self.t[gi][pi], pending,
                             active, hp)
        for w2, bias, start, stop in pending.heads:
            dw2 = (out[:, start:stop].mT + bias).contiguous()  # the fused Adam wants p's layout
            w2.grad = dw2 if w2.grad is None else w2.grad + dw2

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
        _adam_fn(*lists[:4], [], lists[4], fused=self.fused, foreach=not self.fused, **kw)
