"""Native kernels (emodebias/kernels/head.c via emodebias.fused) against float64 references.

Every value and gradient of the fused layer mix and linear head is checked against an einsum
computation in float64, for float16 and float32 banks, per-run and shared rows, dimensions that
are not multiples of the 8-wide vectors (the scalar tails), and the portable float16 conversion
(built with -mno-f16c) on normal, subnormal and non-finite values. Training with the kernels is
checked against the PyTorch path, and an in-place memory-mapped bank against a preloaded one.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from emodebias import fused, kernels
from emodebias.feature_bank import FeatureBank
from emodebias.fused import BankRows, bank_mix, bank_mix_chain
from emodebias.labels import soft_from_votes
from emodebias.train import RunConfig, TrainConfig, TrainData, fit, fit_many

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler on this machine: the kernels cannot build")


def test_library_builds_and_loads() -> None:
    assert kernels.library() is not None
    assert kernels.build().exists()  # cached: the second build is the same file


def _params(runs: int, d: int, hid: int, k: int, layers: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def p(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    return (p(runs, layers), p(runs, d, hid, scale=d ** -0.5), p(runs, hid),
            p(runs, hid, k, scale=hid ** -0.5), p(runs, k))


def _reference(bank: torch.Tensor, rows: torch.Tensor, a, w1, b1, w2, b2) -> torch.Tensor:
    """float64 logits of mix -> Linear -> Linear on gathered rows."""
    x = bank.double()[rows]  # [R, B, L, D] or [B, L, D]
    s = torch.softmax(a.double(), -1)
    eq = "rl,rbld->rbd" if rows.dim() == 2 else "rl,bld->rbd"
    h = torch.einsum(eq, s, x)
    return (h @ w1.double() + b1.double()[:, None]) @ w2.double() + b2.double()[:, None]


def _grads(fn, params, g: torch.Tensor) -> list[torch.Tensor]:
    for p in params:
        p.grad = None
    out = fn()
    (out.double() * g).sum().backward()
    return [out.detach().double()] + [p.grad.double().clone() for p in params]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dims", [(3, 20, 12, 5), (13, 64, 32, 6), (2, 150, 8, 3)])  # L D H K
def test_mix_chain_values_and_gradients(dtype, shared, dims) -> None:
    layers, d, hid, k = dims
    runs, b, n = 3, 7, 30
    gen = torch.Generator().manual_seed(1)
    bank = torch.randn(n, layers, d, generator=gen).to(dtype)
    rows = torch.randint(0, n, (b,) if shared else (runs, b), generator=gen)
    params = _params(runs, d, hid, k, layers)
    a, w1, b1, w2, b2 = params
    g = torch.randn(runs, b, k, generator=gen, dtype=torch.float64)
    got = _grads(lambda: bank_mix_chain(torch.softmax(a, -1), w1, b1, w2, b2,
                                        BankRows(bank, rows)), params, g)
    want = _grads(lambda: _reference(bank, rows, *params), params, g)
    for name, x, y in zip(("logits", "a", "w1", "b1", "w2", "b2"), got, want, strict=True):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-4,
                                   atol=1e-5 * float(y.abs().max()), err_msg=name)
    with torch.no_grad():  # evaluation: row by row, the mix never stored
        ev = bank_mix_chain(torch.softmax(a, -1), w1, b1, w2, b2, BankRows(bank, rows))
    assert not ev.requires_grad
    np.testing.assert_allclose(ev.double().numpy(), want[0].numpy(), rtol=1e-4,
                               atol=1e-5 * float(want[0].abs().max()), err_msg="no-grad logits")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("deferred", [False, True])
def test_mix_linear_values_and_gradients(dtype, shared, deferred) -> None:
    """The h_S encoder (mix -> Linear) on bank rows against float64; with a sink, W's gradient
    is the sink's u^T v instead of autograd's."""
    layers, d, hid, runs, b, n = 3, 75, 12, 2, 6, 30
    gen = torch.Generator().manual_seed(7)
    bank = torch.randn(n, layers, d, generator=gen).to(dtype)
    rows = torch.randint(0, n, (b,) if shared else (runs, b), generator=gen)
    a, w, bias = _params(runs, d, hid, 1, layers)[:3]
    g = torch.randn(runs, b, hid, generator=gen, dtype=torch.float64)
    sink = fused.FactoredGrad() if deferred else None
    got = _grads(lambda: fused.bank_mix_linear(torch.softmax(a, -1), w, bias,
                                               BankRows(bank, rows), sink),
                 [a, bias] if deferred else [a, w, bias], g)
    if deferred:
        pending = sink.take()
        assert pending.n_out == 0 and sink.take() is None
        got.insert(2, torch.bmm(pending.u.mT, pending.v).double())
    x = bank.double()[rows]
    eq = "rl,bld->rbd" if shared else "rl,rbld->rbd"
    want = _grads(lambda: torch.einsum(eq, torch.softmax(a.double(), -1), x) @ w.double()
                  + bias.double()[:, None], [a, w, bias], g)
    for name, u, y in zip(("h", "a", "w", "b"), got, want, strict=True):
        np.testing.assert_allclose(u.numpy(), y.numpy(), rtol=1e-4,
                                   atol=1e-5 * float(y.abs().max()), err_msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_mix_values_and_gradients(dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    bank = torch.randn(25, 4, 19, generator=gen).to(dtype)
    rows = torch.randint(0, 25, (2, 6), generator=gen)
    a = torch.randn(2, 4, generator=gen).requires_grad_()
    g = torch.randn(2, 6, 19, generator=gen, dtype=torch.float64)
    got = _grads(lambda: bank_mix(torch.softmax(a, -1), BankRows(bank, rows)), [a], g)
    want = _grads(lambda: torch.einsum("rl,rbld->rbd", torch.softmax(a.double(), -1),
                                       bank.double()[rows]), [a], g)
    for x, y in zip(got, want, strict=True):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shared", [True, False])
def test_disent_evaluation_chains_equal_its_branches(shared: bool) -> None:
    """DisEnt's evaluation on bank rows (each branch through its half of C_i, as a linear
    chain) gives C_i([z_l, z_b]) computed from the 256-d branches, in float64."""
    from emodebias.methods import MethodContext, get_method

    runs, layers, d, k = 2, 3, 20, 4
    gens = [torch.Generator().manual_seed(r) for r in range(runs)]
    zeros = np.zeros((runs, 8), dtype=np.int64)
    cls = get_method("disent")
    m = cls([cls.resolve()] * runs, MethodContext(layers, d, k, 2, gens, gens, zeros, zeros))
    with torch.no_grad():  # layer weights and biases away from their zero / uniform starts
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=gens[0]) * 0.3)
    bank = torch.randn(30, layers, d, generator=gens[1]).to(torch.float16)
    rows = torch.randint(0, 30, (7,) if shared else (runs, 7), generator=gens[1])
    with torch.no_grad():
        got = m.logits(BankRows(bank, rows))
    x = bank.double()[rows]
    x = x.expand(runs, *x.shape) if shared else x

    def branch(enc) -> torch.Tensor:
        s = torch.softmax(enc.mix.weight.double(), -1)
        h = torch.einsum("rl,rbld->rbd", s, x)
        return h @ enc.proj.weight.double() + enc.proj.bias.double()[:, None]

    z = torch.cat([branch(m.enc_l), branch(m.enc_b)], -1)
    w_i = torch.cat([m.w_l[..., :k], m.w_b[..., :k]], 1).double()  # C_i [R, 512, K]
    want = z @ w_i + m.bias[:, :k].double()[:, None]
    np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-4, atol=1e-4)


def _disent(runs: int, layers: int, d: int, k: int, n_train: int):
    from emodebias.methods import MethodContext, get_method

    gens = [torch.Generator().manual_seed(r) for r in range(runs)]
    maj = np.tile(np.arange(n_train) % k, (runs, 1))
    cls = get_method("disent")
    m = cls([cls.resolve()] * runs, MethodContext(layers, d, k, 2, gens, gens, maj, maj))
    with torch.no_grad():  # layer weights and biases away from their zero / uniform starts
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=gens[0]) * 0.3)
    return m


def _factored_grads(m) -> dict[str, torch.Tensor]:
    """Every parameter's gradient after a backward with the encoders' weights deferred to their
    sinks: W1 = u^T v, a chain's W2 = (u[start:stop] W1)^T + bias (what `StackedAdam` does)."""
    grads = {id(p): p.grad for p in m.parameters() if p.grad is not None}
    for enc in (m.enc_l, m.enc_b):
        w1, pending = enc.proj.weight, enc.sink.take()
        grads[id(w1)] = torch.bmm(pending.u.mT, pending.v)
        for w2, bias, start, stop in pending.heads:
            dw2 = torch.bmm(pending.u[:, start:stop], w1.detach()).mT + bias
            grads[id(w2)] = grads[id(w2)] + dw2 if id(w2) in grads else dw2
    return {n: grads[id(p)] for n, p in m.named_parameters()}


@pytest.mark.parametrize("deferred", [False, True])
def test_disent_training_chains_equal_its_branches(deferred: bool) -> None:
    """DisEnt's training terms on bank rows (each branch one linear chain, with the
    cross-detached columns, the swap included) give the same losses and every parameter's
    gradient as the 256-d branches on the same features (PyTorch, float64); with the encoders'
    weights deferred to sinks, the factored gradients rebuild the same ones."""
    import copy

    from emodebias.methods import Batch

    runs, layers, d, k, b = 2, 3, 20, 4, 6
    m = _disent(runs, layers, d, k, n_train=b)
    ref = copy.deepcopy(m).double()
    gen = torch.Generator().manual_seed(9)
    bank = torch.randn(30, layers, d, generator=gen).to(torch.float16)
    rows = torch.randint(0, 30, (runs, b), generator=gen)
    soft = torch.softmax(torch.randn(runs, b, k, generator=gen) * 2, -1)
    perm = torch.stack([torch.randperm(b, generator=gen) for _ in range(runs)])
    index = torch.arange(b).repeat(runs, 1)

    def batch_of(x, dtype) -> Batch:
        return Batch(x, soft.to(dtype), soft.argmax(-1), torch.zeros(runs, b, dtype=torch.long),
                     None, index, torch.ones(runs, b, dtype=dtype))

    if deferred:
        m.enc_l.defer_weight_grads()
        m.enc_b.defer_weight_grads()
    got = m.terms(batch_of(BankRows(bank, rows), torch.float32), perm)
    want = ref.terms(batch_of(bank.double()[rows], torch.float64), perm)
    for name in ("dis", "swap", "total"):
        np.testing.assert_allclose(got[name].detach().numpy(), want[name].detach().numpy(),
                                   rtol=1e-5, err_msg=name)
    (got["total"] * torch.tensor([1.0, 0.5])).sum().backward()
    (want["total"] * torch.tensor([1.0, 0.5], dtype=torch.float64)).sum().backward()
    grads = (_factored_grads(m) if deferred
             else {n: p.grad for n, p in m.named_parameters()})
    for name, p in ref.named_parameters():
        y = p.grad.numpy()
        np.testing.assert_allclose(grads[name].numpy(), y, rtol=1e-4,
                                   atol=1e-5 * float(np.abs(y).max()), err_msg=name)


def test_memmap_bank_reads_the_file_in_place(tmp_path) -> None:
    x = np.random.default_rng(3).normal(size=(40, 3, 16)).astype(np.float16)
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16,
                                   shape=x.shape)
    mm[:] = x
    mm.flush()
    ro = np.load(tmp_path / "f.npy", mmap_mode="r")
    s = torch.softmax(torch.randn(2, 3), -1)
    rows = torch.tensor([[0, 5, 39], [7, 7, 1]])
    np.testing.assert_array_equal(bank_mix(s, BankRows(ro, rows)).numpy(),
                                  bank_mix(s, BankRows(torch.from_numpy(x), rows)).numpy())
    bank = FeatureBank(ro, np.arange(40), torch.device("cpu"), max_gb=0.0, native=True)
    assert bank.native and bank.x is ro  # too big to preload: the store itself is read


def test_portable_float16_conversion(tmp_path) -> None:
    """The non-F16C path converts normal, subnormal, zero, infinite and NaN halves exactly."""
    lib = kernels.load(kernels.build(tmp_path, ("-mno-f16c",)))
    vals = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 6.1e-5, 5.96e-8, -3.0e-6, np.inf, -np.inf,
                     np.nan, 0.333], dtype=np.float16)
    bank = np.ascontiguousarray(np.tile(vals, 2).reshape(3, 1, 8))  # 24 values, 8 per row
    rows = torch.arange(3)
    s = torch.ones(1, 1)
    h = torch.empty(1, 3, 8)
    buf = torch.empty(8)
    lib.mix_forward(bank.ctypes.data, 1, 1, 8, rows.data_ptr(), 1, 3, 0, s.data_ptr(),
                    h.data_ptr(), buf.data_ptr())
    np.testing.assert_array_equal(h.numpy().reshape(-1), bank.reshape(-1).astype(np.float32))
    rows2 = torch.arange(3).reshape(1, 3)  # per-run rows: the direct (unbuffered) path
    lib.mix_forward(bank.ctypes.data, 1, 1, 8, rows2.data_ptr(), 1, 3, 3, s.data_ptr(),
                    h.data_ptr(), buf.data_ptr())
    np.testing.assert_array_equal(h.numpy().reshape(-1), bank.reshape(-1).astype(np.float32))


def test_kernels_can_be_disabled(monkeypatch) -> None:
    monkeypatch.setenv("EMODEBIAS_KERNELS", "0")
    kernels.library.cache_clear()
    try:
        assert kernels.library() is None
        bank = FeatureBank(np.zeros((4, 2, 8), np.float16), np.arange(4), torch.device("cpu"),
                           1.0, native=True)
        assert not bank.native and bank.x.dtype == torch.float32
        with pytest.raises(RuntimeError, match="unavailable"):
            fused._lib()
    finally:
        monkeypatch.delenv("EMODEBIAS_KERNELS")
        kernels.library.cache_clear()
    assert kernels.library() is not None


def test_train_config_rejects_unknown_kernels() -> None:
    with pytest.raises(ValueError, match="kernels"):
        TrainConfig(kernels="cuda")


def _data(seed: int = 0, n: int = 150) -> TrainData:
    rng = np.random.default_rng(seed)
    votes = rng.integers(0, 4, size=(n, 4)).astype(float)
    votes[np.arange(n), rng.integers(0, 4, n)] += 5
    x = rng.normal(size=(n, 3, 24)).astype(np.float16)
    return TrainData(x, soft_from_votes(votes), np.arange(100), np.arange(100, 125),
                     np.arange(125, n), rng.integers(0, 2, n), n_groups=2)


@pytest.mark.parametrize("method", ["erm", "gdro", "lff", "adv", "madv", "mmd", "disent"])
def test_training_with_kernels_equals_pytorch_path(method: str) -> None:
    """Same selected epoch and probabilities within float32 rounding (the sums differ only in
    order); covers the fused head (erm, gdro, lff) and the fused mix under h_S (adv, disent)."""
    data = _data()
    cfg = TrainConfig(epochs=5, batch_size=16, lr=1e-3)
    native = fit(data, method, seed=4, config=cfg)
    plain = fit(data, method, seed=4, config=replace(cfg, kernels="torch"))
    assert native.best_epoch == plain.best_epoch
    np.testing.assert_allclose(native.test_probs, plain.test_probs, atol=2e-5)
    dev_n = [h["dev_loss"] for h in native.history]
    dev_p = [h["dev_loss"] for h in plain.history]
    np.testing.assert_allclose(dev_n, dev_p, rtol=1e-5)


def test_in_place_memmap_training_equals_preloaded(tmp_path) -> None:
    data = _data(1)
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16,
                                   shape=data.features.shape)
    mm[:] = data.features
    mm.flush()
    on_disk = replace(data, features=np.load(tmp_path / "f.npy", mmap_mode="r"))
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-3)
    runs = [RunConfig("erm", {}, s, cfg) for s in (0, 1)]
    loaded = fit_many(on_disk, runs)
    streamed = fit_many(on_disk, [replace(r, config=replace(cfg, preload_max_gb=0.0))
                                  for r in runs])
    for a, b in zip(loaded, streamed, strict=True):
        np.testing.assert_array_equal(a.test_probs, b.test_probs)


@pytest.mark.parametrize("n_out", [5, 0])
def test_adam_outer_matches_torch_adam_on_the_materialised_gradient(n_out: int) -> None:
    """One step of the factored Adam equals torch's Adam on dw1 = u^T v (+ L2 decay) for the
    active runs, leaves idle runs untouched, and returns w1_old^T u^T for the first n_out rows
    of u (a chain's dmt with v = w2^T, plus an encoder's rank-7 (mix, dh) part)."""
    from torch.optim.adam import adam

    gen = torch.Generator().manual_seed(5)
    runs, d, hid, k = 3, 10, 37, 5  # hid: a 24-wide block, an 8-wide one and a scalar tail
    w1 = torch.randn(runs, d, hid, generator=gen)
    m = torch.randn(runs, d, hid, generator=gen) * 0.01
    v = torch.rand(runs, d, hid, generator=gen) * 1e-4
    t = torch.tensor([0.0, 3.0, 7.0])
    w2 = torch.randn(runs, hid, k, generator=gen)
    dmt = torch.randn(runs, k, d, generator=gen)
    mix, dh = torch.randn(runs, 7, d, generator=gen), torch.randn(runs, 7, hid, generator=gen)
    u, v_ = torch.cat([dmt, mix], 1), torch.cat([w2.mT, dh], 1)
    if not n_out:  # an encoder's part only
        u, v_ = mix, dh
    active = np.array([True, False, True])
    hp = (1e-2, 0.9, 0.999, 1e-8, 0.01)
    ref = [x.clone() for x in (w1, m, v)]
    ref_t = [t[r].clone() for r in range(runs)]
    grads = torch.bmm(u.mT, v_)
    want_dw2 = torch.bmm(u[:, :n_out], w1)
    on = [0, 2]
    adam([ref[0][r] for r in on], [grads[r] for r in on], [ref[1][r] for r in on],
         [ref[2][r] for r in on], [], [ref_t[r] for r in on], foreach=False, amsgrad=False,
         beta1=0.9, beta2=0.999, lr=1e-2, weight_decay=0.01, eps=1e-8, maximize=False)
    dw2 = fused.adam_outer(w1, m, v, t, fused.PendingGrad(u.contiguous(), v_.contiguous(), n_out,
                                                           []), active, hp)
    for got, want in zip((w1, m, v), ref, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-5, atol=1e-7)
    np.testing.assert_array_equal(w1[1].numpy(), ref[0][1].numpy())  # idle run untouched
    np.testing.assert_array_equal(t.numpy(), [1.0, 3.0, 8.0])
    np.testing.assert_allclose(dw2[on].numpy(), want_dw2[on].numpy(), rtol=1e-5, atol=1e-5)
    assert dw2.shape == (runs, n_out, hid) and not dw2[1].any()


@pytest.mark.parametrize("h_s", [None, "bank", "dense"])
def test_deferred_head_gradients_equal_ordinary_ones(h_s: str | None) -> None:
    """StackedAdam with W1's gradients deferred to the encoder's sink (two logits calls in one
    step) makes the same update as autograd's materialised gradients; with `h_s`, the step also
    reads h_S: on bank rows (a second, rank-B part in the same sink) or on dense features (W1
    also gets an ordinary gradient, to which the factored one is added)."""
    from emodebias.model import SERHead
    from emodebias.optim import StackedAdam

    gen = torch.Generator().manual_seed(6)
    bank = torch.randn(40, 3, 16, generator=gen).to(torch.float16)
    rows = [torch.randint(0, 40, (2, 5), generator=gen) for _ in range(2)]
    soft = torch.rand(2, 5, 4, generator=gen)

    def train(defer: bool) -> dict[str, torch.Tensor]:
        head = SERHead([torch.Generator().manual_seed(s) for s in (0, 1)], 3, 16, 4, hidden=8)
        factored = [head.encoder.defer_weight_grads()] if defer else []
        opt = StackedAdam([{"params": list(head.parameters()), "lr": 1e-2}], 2, 0.01,
                          factored=factored)
        for step in range(3):
            loss = sum((head.logits(BankRows(bank, r)) * soft).sum() for r in rows)
            if h_s:
                x = BankRows(bank, rows[0])
                loss = loss + head(x if h_s == "bank" else x.dense())[1].square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step(None if step != 1 else np.array([True, False]))
        return {k: v.detach().clone() for k, v in head.state_dict().items()}

    deferred, plain = train(True), train(False)
    for name, want in plain.items():
        np.testing.assert_allclose(deferred[name].numpy(), want.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=name)
