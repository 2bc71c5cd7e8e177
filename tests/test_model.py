"""The stacked SER head: exact EMO-SUPERB arithmetic, and stacking equals separate runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emodebias.training.model import (
    HIDDEN,
    SERHead,
    SharedRows,
    StackedMLP,
    _LinearChain,
    logits_dense,
    mix_dense,
    run_slice,
)
from emodebias.training.optim import StackedAdam


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


def test_linear_chain_gradients_are_exact() -> None:
    """The fused logits path: autograd's numerical gradcheck in float64 (every input)."""
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 5, 7), (2, 7, 4), (2, 4), (2, 4, 3), (2, 3)]
    args = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    assert torch.autograd.gradcheck(_LinearChain.apply, args)


def test_logits_path_equals_two_layer_forward_and_its_gradients() -> None:
    """head.logits (one linear map through W2ᵀW1ᵀ) = head(x)[0], values and every gradient."""
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


def test_shared_rows_equal_the_dense_batch_values_and_gradients() -> None:
    """Runs 0, 2, 3 read one batch and run 1 another: the grouped layer mix (each distinct batch
    read once) gives the dense [R, B, L, D] result and the same gradients."""
    head = SERHead(gens(1, 2, 3, 4), n_layers=3, dim=16, n_classes=5)
    with torch.no_grad():
        head.encoder.mix.weight.normal_()
    layer_major = torch.randn(3, 2 * 8, 16)  # as FeatureBank returns rows: [L, J*B, D]
    u = layer_major.view(3, 2, 8, 16).movedim(0, -2)  # [J, B, L, D] view
    shared = SharedRows(u, (0, 1, 0, 0))
    assert shared.shape == (4, 8, 3, 16)
    grads = []
    for x in (shared.dense(), shared):
        head.zero_grad()
        logits, h = head(x)
        (logits.sum() + h.pow(2).sum() + head.logits(x).pow(2).sum()).backward()
        grads.append((logits.detach(), [p.grad.clone() for p in head.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _head_values_and_grads(head: SERHead, x: torch.Tensor | SharedRows) -> list[torch.Tensor]:
    head.zero_grad()
    logits, h = head(x)
    chained = head.logits(x)
    (logits.sum() + h.pow(2).sum() + chained.pow(2).sum()).backward()
    return [logits.detach(), chained.detach(), *(p.grad.clone() for p in head.parameters())]


def test_compiled_head_and_training_equal_eager_mode(monkeypatch) -> None:
    """torch.compile (inductor; EMODEBIAS_COMPILE=1) and eager mode (=0) give the same logits,
    gradients and Adam updates to float32 rounding, on dense, layer-major and shared inputs and
    across batch and stack sizes."""
    torch._dynamo.reset()
    out = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("EMODEBIAS_COMPILE", mode)
        got = []
        for n_runs, batch in ((3, 8), (3, 5)):
            head = SERHead(gens(*range(n_runs)), n_layers=3, dim=16, n_classes=4)
            opt = StackedAdam([{"params": list(head.parameters()),
                                "lr": np.linspace(1e-3, 3e-3, n_runs)}], n_runs,
                              np.linspace(0.0, 0.1, n_runs))
            g = torch.Generator().manual_seed(batch)
            layer_major = torch.randn(3, 2 * batch, 16, generator=g)
            u = layer_major.view(3, 2, batch, 16).movedim(0, -2)  # [J, B, L, D] view
            inputs = [torch.randn(n_runs, batch, 3, 16, generator=g), u[:1].expand(n_runs, -1,
                      -1, -1), SharedRows(u, (0, 1, 0)), u[1]]
            for step, x in enumerate(inputs):
                got += _head_values_and_grads(head, x)
                opt.step(None if step != 1 else np.arange(n_runs) != 1)
            got += [p.detach().clone() for p in head.parameters()]
        out[mode] = got
    assert logits_dense._compiled is not None and not logits_dense.failed
    assert mix_dense._compiled is not None and not mix_dense.failed
    for a, b in zip(out["1"], out["0"], strict=True):  # float32 sums in another order
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("value,cpu,cuda", [("0", False, False), ("off", False, False),
                                            ("auto", False, True), ("1", True, True)])
def test_compile_setting(monkeypatch, value: str, cpu: bool, cuda: bool) -> None:
    from emodebias.training import compile as comp

    monkeypatch.setenv("EMODEBIAS_COMPILE", value)
    assert comp.enabled("cpu") is cpu and comp.enabled("cuda") is cuda


def test_a_failing_compiler_falls_back_to_eager_once(monkeypatch, caplog) -> None:
    from emodebias.training import compile as comp

    monkeypatch.setenv("EMODEBIAS_COMPILE", "1")
    monkeypatch.setattr(comp, "_FAILED", [])

    def broken(fn, **_kw):
        def run(*_a):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    wrapped = comp.Compiled(lambda x: x * 2)
    assert wrapped(torch.ones(1)).item() == 2 and wrapped.failed
    assert wrapped(torch.ones(1)).item() == 2
    assert caplog.text.count("eager mode") == 1
    assert not comp.enabled("cpu")  # the model's eager path from now on
