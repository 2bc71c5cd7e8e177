"""StackedAdam against torch.optim.Adam run by run, across the switch from one whole-tensor
update per parameter (no masked step yet) to per-run step counts (after a masked step)."""

from __future__ import annotations

import numpy as np
import torch

from emodebias.training.optim import StackedAdam


def test_stacked_adam_equals_torch_adam_per_run_with_a_masked_step() -> None:
    gen = torch.Generator().manual_seed(3)
    runs = 3
    w = torch.nn.Parameter(torch.randn(runs, 4, 5, generator=gen))
    b = torch.nn.Parameter(torch.randn(runs, 5, generator=gen))
    opt = StackedAdam([{"params": [w, b], "lr": 0.05}], runs, weight_decay=0.01)
    ref = [(torch.nn.Parameter(w[r].detach().clone()), torch.nn.Parameter(b[r].detach().clone()))
           for r in range(runs)]
    ref_opt = [torch.optim.Adam(list(p), lr=0.05, weight_decay=0.01) for p in ref]
    masks = [None, None, np.array([True, False, True]), None, np.array([False, True, True]), None]
    for mask in masks:
        gw, gb = torch.randn(runs, 4, 5, generator=gen), torch.randn(runs, 5, generator=gen)
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step(mask)
        for r in range(runs):
            if mask is not None and not mask[r]:
                continue
            ref[r][0].grad, ref[r][1].grad = gw[r].clone(), gb[r].clone()
            ref_opt[r].step()
    for r in range(runs):
        np.testing.assert_allclose(w[r].detach().numpy(), ref[r][0].detach().numpy(),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b[r].detach().numpy(), ref[r][1].detach().numpy(),
                                   rtol=1e-6, atol=1e-7)
    # runs 0 and 1 each skipped one step: their counts differ from run 2's
    np.testing.assert_array_equal(opt.t[0][0].numpy(), [5.0, 5.0, 6.0])
