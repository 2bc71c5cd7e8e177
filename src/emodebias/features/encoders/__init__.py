"""Frozen feature extractors behind one interface (see base.py) and a name -> encoder registry.

`get_encoder(name_or_path, **cfg)` accepts:
- `acoustic` (log-mel/MFCC/energy/F0 statistics, no model; the demo default),
- `resemblyzer` (speaker d-vectors, optional extra), `xvector` (needs `source=` a local
  WavLMForXVector checkpoint), `ecapa` (SpeechBrain, where importable), `egemaps` (openSMILE,
  optional extra, research-only licence),
- an SSL preset (`wavlm-base-plus`, `xls-r-300m`, ...; see PRESETS). A preset resolves to
  `$EMODEBIAS_MODELS/<preset>` when that directory exists, else to its hub id (which must be in
  the local Hugging Face cache or reachable),
- a local transformers checkpoint directory (a `*ForXVector` architecture becomes an x-vector
  encoder, anything else an SSL encoder), or a hub id `org/name`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from emodebias.features.encoders.base import Encoder, EncoderError

PRESETS: dict[str, str] = {
    "wavlm-base-plus": "microsoft/wavlm-base-plus",
    "wavlm-base": "microsoft/wavlm-base",
    "wavlm-large": "microsoft/wavlm-large",
    "wav2vec2-base": "facebook/wav2vec2-base",
    "wav2vec2-large-lv60": "facebook/wav2vec2-large-lv60",
    "xls-r-300m": "facebook/wav2vec2-xls-r-300m",
    "xls-r-1b": "facebook/wav2vec2-xls-r-1b",
    "xls-r-2b": "facebook/wav2vec2-xls-r-2b",
    "hubert-base": "facebook/hubert-base-ls960",
    "hubert-large": "facebook/hubert-large-ll60k",
    "wavlm-base-plus-sv": "microsoft/wavlm-base-plus-sv",
}
XVECTOR_PRESETS = {"wavlm-base-plus-sv"}
BUILTIN = ("acoustic", "resemblyzer", "xvector", "ecapa", "egemaps")
MODELS_ENV = "EMODEBIAS_MODELS"


def list_encoders() -> list[str]:
    """Every name `get_encoder` knows (built-ins, then presets)."""
    return list(BUILTIN) + list(PRESETS)


def resolve_preset(name: str) -> str:
    """Preset -> `$EMODEBIAS_MODELS/<name>` if present, else its hub id."""
    root = os.environ.get(MODELS_ENV)
    if root and (Path(root) / name).is_dir():
        return str(Path(root) / name)
    return PRESETS[name]


def _is_xvector_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    archs = json.loads(cfg.read_text()).get("architectures") or []
    return any(a.endswith("ForXVector") for a in archs)


def get_encoder(name_or_path: str | Path, **cfg: Any) -> Encoder:
    """Build an encoder by name, preset or checkpoint path; `cfg` goes to its constructor."""
    name = str(name_or_path)
    if name == "acoustic":
        from emodebias.features.encoders.acoustic import AcousticEncoder

        return AcousticEncoder(**cfg)
    if name == "resemblyzer":
        from emodebias.features.encoders.speaker import ResemblyzerEncoder

        return ResemblyzerEncoder(**cfg)
    if name in ("xvector", "ecapa"):
        if "source" not in cfg:
            raise EncoderError(f"the {name!r} encoder needs source=<local checkpoint directory>")
        from emodebias.features.encoders.speaker import EcapaEncoder, XVectorEncoder

        return (XVectorEncoder if name == "xvector" else EcapaEncoder)(**cfg)
    if name == "egemaps":
        from emodebias.features.encoders.opensmile_enc import OpenSmileEncoder

        return OpenSmileEncoder(**cfg)
    from emodebias.features.encoders.speaker import XVectorEncoder
    from emodebias.features.encoders.ssl import SSLEncoder

    if name in PRESETS:
        source = resolve_preset(name)
        cls = XVectorEncoder if name in XVECTOR_PRESETS else SSLEncoder
        return cls(source, id=name, **cfg)
    path = Path(name).expanduser()
    if path.is_dir():
        cls = XVectorEncoder if _is_xvector_dir(path) else SSLEncoder
        return cls(path.resolve(), **cfg)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return SSLEncoder(name, id=name.replace("/", "--"), **cfg)
    raise EncoderError(
        f"unknown encoder {name!r}: not a built-in ({', '.join(BUILTIN)}), a preset "
        f"({', '.join(PRESETS)}), an existing checkpoint directory, or a hub id 'org/name'"
    )


__all__ = ["PRESETS", "Encoder", "EncoderError", "get_encoder", "list_encoders", "resolve_preset"]
