"""Pseudo-label groups (IDI ◐): a gender classifier's hard label and probabilities per utterance.

Three classifiers, all returning a GroupAssignment with names ``["F", "M"]`` and probs [N, 2]:
- `hf_gender_groups`: any Hugging Face audio-classification checkpoint (local dir, or hub id
  when the hub is reachable), its labels mapped to F/M (this module);
- `emodebias.groups.probe`: logistic regression on speaker embeddings, trained on any manifest
  with gender and saved/reloaded;
- `emodebias.groups.f0`: a median-F0 threshold baseline.
Utterances whose audio cannot be read get group -1 and all-zero probs (counted and listed in
``info["failures"]``). When the manifest has gender, ``info["accuracy"]`` is the accuracy against
it (the IDI paper's detector reached 94.4% on CREMA-D).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emodebias.data.audio import DEFAULT_MAX_SECONDS
from emodebias.errors import UserError
from emodebias.features.encoders.hf import hub_reachable, refuse_remote_code
from emodebias.groups.assignment import GroupAssignment

if TYPE_CHECKING:
    from emodebias.data.manifest import Manifest

NAMES = ["F", "M"]
DEFAULT_LABEL_MAP = {"female": "F", "f": "F", "woman": "F", "women": "F", "feminine": "F",
                     "male": "M", "m": "M", "man": "M", "men": "M", "masculine": "M"}
MAX_LISTED_FAILURES = 50
BLOCK_BATCHES = 32  # audio held in memory: this many batches, sorted by length within


class PseudoLabelError(UserError, RuntimeError):
    """A gender classifier cannot be loaded or used; the message says what to do."""


# --------------------------------------------------------------------------- shared helpers
def gender_accuracy(assignment: GroupAssignment, manifest: Manifest) -> dict:
    """Accuracy of F/M pseudo-labels against the manifest's gender (known rows only)."""
    if "gender" not in manifest.df.columns:
        return {"accuracy": None, "n_scored": 0}
    truth = manifest.df["gender"].to_numpy(dtype=object)[manifest.index_of(assignment.utt_ids)]
    known = np.array([t in ("F", "M") for t in truth]) & (assignment.ids >= 0)
    if not known.any():
        return {"accuracy": None, "n_scored": 0}
    pred = np.asarray(assignment.names, dtype=object)[assignment.ids[known]]
    return {"accuracy": float(np.mean(pred == truth[known])), "n_scored": int(known.sum())}


def make_assignment(utt_ids: list[str], p_female: np.ndarray, ok: np.ndarray, source: str,
                    info: dict, manifest: Manifest | None = None) -> GroupAssignment:
    """F/M assignment from P(female); rows not `ok` get -1 and zero probs; adds accuracy."""
    p_female = np.clip(np.asarray(p_female, dtype=np.float64), 0.0, 1.0)
    ok = np.asarray(ok, bool) & np.isfinite(p_female)
    probs = np.zeros((len(utt_ids), 2), dtype=np.float32)
    probs[ok, 0] = p_female[ok]
    probs[ok, 1] = 1.0 - p_female[ok]
    ids = np.where(ok, np.where(p_female >= 0.5, 0, 1), -1)
    assignment = GroupAssignment(list(utt_ids), ids, list(NAMES), source, probs, dict(info))
    assignment.info["n_unknown"] = int((~ok).sum())
    if manifest is not None:
        assignment.info.update(gender_accuracy(assignment, manifest))
    return assignment


def iter_audio(manifest: Manifest, sample_rate: int = 16_000, max_seconds: float | None = None,
               progress: bool = False, description: str = "reading audio",
               ) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """(row, waveform or None, error or None) for every manifest row; errors never stop the loop."""
    from emodebias.data.audio import AudioError, load_audio

    rows = range(len(manifest))
    if progress:
        from emodebias.progress import track

        rows = track(rows, description)
    paths = manifest.df["path"].astype(str).tolist()
    for i in rows:
        try:
            yield i, load_audio(paths[i], sample_rate, max_seconds), None
        except AudioError as exc:
            yield i, None, str(exc)


def record_failures(info: dict, failures: dict[str, str]) -> None:
    """Count failed utterances and list the first few with their reasons."""
    info["n_failed"] = len(failures)
    info["failures"] = dict(list(failures.items())[:MAX_LISTED_FAILURES])


# --------------------------------------------------------------------------- Hugging Face models
def map_labels(id2label: dict, label_map: dict[str, str] | None = None) -> dict[int, str]:
    """Model output index -> 'F'/'M' for the labels that name a gender (others are ignored).

    The default map knows female/male/woman/man/f/m (any case); `label_map` overrides it
    (model label -> 'F' or 'M'). Raises when the model has no F or no M label.
    """
    user = {str(k).lower(): v for k, v in (label_map or {}).items()}
    bad = {k: v for k, v in user.items() if v not in NAMES}
    if bad:
        raise PseudoLabelError(f"label_map values must be 'F' or 'M', got {bad}")
    table = {**DEFAULT_LABEL_MAP, **user}
    out = {int(i): table[str(name).strip().lower()] for i, name in id2label.items()
           if str(name).strip().lower() in table}
    if set(out.values()) != set(NAMES):
        raise PseudoLabelError(
            f"cannot map the model's labels {dict(id2label)} to F and M; pass a label map, "
            "e.g. --label-map 'LABEL_0=F,LABEL_1=M'"
        )
    return out


def load_audio_classifier(model: str | Path):
    """(feature extractor, model) from a local dir, the HF cache, or the hub when reachable.

    An unreachable hub fails at once (no minute of retries) with what to do instead. A folder
    asking for the model's own code is refused (`refuse_remote_code`); transformers is always
    told `trust_remote_code=False`, so it refuses too instead of prompting.
    """
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    text = str(model)
    path = Path(text).expanduser()
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        if not path.is_dir():
            raise PseudoLabelError(f"{path}: not a model directory (expected a transformers "
                                   "audio-classification checkpoint with config.json)")
        text = str(path)
        try:
            refuse_remote_code(path)
        except UserError as exc:
            raise PseudoLabelError(str(exc)) from None

    def load(**kw):
        kw["trust_remote_code"] = False
        return (AutoFeatureExtractor.from_pretrained(text, **kw),
                AutoModelForAudioClassification.from_pretrained(text, **kw))
    try:
        return load(local_files_only=True)
    except (OSError, ValueError) as exc:
        if path.is_dir():
            raise PseudoLabelError(
                f"{path}: cannot load an audio-classification model: {exc}") from exc
    if not hub_reachable():
        raise PseudoLabelError(
            f"{text!r} is not a local directory nor in the Hugging Face cache, and the hub is not "
            "reachable (offline). Download it where there is network (`hf download "
            f"{text} --local-dir DIR`) and pass DIR."
        )
    try:
        return load()
    except (OSError, ValueError) as exc:
        raise PseudoLabelError(f"cannot load {text!r} from the Hugging Face hub: {exc}") from exc


def hf_gender_groups(manifest: Manifest, model: str | Path, label_map: dict[str, str] | None = None,
                     device: str = "cpu", batch_size: int = 8,
                     max_seconds: float | None = DEFAULT_MAX_SECONDS,
                     progress: bool = False) -> GroupAssignment:
    """Pseudo-gender from an audio-classification checkpoint: P(F) = sum of its female labels'
    softmax mass over the mass of all its gender labels (other labels, e.g. 'child', ignored).

    Utterances are batched by similar length; the attention mask is passed where the feature
    extractor makes one.
    """
    import torch

    extractor, net = load_audio_classifier(model)
    net.eval().to(device)
    to_gender = map_labels(net.config.id2label, label_map)
    female = torch.tensor([i for i, g in to_gender.items() if g == "F"])
    male = torch.tensor([i for i, g in to_gender.items() if g == "M"])
    sr = int(getattr(extractor, "sampling_rate", 16_000))
    ids = manifest.utt_ids
    p_female = np.full(len(ids), np.nan)
    failures: dict[str, str] = {}
    waves: dict[int, np.ndarray] = {}

    def flush() -> None:  # similar lengths share a batch: little padding
        order = sorted(waves, key=lambda i: len(waves[i]))
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            inputs = extractor([waves[i] for i in rows], sampling_rate=sr, padding=True,
                               return_tensors="pt")
            with torch.inference_mode():
                logits = net(**{k: v.to(device) for k, v in inputs.items()}).logits.float()
            prob = logits.cpu().softmax(-1)
            pf, pm = prob[:, female].sum(-1), prob[:, male].sum(-1)
            p_female[rows] = (pf / (pf + pm).clamp_min(1e-12)).numpy()
        waves.clear()

    for i, wav, err in iter_audio(manifest, sr, max_seconds, progress, "gender model"):
        if wav is None:
            failures[ids[i]] = err
        else:
            waves[i] = wav
        if len(waves) >= batch_size * BLOCK_BATCHES:  # bounded memory on large corpora
            flush()
    flush()
    info = {"kind": "hf", "model": str(model), "sample_rate": sr, "max_seconds": max_seconds,
            "label_map": {str(k): v for k, v in to_gender.items()}}
    record_failures(info, failures)
    name = Path(str(model).rstrip("/")).name
    ok = np.isfinite(p_female)
    return make_assignment(ids, p_female, ok, f"pseudo:hf:{name}", info, manifest)
