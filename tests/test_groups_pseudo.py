"""Pseudo-label sources: HF audio classifier (tiny random model), embedding probe, F0 baseline."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from emodebias.data.manifest import Manifest
from emodebias.groups.f0 import F0Threshold, f0_groups, fit_f0, median_f0
from emodebias.groups.probe import GenderProbe, probe_groups, train_probe
from emodebias.groups.pseudo import PseudoLabelError, hf_gender_groups, map_labels

SR = 16_000


def _tone(f0: float, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A voiced-like harmonic tone with slight noise."""
    t = np.arange(int(seconds * SR)) / SR
    wav = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    wav = wav + 0.01 * np.random.default_rng(seed).normal(size=len(t))
    return (0.3 * wav / np.abs(wav).max()).astype(np.float32)


@pytest.fixture(scope="module")
def tone_manifest(tmp_path_factory) -> Manifest:
    root = tmp_path_factory.mktemp("tones")
    rows = []
    for i, (f0, g) in enumerate([(110, "M"), (125, "M"), (140, "M"), (200, "F"), (230, "F"),
                                 (260, "F")]):
        path = root / f"t{i}.wav"
        sf.write(path, _tone(f0, 0.6 + 0.1 * i, seed=i), SR)
        rows.append({"utt_id": f"t{i}", "path": str(path), "speaker": f"s{i}", "gender": g})
    rows.append({"utt_id": "gone", "path": str(root / "missing.wav"), "speaker": "s9",
                 "gender": "F"})
    return Manifest(pd.DataFrame(rows), ["angry"])


# --------------------------------------------------------------------------- label maps
def test_map_labels_default_custom_and_error():
    assert map_labels({0: "male", 1: "Female", 2: "child"}) == {0: "M", 1: "F"}
    assert map_labels({0: "LABEL_0", 1: "LABEL_1"}, {"LABEL_0": "F", "LABEL_1": "M"}) == \
        {0: "F", 1: "M"}
    with pytest.raises(PseudoLabelError, match="label map"):
        map_labels({0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(PseudoLabelError, match="'F' or 'M'"):
        map_labels({0: "a"}, {"a": "female"})


# --------------------------------------------------------------------------- HF checkpoint
@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
    )

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, conv_dim=(16, 16), conv_stride=(5, 4),
                         conv_kernel=(10, 8), num_conv_pos_embeddings=8,
                         num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                         do_stable_layer_norm=True, classifier_proj_size=8,
                         id2label={0: "male", 1: "female", 2: "child"},
                         label2id={"male": 0, "female": 1, "child": 2})
    model = Wav2Vec2ForSequenceClassification(cfg).eval()
    fe = Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True, return_attention_mask=True)
    path = tmp_path_factory.mktemp("tiny_gender")
    model.save_pretrained(path)
    fe.save_pretrained(path)
    return path, model, fe


def test_hf_checkpoint_probs_match_a_direct_forward_pass(tiny_classifier, tone_manifest,
                                                        monkeypatch):
    from emodebias.data.audio import load_audio
    from emodebias.groups import pseudo

    path, model, fe = tiny_classifier
    a = hf_gender_groups(tone_manifest, path, batch_size=3)
    assert a.names == ["F", "M"] and a.source == f"pseudo:hf:{path.name}"
    assert a.ids[-1] == -1 and a.info["n_failed"] == 1 and "gone" in a.info["failures"]
    assert a.probs[-1].tolist() == [0.0, 0.0]
    for i, p in enumerate(tone_manifest.df["path"][:-1]):
        inputs = fe(load_audio(p, max_seconds=10), sampling_rate=SR, return_tensors="pt")
        with torch.inference_mode():
            prob = model(**inputs).logits.softmax(-1)[0].numpy()
        expect_f = prob[1] / (prob[0] + prob[1])  # 'child' mass is ignored
        assert a.probs[i, 0] == pytest.approx(expect_f, abs=2e-4)
        assert a.ids[i] == (0 if expect_f >= 0.5 else 1)
    np.testing.assert_allclose(a.probs[:-1].sum(1), 1.0, atol=1e-6)
    truth = tone_manifest.df["gender"].to_numpy()[:-1]
    pred = np.array(a.names)[a.ids[:-1]]
    assert a.info["accuracy"] == pytest.approx(np.mean(pred == truth))
    assert a.info["n_scored"] == 6
    monkeypatch.setattr(pseudo, "BLOCK_BATCHES", 1)  # memory-bounded blocks: same numbers
    b = hf_gender_groups(tone_manifest, path, batch_size=2)
    np.testing.assert_allclose(b.probs, a.probs, atol=2e-4)


def test_hf_errors_are_immediate_and_clear(tmp_path, monkeypatch, tone_manifest):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(PseudoLabelError, match="not reachable"):
        hf_gender_groups(tone_manifest, "nobody-xyz/no-such-gender-model-123")
    assert time.perf_counter() - start < 10
    with pytest.raises(PseudoLabelError, match="not a model directory"):
        hf_gender_groups(tone_manifest, str(tmp_path / "missing" / "dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PseudoLabelError, match="cannot load"):
        hf_gender_groups(tone_manifest, tmp_path / "empty")


# --------------------------------------------------------------------------- probe
def _embeddings(n: int = 120, dim: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    gender = np.where(np.arange(n) % 2 == 0, "F", "M").astype(object)
    speakers = np.array([f"{g}{i % 12}" for i, g in enumerate(gender)], dtype=object)
    x = rng.normal(0, 1, (n, dim)) * rng.uniform(0.5, 3, dim) + 5
    x[:, 0] = rng.normal(0, 1, n) + np.where(gender == "F", 1.5, -1.5)  # Bayes acc. 0.933
    return x, gender, speakers


def test_probe_matches_sklearn_and_round_trips(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, gender, speakers = _embeddings()
    probe = train_probe(x, gender, speakers, encoder="fake")
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
    ref.fit(x, (gender == "F").astype(int))
    np.testing.assert_allclose(probe.p_female(x), ref.predict_proba(x)[:, 1], atol=1e-6)
    assert 0.85 < probe.info["cv_accuracy"] < 0.99 and probe.info["n_speakers"] == 12
    back = GenderProbe.load(probe.save(tmp_path / "probe"))
    np.testing.assert_array_equal(back.p_female(x), probe.p_female(x))
    assert back.encoder == "fake" and back.info["cv_accuracy"] == probe.info["cv_accuracy"]
    ids = [f"u{i}" for i in range(len(x))]
    a = probe_groups(back, x, ids, encoder="fake")
    np.testing.assert_allclose(a.probs[:, 0], probe.p_female(x), atol=1e-6)
    assert a.source == "pseudo:probe:fake"
    with pytest.raises(PseudoLabelError, match="trained on 'fake'"):
        probe_groups(back, x, ids, encoder="resemblyzer")
    with pytest.raises(PseudoLabelError, match=r"\[N, 12\]"):
        back.p_female(x[:, :5])


def test_probe_file_version_check(tmp_path):
    x, gender, _ = _embeddings(40)
    path = train_probe(x, gender).save(tmp_path / "p.npz")
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["version"] = 99
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(PseudoLabelError, match="version"):
        GenderProbe.load(path)
    with pytest.raises(PseudoLabelError, match="no gender probe"):
        GenderProbe.load(tmp_path / "absent.npz")
    with pytest.raises(PseudoLabelError, match="both F and M"):
        train_probe(x[gender == "F"], gender[gender == "F"])


# --------------------------------------------------------------------------- F0 baseline
@pytest.mark.parametrize("f0", [100.0, 150.0, 220.0, 300.0])
def test_median_f0_of_harmonic_tones(f0):
    assert median_f0(_tone(f0)) == pytest.approx(f0, rel=0.03)


def test_f0_groups_default_and_fitted(tone_manifest):
    a = f0_groups(tone_manifest)
    assert a.ids.tolist() == [1, 1, 1, 0, 0, 0, -1] and a.info["accuracy"] == 1.0
    assert a.info["threshold_hz"] == 160.0 and a.info["n_failed"] == 1
    rule = F0Threshold(160.0)
    assert rule.p_female(np.array([160.0]))[0] == pytest.approx(0.5)
    f0 = np.array(a.info["median_f0"][:6])  # stored rounded to 0.01 Hz
    np.testing.assert_allclose(a.probs[:6, 0], rule.p_female(f0), atol=1e-3)
    fitted = f0_groups(tone_manifest, fit_ids=["t0", "t1", "t2", "t3", "t4", "t5"])
    assert 140 < fitted.info["threshold_hz"] < 200 and fitted.info["accuracy"] == 1.0


def test_fit_f0_recovers_a_known_boundary():
    rng = np.random.default_rng(0)
    f0 = np.exp(rng.uniform(np.log(80), np.log(320), 4000))
    p = F0Threshold(180.0, 0.1).p_female(f0)
    gender = np.where(rng.uniform(size=len(f0)) < p, "F", "M")
    rule = fit_f0(f0, gender)
    assert rule.threshold_hz == pytest.approx(180, rel=0.05)
    assert rule.scale == pytest.approx(0.1, rel=0.2)
