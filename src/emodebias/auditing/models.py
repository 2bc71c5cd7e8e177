"""The emotion models an audit can run, behind one small protocol.

Every model offers `classes` (its output classes, in column order), `sample_rate` (the rate its
waveforms must have), `max_seconds` (its crop: the first seconds of each file are used; 0 = the
whole file; not given: 10 s as `extract` keeps, or a run folder's own crop), `identity` (what
the record keeps: kind, path, content hash) and `probs(waveforms, sr) -> [n, len(classes)]`, a
probability per class.

- `HFClassifier`: a local transformers audio-classification checkpoint folder (any
  `AutoModelForAudioClassification` transformers knows; no remote code, ever). Its logits become
  probabilities by softmax, or by sigmoid when its config says `multi_label_classification`.
- `RunModel`: a run folder of this toolkit: its encoder then its trained head.
- `CallableModel`: a Python function `f(waveforms) -> probabilities` (API only).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from emodebias.data.audio import DEFAULT_MAX_SECONDS
from emodebias.errors import UserError


class AuditModelError(UserError):
    """A model cannot be audited as given (not an audio classifier, bad outputs, wrong rate)."""


@runtime_checkable
class AuditModel(Protocol):
    classes: list[str]
    sample_rate: int
    max_seconds: float | None
    identity: dict

    def probs(self, waveforms: Sequence[np.ndarray], sr: int) -> np.ndarray: ...


def check_rate(model: AuditModel, sr: int) -> None:
    """Waveforms at another rate than the model's would be silently misread: refuse them."""
    if int(sr) != int(model.sample_rate):
        raise AuditModelError(f"--sampling-rate {sr} differs from the model's {model.sample_rate} "
                              f"Hz ({model.identity.get('name')}); leave it out: audio is "
                              "resampled to the model's rate")


def check_probs(p: object, n: int, k: int, name: str) -> np.ndarray:
    """A model's output as float64 [n, k] probabilities (finite, non-negative)."""
    arr = np.asarray(p, dtype=np.float64)
    if arr.shape != (n, k):
        raise AuditModelError(f"model {name} returned shape {arr.shape} for {n} waveforms; "
                              f"expected ({n}, {k}) probabilities over its classes")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise AuditModelError(f"model {name} returned non-finite or negative probabilities")
    return arr


def _files_hash(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


class HFClassifier:
    """A local transformers audio-classification checkpoint (config, weights, feature
    extractor), loaded offline through `encoders.hf.load_pretrained` (remote code refused)."""

    def __init__(self, path: str | Path, device: str = "cpu",
                 max_seconds: float | None = None) -> None:
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        from emodebias.features.encoders.hf import WEIGHT_SUFFIXES, PaddingExactCNN, load_pretrained

        path = Path(path).expanduser()
        if not path.is_dir() or not (path / "config.json").is_file():
            raise AuditModelError(f"{path}: not a model folder (expected a transformers "
                                  "audio-classification checkpoint with config.json)")
        self._check_is_classifier(path)
        model, _ = load_pretrained(path, AutoModelForAudioClassification, speech_family=False)
        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise AuditModelError(f"{path}: no usable feature extractor "
                                  f"(preprocessor_config.json): {' '.join(str(exc).split())}"
                                  ) from None
        self.device = device
        self.model = model.to(device)
        self.padding = PaddingExactCNN(self.model)
        self.accepts_mask = "attention_mask" in inspect.signature(model.forward).parameters
        cfg = model.config
        self.classes = [str(cfg.id2label[i]) for i in range(int(cfg.num_labels))]
        self.multi_label = getattr(cfg, "problem_type", None) == "multi_label_classification"
        self.sample_rate = int(getattr(self.extractor, "sampling_rate", 16_000))
        self.max_seconds = DEFAULT_MAX_SECONDS if max_seconds is None else max_seconds
        files = [p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.suffix == ".json"]
        self.identity = {"kind": "hf", "name": path.name, "path": str(path.resolve()),
                         "hash": _files_hash(files), "model_type": cfg.model_type,
                         "architecture": type(model).__name__,
                         "output_rule": "sigmoid" if self.multi_label else "softmax"}

    @staticmethod
    def _check_is_classifier(path: Path) -> None:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES as NAMES,
        )

        from emodebias.features.encoders.hf import refuse_remote_code

        refuse_remote_code(path)
        cfg = json.loads((path / "config.json").read_text())
        heads = set(NAMES.values())
        archs = cfg.get("architectures") or []
        if cfg.get("model_type") not in NAMES or not heads.intersection(archs):
            raise AuditModelError(
                f"{path} is not an audio-classification checkpoint (model type "
                f"{cfg.get('model_type')!r}, architectures {archs}); audit needs a model with a "
                "classification head, e.g. Wav2Vec2ForSequenceClassification")

    def probs(self, waveforms: Sequence[np.ndarray], sr: int) -> np.ndarray:
        """Class probabilities of a batch; padded items are padding-exact (attention mask and
        masked group norm), so batching does not change an utterance's output."""
        import torch

        check_rate(self, sr)
        # waveform models pad to the longest item with a mask; spectrogram extractors (Whisper,
        # AST) pad or crop to the fixed length their model needs, as they do by default
        raw = self.extractor.model_input_names[0] == "input_values" and hasattr(
            self.extractor, "padding_side")
        extra = {"padding": True, "return_attention_mask": True} if raw else {}
        inputs = self.extractor([np.asarray(w, np.float32) for w in waveforms], sampling_rate=sr,
                                return_tensors="pt", **extra)
        mask = inputs.get("attention_mask")
        if not self.accepts_mask:
            inputs.pop("attention_mask", None)
        self.padding.set_lengths(None if mask is None else mask.sum(-1))
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits
        logits = logits.float().cpu()
        out = logits.sigmoid() if self.multi_label else logits.softmax(-1)
        return check_probs(out.numpy(), len(waveforms), len(self.classes), self.identity["name"])


class RunModel:
    """A run folder of this toolkit: the encoder its record names, then its trained head."""

    def __init__(self, path: str | Path, device: str = "cpu",
                 max_seconds: float | None = None) -> None:
        from emodebias.bench.results import RECORD
        from emodebias.runs import load_run

        self.run = load_run(path)
        _ = self.run.fit  # a run without a head fails here, before an encoder is loaded
        self.encoder = self.run.encoder(device)
        self.device = device
        self.classes = self.run.classes
        self.sample_rate = int(self.encoder.sample_rate)
        block = self.run.record.get("encoder") or {}
        self.max_seconds = (block.get("max_seconds") or DEFAULT_MAX_SECONDS if max_seconds is None
                            else max_seconds)
        folder = Path(self.run.path)
        model_files = [p for p in (folder / "model").rglob("*") if p.is_file()]
        self.identity = {"kind": "run", "name": self.run.name, "path": str(folder.resolve()),
                         "hash": _files_hash([folder / RECORD, *model_files]),
                         "run_hash": self.run.hash, "method": self.run.method,
                         "encoder": block.get("id") or block.get("name"),
                         "output_rule": "the head's softmax"}

    def probs(self, waveforms: Sequence[np.ndarray], sr: int) -> np.ndarray:
        check_rate(self, sr)
        feats = self.encoder.encode([np.asarray(w, np.float32) for w in waveforms])
        out = self.run.predict_features(feats, device=self.device)
        return check_probs(out, len(waveforms), len(self.classes), self.identity["name"])


class CallableModel:
    """`fn(waveforms) -> probabilities [n, len(classes)]`, at `sample_rate`; its identity hash
    covers its name, classes and source code (when Python can show it)."""

    def __init__(self, fn: Callable[[list[np.ndarray]], object], classes: Sequence[str],
                 sample_rate: int = 16_000, name: str | None = None,
                 max_seconds: float | None = None) -> None:
        if not callable(fn):
            raise AuditModelError(f"model {fn!r} is not callable")
        if not classes:
            raise AuditModelError("a callable model needs its classes (classes=[...])")
        self.fn = fn
        self.classes = [str(c) for c in classes]
        self.sample_rate = int(sample_rate)
        self.max_seconds = DEFAULT_MAX_SECONDS if max_seconds is None else max_seconds
        name = name or getattr(fn, "__qualname__", None) or type(fn).__name__
        try:
            code = inspect.getsource(fn if inspect.isroutine(fn) else type(fn))
        except (OSError, TypeError):
            code = ""
        digest = hashlib.sha256(json.dumps([name, self.classes, code]).encode()).hexdigest()
        self.identity = {"kind": "callable", "name": str(name), "path": None,
                         "hash": digest[:16], "output_rule": "as returned"}

    def probs(self, waveforms: Sequence[np.ndarray], sr: int) -> np.ndarray:
        check_rate(self, sr)
        return check_probs(self.fn(list(waveforms)), len(waveforms), len(self.classes),
                           self.identity["name"])


def open_model(model: str | Path | Callable | AuditModel, *, classes: Sequence[str] | None = None,
               sample_rate: int | None = None, device: str = "cpu",
               max_seconds: float | None = None,
               name: str | None = None) -> AuditModel:
    """A model folder (transformers checkpoint or run folder), a callable, or a ready model."""
    if isinstance(model, (HFClassifier, RunModel, CallableModel)):
        return model
    if callable(model):
        return CallableModel(model, classes or [], sample_rate or 16_000, name, max_seconds)
    if isinstance(model, AuditModel):
        return model
    path = Path(model).expanduser()
    if not path.is_dir():
        raise AuditModelError(f"--model {path}: no such folder (give a transformers "
                              "audio-classification checkpoint folder or a run folder)")
    from emodebias.bench.results import RECORD

    m: AuditModel = (RunModel(path, device, max_seconds) if (path / RECORD).is_file()
                     else HFClassifier(path, device, max_seconds))
    if sample_rate is not None:
        check_rate(m, sample_rate)
    return m
