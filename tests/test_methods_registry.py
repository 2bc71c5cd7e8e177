"""Every registered method (found through the registry) trains on small random features."""

from __future__ import annotations

import numpy as np
import pytest

from emodebias.data.labels import soft_from_votes
from emodebias.training import TrainConfig, TrainData, fit
from emodebias.training.methods import REGISTRY

CFG = TrainConfig(epochs=2, batch_size=16, lr=1e-3)


def small_data(n_groups: int, soft_groups: bool = False, seed: int = 0) -> TrainData:
    rng = np.random.default_rng(seed)
    n, k = 130, 4
    votes = rng.integers(0, 4, size=(n, k)).astype(float)
    votes[np.arange(n), rng.integers(0, k, n)] += 4  # most rows have a strict majority
    groups = rng.integers(0, n_groups - 1, n)
    groups[[5, 50, 90]] = n_groups - 1  # the last group: 3 training rows, absent from most batches
    groups[[7, 8]] = -1  # unknown group
    probs = None
    if soft_groups:
        probs = rng.dirichlet(np.ones(n_groups), n).astype(np.float32)
    feats = rng.normal(size=(n, 2, 8)).astype(np.float16)
    return TrainData(feats, soft_from_votes(votes), np.arange(100), np.arange(100, 115),
                     np.arange(115, 130), groups, probs, n_groups)


def test_registry_has_the_zoo() -> None:
    debiasing = set(REGISTRY) - {"erm", "random"}
    assert len(debiasing) >= 13
    assert {"rw", "ds", "gdro", "gadro", "pgdro", "adv", "madv", "lff", "disent", "sih",
            "gr", "jtt", "eo_thresh"} <= debiasing
    for cls in REGISTRY.values():
        assert cls.supervision in ("none", "hard", "soft") and cls.family
        assert isinstance(cls.HPARAMS, dict)


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("n_groups,soft", [(2, False), (5, True)])
def test_method_trains_and_reproduces(name: str, n_groups: int, soft: bool) -> None:
    data = small_data(n_groups, soft)
    res = fit(data, name, seed=3, config=CFG)
    for probs, rows in ((res.test_probs, data.test_idx), (res.dev_probs, data.dev_idx)):
        assert probs.shape == (len(rows), data.n_classes)
        assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    if REGISTRY[name].trains:
        assert len(res.history) == CFG.epochs
        assert all(np.isfinite([h["train_loss"], h["dev_loss"]]).all() for h in res.history)
        assert res.best_epoch == 1 + int(np.argmin([h["dev_loss"] for h in res.history]))
        if REGISTRY[name].family != "post-processing":
            np.testing.assert_allclose(res.test_probs.sum(1), 1.0, atol=1e-5)
    again = fit(data, name, seed=3, config=CFG)
    np.testing.assert_array_equal(again.test_probs, res.test_probs)
    other = fit(data, name, seed=4, config=CFG)
    assert not np.array_equal(other.test_probs, res.test_probs)
