"""SSL encoders: pooled features equal an independent masked mean of transformers' hidden states.

Tiny randomly initialised WavLM / wav2vec2 (group-norm and layer-norm variants) / HuBERT
checkpoints are saved to a temp dir, loaded back through `get_encoder(path)`, and compared with
the *unmodified* model run utterance by utterance without padding. Tolerance: 1e-4 absolute on
features of unit scale (float32 reduction-order differences are ~1e-6).
"""

from __future__ import annotations

import functools
import json
import time

import numpy as np
import pytest
import torch
from transformers import (
    AutoModel,
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from emodebias.features.encoders import EncoderError, get_encoder
from emodebias.features.encoders.ssl import SSLEncoder

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
            conv_dim=(32, 32, 32), conv_stride=(5, 4, 2), conv_kernel=(10, 4, 2),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
MODELS = {
    "wavlm": (WavLMConfig, WavLMModel, {"num_buckets": 16, "max_bucket_distance": 50}),
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model, {}),
    "wav2vec2-layernorm": (Wav2Vec2Config, Wav2Vec2Model,
                           {"feat_extract_norm": "layer", "do_stable_layer_norm": True}),
    "hubert": (HubertConfig, HubertModel, {}),
}
ATOL = 1e-4


def save_tiny(root, kind: str, seed: int = 0, do_normalize: bool | None = None):
    cfg_cls, model_cls, extra = MODELS[kind]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**TINY, **extra)).eval()
    path = root / f"{kind}-{seed}"
    model.save_pretrained(path)
    if do_normalize is not None:
        (path / "preprocessor_config.json").write_text(json.dumps({
            "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
            "sampling_rate": 16000, "padding_value": 0.0, "do_normalize": do_normalize,
            "return_attention_mask": True}))
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssl")
    # as on the hub: wav2vec2 checkpoints normalise the waveform (do_normalize), WavLM/HuBERT not
    return {k: save_tiny(root, k, do_normalize=k.startswith("wav2vec2")) for k in MODELS}


@pytest.fixture(scope="module")
def waves():
    rng = np.random.default_rng(1)
    lengths = [4_800, 9_203, 12_000, 6_777]  # 0.3 - 0.75 s, deliberately not frame-aligned
    return [(0.1 * rng.standard_normal(n) + 0.02).astype(np.float32) for n in lengths]


@functools.lru_cache(maxsize=8)
def reference_model(path) -> torch.nn.Module:
    return AutoModel.from_pretrained(path).eval()


def direct_pooled(path, wave: np.ndarray, normalize: bool) -> np.ndarray:
    """Independent reference: the original model on one unpadded utterance, mean over frames."""
    model = reference_model(path)
    x = wave.astype(np.float64)
    if normalize:
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    with torch.no_grad():
        out = model(torch.tensor(x, dtype=torch.float32)[None], output_hidden_states=True)
    return torch.stack([h[0].mean(0) for h in out.hidden_states]).numpy()


@pytest.mark.parametrize("kind", list(MODELS))
def test_pooled_equals_direct_masked_mean(ckpts, waves, kind):
    enc = get_encoder(ckpts[kind])
    assert isinstance(enc, SSLEncoder)
    assert enc.n_layers == TINY["num_hidden_layers"] + 1 and enc.dim == TINY["hidden_size"]
    assert enc.normalize == kind.startswith("wav2vec2")
    got = enc.encode(waves)
    assert got.shape == (len(waves), 4, 32) and got.dtype == np.float32
    for i, w in enumerate(waves):
        ref = direct_pooled(ckpts[kind], w, enc.normalize)
        np.testing.assert_allclose(got[i], ref, atol=ATOL, rtol=0)
    # the layers differ from each other, so a wrong order could not pass
    assert np.abs(got[:, 0] - got[:, -1]).max() > 10 * ATOL


@pytest.mark.parametrize("kind", list(MODELS))
def test_batching_and_padding_do_not_change_features(ckpts, waves, kind):
    enc = get_encoder(ckpts[kind])
    together = enc.encode(waves)
    alone = np.concatenate([enc.encode([w]) for w in waves])
    reordered = enc.encode(waves[::-1])[::-1]
    np.testing.assert_allclose(together, alone, atol=ATOL, rtol=0)
    np.testing.assert_allclose(together, reordered, atol=ATOL, rtol=0)


def test_group_norm_needs_the_masked_statistics(ckpts, waves):
    """Without MaskedGroupNorm, zero padding changes a group-norm model's features."""
    enc = get_encoder(ckpts["wavlm"])
    assert enc.info["padding_exact_groupnorm"]
    enc._cnn.norm.forward = enc._cnn.norm.gn.forward  # plain GroupNorm over padded time
    padded = enc.encode(waves)
    ref = direct_pooled(ckpts["wavlm"], waves[0], normalize=False)
    assert np.abs(padded[0] - ref).max() > 100 * ATOL
    assert not get_encoder(ckpts["wav2vec2-layernorm"]).info["padding_exact_groupnorm"]


def test_s3prl_head_on_pooled_equals_head_on_frames(ckpts, waves):
    """The s3prl/EMO-SUPERB head is linear up to its mean pooling: pooled features are exact."""
    enc = get_encoder(ckpts["wavlm"])
    pooled = torch.from_numpy(enc.encode(waves)).double()  # [B, L, D]
    g = torch.Generator().manual_seed(3)
    n_layers, dim, k = pooled.shape[1], pooled.shape[2], 6
    layer_logits = torch.randn(n_layers, generator=g, dtype=torch.float64)
    w1, b1, w2, b2 = (torch.randn(*shape, generator=g, dtype=torch.float64)
                      for shape in [(256, dim), (256,), (k, 256), (k,)])
    weights = torch.softmax(layer_logits, 0)

    model = reference_model(ckpts["wavlm"])
    for i, w in enumerate(waves):
        with torch.no_grad():
            hs = model(torch.from_numpy(w)[None], output_hidden_states=True).hidden_states
        frames = torch.stack([h[0] for h in hs]).double()  # [L, T, D]
        fused = (weights[:, None, None] * frames).sum(0)  # weighted layer sum per frame
        frame_logits = ((fused @ w1.T + b1).mean(0)) @ w2.T + b2  # Linear -> mean pool -> Linear
        fused_pooled = (weights[:, None] * pooled[i]).sum(0)
        pooled_logits = (fused_pooled @ w1.T + b1) @ w2.T + b2
        np.testing.assert_allclose(pooled_logits.numpy(), frame_logits.numpy(), rtol=1e-4,
                                   atol=1e-3)


def test_normalisation_follows_the_preprocessor_config(tmp_path, waves):
    bare = save_tiny(tmp_path, "hubert")  # no preprocessor_config.json
    enc = get_encoder(bare)
    assert enc.normalize and enc.info["normalize_from"] == "default"
    np.testing.assert_allclose(enc.encode(waves[:1])[0], direct_pooled(bare, waves[0], True),
                               atol=ATOL, rtol=0)
    assert not get_encoder(bare, normalize=False).normalize


def test_layer_selection_keeps_order(ckpts, waves):
    full = get_encoder(ckpts["hubert"]).encode(waves[:2])
    sel = get_encoder(ckpts["hubert"], layers="3,0")
    assert sel.layers == [3, 0] and sel.n_layers == 2
    assert sel.info["layer_names"] == ["layer3", "cnn_proj"]
    np.testing.assert_allclose(sel.encode(waves[:2]), full[:, [3, 0]], atol=ATOL, rtol=0)
    assert get_encoder(ckpts["hubert"], layers=[-1]).layers == [3]
    with pytest.raises(EncoderError, match="out of range"):
        get_encoder(ckpts["hubert"], layers="7")


def test_config_tracks_everything_that_changes_numbers(ckpts, tmp_path):
    base = get_encoder(ckpts["wavlm"]).config
    assert get_encoder(ckpts["wavlm"]).config == base  # deterministic fingerprint
    assert get_encoder(ckpts["wavlm"], layers="0,1").config != base
    assert get_encoder(ckpts["wavlm"], normalize=True).config != base
    other = save_tiny(tmp_path, "wavlm", seed=5)  # same architecture, other weights
    assert get_encoder(other).config["revision"] != base["revision"]
    json.dumps(base)  # goes into the store key


def test_bfloat16_autocast_is_close(ckpts, waves):
    fp32 = get_encoder(ckpts["wavlm"]).encode(waves[:2])
    bf16 = get_encoder(ckpts["wavlm"], dtype="bfloat16").encode(waves[:2])
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - fp32).max() < 0.1 * np.abs(fp32).max()
    with pytest.raises(EncoderError, match="dtype"):
        get_encoder(ckpts["wavlm"], dtype="int8")


def test_too_short_and_bad_shapes_raise(ckpts):
    enc = get_encoder(ckpts["wavlm"])
    with pytest.raises(ValueError, match="fewer than"):
        enc.encode([np.zeros(enc._min_samples - 1, np.float32)])
    with pytest.raises(ValueError, match="1-D"):
        enc.encode([np.zeros((2, 1600), np.float32)])


def test_hub_id_fails_at_once_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("EMODEBIAS_MODELS", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(EncoderError) as err:
        get_encoder("wavlm-base-plus")
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "microsoft/wavlm-base-plus" in msg and "--encoder DIR" in msg
    assert "EMODEBIAS_MODELS" in msg


def test_preset_resolves_to_local_models_dir(ckpts, monkeypatch, tmp_path):
    import shutil

    shutil.copytree(ckpts["wavlm"], tmp_path / "wavlm-base-plus")
    monkeypatch.setenv("EMODEBIAS_MODELS", str(tmp_path))
    enc = get_encoder("wavlm-base-plus")
    assert enc.id == "wavlm-base-plus" and enc.n_layers == 4
    assert enc.config["source"] == str(tmp_path / "wavlm-base-plus")


def test_bad_sources_name_the_problem(tmp_path):
    with pytest.raises(EncoderError, match="no config.json"):
        get_encoder(tmp_path)
    with pytest.raises(EncoderError, match="unknown encoder 'nope'"):
        get_encoder("nope")
    with pytest.raises(EncoderError, match="existing checkpoint directory"):
        get_encoder("./missing/dir/model")


def test_loading_a_local_checkpoint_prints_no_bar(ckpts, capfd):
    """transformers' per-tensor "Loading weights" bar is noise for a local checkpoint; the
    user's own progress-bar setting comes back afterwards."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    capfd.readouterr()
    get_encoder(ckpts["wavlm"])
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()
