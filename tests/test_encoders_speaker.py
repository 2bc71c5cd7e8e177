"""Speaker encoders: x-vector (tiny random WavLMForXVector), Resemblyzer (pretrained), ECAPA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_wavlm_config
from transformers import WavLMForXVector

from emodebias.data.audio import load_audio
from emodebias.features.encoders import EncoderError, get_encoder
from emodebias.features.encoders.speaker import XVectorEncoder


@pytest.fixture(scope="module")
def xvector_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = tiny_wavlm_config(2, tdnn_dim=(24, 24, 48), tdnn_kernel=(3, 3, 1),
                            tdnn_dilation=(1, 2, 1), xvector_output_dim=16,
                            architectures=["WavLMForXVector"])
    path = tmp_path_factory.mktemp("xvec") / "tiny-sv"
    WavLMForXVector(cfg).eval().save_pretrained(path)
    return path


def test_xvector_batched_equals_unpadded_reference(xvector_dir):
    enc = get_encoder(xvector_dir)  # architecture detected from config.json
    assert isinstance(enc, XVectorEncoder) and enc.id == "xvector:tiny-sv"
    assert (enc.n_layers, enc.dim) == (1, 16)
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (4_000, 9_001, 6_500)]
    got = enc.encode(waves)
    assert got.shape == (3, 1, 16)
    ref_model = WavLMForXVector.from_pretrained(xvector_dir).eval()
    for i, w in enumerate(waves):
        x = (w - w.mean()) / np.sqrt(w.var() + 1e-7)  # no preprocessor config: normalise
        with torch.no_grad():
            ref = ref_model(torch.from_numpy(x.astype(np.float32))[None]).embeddings[0].numpy()
        np.testing.assert_allclose(got[i, 0], ref, atol=1e-4, rtol=0)
    same = get_encoder("xvector", source=xvector_dir)
    assert same.config == enc.config
    with pytest.raises(EncoderError, match="source="):
        get_encoder("xvector")


def test_ecapa_explains_missing_speechbrain(tmp_path):
    if importlib.util.find_spec("speechbrain") is not None:
        pytest.skip("speechbrain is installed here; the error path cannot be exercised")
    with pytest.raises(EncoderError, match="SpeechBrain"):
        get_encoder("ecapa", source=tmp_path)


EMODB_SPEAKERS = {"03": "M", "10": "M", "08": "F", "09": "F"}


@pytest.fixture(scope="module")
def emodb_waves(shared_data) -> dict[str, list[np.ndarray]]:
    wav_dir = shared_data / "emodb" / "wav"
    out = {}
    for spk in EMODB_SPEAKERS:
        files = sorted(wav_dir.glob(f"{spk}*.wav"))[:3]
        out[spk] = [load_audio(f) for f in files]
    return out


def test_resemblyzer_on_real_speech(emodb_waves):
    pytest.importorskip("resemblyzer")
    from resemblyzer import VoiceEncoder, preprocess_wav

    enc = get_encoder("resemblyzer")
    assert (enc.n_layers, enc.dim) == (1, 256)
    waves = [w for spk in EMODB_SPEAKERS for w in emodb_waves[spk]]
    emb = enc.encode(waves)[:, 0]
    assert emb.shape == (12, 256) and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(emb, enc.encode(waves)[:, 0])  # deterministic
    # independent path: Resemblyzer's own preprocessing and embedding of the first file
    ref = VoiceEncoder(device="cpu", verbose=False).embed_utterance(
        preprocess_wav(waves[0], source_sr=16_000))
    np.testing.assert_allclose(emb[0], ref, atol=1e-5)
    # a real speaker model: same-speaker pairs are closer than different-speaker pairs
    spk = np.repeat(np.arange(4), 3)
    sim = emb @ emb.T
    off_diag = ~np.eye(12, dtype=bool)
    same = sim[(spk[:, None] == spk[None, :]) & off_diag].mean()
    diff = sim[spk[:, None] != spk[None, :]].mean()
    assert same > diff + 0.05


def test_resemblyzer_handles_silence():
    pytest.importorskip("resemblyzer")
    emb = get_encoder("resemblyzer").encode([np.zeros(8000, np.float32)])
    assert emb.shape == (1, 1, 256) and np.isfinite(emb).all()


def test_resemblyzer_runs_on_one_thread_wherever_it_is_called(monkeypatch):
    """Its LSTM sees one short utterance at a time: idle intra-op threads only spin next to the
    audio readers (extraction was many times slower than with OMP_NUM_THREADS=1)."""
    pytest.importorskip("resemblyzer")
    enc = get_encoder("resemblyzer")
    seen = []
    real = enc.model.embed_utterance
    monkeypatch.setattr(enc.model, "embed_utterance",
                        lambda wav: seen.append(torch.get_num_threads()) or real(wav))
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        enc.encode([np.random.default_rng(0).standard_normal(8000).astype(np.float32)])
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)
    assert seen == [1] and enc.cpu_threads(reader_threads=8) == 1
