"""IDI end to end: every group-using method trains on truth, pseudo-label and k=16 cluster groups.

Synthetic corpus -> 1:20 split -> acoustic features -> three group sources -> RW, DS, GDRO, GADRO,
PGDRO. Checks that each run sees the groups it was given (not silently the truth) and yields valid
probabilities for the whole test split.
"""

from __future__ import annotations

import numpy as np
import pytest

from emodebias.data.corpora import synthetic
from emodebias.data.splits import make_split
from emodebias.features.encoders import get_encoder
from emodebias.features.store import extract
from emodebias.groups.cluster import cached_cluster_groups
from emodebias.groups.f0 import f0_groups
from emodebias.groups.truth import truth_groups
from emodebias.training import TrainConfig, TrainData, fit

METHODS = ("rw", "ds", "gdro", "gadro", "pgdro")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("idi")
    manifest = synthetic.generate(root / "corpus", n_speakers_per_gender=5,
                                  utterances_per_emotion=4, seed=3)
    store = extract(manifest, get_encoder("acoustic"), root / "feats", progress=False)
    split = make_split(manifest, fold="1", ratio=20, seed=0)
    fit_mask = np.isin(store.utt_ids, split.train + split.dev)
    sources = {
        "truth": truth_groups(manifest, ["gender"]),
        "pseudo": f0_groups(manifest, fit_ids=split.train),
        "cluster": cached_cluster_groups(store, k=16, fit_mask=fit_mask),
    }
    return {"manifest": manifest, "store": store, "split": split, "sources": sources}


def test_pseudo_labels_are_mostly_right_but_not_the_truth(pipeline: dict) -> None:
    manifest, pseudo = pipeline["manifest"], pipeline["sources"]["pseudo"]
    truth = manifest.df["gender"].map({"F": 0, "M": 1}).to_numpy()
    names = np.array(pseudo.names)[pseudo.ids]
    acc = np.mean(names == manifest.df["gender"].to_numpy())
    assert acc > 0.8, f"F0 pseudo-gender accuracy {acc:.3f} on the synthetic voices"
    assert pseudo.probs is not None and pseudo.probs.shape == (len(truth), 2)


@pytest.mark.parametrize("source", ["truth", "pseudo", "cluster"])
@pytest.mark.parametrize("method", METHODS)
def test_group_methods_train_on_every_source(pipeline: dict, method: str, source: str) -> None:
    groups = pipeline["sources"][source]
    data = TrainData.from_objects(pipeline["store"], pipeline["manifest"], pipeline["split"],
                                  groups)
    expected_groups = 16 if source == "cluster" else 2
    assert data.n_groups == expected_groups
    tr = data.groups[data.train_idx]
    aligned = groups.align([data.utt_ids[i] for i in data.train_idx]).ids
    np.testing.assert_array_equal(tr, aligned)
    result = fit(data, method, seed=0, config=TrainConfig(epochs=2))
    probs = result.test_probs
    assert probs.shape == (len(pipeline["split"].test), data.n_classes)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
