"""Hand-worked fidelity checks of the loss-level methods (PAPERS §3.3–3.11)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emodebias.training import TrainData
from emodebias.training.losses import class_balanced_ce, soft_ce
from emodebias.training.methods import Batch, GroupSupervisionError, MethodContext, get_method
from emodebias.training.methods.adversarial import diff_loss, grad_reverse
from emodebias.training.methods.biased import SampleEMA, argmax_errors, jtt_upsample
from emodebias.training.methods.postprocess import apply_thresholds, eo_thresholds
from emodebias.training.methods.regularizers import cell_gaps

L, D, K = 2, 5, 3


def make(name: str, n_groups: int = 2, n_train: int = 6, hp: dict | None = None, majority=None,
         groups=None, probs=None, runs: int = 1):
    cls = get_method(name)
    hps = [cls.resolve(hp)] * runs
    maj = np.zeros((runs, n_train), int) if majority is None else np.asarray(majority)[None]
    grp = np.zeros((runs, n_train), int) if groups is None else np.asarray(groups)[None]
    ctx = MethodContext(L, D, K, n_groups, [torch.Generator().manual_seed(r) for r in range(runs)],
                        [torch.Generator().manual_seed(100 + r) for r in range(runs)],
                        maj, grp, probs)
    return cls(hps, ctx)


def batch(soft, group, majority=None, probs=None, index=None, seed=0) -> Batch:
    soft = torch.as_tensor(soft, dtype=torch.float32)[None]
    b = soft.shape[1]
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        torch.randn(1, b, L, D, generator=gen), soft,
        torch.as_tensor(majority if majority is not None else soft[0].argmax(-1))[None].long(),
        torch.as_tensor(group)[None].long(),
        None if probs is None else torch.as_tensor(probs, dtype=torch.float32)[None],
        torch.as_tensor(index if index is not None else range(b))[None].long(),
        torch.ones(1, b),
    )


SOFT = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]]
CLASS_W = [0.5, 1.0, 1.5]  # non-uniform, so the class-balanced factor s_i matters


def gce_ref(logits: torch.Tensor, soft, class_w=CLASS_W, q: float = 0.7, times_q: bool = True):
    """Independent per-sample GCE of the reference code (alinlab/LfF module/loss.py):
    s_i·CE_i · p_y^q · q with CE the soft-target CE, p_y = Σ y'_c softmax_c, s_i = Σ w_c y'_ic."""
    z = logits.detach().numpy().reshape(-1, K).astype(np.float64)
    y = np.asarray(soft, dtype=np.float64).reshape(-1, K)
    sm = np.exp(z - z.max(-1, keepdims=True))
    sm /= sm.sum(-1, keepdims=True)
    ce = -(y * np.log(sm)).sum(-1) * (y @ np.asarray(class_w))
    py = (y * sm).sum(-1)
    return ce * py**q * (q if times_q else 1.0)


# ----------------------------------------------------------------------------- DRO
def test_gdro_q_update_and_loss_hand_worked() -> None:
    m = make("gdro_groups")
    out = m.robust(torch.tensor([[1.0, 3.0]]))
    q = np.array([0.5 * math.exp(0.01), 0.5 * math.exp(0.03)])
    q /= q.sum()
    np.testing.assert_allclose(m.q[0].numpy(), q, rtol=1e-6)
    assert out.item() == pytest.approx(q @ [1.0, 3.0], rel=1e-6)
    # second step compounds on the current q
    m.robust(torch.tensor([[2.0, 0.0]]))
    q2 = q * np.exp([0.02, 0.0])
    np.testing.assert_allclose(m.q[0].numpy(), q2 / q2.sum(), rtol=1e-6)


def test_gdro_loss_on_a_batch_equals_manual_group_means() -> None:
    m = make("gdro_groups", n_groups=3)
    b = batch(SOFT, [0, 1, 0, -1])  # group 2 absent, last row unknown
    loss = m.loss(b)
    logits, _ = m.head(b.x)
    ell = class_balanced_ce(logits, b.soft, m.class_w)[0].detach().numpy()
    lg = np.array([(ell[0] + ell[2]) / 2, ell[1], 0.0])
    q = np.full(3, 1 / 3) * np.exp(0.01 * lg)
    q /= q.sum()
    assert loss.item() == pytest.approx(q @ lg, rel=1e-5)
    np.testing.assert_allclose(m.q[0].numpy(), q, rtol=1e-5)


def test_gadro_adjustment_only_in_q_update() -> None:
    # training counts n_g = 4 and 1 from the context
    m = make("gadro_groups", n_train=5, groups=[0, 0, 0, 0, 1])
    np.testing.assert_allclose(m.n_g[0].numpy(), [4.0, 1.0])
    gl = torch.tensor([[1.0, 0.5]])
    out = m.robust(gl)
    adjusted = np.array([1.0 + 4 / 2, 0.5 + 4 / 1])
    q = 0.5 * np.exp(0.01 * adjusted)
    q /= q.sum()
    np.testing.assert_allclose(m.q[0].numpy(), q, rtol=1e-6)
    assert out.item() == pytest.approx(q @ [1.0, 0.5], rel=1e-6)  # not the adjusted losses


def test_pgdro_soft_group_losses() -> None:
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.2, 0.8], [0.0, 1.0]])
    m = make("pgdro_groups", n_train=4, probs=probs[None])
    np.testing.assert_allclose(m.n_g[0].numpy(), [1.7, 2.3], rtol=1e-6)
    b = batch(SOFT, [0, 0, 1, 1], probs=probs)
    loss = m.loss(b)
    ell = class_balanced_ce(m.head(b.x)[0], b.soft, m.class_w)[0].detach().numpy()
    lg = (probs * ell[:, None]).sum(0) / probs.sum(0)
    q = 0.5 * np.exp(0.01 * lg)
    q /= q.sum()
    assert loss.item() == pytest.approx(q @ lg, rel=1e-5)


def test_pgdro_accepts_hard_groups_as_one_hot() -> None:
    m = make("pgdro_groups", n_train=4, groups=[0, 1, 1, 1])
    np.testing.assert_allclose(m.n_g[0].numpy(), [1.0, 3.0])
    assert torch.isfinite(m.loss(batch(SOFT, [0, 1, 1, 1])))


# ----------------------------------------------------------------------------- LfF / DisEnt
def test_sample_ema_update_and_class_max_normalisation() -> None:
    labels = np.array([[0, 0, 1, -1]])
    ema = SampleEMA(labels, n_classes=2)
    a = torch.tensor([0.7])
    ema.update(torch.tensor([[0, 2]]), torch.tensor([[2.0, 5.0]]), a)
    np.testing.assert_allclose(ema.value[0].numpy(), [2.0, 0.0, 5.0, 0.0])  # first: stored as is
    ema.update(torch.tensor([[0, 1, 3]]), torch.tensor([[4.0, 1.0, 3.0]]), a)
    np.testing.assert_allclose(ema.value[0].numpy(), [0.7 * 2 + 0.3 * 4, 1.0, 5.0, 3.0], rtol=1e-6)
    norm = ema.normalised(torch.tensor([[0, 1, 2, 3]]))
    np.testing.assert_allclose(norm[0].numpy(), [1.0, 1.0 / 2.6, 1.0, 1.0], rtol=1e-6)


def test_lff_weight_and_loss_hand_worked() -> None:
    maj = [0, 1, 2, 0]
    m = make("lff", n_train=4, majority=maj)
    m.class_w.copy_(torch.tensor([CLASS_W]))
    b = batch(SOFT, [0, 0, 0, 0], majority=maj)
    loss = m.loss(b)
    ld, lb = m.head(b.x)[0], m.bias_head(b.x)[0]
    ce_b, ce_d = soft_ce(lb, b.soft)[0].detach().numpy(), soft_ce(ld, b.soft)[0].detach().numpy()
    # first update stores raw values; class max over rows {0,3} of class 0 and singletons
    nb, nd = ce_b.copy(), ce_d.copy()
    for rows in ([0, 3], [1], [2]):
        nb[rows] /= ce_b[rows].max()
        nd[rows] /= ce_d[rows].max()
    w = nb / (nb + nd + 1e-8)
    ell = class_balanced_ce(ld, b.soft, m.class_w)[0].detach().numpy()
    expected = gce_ref(lb, SOFT).mean() + (w * ell).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_disent_swap_term_and_gradient_isolation() -> None:
    maj = [0, 1, 2, 0]
    m = make("disent", n_train=4, majority=maj, hp={"lambda_swap": 0.5, "lambda_swap_b": 2.0})
    m.class_w.copy_(torch.tensor([CLASS_W]))
    b = batch(SOFT, [0, 0, 0, 0], majority=maj)
    perm = torch.tensor([[2, 0, 3, 1]])
    terms = m.terms(b, perm)
    z_l, z_b = m.enc_l(b.x), m.enc_b(b.x)
    # W after this step's EMA update (first update: raw losses, class-max normalised)
    pred_i, pred_b = m.classify(z_l, z_b).split(K, -1)
    cb, ci = soft_ce(pred_b, b.soft)[0].detach(), soft_ce(pred_i, b.soft)[0].detach()
    nb, ni = cb.clone(), ci.clone()
    for rows in ([0, 3], [1], [2]):
        nb[rows] /= cb[rows].max()
        ni[rows] /= ci[rows].max()
    w = nb / (nb + ni + 1e-8)
    zb_sw = z_b[:, perm[0]]
    mix_i, mix_b = m.classify(z_l, zb_sw).split(K, -1)
    swap = (w * class_balanced_ce(mix_i, b.soft, m.class_w)[0]).mean().item() + 2.0 * gce_ref(
        mix_b, np.asarray(SOFT)[perm[0].numpy()]).mean()
    dis = (w * class_balanced_ce(pred_i, b.soft, m.class_w)[0]).mean().item() + gce_ref(
        pred_b, SOFT).mean()
    assert terms["swap"].item() == pytest.approx(swap, rel=1e-5)
    assert terms["dis"].item() == pytest.approx(dis, rel=1e-5)
    assert terms["total"].item() == pytest.approx(dis + 0.5 * swap, rel=1e-5)
    # the intrinsic classifier's swap loss must not reach the bias branch
    m.zero_grad()
    m.terms(b, perm)["swap"].backward()
    assert m.enc_b.proj.weight.grad is not None  # via the GCE term on C_b
    m.zero_grad()
    z_l, z_b = m.enc_l(b.x), m.enc_b(b.x)
    only_i = m.classify(z_l, z_b[:, perm[0]].detach())[..., :K].sum()
    only_i.backward()
    assert m.enc_b.proj.weight.grad is None


def test_disent_swaps_only_after_curr_step() -> None:
    m = make("disent", n_train=4, hp={"curr_step": 2})
    b = batch(SOFT, [0, 0, 0, 0])
    calls = []
    orig = m.swap_perm
    m.swap_perm = lambda n: calls.append(m.step) or orig(n)
    for step in range(4):
        m.step = step
        m.loss(b)
    assert calls == [3]


def test_sih_focal_weight() -> None:
    m = make("sih", n_train=4)
    m.class_w.copy_(torch.tensor([CLASS_W]))
    b = batch(SOFT, [0, 0, 0, 0])
    ls, lb = m.head(b.x)[0], m.bias_head(b.x)[0]
    p_b = (b.soft * torch.softmax(lb, -1)).sum(-1)
    ell = class_balanced_ce(ls, b.soft, m.class_w)
    # mvandenhi/Signal-is-Harder: focal (1 − p̂_b)^q on the signal CE; bias GCE without ×q
    expected = gce_ref(lb, SOFT, times_q=False).mean() + ((1 - p_b) ** 0.7 * ell).mean().item()
    assert m.loss(b).item() == pytest.approx(expected, rel=1e-5)


def test_bias_head_gce_gradient_is_reference_form() -> None:
    """LfF bias head: ∇_z of mean_i q·p_y^q·s_i·CE_i = q·p_y^q·s_i·(softmax − y')/B (p_y fixed)."""
    m = make("lff", n_train=4)
    m.class_w.copy_(torch.tensor([CLASS_W]))
    b = batch(SOFT, [0, 0, 0, 0])
    _, lb, gce_b = m.bias_terms(b)
    (g,) = torch.autograd.grad(gce_b.sum(), lb)
    z = lb.detach().numpy()[0].astype(np.float64)
    y = np.asarray(SOFT)
    sm = np.exp(z - z.max(-1, keepdims=True))
    sm /= sm.sum(-1, keepdims=True)
    py, s_i = (y * sm).sum(-1), y @ np.asarray(CLASS_W)
    expected = (0.7 * py**0.7 * s_i)[:, None] * (sm - y) / len(y)
    np.testing.assert_allclose(g[0].numpy(), expected, rtol=1e-4, atol=1e-7)


def test_jtt_error_rule() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.4, 0.5, 0.1]])
    soft = np.array(SOFT[:3])
    np.testing.assert_array_equal(argmax_errors(probs, soft), [False, False, True])


def test_jtt_upsample_adds_up_copies_like_reference() -> None:
    """anniesch/jtt run_expt.py: train set + aug_indices·up_weight -> an error row 1 + up times."""
    idx = np.array([10, 11, 12, 13])
    out = jtt_upsample(idx, np.array([False, True, False, True]), 3)
    assert len(out) == 4 + 2 * 3
    counts = {int(i): int((out == i).sum()) for i in idx}
    assert counts == {10: 1, 11: 4, 12: 1, 13: 4}


# ----------------------------------------------------------------------------- ADV / GR
def test_grad_reverse_scales_per_run() -> None:
    x = torch.ones(2, 3, 4, requires_grad=True)
    grad_reverse(x, torch.tensor([1.0, 0.5])).sum().backward()
    torch.testing.assert_close(x.grad[0], -torch.ones(3, 4))
    torch.testing.assert_close(x.grad[1], -0.5 * torch.ones(3, 4))


def test_diff_loss_orthogonal_and_identical() -> None:
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert diff_loss(a, torch.tensor([[[0.0, 3.0], [0.0, 1.0]]])).item() == pytest.approx(
        (0 + 0 + 1 + 1) / 4, abs=1e-5)
    b = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    c = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert diff_loss(b, c).item() == pytest.approx(0.0, abs=1e-9)


def test_adv_head_gets_reversed_discriminator_gradient() -> None:
    m = make("adv", hp={"lambda_adv": 2.0})
    b = batch(SOFT, [0, 1, 0, -1])
    _, h = m.head(b.x)
    h = h.detach().requires_grad_(True)
    adv = m.adversary_loss(h, b.group)
    (gh,) = torch.autograd.grad(adv.sum(), h, retain_graph=True)
    h2 = h.detach().requires_grad_(True)
    out, _ = m.discs[0](h2)
    ce = torch.nn.functional.cross_entropy(out[0, :3], b.group[0, :3])  # unknown row left out
    (g_ref,) = torch.autograd.grad(ce, h2)
    torch.testing.assert_close(gh, -2.0 * g_ref, rtol=1e-5, atol=1e-7)
    assert adv.item() == pytest.approx(ce.item(), rel=1e-6)


def test_madv_diversity_trains_discriminators_only_and_matches_two_passes() -> None:
    """MADV: the adversaries' CE on reversed h_S plus λ_div·Σ DiffLoss of their hidden
    activations on DETACHED h_S (written out with two passes per discriminator here): same loss,
    same head gradient (reversed CE only) and same discriminator gradients."""
    m = make("madv", hp={"lambda_adv": 1.5, "lambda_div": 0.7})
    b = batch(SOFT, [0, 1, 0, -1])
    h = m.head(b.x)[1].detach().requires_grad_(True)
    got = m.adversary_loss(h, b.group)
    params = [h, *m.discs.parameters()]
    grads = torch.autograd.grad(got.sum(), params)
    h2 = h.detach().requires_grad_(True)
    rev = grad_reverse(h2, torch.tensor([1.5 / 3]))
    known = b.group[0] >= 0
    ref = sum(torch.nn.functional.cross_entropy(d(rev)[0][0, known], b.group[0, known])
              for d in m.discs)
    hidden = [d(h2.detach())[1] for d in m.discs]
    ref = ref + 0.7 * sum(diff_loss(hidden[i], hidden[j]) for i, j in ((0, 1), (0, 2), (1, 2)))
    ref_grads = torch.autograd.grad(ref.sum(), [h2, *m.discs.parameters()])
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)


def test_gr_penalty_hand_worked() -> None:
    # per-sample values, classes and groups: class 0 = rows 0,1,2 (groups 0,0,1); class 1 = row 3
    values = torch.tensor([[1.0, 3.0, 8.0, 5.0]])
    b = batch(SOFT, [0, 0, 1, 1], majority=[0, 0, 0, 1])
    gaps = cell_gaps(values, b, n_classes=K, n_groups=2)
    # class-0 mean 4; cell (0,0) mean 2 -> -2; cell (0,1) 8 -> +4; class 1: cell (1,1) = mean -> 0
    np.testing.assert_allclose(gaps[0].numpy(), [[-2.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    m = make("gr_loss", hp={"lambda_gr": 0.5})
    logits, _ = m.head(b.x)
    ell = class_balanced_ce(logits, b.soft, m.class_w)[0].detach().numpy()
    c0 = ell[:3].mean()
    pen = abs(ell[:2].mean() - c0) + abs(ell[2] - c0)
    assert m.loss(b).item() == pytest.approx(ell.mean() + 0.5 * pen, rel=1e-5)


# ----------------------------------------------------------------------------- post-processing
def test_eo_thresholds_equalise_group_tpr_on_dev() -> None:
    rng = np.random.default_rng(0)
    n = 400
    groups = rng.integers(0, 2, n)
    positives = rng.random((n, 2)) < 0.5
    # group 1's scores are shifted down: at 1/K = 0.5 its TPR is much lower
    probs = np.clip(0.5 + 0.3 * (positives - 0.5) + 0.15 * rng.standard_normal((n, 2))
                    - 0.15 * groups[:, None], 0, 1)
    thr = eo_thresholds(probs, positives, groups, 2, min_positives=5)
    mapped = apply_thresholds(probs, groups, thr)

    def tpr(p, g, c):
        sel = positives[:, c] & (groups == g)
        return (p[sel, c] > 0.5).mean()

    for c in range(2):
        before = abs(tpr(probs, 0, c) - tpr(probs, 1, c))
        after = abs(tpr(mapped, 0, c) - tpr(mapped, 1, c))
        assert before > 0.2 and after < 0.02
        target = (probs[positives[:, c], c] > 0.5).mean()
        assert tpr(mapped, 1, c) == pytest.approx(target, abs=0.02)
    assert ((mapped >= 0) & (mapped <= 1)).all()
    # order within a group and class is preserved (monotone map)
    sel = groups == 1
    order = np.argsort(probs[sel, 0], kind="stable")
    assert (np.argsort(mapped[sel, 0], kind="stable") == order).all()


# ------------------------------------------------------------------------- hparams / supervision
def test_unknown_hparam_lists_valid_names_and_values_are_cast() -> None:
    with pytest.raises(ValueError, match="eta_q"):
        get_method("gdro").resolve({"eta": 0.1})
    hp = get_method("madv").resolve({"n_adv": "4", "lambda_adv": "0.5"})
    assert hp["n_adv"] == 4 and hp["lambda_adv"] == 0.5


def test_hard_group_method_without_groups_raises() -> None:
    data = TrainData(np.zeros((4, 1, 2), np.float16), np.array(SOFT), [0, 1], [2], [3])
    for name in ("rw", "gdro", "adv", "gr"):
        with pytest.raises(GroupSupervisionError, match="--groups"):
            get_method(name).check_data(data)
    get_method("lff").check_data(data)


@pytest.mark.parametrize("hidden", [[5], [6, 4, 3]])
def test_split_mlp_gradients_equal_two_passes(hidden: list[int]) -> None:
    """`StackedMLP.forward_split`: x's gradient from the output only, the weights' from output
    and last hidden activation: as two passes (the hidden one on detached x) would give."""
    from emodebias.training.model import StackedMLP

    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    mlp = StackedMLP(gens, 7, hidden, 3)
    x = torch.randn(2, 9, 7, generator=torch.Generator().manual_seed(2), requires_grad=True)
    g_out, g_last = torch.randn(2, 9, 3), torch.randn(2, 9, hidden[-1])
    out, last = mlp.forward_split(x)
    got = torch.autograd.grad((out * g_out).sum() + (last * g_last).sum(), [x, *mlp.parameters()])
    ref_out, _ = mlp(x)
    _, ref_last = mlp(x.detach())
    want = torch.autograd.grad((ref_out * g_out).sum() + (ref_last * g_last).sum(),
                               [x, *mlp.parameters()])
    torch.testing.assert_close(out, ref_out)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
