"""Batched, resumable inference of an audited model over a list of audio files.

Files are read with `emodebias.data.audio.load_audio` (mono, resampled with soxr to the
model's rate, the first `max_seconds` kept; 0 = whole file) and batched by similar duration
(little padding).
Each batch's probabilities go to ``<work>/chunk-NNNNN.npz``, written atomically; `job.json`
names the job (model hash, files, rate, crop, batch size). A rerun of the same job loads the
chunks already written and runs only the rest, so an interrupted audit loses at most one batch;
a different job in the same work folder starts afresh. Unreadable files are recorded with their
reason and get no prediction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emodebias.fileio import replacing, write_text_atomic

log = logging.getLogger(__name__)

JOB = "job.json"


@dataclass
class Inference:
    """`probs` [n, K] over the model's classes (NaN rows: `failures`, utt_id -> reason)."""

    probs: np.ndarray
    failures: dict[str, str] = field(default_factory=dict)
    resumed: int = 0  # utterances whose predictions came from an earlier, interrupted run
    computed: int = 0  # utterances the model ran on in this call


def _order(paths: Sequence[str]) -> list[int]:
    """Rows sorted by duration (unreadable headers first: they fail fast, alone)."""
    from emodebias.data.audio import AudioError, audio_duration

    def duration(i: int) -> float:
        try:
            return audio_duration(paths[i])
        except (AudioError, OSError, RuntimeError):
            return -1.0

    return sorted(range(len(paths)), key=lambda i: (duration(i), i))


def job_key(model: object, utt_ids: Sequence[str], paths: Sequence[str],
            batch_size: int) -> dict:
    ident = getattr(model, "identity", {})
    h = hashlib.sha256(json.dumps([list(utt_ids), list(paths)]).encode()).hexdigest()[:16]
    return {"model": ident.get("hash"), "files": h, "n": len(utt_ids),
            "sample_rate": int(model.sample_rate), "max_seconds": model.max_seconds,
            "batch_size": int(batch_size)}


def run_inference(model: object, utt_ids: Sequence[str], paths: Sequence[str], work: Path, *,
                  batch_size: int = 8, show_progress: bool = True) -> Inference:
    """Run `model` (an `AuditModel`) on `paths`, resuming from the chunks under `work`."""
    from emodebias.data.audio import AudioError, load_audio
    from emodebias.progress import Bar

    work = Path(work)
    key = job_key(model, utt_ids, paths, batch_size)
    job = work / JOB
    if job.is_file():
        try:
            same = json.loads(job.read_text()).get("key") == key
        except (OSError, ValueError):
            same = False
        if not same:
            log.info("%s holds another audit's partial work; starting afresh", work)
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not job.is_file():
        write_text_atomic(job, json.dumps({"key": key, "order": _order(paths)}))
    order = json.loads(job.read_text())["order"]
    k = len(model.classes)
    probs = np.full((len(utt_ids), k), np.nan)
    failures: dict[str, str] = {}
    crop = model.max_seconds or None
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    out = Inference(probs, failures)
    shown = None if show_progress else False  # None: the CLI's -q decides
    with Bar(len(order), f"audit {model.identity.get('name')}", enabled=shown) as bar:
        for b, rows in enumerate(batches):
            chunk = work / f"chunk-{b:05d}.npz"
            if chunk.is_file():
                with np.load(chunk) as z:
                    probs[z["rows"]] = z["probs"]
                    failures.update(zip(z["failed"].tolist(), z["reasons"].tolist(),
                                        strict=True))
                out.resumed += len(rows)
                bar.advance(len(rows))
                continue
            waves, ok, failed, reasons = [], [], [], []
            for i in rows:
                try:
                    waves.append(load_audio(paths[i], model.sample_rate, crop))
                    ok.append(i)
                except AudioError as exc:
                    failed.append(utt_ids[i])
                    reasons.append(str(exc))
            p = model.probs(waves, model.sample_rate) if waves else np.zeros((0, k))
            with replacing(chunk) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, rows=np.asarray(ok, dtype=np.int64), probs=p,
                         failed=np.asarray(failed, dtype=str), reasons=np.asarray(reasons,
                                                                                   dtype=str))
            probs[ok] = p
            failures.update(zip(failed, reasons, strict=True))
            out.computed += len(ok)
            bar.advance(len(rows))
    return out
