"""GroupAssignment: which training group each utterance belongs to, from any source."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emodebias.errors import UserError
from emodebias.fileio import write_text_atomic

if TYPE_CHECKING:
    from emodebias.data.manifest import Manifest


class GroupError(UserError):
    """A group assignment does not belong to the manifest (or split) it is used with."""


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
    manifest_hash: str | None = None  # content hash of the manifest the groups were made for

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
        return GroupAssignment(list(utt_ids), ids, self.names, self.source, probs, dict(self.info),
                               self.manifest_hash)

    def check(self, manifest: Manifest, source: str | Path | None = None,
              manifest_name: str | Path | None = None, needed: list[str] | None = None) -> None:
        """Refuse groups made for another manifest, or lacking utterances training needs.

        `needed` (default: every manifest utterance) must all have an entry; an utterance the
        groups do not list would otherwise silently become "unknown group" and drop out of
        group-aware losses.
        """
        where = source or f"groups {self.source}"
        name = manifest_name or "the given manifest"
        manifest.require_made_from(self.manifest_hash, f"{where} were",
                                   "make the groups again from this manifest",
                                   name=manifest_name, error=GroupError)
        want = list(manifest.utt_ids) if needed is None else [str(u) for u in needed]
        have = set(self.utt_ids)
        lacking = [u for u in want if u not in have]
        if lacking and len(lacking) == len(want):
            raise GroupError(f"{where} share no utterance with {name}; they were made for "
                             "another manifest")
        if lacking:
            raise GroupError(f"{where} lack {len(lacking)} of the {len(want)} utterances of "
                             f"{name}, e.g. {lacking[:3]}; they were made for another manifest")

    def save(self, directory: str | Path, manifest: Manifest | None = None) -> Path:
        """Write groups.npz + groups.json; with `manifest`, record its content hash."""
        if manifest is not None:
            self.manifest_hash = manifest.content_hash()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"ids": self.ids, "utt_ids": np.asarray(self.utt_ids, dtype=str)}
        if self.probs is not None:
            arrays["probs"] = self.probs
        np.savez(directory / "groups.npz", **arrays)
        meta = {"names": self.names, "source": self.source, "info": self.info,
                "manifest_hash": self.manifest_hash}
        write_text_atomic(directory / "groups.json", json.dumps(meta, indent=1, default=str))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> GroupAssignment:
        """A saved assignment; a missing or damaged one is a one-line GroupError naming it."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / "groups.json").read_text())
            with np.load(directory / "groups.npz", allow_pickle=False) as z:
                probs = z["probs"] if "probs" in z.files else None
                return cls(z["utt_ids"].tolist(), z["ids"], meta["names"], meta["source"], probs,
                           meta.get("info", {}), meta.get("manifest_hash"))
        except FileNotFoundError as exc:
            raise GroupError(f"no group assignment in {directory} ({Path(str(exc.filename)).name} "
                             "missing); make one with `emodebias groups`") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GroupError(f"{directory}: damaged group assignment ({type(exc).__name__}: "
                             f"{exc})") from None
