"""Speaker-embedding encoders (L = 1) for implicit group inference (IDI k-means on embeddings).

- `resemblyzer`: Resemblyzer's GE2E VoiceEncoder, 256-d, unit norm. Its pretrained weights ship
  inside the wheel, so it works offline; it is an optional extra (`pip install emodebias[speaker]`).
  Input goes through Resemblyzer's own `preprocess_wav` (volume normalisation, webrtcvad silence
  trimming); when trimming would leave under 0.1 s the untrimmed, volume-normalised audio is used.
- `xvector`: transformers `WavLMForXVector` from a local checkpoint (e.g. a copy of
  microsoft/wavlm-base-plus-sv); the output is its x-vector embedding (`xvector_output_dim`).
  Padding-exact like the SSL encoders (see hf.py).
- `ecapa`: SpeechBrain's ECAPA-TDNN (speechbrain/spkrec-ecapa-voxceleb) when SpeechBrain can be
  imported. It cannot be installed next to torch 2.13 in this project's environment (SpeechBrain
  pins older torch/torchaudio), so it is not a dependency and is untested here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from emodebias.features.encoders.base import (
    Encoder,
    EncoderError,
    ModelEncoder,
    check_waves,
    fingerprint_files,
    pad_batch,
    thread_limits,
    zero_mean_unit_var,
)
from emodebias.features.encoders.hf import (
    PaddingExactCNN,
    config_summary,
    feature_extractor_normalizes,
    load_pretrained,
)
from emodebias.features.encoders.ssl import autocast_context


class ResemblyzerEncoder(Encoder):
    """Resemblyzer GE2E d-vectors (256-d), one per utterance."""

    id = "resemblyzer"
    multithreaded = False  # one utterance at a time through a small LSTM

    def __init__(self, device: str = "cpu", trim_silence: bool = True) -> None:
        try:
            import resemblyzer
            from resemblyzer import VoiceEncoder
        except ImportError as exc:
            raise EncoderError(
                "the 'resemblyzer' encoder needs the optional extra: "
                "pip install 'emodebias[speaker]' (resemblyzer, webrtcvad-wheels, librosa)"
            ) from exc
        self.trim_silence = trim_silence
        self._device = str(device)
        self.model = VoiceEncoder(device=self._device, verbose=False)
        weights = Path(resemblyzer.__file__).parent / "pretrained.pt"
        self.revision = "resemblyzer:" + (fingerprint_files([weights]) if weights.is_file() else
                                          getattr(resemblyzer, "__version__", "unknown"))

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": "resemblyzer", "revision": self.revision, "trim_silence": self.trim_silence}

    @property
    def info(self) -> dict[str, Any]:
        return {"layer_names": ["d_vector"]}

    @property
    def n_layers(self) -> int:
        return 1

    @property
    def dim(self) -> int:
        return 256

    @property
    def device(self) -> str:
        return self._device

    def to(self, device: str) -> ResemblyzerEncoder:
        self.model.to(device)
        self.model.device = torch.device(device)
        self._device = str(device)
        return self

    def _prepare(self, wav: np.ndarray) -> np.ndarray:
        from resemblyzer.audio import normalize_volume, trim_long_silences
        from resemblyzer.hparams import audio_norm_target_dBFS

        wav = wav.astype(np.float64)
        if np.abs(wav).max() > 0:  # digital silence would turn into NaN
            wav = normalize_volume(wav, audio_norm_target_dBFS, increase_only=True)
        if self.trim_silence:
            trimmed = trim_long_silences(wav)
            if len(trimmed) >= 0.1 * self.sample_rate:
                wav = trimmed
        return wav.astype(np.float32)

    def encode(self, waves: list[np.ndarray]) -> np.ndarray:
        waves = check_waves(waves, min_samples=1)
        with thread_limits(self.cpu_threads()):  # also for callers other than the FeatureStore
            out = np.stack([self.model.embed_utterance(self._prepare(w)) for w in waves])
        return out[:, None, :].astype(np.float32)


class XVectorEncoder(ModelEncoder):
    """transformers `*ForXVector` (WavLM) speaker embeddings from a local checkpoint."""

    def __init__(self, source: str | Path, id: str | None = None, normalize: bool | None = None,
                 device: str = "cpu", dtype: str = "float32") -> None:
        from transformers import WavLMForXVector

        self.source = str(source)
        self.model, self.revision = load_pretrained(source, WavLMForXVector)
        self.id = id or "xvector:" + Path(self.source.rstrip("/")).name
        if normalize is None:
            self.normalize, _ = feature_extractor_normalizes(source)
        else:
            self.normalize = bool(normalize)
        autocast_context("cpu", dtype)
        self.dtype = dtype
        self._cnn = PaddingExactCNN(self.model)
        self._device = "cpu"
        self.to(device)

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": "xvector", "source": self.source, "revision": self.revision,
                "normalize": self.normalize, "dtype": self.dtype}

    @property
    def info(self) -> dict[str, Any]:
        return {"layer_names": ["x_vector"], **config_summary(self.model)}

    @property
    def n_layers(self) -> int:
        return 1

    @property
    def dim(self) -> int:
        return int(self.model.config.xvector_output_dim)

    def encode(self, waves: list[np.ndarray]) -> np.ndarray:
        waves = check_waves(waves, min_samples=400)
        if self.normalize:
            waves = [zero_mean_unit_var(w) for w in waves]
        x, lengths = pad_batch(waves)
        mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).long()
        self._cnn.set_lengths(lengths)
        try:
            with torch.inference_mode(), autocast_context(self._device, self.dtype):
                out = self.model(x.to(self._device), attention_mask=mask.to(self._device))
        finally:
            self._cnn.set_lengths(None)
        return out.embeddings.float().cpu().numpy()[:, None, :].astype(np.float32)


class EcapaEncoder(Encoder):
    """SpeechBrain ECAPA-TDNN (192-d) from a local copy of speechbrain/spkrec-ecapa-voxceleb."""

    def __init__(self, source: str | Path, device: str = "cpu") -> None:
        try:
            from speechbrain.inference.speaker import EncoderClassifier
        except ImportError as exc:
            raise EncoderError(
                "the 'ecapa' encoder needs SpeechBrain, which does not install next to torch 2.13; "
                "use 'resemblyzer' or 'xvector' instead, or a separate environment with speechbrain"
            ) from exc
        self.source = str(source)
        self.id = "ecapa"
        self._device = str(device)
        self.model = EncoderClassifier.from_hparams(source=self.source,
                                                    run_opts={"device": self._device})

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": "ecapa", "source": self.source}

    @property
    def n_layers(self) -> int:
        return 1

    @property
    def dim(self) -> int:
        return 192

    def encode(self, waves: list[np.ndarray]) -> np.ndarray:
        waves = check_waves(waves, min_samples=1)
        x, lengths = pad_batch(waves)
        with torch.inference_mode():
            emb = self.model.encode_batch(x, lengths.float() / lengths.max())
        return emb.reshape(len(waves), 1, -1).float().cpu().numpy()
