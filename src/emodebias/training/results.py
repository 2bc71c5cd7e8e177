"""A finished run (`FitResult`: save / load) and prediction with its selected model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emodebias.fileio import write_text_atomic
from emodebias.training.methods import Method, MethodContext, get_method


@dataclass
class FitResult:
    """A finished run: selected epoch's probabilities, history, state and settings.

    `state` is the selected model's state dict (every tensor keeps a run dim of size 1);
    `wall_time` is the run's share of its stack's wall time; `info` holds the dims, the
    data-level preparation report (e.g. DS's dropped rows), the stack size and any
    post-processing output (e.g. thresholds).
    """

    test_probs: np.ndarray
    dev_probs: np.ndarray
    best_epoch: int
    history: list[dict]
    state: dict[str, torch.Tensor]
    hparams: dict[str, Any]
    wall_time: float
    method: str = "erm"
    seed: int = 0
    config: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        """head.pt (state), probs.npz (dev/test probabilities), result.json (the rest)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        torch.save(self.state, d / "head.pt")
        np.savez(d / "probs.npz", test_probs=self.test_probs, dev_probs=self.dev_probs)
        keys = ("best_epoch", "history", "hparams", "wall_time", "method", "seed", "config", "info")
        meta = {k: getattr(self, k) for k in keys}
        write_text_atomic(d / "result.json", json.dumps(meta, indent=1, default=_jsonable))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> FitResult:
        d = Path(directory)
        meta = json.loads((d / "result.json").read_text())
        z = np.load(d / "probs.npz")
        state = torch.load(d / "head.pt", weights_only=True)
        return cls(z["test_probs"], z["dev_probs"], state=state, **meta)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def load_method(result: FitResult, device: str = "cpu") -> Method:
    """Rebuild a trained run's model (R = 1) from its FitResult for prediction."""
    cls = get_method(result.method)
    if not cls.trains:
        raise ValueError(f"method {result.method!r} trains no model; nothing to load")
    dims, n = result.info["dims"], result.info["n_train"]
    zeros = np.zeros((1, n), dtype=np.int64)
    gen = [torch.Generator().manual_seed(0)]
    ctx = MethodContext(dims["n_layers"], dims["dim"], dims["n_classes"], max(dims["n_groups"], 1),
                        gen, gen, train_majority=zeros, train_groups=zeros)
    method = cls([result.hparams], ctx)
    method.load_state_dict(result.state)
    return method.to(device).eval()


def predict_probs(
    result: FitResult, features: Any, rows: np.ndarray | None = None, device: str = "cpu",
    chunk: int = 1024,
) -> np.ndarray:
    """Softmax probabilities [n, K] of the run's selected model (before any post-processing)."""
    method = load_method(result, device)
    rows = np.arange(len(features)) if rows is None else np.asarray(rows)
    out = []
    with torch.no_grad():
        for s in range(0, len(rows), chunk):
            x = torch.as_tensor(np.asarray(features[rows[s : s + chunk]]), device=device).float()
            out.append(torch.softmax(method.logits(x), -1)[0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, result.info["dims"]["n_classes"]))
