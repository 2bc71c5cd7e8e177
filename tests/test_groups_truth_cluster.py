"""Truth groups (intersections, NA) and k-means clusters (fit mask, caching, paper settings)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from emodebias.data.manifest import Manifest
from emodebias.groups import GroupAssignment, cluster
from emodebias.groups.cluster import (
    PAPER_MINIBATCH,
    ClusterError,
    cached_cluster_groups,
    cluster_groups,
    cluster_many,
    fit_clusters,
)
from emodebias.groups.embeddings import EmbeddingError, load_embeddings, store_layer
from emodebias.groups.truth import truth_groups


def _manifest() -> Manifest:
    df = pd.DataFrame({
        "utt_id": ["a", "b", "c", "d", "e", "f"], "path": "x.wav", "speaker": "s",
        "gender": ["M", "F", None, "F", "M", "M"],
        "age_group": ["Young", "Elderly", "Young", "Young", "Middle", None],
        "age": [30, 9, 10, 10, None, 30]})
    return Manifest(df, ["angry"])


def test_truth_single_column_and_intersections():
    m = _manifest()
    g = truth_groups(m, "gender")
    assert g.names == ["F", "M"] and g.ids.tolist() == [1, 0, -1, 0, 1, 1]
    assert g.source == "truth:gender" and g.info["n_unknown"] == 1
    gx = truth_groups(m, ["gender", "age_group"])
    assert gx.names == ["F|Elderly", "F|Young", "M|Middle", "M|Young"]
    assert gx.ids.tolist() == [3, 0, -1, 1, 2, -1]
    assert gx.info["sizes"] == {"F|Elderly": 1, "F|Young": 1, "M|Middle": 1, "M|Young": 1}
    # numeric column: natural (not string) order, whole floats printed as ints
    ga = truth_groups(m, "age")
    assert ga.names == ["9", "10", "30"] and ga.ids.tolist() == [2, 0, 1, 1, -1, 2]
    with pytest.raises(ValueError, match="no column"):
        truth_groups(m, ["gender", "race"])


def test_assignment_save_load_align(tmp_path):
    m = _manifest()
    g = truth_groups(m, "gender")
    g.probs = np.eye(2, dtype=np.float32)[np.maximum(g.ids, 0)]
    back = GroupAssignment.load(g.save(tmp_path / "g"))
    assert back.utt_ids == g.utt_ids and back.names == g.names and back.source == g.source
    np.testing.assert_array_equal(back.ids, g.ids)
    np.testing.assert_array_equal(back.probs, g.probs)
    aligned = back.align(["f", "zz", "b"])
    assert aligned.ids.tolist() == [1, -1, 0]
    assert aligned.probs[1].tolist() == [0.0, 0.0]


def _blobs(n_per: int = 30, k: int = 3, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 10, (k, dim))
    labels = np.repeat(np.arange(k), n_per)
    x = centers[labels] + rng.normal(0, 0.5, (len(labels), dim))
    return x.astype(np.float32), labels, [f"u{i}" for i in range(len(labels))]


@pytest.mark.parametrize("algorithm", ["minibatch", "kmeans"])
def test_clusters_recover_separated_blobs(algorithm):
    from sklearn.metrics import adjusted_rand_score

    x, labels, ids = _blobs()
    a = cluster_groups(x, ids, 3, algorithm=algorithm)
    assert a.source == "cluster:embeddings:k=3" and a.names == ["c0", "c1", "c2"]
    assert adjusted_rand_score(labels, a.ids) == pytest.approx(1.0)
    assert sorted(a.info["sizes"]) == [30, 30, 30]
    again = cluster_groups(x, ids, 3, algorithm=algorithm)
    np.testing.assert_array_equal(a.ids, again.ids)  # seed 42 fixes everything


def test_paper_settings_reach_sklearn():
    x, _, ids = _blobs()
    a = cluster_groups(x, ids, 2)
    for key in ("init", "max_iter", "batch_size", "reassignment_ratio", "tol", "compute_labels"):
        assert a.info["params"][key] == PAPER_MINIBATCH[key]
    est, _ = cluster._estimator(4, "minibatch", 42, None)
    assert (est.batch_size, est.max_iter, est.random_state, est.tol) == (32, 1000, 42, 1e-4)
    with pytest.raises(ClusterError, match="algorithm"):
        cluster_groups(x, ids, 2, algorithm="dbscan")


def test_fit_mask_and_invalid_rows():
    x, labels, ids = _blobs()
    fit = np.zeros(len(ids), bool)
    fit[::3] = True  # fit on a third, assign all
    valid = np.ones(len(ids), bool)
    valid[5] = False
    a, centers = fit_clusters(x, ids, 3, fit, "kmeans", valid=valid)
    assert a.info["n_fit"] == int((fit & valid).sum()) and a.info["n_invalid"] == 1
    assert a.ids[5] == -1
    d = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(a.ids[valid], d.argmin(1)[valid])  # nearest fitted centre
    with pytest.raises(ClusterError, match="k=40"):
        cluster_groups(x, ids, 40, fit)


def test_cluster_many_keys():
    x, _, ids = _blobs()
    out = cluster_many(x, ids, [2, 3], algorithm="kmeans")
    assert sorted(out) == [2, 3] and out[3].n_groups == 3


def _fake_store(tmp_path, n_layers: int = 2):
    x, labels, ids = _blobs()
    feats = np.stack([x + i for i in range(n_layers)], axis=1).astype(np.float16)
    return SimpleNamespace(features=feats, utt_ids=ids, meta={"encoder": "fake"},
                           failures={ids[0]: "broken"}, path=tmp_path / "store",
                           rows=lambda u: np.array([ids.index(v) for v in u])), labels


def test_store_layers_and_failures(tmp_path):
    store, _ = _fake_store(tmp_path)
    mean = store_layer(store.features, "mean", chunk=7)
    np.testing.assert_allclose(mean, store.features.astype(np.float32).mean(1))
    np.testing.assert_array_equal(store_layer(store.features, "-1"), store.features[:, 1])
    with pytest.raises(EmbeddingError, match="out of range"):
        store_layer(store.features, 2)
    x, ids, ok = load_embeddings(store, 0, utt_ids=["u3", "u0"])
    assert ids == ["u3", "u0"] and ok.tolist() == [True, False]
    np.testing.assert_array_equal(x[0], store.features[3, 0].astype(np.float32))


def test_cached_clusters_beside_the_store(tmp_path, monkeypatch):
    store, labels = _fake_store(tmp_path)
    fit = np.arange(len(labels)) % 2 == 0
    a = cached_cluster_groups(store, 3, fit, "kmeans")
    assert a.source == "cluster:fake:k=3" and a.ids[0] == -1  # failed row
    dirs = list((tmp_path / "store" / "groups").iterdir())
    assert len(dirs) == 1 and (dirs[0] / "centers.npy").is_file()

    def refit(*args, **kwargs):
        raise AssertionError("cache was not used")

    monkeypatch.setattr(cluster, "fit_clusters", refit)
    b = cached_cluster_groups(store, 3, fit, "kmeans")
    np.testing.assert_array_equal(a.ids, b.ids)
    with pytest.raises(AssertionError, match="cache"):  # another fit set is another key
        cached_cluster_groups(store, 3, ~fit, "kmeans")
