"""Metrics on the real EMO-SUPERB CREMA-D labels, and scoring saved predictions via a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emodebias.data.manifest import Manifest, ManifestError
from emodebias.metrics import MetricsInputError, evaluate, from_predictions

CLASSES = ["angry", "sad", "disgust", "fear", "neutral", "happy"]


def _test_split(shared_data: Path, fold: int) -> pd.DataFrame:
    df = pd.read_csv(shared_data / "emo-superb" / "crema-d" / f"labels_consensus_{fold}.csv")
    return df[df.Split_Set == "Test"].reset_index(drop=True)


def _random_runs(targets: np.ndarray, gender: np.ndarray, draws: int, seed: int) -> pd.DataFrame:
    """Scores of Bernoulli(0.5) predictions per class (the 'Random' row of [IDI] Table 1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(draws):
        probs = (rng.random(targets.shape) < 0.5).astype(float)  # 1 > 1/6 > 0
        rows.append(evaluate(targets, probs, {"gender": gender}).summary)
    return pd.DataFrame(rows)


def test_random_predictor_on_crema_d_fold1(shared_data: Path) -> None:
    df = _test_split(shared_data, 1)
    assert len(df) == 1463 and df.Gender.value_counts().to_dict() == {"Female": 889, "Male": 574}
    targets = df[CLASSES].to_numpy()
    runs = _random_runs(targets, df.Gender.to_numpy(), draws=200, seed=0)
    # Independent expectation: with ŷ ~ Bernoulli(1/2), E[TP] = n_pos/2, E[FP] = n_neg/2,
    # E[FN] = n_pos/2, so F1_c ≈ n_pos / (n_pos + N/2) (ratio of expectations, O(1/N) off).
    n_pos = (targets > 1 / 6).sum(0)
    expected = np.mean(n_pos / (n_pos + len(df) / 2))
    assert expected == pytest.approx(0.3817, abs=5e-4)  # fold 1 is neutral-heavy (1068/1463)
    assert runs.macro_f1.mean() == pytest.approx(expected, abs=2e-3)
    assert runs.hamming_acc.mean() == pytest.approx(0.5, abs=3e-3)
    # [IDI] Table 1 'Random' (5-fold mean): DP gap .015, TPR gap .060 -> small, not zero
    assert 0.010 < runs["gender.dp_maxdev_gap"].mean() < 0.022
    assert 0.02 < runs["gender.tpr_gap"].mean() < 0.09


def test_random_predictor_five_fold_mean_near_paper(shared_data: Path) -> None:
    """PAPERS §3.0: Random scores F1 .360 in [IDI]; Bernoulli(0.5) gives about .37 over folds."""
    means = []
    for fold in range(1, 6):
        df = _test_split(shared_data, fold)
        means.append(_random_runs(df[CLASSES].to_numpy(), df.Gender.to_numpy(), 30,
                                  fold).macro_f1.mean())
    assert 0.36 <= np.mean(means) <= 0.375
    assert all(0.36 <= m <= 0.385 for m in means)


def _manifest(n: int = 60, seed: int = 0) -> Manifest:
    rng = np.random.default_rng(seed)
    soft = rng.dirichlet(np.ones(3), n)
    df = pd.DataFrame({
        "utt_id": [f"u{i:03d}" for i in range(n)],
        "path": [f"/nowhere/u{i:03d}.wav" for i in range(n)],
        "speaker": [f"s{i % 6}" for i in range(n)],
        "gender": pd.array(["F" if i % 6 < 3 else "M" for i in range(n)], dtype="string"),
        "age_group": ["Young", "Elderly"] * (n // 2),
    })
    for j, c in enumerate(["angry", "sad", "neutral"]):
        df[f"soft_{c}"] = soft[:, j]
    df.loc[0, "gender"] = pd.NA
    return Manifest(df, ["angry", "sad", "neutral"], corpus="toy")


def test_from_predictions_matches_evaluate(tmp_path: Path) -> None:
    m = _manifest()
    rng = np.random.default_rng(1)
    order = rng.permutation(len(m))[:40]
    ids = np.array(m.utt_ids)[order]
    probs = rng.dirichlet(np.ones(3), 40)
    path = tmp_path / "preds.npz"
    np.savez(path, utt_ids=ids, probs=probs)  # no targets: taken from the manifest
    res = from_predictions(path, m, intersections=[("gender", "age_group")], n_boot=50, seed=3)
    rows = m.df.iloc[order]
    ref = evaluate(rows[[f"soft_{c}" for c in m.classes]].to_numpy(), probs,
                   {"gender": rows.gender.to_numpy(object), "age_group": rows.age_group},
                   speakers=rows.speaker.to_numpy(), n_boot=50, n_perm=1000, seed=3,
                   intersections=[("gender", "age_group")])
    assert res.summary == pytest.approx(ref.summary, abs=1e-12)
    assert set(res.table.cls) == {"angry", "sad", "neutral", "all"}
    # a requested attribute the manifest lacks is an error, not a skip
    with pytest.raises(MetricsInputError, match=r"\['race'\] not found"):
        from_predictions(path, m, attributes=["gender", "race"])
    with pytest.raises(MetricsInputError, match=r"intersection \['gender', 'race'\]"):
        from_predictions(path, m, intersections=[("gender", "race")])
    # targets in the file win over the manifest's
    flipped = 1.0 - rows[[f"soft_{c}" for c in m.classes]].to_numpy()
    res2 = from_predictions({"utt_ids": ids, "probs": probs, "targets": flipped / 2}, m)
    assert res2.summary["macro_f1"] != pytest.approx(res.summary["macro_f1"])


def test_from_predictions_bad_input(tmp_path: Path) -> None:
    m = _manifest()
    with pytest.raises(MetricsInputError, match="no predictions file"):
        from_predictions(tmp_path / "missing.npz", m)
    np.savez(tmp_path / "p.npz", utt_ids=np.array(["u000"]))
    with pytest.raises(MetricsInputError, match=r"p\.npz lacks 'probs'"):
        from_predictions(tmp_path / "p.npz", m)
    with pytest.raises(ManifestError, match="ghost"):
        from_predictions({"utt_ids": ["ghost"], "probs": np.ones((1, 3)) / 3}, m)
    with pytest.raises(MetricsInputError, match="3 classes"):
        from_predictions({"utt_ids": ["u001"], "probs": np.ones((1, 4)) / 4}, m)


def test_result_round_trips_through_json_dict() -> None:
    import json

    from emodebias.metrics import MetricsResult

    m = _manifest()
    res = from_predictions({"utt_ids": m.utt_ids, "probs": m.soft_labels()[::-1]}, m, n_boot=20)
    back = MetricsResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.summary == res.summary
    assert back.skipped == res.skipped
    pd.testing.assert_frame_equal(back.table, res.table, check_dtype=False)


def test_random_predictor_gap_is_indistinguishable_from_chance_on_crema_d(
        shared_data: Path) -> None:
    """Real speakers and labels, predictions with no gender effect: the plug-in TPR gap is
    positive, but the null and the bias-corrected interval say it is noise."""
    df = _test_split(shared_data, 1)
    targets = df[CLASSES].to_numpy()
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(40):
        probs = (rng.random(targets.shape) < 0.5).astype(float)
        res = evaluate(targets, probs, {"gender": df.Gender.to_numpy()},
                       speakers=df.SpkrID.to_numpy(), n_boot=200, n_perm=200, seed=seed)
        g = res.gaps.set_index("metric").loc["tpr_gap"]
        rows.append((g.value, g.value_bc, g.ci_low, g.p_perm, g.noise_floor, g.status))
    value, bc, low, p, floor, status = map(np.array, zip(*rows, strict=True))
    assert set(status) == {"ok"}
    assert res.gaps.speakers.iloc[0] == "Female:11, Male:7"  # the fold-1 test speakers
    assert value.min() > 0.01 and bc.mean() < 0.5 * value.mean()
    assert np.mean(low == 0) >= 0.9 and np.mean(p <= 0.05) <= 0.15
    assert np.mean(value < floor) >= 0.85  # the plug-in gap sits under the noise floor


def test_class_columns_are_matched_by_name_in_one_place() -> None:
    """evaluate() and the prediction readers match class columns by name with one function:
    reordered columns are aligned, different names are refused in the same words."""
    import importlib

    from emodebias.metrics import predictions

    evaluate_mod = importlib.import_module("emodebias.metrics.evaluate")  # not the function
    assert predictions.align_classes is evaluate_mod.align_classes
    rng = np.random.default_rng(0)
    y = rng.dirichlet(np.ones(3), 40)
    p = rng.dirichlet(np.ones(3), 40)
    groups = {"gender": np.repeat(["F", "M"], 20)}
    targets = pd.DataFrame(y, columns=["label_a", "label_b", "label_c"])
    shuffled = pd.DataFrame(p[:, [2, 0, 1]], columns=["prob_c", "prob_a", "prob_b"])
    got = evaluate(targets, shuffled, groups, min_speakers=2)
    want = evaluate(y[:, [2, 0, 1]], p[:, [2, 0, 1]], groups, classes=["c", "a", "b"],
                    min_speakers=2)
    assert got.summary == want.summary
    other = pd.DataFrame(p, columns=["prob_a", "prob_b", "prob_x"])
    with pytest.raises(MetricsInputError) as err:
        evaluate(targets, other, groups, min_speakers=2)
    assert str(err.value) == ("targets has classes ['a', 'b', 'c'] but probs has "
                              "['a', 'b', 'x']; the class names must match")
