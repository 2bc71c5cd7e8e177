"""Losses: hand-worked class-balanced CE, Cui weights on real fold-1 labels, GCE, group means."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from emodebias.training.losses import (
    class_balanced_ce,
    class_weights_for,
    gce,
    group_reduce,
    masked_mean,
    membership,
)

CLASSES = ["angry", "sad", "disgust", "fear", "neutral", "happy"]


def test_class_balanced_ce_hand_worked() -> None:
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]]])
    soft = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    w = torch.tensor([2.0, 0.5, 0.5])
    out = class_balanced_ce(logits, soft, w)
    expected = []
    for z, y in zip(logits[0].numpy(), soft[0].numpy(), strict=True):
        logp = z - np.log(np.exp(z).sum())
        expected.append((w.numpy() @ y) * -(y * logp).sum())
    # sample 0: s = 1.25, CE = -(.5 log p0 + .5 log p1)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0].item(), 1.25 * 1.9076059644, rtol=1e-6)


def test_class_weights_fold1_full_train(shared_data) -> None:
    """PAPERS §2: fold-1 full train gives w = [.970, 1.034, .824, .959, .404, 1.810]."""
    df = pd.read_csv(shared_data / "emo-superb/crema-d/labels_consensus_1.csv")
    train = df[df["Split_Set"] == "Train"]
    assert len(train) == 4509
    w = class_weights_for(train[CLASSES].to_numpy())
    np.testing.assert_allclose(w, [0.970, 1.034, 0.824, 0.959, 0.404, 1.810], atol=6e-4)
    assert w.sum() == pytest.approx(6.0)


def test_gce_value_and_gradient_are_the_lff_code_form() -> None:
    """alinlab/LfF module/loss.py: CE·sg(p_y)^q·q; soft targets use p_y = Σ y'_c softmax_c."""
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 4, requires_grad=True)
    soft = torch.softmax(torch.randn(1, 5, 4) * 3, -1)
    q = 0.7
    out = gce(logits, soft, q)
    # independent: numpy softmax, soft CE, weight p_y^q·q; gradient q·p_y^q·(softmax − y')
    z = logits.detach().numpy()[0].astype(np.float64)
    y = soft.numpy()[0].astype(np.float64)
    sm = np.exp(z - z.max(-1, keepdims=True))
    sm /= sm.sum(-1, keepdims=True)
    ce = -(y * np.log(sm)).sum(-1)
    py = (y * sm).sum(-1)
    np.testing.assert_allclose(out[0].detach().numpy(), ce * py**q * q, rtol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), logits)
    np.testing.assert_allclose(g[0].numpy(), (q * py**q)[:, None] * (sm - y), rtol=1e-4,
                               atol=1e-7)
    # SiH's form drops the ×q; a given per-sample CE (e.g. class-balanced) is what gets weighted
    ce_in = torch.arange(1.0, 6.0)[None]
    np.testing.assert_allclose(gce(logits, soft, q, ce_in, times_q=False)[0].detach().numpy(),
                               np.arange(1.0, 6.0) * py**q, rtol=1e-5)


def test_gce_gradient_is_q_times_closed_form_for_one_hot() -> None:
    """For one-hot targets the code form's gradient is q·∇[(1 − p_y^q)/q] (Zhang & Sabuncu)."""
    logits = torch.tensor([[[0.3, -1.0, 2.0], [1.5, 0.2, -0.4]]], requires_grad=True)
    soft = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    q = 0.7
    (g,) = torch.autograd.grad(gce(logits, soft, q).sum(), logits)
    p_y = (soft * torch.softmax(logits, -1)).sum(-1)
    closed = (1 - p_y**q) / q
    (g_closed,) = torch.autograd.grad(closed.sum(), logits)
    torch.testing.assert_close(g, q * g_closed, rtol=1e-5, atol=1e-7)


def test_group_reduce_hand_worked_with_absent_group() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    groups = torch.tensor([[0, 0, 2, -1]])  # group 1 absent, last row unknown
    means, mass = group_reduce(values, membership(groups, 3))
    torch.testing.assert_close(means, torch.tensor([[1.5, 0.0, 3.0]]))
    torch.testing.assert_close(mass, torch.tensor([[2.0, 0.0, 1.0]]))
    assert torch.isfinite(means).all()
    # weighted: group 0 -> (1·1 + 3·2)/(1+3)
    means_w, _ = group_reduce(values, membership(groups, 3), torch.tensor([[1.0, 3.0, 1.0, 1.0]]))
    assert means_w[0, 0].item() == pytest.approx(7 / 4)


def test_group_reduce_soft_and_vector_values() -> None:
    values = torch.tensor([[2.0, 4.0, 10.0]])
    pi = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]]])
    means, mass = group_reduce(values, pi)
    expected = [(2 + 2 + 2.5) / 1.75, (2 + 7.5) / 1.25]
    np.testing.assert_allclose(means[0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(mass[0].numpy(), [1.75, 1.25])
    vec = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    mv, _ = group_reduce(vec, membership(torch.tensor([[1, 1, -1]]), 3))
    torch.testing.assert_close(mv, torch.tensor([[[0.0, 0.0], [0.5, 0.5], [0.0, 0.0]]]))


def test_group_reduce_gradient_finite_for_empty_group() -> None:
    values = torch.tensor([[1.0, 2.0]], requires_grad=True)
    means, _ = group_reduce(values, membership(torch.tensor([[0, 0]]), 4))
    means.sum().backward()
    assert torch.isfinite(values.grad).all()
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, 0.5]]))


def test_masked_mean_empty_is_zero() -> None:
    v = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    m = torch.tensor([[True, True], [False, False]])
    torch.testing.assert_close(masked_mean(v, m), torch.tensor([2.0, 0.0]))
