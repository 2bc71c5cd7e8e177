"""Loading frozen transformers speech models safely and offline, and making them padding-exact.

Shared by the SSL encoders (ssl.py) and the x-vector speaker encoder (speaker.py).

*Loading.* A local checkpoint directory loads with `local_files_only=True`; a hub id is tried in
the local cache first; when it is not cached and the hub is unreachable (or `HF_HUB_OFFLINE=1`)
it fails at once with a message saying how to point at a local copy, instead of the minute of
retries transformers would spend. `trust_remote_code` is never enabled: a local folder whose
config asks for custom code (`auto_map`) or names a model type this transformers does not know is
refused up front with one line (`refuse_remote_code`), and hub loads pass
`trust_remote_code=False`, so transformers refuses instead of prompting.

*Padding exactness.* wav2vec2-base, HuBERT-base and WavLM-base(+) normalise the first CNN layer
with a GroupNorm over *time*, so zero padding changes every frame of a padded utterance.
`MaskedGroupNorm` replaces that layer and takes the statistics over each utterance's valid
frames only; with the attention mask (which zeroes padded frames before the positional
convolution and masks attention) a batched, padded forward then equals the forward of each
utterance alone, up to float rounding. Layer-norm checkpoints (large / XLS-R) need no change.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from emodebias.features.encoders.base import EncoderError, fingerprint_files

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt")


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_message(source: str, exc: Exception) -> str:
    return (
        f"cannot load {source!r}: it is not in the local Hugging Face cache and the hub is "
        f"unreachable ({type(exc).__name__}). Where you have network, download it with "
        f"`hf download {source} --local-dir DIR` (or `huggingface-cli download ...`), then pass "
        f"`--encoder DIR` (library: get_encoder('DIR')), or put it in $EMODEBIAS_MODELS/<preset>."
    )


@contextlib.contextmanager
def _no_loading_bar() -> Iterator[None]:
    """Hide transformers' per-tensor "Loading weights" bar while a local checkpoint loads (a
    second of noise on stderr per model); downloads keep their progress."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


REMOTE_CODE_FILES = ("config.json", "preprocessor_config.json")


def refuse_remote_code(path: str | Path) -> None:
    """A local checkpoint folder that would need code shipped with the model is refused.

    transformers runs such code only when remote code is trusted (or after a prompt when that is
    unset); this package never enables it, so say so in one line before transformers asks.
    """
    from transformers import CONFIG_MAPPING

    path = Path(path).expanduser()
    for name in REMOTE_CODE_FILES:
        file = path / name
        if not file.is_file():
            continue
        try:
            cfg = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise EncoderError(f"{file}: unreadable JSON ({exc})") from None
        if not isinstance(cfg, dict):
            raise EncoderError(f"{file}: not a JSON object")
        if "auto_map" in cfg:
            raise EncoderError(f"{file} asks for custom model code (auto_map); emodebias never "
                               "runs code shipped with a model (trust_remote_code stays off)")
        kind = cfg.get("model_type")
        if name == "config.json" and kind is not None and kind not in CONFIG_MAPPING:
            raise EncoderError(f"{file}: model type {kind!r} is unknown to this transformers "
                               "and would need the model's own code, which emodebias never runs")


def load_pretrained(source: str | Path, model_cls: Any, speech_family: bool = True
                    ) -> tuple[nn.Module, str]:
    """Load `model_cls.from_pretrained(source)` in eval mode -> (model, revision fingerprint).

    `speech_family` requires a wav2vec2-family model (the SSL and x-vector encoders rely on its
    CNN front end); audited classifiers may be any audio model transformers knows.
    """
    path = Path(source).expanduser()
    kwargs = {"trust_remote_code": False} if model_cls.__name__.startswith("Auto") else {}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EncoderError(f"{path} has no config.json: not a transformers checkpoint")
        refuse_remote_code(path)
        try:
            with _no_loading_bar():
                model = model_cls.from_pretrained(str(path), local_files_only=True, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise EncoderError(f"cannot load the checkpoint in {path}: {exc}") from exc
        files = [path / "config.json"] + [p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES]
        revision = "local:" + fingerprint_files(files)
    else:
        text = str(source)
        if text.startswith((".", "/", "~")) or text.count("/") > 1 or path.exists():
            raise EncoderError(f"{source}: not a checkpoint directory (nor a hub id 'org/name')")
        try:
            with _no_loading_bar():
                model = model_cls.from_pretrained(str(source), local_files_only=True, **kwargs)
        except OSError as exc:
            if not hub_reachable():
                raise EncoderError(_offline_message(str(source), exc)) from exc
            model = model_cls.from_pretrained(str(source), **kwargs)
        except ValueError as exc:  # e.g. a cached checkpoint that needs its own code
            raise EncoderError(f"cannot load {source!r}: {exc}") from exc
        revision = "hub:" + str(getattr(model.config, "_commit_hash", None) or "unknown")
    if speech_family and not hasattr(model, "_get_feat_extract_output_lengths"):
        raise EncoderError(
            f"{source}: {type(model).__name__} is not a wav2vec2-family speech model "
            "(WavLM, wav2vec2/XLS-R, HuBERT, data2vec-audio)"
        )
    return model.eval().requires_grad_(False), revision


def feature_extractor_normalizes(source: str | Path) -> tuple[bool, str]:
    """The checkpoint's `do_normalize` (preprocessor_config.json) -> (flag, where it came from).

    Without a preprocessor config the transformers Wav2Vec2FeatureExtractor default (True) holds.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        cfg_file = path / "preprocessor_config.json"
        if cfg_file.is_file():
            return bool(json.loads(cfg_file.read_text()).get("do_normalize", True)), "preprocessor"
        return True, "default"
    from transformers import AutoFeatureExtractor

    try:
        fe = AutoFeatureExtractor.from_pretrained(str(source), local_files_only=True,
                                                  trust_remote_code=False)
    except (OSError, ValueError):  # no extractor, or one that needs its own code: the
        return True, "default"  # model load that follows says which
    return bool(getattr(fe, "do_normalize", True)), "preprocessor"


class MaskedGroupNorm(nn.Module):
    """GroupNorm over time whose statistics ignore padded frames (see the module docstring).

    Set `.lengths` (valid frames per batch item) before a forward; with `None` it is the original
    GroupNorm. Statistics are computed in float32 even under autocast.
    """

    def __init__(self, gn: nn.GroupNorm) -> None:
        super().__init__()
        self.gn = gn
        self.lengths: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lengths is None:
            return self.gn(x)
        b, c, t = x.shape
        g = self.gn.num_groups
        xf = x.float().reshape(b, g, c // g, t)
        mask = (torch.arange(t, device=x.device)[None, :] < self.lengths[:, None].to(x.device))
        mask = mask[:, None, None, :].float()
        count = mask.sum(dim=(2, 3), keepdim=True) * (c // g)
        mean = (xf * mask).sum(dim=(2, 3), keepdim=True) / count
        var = (((xf - mean) * mask) ** 2).sum(dim=(2, 3), keepdim=True) / count
        y = ((xf - mean) / torch.sqrt(var + self.gn.eps)).reshape(b, c, t)
        if self.gn.affine:
            y = y * self.gn.weight.float()[None, :, None] + self.gn.bias.float()[None, :, None]
        return y.to(x.dtype)


class PaddingExactCNN:
    """Installs MaskedGroupNorm in a model's first conv layer and feeds it per-batch lengths."""

    def __init__(self, model: nn.Module) -> None:
        self.norm: MaskedGroupNorm | None = None
        self.kernel = self.stride = 1
        for name, module in list(model.named_modules()):
            if name.endswith("conv_layers.0") and isinstance(getattr(module, "layer_norm", None),
                                                            nn.GroupNorm):
                self.norm = MaskedGroupNorm(module.layer_norm)
                module.layer_norm = self.norm
                self.kernel, self.stride = module.conv.kernel_size[0], module.conv.stride[0]
                break

    @property
    def active(self) -> bool:
        return self.norm is not None

    def set_lengths(self, sample_lengths: torch.Tensor | None) -> None:
        """Valid input samples per item (None: plain GroupNorm, for unpadded batches)."""
        if self.norm is None:
            return
        if sample_lengths is None or bool((sample_lengths == sample_lengths.max()).all()):
            self.norm.lengths = None
        else:
            self.norm.lengths = (sample_lengths - self.kernel) // self.stride + 1


def config_summary(model: nn.Module) -> dict[str, Any]:
    """Architecture facts worth recording next to the features."""
    cfg = model.config
    return {
        "model_type": getattr(cfg, "model_type", None),
        "architectures": getattr(cfg, "architectures", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "feat_extract_norm": getattr(cfg, "feat_extract_norm", None),
    }
