"""Training loop: stacking equals one-by-one, selection, save/load, data alignment, CLI, and
the behaviour check on a planted gender shortcut at 1:20."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from emodebias.data.labels import soft_from_votes
from emodebias.data.manifest import Manifest
from emodebias.data.splits import Split
from emodebias.groups.assignment import GroupAssignment
from emodebias.training import (
    FitResult,
    RunConfig,
    TrainConfig,
    TrainData,
    fit,
    fit_many,
    fit_stream,
    predict_probs,
)
from emodebias.training.losses import class_weights_for
from emodebias.training.methods import get_method

CFG = TrainConfig(epochs=4, batch_size=16, lr=1e-3)


def random_data(seed: int = 0, n: int = 120, n_groups: int = 2) -> TrainData:
    rng = np.random.default_rng(seed)
    votes = rng.integers(0, 4, size=(n, 4)).astype(float)
    votes[np.arange(n), rng.integers(0, 4, n)] += 5
    x = rng.normal(size=(n, 3, 8)).astype(np.float16)
    return TrainData(x, soft_from_votes(votes), np.arange(80), np.arange(80, 100),
                     np.arange(100, n), rng.integers(0, n_groups, n), n_groups=n_groups)


# ----------------------------------------------------------------------------- stacking
@pytest.mark.parametrize("method,hps", [
    ("erm", [{}, {}, {}]),
    ("gdro", [{"eta_q": 0.01}, {"eta_q": 0.5}, {"eta_q": 0.1}]),  # float hparams differ in-stack
    ("lff", [{}, {}, {}]),
    ("disent", [{}, {}, {}]),
    ("madv", [{}, {}, {}]),
])
def test_fit_many_equals_fit_one_by_one(method: str, hps: list[dict]) -> None:
    data = random_data()
    runs = [RunConfig(method, hp, seed, CFG) for seed, hp in zip((5, 6, 7), hps, strict=True)]
    stacked = fit_many(data, runs)
    assert all(r.info["stack_size"] == 3 for r in stacked)
    for run, res in zip(runs, stacked, strict=True):
        alone = fit(data, run.method, run.hparams, run.seed, CFG)
        assert alone.info["stack_size"] == 1
        assert alone.best_epoch == res.best_epoch
        np.testing.assert_allclose(res.test_probs, alone.test_probs, atol=1e-5)
        np.testing.assert_allclose(res.dev_probs, alone.dev_probs, atol=1e-5)
        np.testing.assert_allclose([h["dev_loss"] for h in res.history],
                                   [h["dev_loss"] for h in alone.history], rtol=1e-5)
    assert not np.allclose(stacked[0].test_probs, stacked[1].test_probs)


def test_fit_many_mixed_methods_keep_order_and_split_stacks() -> None:
    data = random_data()
    runs = [RunConfig("erm", {}, 1, CFG), RunConfig("ds", {}, 1, CFG), RunConfig("erm", {}, 2, CFG),
            RunConfig("random", {}, 1, CFG), RunConfig("adv", {"adv_lr": 0.01}, 1, CFG),
            RunConfig("adv", {}, 1, CFG)]
    res = fit_many(data, runs)
    assert [r.method for r in res] == ["erm", "ds", "erm", "random", "adv", "adv"]
    assert res[0].info["stack_size"] == 2 and res[1].info["stack_size"] == 1
    assert res[4].info["stack_size"] == 1  # adv_lr is structural: not stacked with the default
    np.testing.assert_allclose(res[2].test_probs, fit(data, "erm", seed=2, config=CFG).test_probs,
                               atol=1e-5)


def test_selection_keeps_lowest_dev_epoch_and_class_weights_of_manipulated_set() -> None:
    data = random_data(1)
    cfg = TrainConfig(epochs=8, batch_size=16, lr=3e-3)
    res = fit(data, "ds", seed=0, config=cfg)
    losses = [h["dev_loss"] for h in res.history]
    assert res.best_epoch == 1 + int(np.argmin(losses))
    assert res.info["best_dev_loss"] == pytest.approx(min(losses), rel=1e-6)
    # the kept probabilities are the selected epoch's: their dev CB-CE equals the logged minimum
    w = res.state["class_w"][0].numpy()
    kept = np.flatnonzero(np.isin(np.arange(len(data.soft)), data.train_idx))
    assert res.info["n_train"] < len(kept)
    y = data.soft[data.dev_idx]
    ce = -(y * np.log(res.dev_probs)).sum(1) * (y @ w)
    assert ce.mean() == pytest.approx(min(losses), rel=1e-4)
    last = fit(data, "ds", seed=0, config=TrainConfig(epochs=8, batch_size=16, lr=3e-3,
                                                      select="last"))
    assert last.best_epoch == 8
    # weights recomputed on the downsampled set, not the full training set
    assert not np.allclose(w, class_weights_for(data.soft[data.train_idx]), atol=1e-4)


def test_save_load_and_predict(tmp_path) -> None:
    data = random_data(2)
    res = fit(data, "lff", seed=0, config=CFG)
    res.save(tmp_path / "run")
    back = FitResult.load(tmp_path / "run")
    assert back.best_epoch == res.best_epoch and back.hparams == res.hparams
    np.testing.assert_array_equal(back.test_probs, res.test_probs)
    assert back.history == res.history
    probs = predict_probs(back, data.features, data.test_idx)
    np.testing.assert_allclose(probs, res.test_probs, atol=1e-5)


def test_random_baseline_rate_and_binarisation() -> None:
    data = random_data(3, n=2100)
    res = fit(data, "random", seed=0, config=CFG)
    pos = res.test_probs > 1 / 4
    assert abs(pos.mean() - 0.5) < 0.02
    assert res.best_epoch == 0 and res.history == []


def test_no_groups_given_for_hard_method_raises() -> None:
    data = random_data()
    data = TrainData(data.features, data.soft, data.train_idx, data.dev_idx, data.test_idx)
    with pytest.raises(ValueError, match="needs hard group labels"):
        fit(data, "gdro", config=CFG)
    with pytest.raises(KeyError, match="registered"):
        fit(data, "nonsense", config=CFG)


# ----------------------------------------------------------------------------- alignment + CLI
class FakeStore:
    """The FeatureStore surface TrainData.from_objects uses (rows in a shuffled order)."""

    def __init__(self, utt_ids: list[str], features: np.ndarray, failures=None) -> None:
        self.utt_ids, self.features = utt_ids, features
        self.failures = failures or {}

    def rows(self, ids: list[str]) -> np.ndarray:
        pos = {u: i for i, u in enumerate(self.utt_ids)}
        return np.array([pos[u] for u in ids], dtype=np.int64)


def small_corpus(n: int = 60):
    rng = np.random.default_rng(0)
    ids = [f"u{i:03d}" for i in range(n)]
    votes = rng.integers(0, 4, size=(n, 3)).astype(float)
    votes[:, 0] += 10  # always a strict majority for class a
    soft = soft_from_votes(votes)
    df = pd.DataFrame({"utt_id": ids, "path": [f"{u}.wav" for u in ids],
                       "speaker": [f"s{i % 6}" for i in range(n)],
                       "gender": ["F" if i % 2 else "M" for i in range(n)]})
    for k, c in enumerate(["a", "b", "c"]):
        df[f"soft_{c}"] = soft[:, k]
    man = Manifest(df, ["a", "b", "c"], "toy")
    split = Split("1", ids[:40], ids[40:50], ids[50:])
    return man, split, ids


def test_from_objects_aligns_by_utt_id() -> None:
    man, split, ids = small_corpus()
    order = np.random.default_rng(1).permutation(len(ids))
    store_ids = [ids[i] for i in order]
    feats = np.random.default_rng(2).normal(size=(len(ids), 2, 4)).astype(np.float16)
    groups = GroupAssignment(ids[::-1], np.array([i % 2 for i in range(len(ids))][::-1]),
                             ["M", "F"], "truth:gender")
    store = FakeStore(store_ids, feats, failures={ids[45]: "empty audio"})
    data = TrainData.from_objects(store, man, split, groups)
    assert [store_ids[i] for i in data.train_idx] == split.train
    assert len(data.dev_idx) == 9 and data.info["missing_features"] == {"dev": 1}
    for row in data.train_idx[:10]:
        u = store_ids[row]
        np.testing.assert_allclose(data.soft[row], man.soft_labels()[ids.index(u)], rtol=1e-6)
        assert data.groups[row] == int(u[1:]) % 2
        assert data.majority[row] == 0
    assert data.n_groups == 2 and data.classes == ["a", "b", "c"]


def test_cli_train_and_methods(tmp_path) -> None:
    from emodebias.cli import app

    man, split, ids = small_corpus()
    man.save(tmp_path / "manifest.parquet")
    split.save(tmp_path / "split.json")
    store = tmp_path / "store"
    store.mkdir()
    feats = np.random.default_rng(3).normal(size=(len(ids), 2, 4)).astype(np.float16)
    np.save(store / "features.npy", feats)
    (store / "meta.json").write_text(json.dumps({"complete": True, "utt_ids": ids, "n_layers": 2,
                                                 "dim": 4, "failures": {}, "key": "test-store"}))
    GroupAssignment(ids, np.array([i % 2 for i in range(len(ids))]), ["M", "F"],
                    "truth:gender").save(tmp_path / "groups")
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "--features", str(store), "--manifest", str(tmp_path / "manifest.parquet"),
            "--split", str(tmp_path / "split.json"), "--method", "gdro", "--groups",
            str(tmp_path / "groups"), "--hp", "eta_q=0.05", "--epochs", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    pred = np.load(out / "predictions.npz")
    assert list(pred["utt_ids"]) == split.test
    np.testing.assert_allclose(pred["probs"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pred["targets"], man.soft_labels()[50:], rtol=1e-6)
    record = json.loads((out / "record.json").read_text())
    assert record["hparams"]["eta_q"] == 0.05 and record["spec"]["method"] == "gdro"
    assert FitResult.load(out / "model").hparams["eta_q"] == 0.05
    bad = runner.invoke(app, args[:-4] + ["--hp", "nope=1", "--out", str(out)])
    assert bad.exit_code != 0 and "eta_q" in bad.output
    listing = runner.invoke(app, ["methods"])
    assert listing.exit_code == 0
    for name in ("erm", "random", "rw", "ds", "gdro", "gadro", "pgdro", "adv", "madv", "lff",
                 "disent", "sih", "jtt", "gr", "eo_thresh"):
        assert name in listing.output


# ----------------------------------------------------------------------------- behaviour
MAJOR = (1, 0, 1)  # class -> majority gender (1 = M), as angry/sad/neutral in CREMA-D


def planted_shortcut(seed: int = 0, scale: int = 1) -> TrainData:
    """3 emotions; feature 3 encodes gender and, at 1:20 in train/dev, predicts the emotion;
    the test set is gender-balanced so relying on it opens a TPR gap. `scale` multiplies the
    train and dev sizes (more minority rows per cell)."""
    rng = np.random.default_rng(seed)

    def part(sizes: list[int], balanced: bool) -> list[tuple[int, int]]:
        rows = []
        for c, n_maj in enumerate(sizes):
            for g in (0, 1):
                n = n_maj if balanced or g == MAJOR[c] else n_maj // 20
                rows += [(c, g)] * n
        return rows

    train = part([200 * scale, 60 * scale, 200 * scale], False)
    dev = part([60 * scale, 20 * scale, 60 * scale], False)
    rows = np.array(train + dev + part([100, 100, 100], True))
    c, g = rows[:, 0], rows[:, 1]
    n = len(rows)
    x = rng.normal(size=(n, 1, 6))
    x[:, 0, :3] += 1.5 * np.eye(3)[c]
    x[:, 0, 3] = 2.0 * (2 * g - 1) + 0.3 * rng.normal(size=n)
    votes = np.ones((n, 3))
    votes[np.arange(n), c] = 8
    a, b = len(train), len(train) + len(dev)
    return TrainData(x.astype(np.float16), soft_from_votes(votes), np.arange(a), np.arange(a, b),
                     np.arange(b, n), g, n_groups=2)


def tpr_gap(probs: np.ndarray, soft: np.ndarray, g: np.ndarray) -> float:
    """RMS over classes of TPR_F − TPR_M at the 1/K threshold (independent of metrics.py)."""
    k = soft.shape[1]
    y, p = soft > 1 / k, probs > 1 / k
    d = [p[(g == 0) & y[:, c], c].mean() - p[(g == 1) & y[:, c], c].mean() for c in range(k)]
    return float(np.sqrt(np.mean(np.square(d))))


def test_rw_ds_gdro_lower_the_tpr_gap_of_a_planted_shortcut() -> None:
    data = planted_shortcut()
    cfg = TrainConfig(epochs=20, lr=1e-3)
    seeds = (0, 1, 2)
    test_soft, test_g = data.soft[data.test_idx], data.groups[data.test_idx]
    gaps = {}
    for method in ("erm", "rw", "ds", "gdro"):
        res = fit_many(data, [RunConfig(method, {}, s, cfg) for s in seeds])
        gaps[method] = np.mean([tpr_gap(r.test_probs, test_soft, test_g) for r in res])
    print("planted shortcut 1:20, mean test TPR gap over seeds:",
          {k: round(float(v), 3) for k, v in gaps.items()})
    assert gaps["erm"] > 0.3  # the shortcut is real
    for method in ("rw", "ds", "gdro"):
        assert gaps[method] < gaps["erm"], method


@pytest.mark.parametrize("method", ["erm", "gdro", "lff", "adv", "eo_thresh", "rw"])
def test_fit_many_stacks_runs_across_splits_and_group_sources(method: str) -> None:
    """Runs of one method over different train/dev/test lists (uneven train lengths, so some
    runs idle under per-run step masks) and group sources train in one stack and equal each
    run trained alone."""
    data = random_data(4, n=160)
    rng = np.random.default_rng(9)
    other_groups = rng.integers(0, 2, len(data.soft))
    variants = [
        replace(data, train_idx=np.arange(80), dev_idx=np.arange(100, 120),
                test_idx=np.arange(120, 160)),
        replace(data, train_idx=np.arange(20, 90), dev_idx=np.arange(90, 110),
                test_idx=np.arange(130, 160), groups=other_groups),
        replace(data, train_idx=np.arange(60, 122), dev_idx=np.arange(0, 25),
                test_idx=np.arange(125, 160)),
        replace(data, train_idx=np.arange(100, 160), dev_idx=np.arange(20, 40),
                test_idx=np.arange(0, 20), groups=other_groups),
    ]
    pairs = [(d, [RunConfig(method, {}, seed, CFG)]) for seed, d in enumerate(variants)]
    pairs[0][1].append(RunConfig(method, {}, 11, CFG))  # two runs on one TrainData
    stacked = fit_many(pairs)
    assert len(stacked) == 5
    assert {r.info["stack_size"] for r in stacked} == {5}
    flat = [(d, run) for d, runs in pairs for run in runs]
    for (d, run), res in zip(flat, stacked, strict=True):
        alone = fit(d, run.method, run.hparams, run.seed, CFG)
        assert alone.info["stack_size"] == 1
        assert alone.best_epoch == res.best_epoch
        assert res.test_probs.shape == (len(d.test_idx), 4)
        np.testing.assert_allclose(res.test_probs, alone.test_probs, atol=1e-5)
        np.testing.assert_allclose(res.dev_probs, alone.dev_probs, atol=1e-5)
        np.testing.assert_allclose([h["dev_loss"] for h in res.history],
                                   [h["dev_loss"] for h in alone.history], rtol=1e-5)
        np.testing.assert_allclose([h["train_loss"] for h in res.history],
                                   [h["train_loss"] for h in alone.history], rtol=1e-5)
        for k, v in alone.state.items():
            np.testing.assert_allclose(res.state[k].numpy(), v.numpy(), atol=1e-5)


def test_fit_many_stacks_compatible_methods_and_group_counts() -> None:
    """ERM / RW (plain heads) stack across group sources with different group counts, GDRO /
    GADRO (same code, other defaults) across splits; each equals the run trained alone."""
    data = random_data(5, n=160)
    three = replace(data, groups=np.arange(len(data.soft)) % 3, n_groups=3,
                    train_idx=np.arange(10, 85))
    pairs = [(data, [RunConfig("erm", {}, 0, CFG), RunConfig("gdro", {}, 1, CFG)]),
             (three, [RunConfig("rw", {}, 2, CFG), RunConfig("gadro", {}, 3, CFG)])]
    res = fit_many(pairs)
    assert [r.method for r in res] == ["erm", "gdro", "rw", "gadro"]
    assert [r.info["stack_size"] for r in res] == [2, 1, 2, 1]  # GDRO: 2 vs 3 groups
    for (d, run), got in zip([(d, r) for d, rs in pairs for r in rs], res, strict=True):
        alone = fit(d, run.method, run.hparams, run.seed, CFG)
        assert alone.best_epoch == got.best_epoch
        np.testing.assert_allclose(got.test_probs, alone.test_probs, atol=1e-5)
    same_groups = [(data, [RunConfig("gdro", {}, 1, CFG)]),
                   (replace(data, train_idx=np.arange(5, 75)), [RunConfig("gadro", {}, 3, CFG)])]
    res = fit_many(same_groups)
    assert [r.info["stack_size"] for r in res] == [2, 2]  # GDRO + GADRO across two splits
    for (d, rs), got in zip(same_groups, res, strict=True):
        alone = fit(d, rs[0].method, {}, rs[0].seed, CFG)
        np.testing.assert_allclose(got.test_probs, alone.test_probs, atol=1e-5)
        np.testing.assert_allclose([h["q"] for h in got.history],
                                   [h["q"] for h in alone.history], atol=1e-5)


# ----------------------------------------------------------------------------- processes
def memmap_data(tmp_path, seed: int = 0) -> TrainData:
    """random_data with its features in a memory-mapped .npy file (as a FeatureStore)."""
    data = random_data(seed)
    np.save(tmp_path / "features.npy", data.features)
    return replace(data, features=np.load(tmp_path / "features.npy", mmap_mode="r"))


def test_traindata_pickles_a_memmap_as_its_file(tmp_path) -> None:
    import pickle

    data = memmap_data(tmp_path)
    blob = pickle.dumps(data)
    back = pickle.loads(blob)
    assert isinstance(back.features, np.memmap)
    np.testing.assert_array_equal(back.features, data.features)
    np.testing.assert_array_equal(back.train_idx, data.train_idx)
    inmem = replace(data, features=np.array(data.features))
    copied = pickle.dumps(inmem)
    assert len(copied) - len(blob) > 0.9 * data.features.nbytes  # rows stay on disk
    np.testing.assert_array_equal(pickle.loads(copied).features, inmem.features)


def test_fit_stream_yields_each_stack_and_workers_give_the_same_numbers(tmp_path,
                                                                        caplog) -> None:
    """Two worker processes train the stacks of a grid to the same numbers as one process;
    only in-memory features (copied to each process) are warned about."""
    data = memmap_data(tmp_path)
    other = replace(data, train_idx=np.arange(5, 75))
    pairs = [(data, [RunConfig("erm", {}, 0, CFG), RunConfig("gdro", {}, 1, CFG),
                     RunConfig("random", {}, 2, CFG)]),
             (other, [RunConfig("rw", {}, 3, CFG), RunConfig("lff", {}, 4, CFG)])]
    streamed = list(fit_stream(pairs))
    assert sorted(pos for pos, _ in streamed) == [0, 1, 2, 3, 4]
    inline = fit_many(pairs)
    with caplog.at_level("WARNING"):
        two = fit_many(pairs, workers=2)
    assert "in-memory features" not in caplog.text
    inmem = [(replace(d, features=np.array(d.features)), rs) for d, rs in pairs[:1]]
    with caplog.at_level("WARNING"):
        np.testing.assert_allclose(fit_many(inmem, workers=2)[0].test_probs,
                                   inline[0].test_probs, atol=1e-6)
    assert "in-memory features" in caplog.text
    for a, b in zip(inline, two, strict=True):
        assert (a.method, a.best_epoch, a.info.get("stack_size")) == \
            (b.method, b.best_epoch, b.info.get("stack_size"))
        np.testing.assert_allclose(a.test_probs, b.test_probs, atol=1e-6)
        np.testing.assert_allclose([h["dev_loss"] for h in a.history],
                                   [h["dev_loss"] for h in b.history], atol=1e-6)


def test_stacking_ignores_attributes_added_to_torch_module_at_runtime(monkeypatch) -> None:
    """transformers adds `smart_apply` to nn.Module while it builds a model: methods whose
    stack keys were taken before and after must still stack (the cause of a flaky test)."""
    from emodebias.training.plan import impl_key

    impl_key.cache_clear()
    before = impl_key(get_method("gdro"))
    monkeypatch.setattr(torch.nn.Module, "smart_apply", lambda self: None, raising=False)
    assert impl_key(get_method("gadro")) == before
    impl_key.cache_clear()


def test_runs_of_one_cell_stack_and_equal_runs_alone() -> None:
    """ERM, RW, GDRO and GADRO with one seed on one split stack (two per stack) and every run
    equals the run trained alone."""
    data = random_data(6)
    runs = [RunConfig(m, {}, 3, CFG) for m in ("erm", "rw", "gdro", "gadro")]
    stacked = fit_many(data, runs)
    assert [r.info["stack_size"] for r in stacked] == [2, 2, 2, 2]
    for run, got in zip(runs, stacked, strict=True):
        alone = fit(data, run.method, {}, run.seed, CFG)
        assert alone.best_epoch == got.best_epoch
        np.testing.assert_allclose(got.test_probs, alone.test_probs, atol=1e-5)


def test_uneven_lengths_and_masked_steps_equal_runs_alone() -> None:
    """A run on a shorter list (its partial batch a masked sub-step of the others) stacks with
    ERM and RW on the full list, and each equals the run alone."""
    data = random_data(3, n=160)
    short = replace(data, train_idx=np.arange(70))  # 4 full batches + 6 rows; data has 80
    pairs = [(data, [RunConfig("erm", {}, 3, CFG), RunConfig("rw", {}, 3, CFG)]),
             (short, [RunConfig("erm", {}, 3, CFG)])]
    stacked = fit_many(pairs)
    assert {r.info["stack_size"] for r in stacked} == {3}
    flat = [(d, run) for d, runs in pairs for run in runs]
    for (d, run), res in zip(flat, stacked, strict=True):
        alone = fit(d, run.method, run.hparams, run.seed, CFG)
        assert alone.best_epoch == res.best_epoch
        np.testing.assert_allclose(res.test_probs, alone.test_probs, atol=1e-5)
        np.testing.assert_allclose([h["train_loss"] for h in res.history],
                                   [h["train_loss"] for h in alone.history], rtol=1e-5)


@pytest.mark.parametrize("method", ["erm", "lff", "disent"])
def test_runs_differing_in_epochs_lr_and_weight_decay_stack_and_equal_runs_alone(
        method: str) -> None:
    """Search trials differ in float settings only: lr, weight decay and epochs are per run, so
    they train in one stack; a run whose epochs are done stops (no updates, no selection, its
    history ends at its own epochs) and each run equals the run trained alone."""
    data = random_data(4)
    cfgs = [replace(CFG, epochs=4, lr=1e-3), replace(CFG, epochs=2, lr=3e-3, weight_decay=0.1),
            replace(CFG, epochs=3, lr=5e-4, weight_decay=0.01)]
    runs = [RunConfig(method, {}, 7, c) for c in cfgs]
    stacked = fit_many(data, runs)
    assert [r.info["stack_size"] for r in stacked] == [3, 3, 3]
    assert [r.info["twins"] for r in stacked] == [0, 0, 0]  # same seed, other settings
    for run, got in zip(runs, stacked, strict=True):
        assert len(got.history) == run.config.epochs
        assert got.best_epoch <= run.config.epochs
        assert got.config["lr"] == run.config.lr
        alone = fit(data, run.method, {}, run.seed, run.config)
        assert alone.info["stack_size"] == 1
        assert alone.best_epoch == got.best_epoch
        np.testing.assert_allclose([h["dev_loss"] for h in got.history],
                                   [h["dev_loss"] for h in alone.history], rtol=1e-5)
        np.testing.assert_allclose(got.test_probs, alone.test_probs, atol=1e-5)
        for k, v in alone.state.items():
            np.testing.assert_allclose(got.state[k].numpy(), v.numpy(), atol=1e-5)


def test_postprocessing_and_data_level_methods_stack_with_erm() -> None:
    """EO thresholds (ERM training + a per-run post-processing hook) and JTT (ERM loss on an
    upsampled list) share ERM's stack; EO with ERM's seed on ERM's data is ERM's training, so
    it trains once (twins); an ERM run on a copy of the data trains on its own. Each equals the
    run alone, EO keeps its thresholds."""
    data = random_data(8)
    runs = [RunConfig("erm", {}, 2, CFG), RunConfig("eo_thresh", {"min_positives": 2}, 2, CFG),
            RunConfig("jtt", {"id_epochs": 1, "up": 1}, 5, CFG)]
    copy = replace(data)  # equal content, another object: not assumed equal
    pairs = [(data, runs), (copy, [RunConfig("erm", {}, 2, CFG)])]
    stacked = fit_many(pairs)
    assert [r.info["twins"] for r in stacked] == [1, 1, 0, 0]
    # ERM (+ EO) and the copy's ERM in one stack; JTT's upsampled list (131 rows) is too long
    assert [r.info["stack_size"] for r in stacked] == [2, 2, 1, 2]
    assert "thresholds" in stacked[1].info and "thresholds" not in stacked[0].info
    for k, v in stacked[0].state.items():
        np.testing.assert_array_equal(stacked[1].state[k].numpy(), v.numpy())  # same training
    flat = [(d, run) for d, rs in pairs for run in rs]
    for (d, run), got in zip(flat, stacked, strict=True):
        alone = fit(d, run.method, run.hparams, run.seed, CFG)
        assert alone.info["twins"] == 0
        assert alone.best_epoch == got.best_epoch
        np.testing.assert_allclose(got.test_probs, alone.test_probs, atol=1e-5)
        np.testing.assert_allclose(got.dev_probs, alone.dev_probs, atol=1e-5)


def test_jtt_identification_models_of_a_grid_train_in_one_stack(monkeypatch) -> None:
    """JTT's data-level hook for several runs trains their identification models in one
    stacked training; each run's list equals the one its own `prepare` gives, with each
    training error 1 + up times."""
    from emodebias.training import fitting as train_mod

    jtt = get_method("jtt")
    data = random_data(5)
    other = replace(data, train_idx=np.arange(20, 100))

    def items() -> list:
        return [(d, jtt.resolve(hp), torch.Generator().manual_seed(s), CFG)
                for d, hp, s in ((data, {"id_epochs": 2, "up": 2}, 1),
                                 (other, {"id_epochs": 2, "up": 3}, 2))]

    calls = []
    original = train_mod._stream

    def spy(pairs, workers, scan):
        out = sorted(original(pairs, workers, scan), key=lambda t: t[0])
        calls.append([r.info["stack_size"] for _, r in out])
        return iter(out)

    monkeypatch.setattr(train_mod, "_stream", spy)
    trainer = train_mod._AuxTrainer()
    together = jtt.prepare_many(items(), trainer=trainer)
    assert calls == [[2, 2]]  # one call, one stack of both identification models
    for item, got in zip(items(), together, strict=True):
        d, hp = item[:2]
        alone = jtt.prepare_many([item], trainer=trainer)[0]
        np.testing.assert_array_equal(got.idx, alone.idx)
        assert got.info == alone.info and got.info["errors"] > 0
        rows, counts = np.unique(got.idx, return_counts=True)
        assert set(rows) == set(d.train_idx)
        assert sorted(set(counts)) == [1, 1 + hp["up"]]
        assert (counts > 1).sum() == got.info["errors"]


def test_compiled_training_equals_eager_training(monkeypatch) -> None:
    """A run trained with the head compiled (EMODEBIAS_COMPILE=1, inductor) gives the eager
    run's dev losses, selected epoch and probabilities to float32 rounding."""
    from emodebias.training.model import logits_dense

    data = random_data(9)
    cfg = replace(CFG, epochs=2)
    monkeypatch.setenv("EMODEBIAS_COMPILE", "1")
    compiled = fit(data, "erm", seed=1, config=cfg)
    assert logits_dense._compiled is not None and not logits_dense.failed
    monkeypatch.setenv("EMODEBIAS_COMPILE", "0")
    eager = fit(data, "erm", seed=1, config=cfg)
    assert compiled.best_epoch == eager.best_epoch
    np.testing.assert_allclose([h["dev_loss"] for h in compiled.history],
                               [h["dev_loss"] for h in eager.history], rtol=1e-5)
    np.testing.assert_allclose(compiled.test_probs, eager.test_probs, atol=1e-5)


def test_non_finite_scan_reads_each_row_once_per_call(tmp_path, monkeypatch) -> None:
    """One `fit_stream` call scans each used row of a store once for NaN/inf, JTT's
    identification training included (it reuses the call's scan)."""
    from emodebias.training import plan as plan_mod

    data = memmap_data(tmp_path)
    other = replace(data, train_idx=np.arange(10, 80))  # same store, fewer rows
    scanned = []
    original = plan_mod.non_finite_rows

    def spy(features, rows, chunk=1024):
        scanned.append(np.asarray(rows))
        return original(features, rows, chunk)

    monkeypatch.setattr(plan_mod, "non_finite_rows", spy)
    runs = [RunConfig("jtt", {"id_epochs": 1}, 0, CFG), RunConfig("erm", {}, 0, CFG)]
    out = dict(fit_stream([(data, runs), (other, runs)]))
    assert all(np.isfinite(r.test_probs).all() for r in out.values())
    rows = np.concatenate(scanned)
    assert len(scanned) == 1 and len(rows) == len(np.unique(rows)) == 120
