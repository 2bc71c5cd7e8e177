"""GroupAssignment: which training group each utterance belongs to, from any source."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emodebias.fileio import write_text_atomic


@dataclass
class GroupAssignment:
    """Per-utterance group ids (-1 = unknown) aligned with `utt_ids`.

    `probs` [N, G] holds soft memberships for probabilistic methods (PGDRO); `source` says where
    the groups came from: ``truth:<col>[+<col>]``, ``pseudo:<model>``, ``cluster:<encoder>:k=<k>``.
    Groups drive training only; evaluation always uses the true attributes.
    """

    utt_ids: list[str]
    ids: np.ndarray
    names: list[str]
    source: str
    probs: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        if len(self.ids) != len(self.utt_ids):
            raise ValueError(f"{len(self.ids)} group ids for {len(self.utt_ids)} utterances")
        if len(self.ids) and (self.ids.max(initial=-1) >= len(self.names) or self.ids.min() < -1):
            raise ValueError(f"group ids must lie in [-1, {len(self.names) - 1}]")
        if self.probs is not None:
            self.probs = np.asarray(self.probs, dtype=np.float32)
            if self.probs.shape != (len(self.ids), len(self.names)):
                want = (len(self.ids), len(self.names))
                raise ValueError(f"probs shape {self.probs.shape} != {want}")

    @property
    def n_groups(self) -> int:
        return len(self.names)

    def align(self, utt_ids: list[str]) -> GroupAssignment:
        """The assignment restricted/reordered to `utt_ids`; ids it lacks get group -1."""
        pos = {u: i for i, u in enumerate(self.utt_ids)}
        idx = np.array([pos.get(u, -1) for u in utt_ids], dtype=np.int64)
        ids = np.where(idx >= 0, self.ids[np.maximum(idx, 0)], -1)
        probs = None
        if self.probs is not None:
            probs = np.where((idx >= 0)[:, None], self.probs[np.maximum(idx, 0)], 0.0)
        return GroupAssignment(list(utt_ids), ids, self.names, self.source, probs, dict(self.info))

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"ids": self.ids, "utt_ids": np.asarray(self.utt_ids, dtype=str)}
        if self.probs is not None:
            arrays["probs"] = self.probs
        np.savez(directory / "groups.npz", **arrays)
        meta = {"names": self.names, "source": self.source, "info": self.info}
        write_text_atomic(directory / "groups.json", json.dumps(meta, indent=1, default=str))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> GroupAssignment:
        directory = Path(directory)
        meta = json.loads((directory / "groups.json").read_text())
        z = np.load(directory / "groups.npz")
        probs = z["probs"] if "probs" in z.files else None
        return cls(z["utt_ids"].tolist(), z["ids"], meta["names"], meta["source"], probs,
                   meta.get("info", {}))
