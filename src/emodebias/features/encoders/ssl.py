"""Self-supervised speech models (WavLM, wav2vec2 / XLS-R, HuBERT) through transformers.

Output per utterance: the masked mean over valid frames of every hidden state, [L, D] with
L = num_hidden_layers + 1 (index 0 is the encoder input: the CNN features after the projection
and positional convolution, exactly transformers' `hidden_states[0]`). Valid frames come from
the attention mask through the model's `_get_feat_extract_output_lengths`. Because the s3prl /
EMO-SUPERB head is linear up to its mean pooling, training on these pooled features is exactly
training that head on frame-level features.

Input handling follows EMO-SUPERB (PAPERS.md §1.5): 16 kHz, the first `max_seconds` (cropping is
the FeatureStore's job), and waveform normalisation as the checkpoint's feature extractor says
(`do_normalize`: per-utterance zero mean / unit variance over the valid samples). EMO-SUPERB
z-normalises with one global train-split mean/std instead; for the group-norm checkpoints the
papers use (WavLM Base+) a global scale is removed by the first GroupNorm (the first conv has no
bias), so the two agree up to the tiny global mean.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emodebias.features.encoders.base import (
    EncoderError,
    ModelEncoder,
    check_waves,
    pad_batch,
    zero_mean_unit_var,
)
from emodebias.features.encoders.hf import (
    PaddingExactCNN,
    config_summary,
    feature_extractor_normalizes,
    load_pretrained,
)

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_context(device: str, dtype: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the device, or nothing for float32."""
    if dtype not in DTYPES:
        raise EncoderError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[dtype])


def parse_layers(layers: str | list[int] | None, n_total: int) -> list[int]:
    """'all' / None -> every hidden state; 'i,j' or [i, j] -> those (negative: from the end)."""
    if layers is None or layers == "all":
        return list(range(n_total))
    items = [int(s) for s in layers.split(",")] if isinstance(layers, str) else list(layers)
    out = []
    for i in items:
        j = i + n_total if i < 0 else i
        if not 0 <= j < n_total:
            raise EncoderError(f"layer {i} out of range: the model has {n_total} hidden states")
        out.append(j)
    if len(set(out)) != len(out):
        raise EncoderError(f"duplicate layers in {items}")
    return out


class SSLEncoder(ModelEncoder):
    """A frozen wav2vec2-family model -> masked-mean pooled hidden states of the chosen layers."""

    def __init__(
        self,
        source: str | Path,
        id: str | None = None,
        layers: str | list[int] | None = None,
        normalize: bool | None = None,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        from transformers import AutoModel

        self.source = str(source)
        self.model, self.revision = load_pretrained(source, AutoModel)
        self.id = id or Path(self.source.rstrip("/")).name
        n_total = int(self.model.config.num_hidden_layers) + 1
        self.layers = parse_layers(layers, n_total)
        if normalize is None:
            self.normalize, self._normalize_from = feature_extractor_normalizes(source)
        else:
            self.normalize, self._normalize_from = bool(normalize), "argument"
        autocast_context("cpu", dtype)  # validates the name early
        self.dtype = dtype
        self._cnn = PaddingExactCNN(self.model)
        self._device = "cpu"
        self._min_samples = self.min_samples()
        self.to(device)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "kind": "ssl",
            "source": self.source,
            "revision": self.revision,
            "layers": self.layers,
            "normalize": self.normalize,
            "dtype": self.dtype,
        }

    @property
    def info(self) -> dict[str, Any]:
        names = ["cnn_proj" if i == 0 else f"layer{i}" for i in self.layers]
        return {"layer_names": names, "normalize_from": self._normalize_from,
                "padding_exact_groupnorm": self._cnn.active, **config_summary(self.model)}

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def min_samples(self) -> int:
        """Shortest input that yields one frame."""
        n = 1
        while int(self.model._get_feat_extract_output_lengths(torch.tensor(n))) < 1:
            n *= 2
        lo, hi = n // 2, n
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            ok = int(self.model._get_feat_extract_output_lengths(torch.tensor(mid))) >= 1
            lo, hi = (lo, mid) if ok else (mid, hi)
        return hi

    def hidden_states(self, waves: list[np.ndarray]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Frame-level hidden states of the chosen layers ([B, T, D] each) and valid frames [B]."""
        waves = check_waves(waves, min_samples=self._min_samples)
        if self.normalize:
            waves = [zero_mean_unit_var(w) for w in waves]
        x, lengths = pad_batch(waves)
        mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).long()
        self._cnn.set_lengths(lengths)
        try:
            with torch.inference_mode(), autocast_context(self._device, self.dtype):
                out = self.model(x.to(self._device), attention_mask=mask.to(self._device),
                                 output_hidden_states=True)
        finally:
            self._cnn.set_lengths(None)
        frames = self.model._get_feat_extract_output_lengths(lengths).to(self._device)
        return [out.hidden_states[i] for i in self.layers], frames

    def encode(self, waves: list[np.ndarray]) -> np.ndarray:
        states, frames = self.hidden_states(waves)
        t = states[0].shape[1]
        weight = (torch.arange(t, device=frames.device)[None, :] < frames[:, None]).float()
        weight = weight / frames[:, None].float()
        pooled = [torch.einsum("btd,bt->bd", h.float(), weight) for h in states]
        return torch.stack(pooled, dim=1).cpu().numpy().astype(np.float32)
