"""The stacked SER head: exact EMO-SUPERB arithmetic, and stacking equals separate runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emodebias.model import HIDDEN, Rows, SERHead, StackedMLP, head_logits, mix_rows, run_slice
from emodebias.optim import StackedAdam


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_head_shapes_and_init() -> None:
    head = SERHead(gens(1, 2, 3), n_layers=4, dim=10, n_classes=6)
    assert head.encoder.mix.weight.shape == (3, 4)
    assert torch.equal(head.encoder.mix.weight, torch.zeros(3, 4))
    assert head.encoder.proj.weight.shape == (3, 10, HIDDEN)
    assert head.out.weight.shape == (3, HIDDEN, 6)
    assert head.encoder.proj.weight.abs().max() <= 1 / math.sqrt(10)
    assert head.out.bias.abs().max() <= 1 / math.sqrt(HIDDEN)


def test_head_is_weighted_layer_sum_then_two_linears() -> None:
    head = SERHead(gens(7), n_layers=3, dim=5, n_classes=4)
    with torch.no_grad():
        head.encoder.mix.weight.copy_(torch.tensor([[0.0, 1.0, 2.0]]))
    x = torch.randn(1, 8, 3, 5)
    logits, h = head(x)
    w = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    pooled = np.einsum("l,bld->bd", w, x[0].numpy())
    p = head.encoder.proj
    h_ref = pooled @ p.weight[0].detach().numpy() + p.bias[0].detach().numpy()
    o = head.out
    logits_ref = h_ref @ o.weight[0].detach().numpy() + o.bias[0].detach().numpy()
    np.testing.assert_allclose(h[0].detach().numpy(), h_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[0].detach().numpy(), logits_ref, rtol=1e-5, atol=1e-5)
    # no nonlinearity: the head is affine in its input
    a, b = torch.randn(1, 8, 3, 5), torch.randn(1, 8, 3, 5)
    lhs = head(a + b)[0] + head(torch.zeros_like(a))[0]
    torch.testing.assert_close(lhs, head(a)[0] + head(b)[0], rtol=1e-4, atol=1e-5)


def test_logits_path_equals_two_layer_forward_and_its_gradients() -> None:
    """head.logits (one compiled graph) = head(x)[0], values and every gradient."""
    head = SERHead(gens(3, 4), n_layers=3, dim=48, n_classes=6)
    with torch.no_grad():
        head.encoder.mix.weight.normal_()
    x = torch.randn(2, 32, 3, 48)
    target = torch.randn(2, 32, 6)
    grads = []
    for logits in (head(x)[0], head.logits(x)):
        head.zero_grad()
        (logits * target).sum().backward()
        grads.append([p.grad.clone() for p in head.parameters()])
    torch.testing.assert_close(head.logits(x), head(x)[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_stacked_runs_equal_separate_runs() -> None:
    stacked = SERHead(gens(11, 12, 13), 3, 6, 5)
    singles = [SERHead(gens(s), 3, 6, 5) for s in (11, 12, 13)]
    x = torch.randn(3, 9, 3, 6)
    out, _ = stacked(x)
    for r, single in enumerate(singles):
        for k, v in single.state_dict().items():
            torch.testing.assert_close(stacked.state_dict()[k][r : r + 1], v)
        torch.testing.assert_close(out[r : r + 1], single(x[r : r + 1])[0], rtol=1e-5, atol=1e-6)
    assert not torch.equal(stacked.out.weight[0], stacked.out.weight[1])


def test_shared_input_equals_expanded_input() -> None:
    head = SERHead(gens(1, 2), 2, 4, 3)
    x = torch.randn(7, 2, 4)
    torch.testing.assert_close(head(x)[0], head(x.expand(2, 7, 2, 4))[0], rtol=1e-5, atol=1e-6)


def test_stacked_mlp_relu_hidden_and_slice() -> None:
    mlp = StackedMLP(gens(3), 4, [5, 5], 2)
    x = torch.randn(1, 6, 4)
    out, hid = mlp(x)
    assert out.shape == (1, 6, 2) and hid.shape == (1, 6, 5)
    assert (hid >= 0).all()
    state = run_slice(mlp.state_dict(), 0)
    assert state["out.weight"].shape == (1, 5, 2)


def _head_values_and_grads(head: SERHead, x: torch.Tensor | Rows) -> list[torch.Tensor]:
    head.zero_grad()
    logits, h = head(x)
    chained = head.logits(x)
    (logits.sum() + h.pow(2).sum() + chained.pow(2).sum()).backward()
    return [logits.detach(), chained.detach(), *(p.grad.clone() for p in head.parameters())]


def test_bank_rows_equal_the_dense_batch_values_and_gradients() -> None:
    """Per-run float16 bank rows (gathered and converted inside the head) give the dense
    float32 [R, B, L, D] batch's values and gradients; shared rows [B] equal them repeated."""
    head = SERHead(gens(1, 2, 3), n_layers=3, dim=16, n_classes=5)
    with torch.no_grad():
        head.encoder.mix.weight.normal_()
    bank = torch.randn(40, 3, 16).half()
    idx = torch.randint(0, 40, (3, 8), generator=torch.Generator().manual_seed(0))
    rows = Rows(bank, idx)
    assert rows.shape == (3, 8, 3, 16)
    dense = _head_values_and_grads(head, rows.dense())
    for a, b in zip(dense, _head_values_and_grads(head, rows), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    shared = Rows(bank, idx[0])
    for a, b in zip(_head_values_and_grads(head, shared),
                    _head_values_and_grads(head, Rows(bank, idx[0].expand(3, 8))), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compiled_head_and_adam_equal_eager_mode(monkeypatch) -> None:
    """torch.compile (inductor) and eager mode (EMODEBIAS_COMPILE=0) give the same logits,
    gradients and Adam updates to float32 rounding, across batch and stack sizes (compiled
    once as dynamic shapes, not per size)."""
    torch._dynamo.reset()
    out = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("EMODEBIAS_COMPILE", mode)
        got = []
        for n_runs, batch in ((2, 8), (3, 5), (3, 8)):
            head = SERHead(gens(*range(n_runs)), n_layers=3, dim=16, n_classes=4)
            opt = StackedAdam([{"params": list(head.parameters()),
                                "lr": torch.linspace(1e-3, 3e-3, n_runs)}], n_runs,
                              torch.linspace(0.0, 0.1, n_runs))
            bank = torch.randn(30, 3, 16, generator=torch.Generator().manual_seed(n_runs)).half()
            idx = torch.arange(n_runs * batch).view(n_runs, batch) % 30
            for step in range(3):
                got += _head_values_and_grads(head, Rows(bank, idx))
                opt.step(None if step != 1 else np.arange(n_runs) != 1)
            got += [p.detach().clone() for p in head.parameters()]
        out[mode] = got
    assert head_logits._compiled is not None and not head_logits.failed
    assert mix_rows._compiled is not None and not mix_rows.failed
    for a, b in zip(out["1"], out["0"], strict=True):  # float32 sums in another order
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_compile_can_be_disabled(monkeypatch, value: str) -> None:
    from emodebias.training import compile as comp

    monkeypatch.setenv("EMODEBIAS_COMPILE", value)
    assert not comp.enabled()
    calls = []
    wrapped = comp.Compiled(lambda x: calls.append(x) or x + 1)
    assert wrapped(torch.ones(1)).item() == 2 and wrapped._compiled is None and calls


def test_a_failing_compiler_falls_back_to_eager_once(monkeypatch, caplog) -> None:
    from emodebias.training import compile as comp

    monkeypatch.setenv("EMODEBIAS_COMPILE", "1")

    def broken(fn, **_kw):
        def run(*_a):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    wrapped = comp.Compiled(lambda x: x * 2)
    assert wrapped(torch.ones(1)).item() == 2 and wrapped.failed
    assert wrapped(torch.ones(1)).item() == 2
    assert caplog.text.count("eager mode") == 1
