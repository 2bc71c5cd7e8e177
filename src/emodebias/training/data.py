"""What training reads and how it is set: the data (`TrainData`), the loop settings
(`TrainConfig`), one run of a grid (`RunConfig`), and the errors a run reports."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from emodebias.data.labels import strict_majority
from emodebias.errors import UserError
from emodebias.training.feature_bank import MemmapRef

log = logging.getLogger(__name__)

# TrainConfig fields that may differ between the runs of one stack
PER_RUN_FIELDS = frozenset({"epochs", "lr", "weight_decay"})


class TrainingError(UserError):
    """A run learned nothing that can be selected: no epoch had a finite dev loss (empty dev
    part under dev-loss selection, non-finite inputs, divergence, zero epochs). Training never
    saves the untrained initial weights as if they were a result."""


class FeatureError(UserError):
    """Some feature rows a run reads are not finite (NaN or inf); the message names them."""


@dataclass
class TrainData:
    """Everything training reads, as row-aligned arrays over one feature store.

    `groups` holds each row's training group (-1 unknown; all -1 when no group source is
    given), `group_probs` optional soft memberships, `majority` the strict-majority class
    (-1 = none; computed from `soft` when omitted). Index arrays point into `features` rows.
    """

    features: Any  # [N, L, D] np.ndarray / np.memmap (float16/32)
    soft: np.ndarray  # [N, K]
    train_idx: np.ndarray
    dev_idx: np.ndarray
    test_idx: np.ndarray
    groups: np.ndarray | None = None
    group_probs: np.ndarray | None = None
    n_groups: int = 0
    majority: np.ndarray | None = None
    utt_ids: list[str] | None = None
    classes: list[str] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.features)
        self.soft = np.asarray(self.soft, dtype=np.float32)
        for name in ("train_idx", "dev_idx", "test_idx"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        if self.groups is None:
            self.groups = np.full(n, -1, dtype=np.int64)
        self.groups = np.asarray(self.groups, dtype=np.int64)
        if self.group_probs is not None:
            self.group_probs = np.asarray(self.group_probs, dtype=np.float32)
            self.n_groups = max(self.n_groups, self.group_probs.shape[1])
        if self.n_groups == 0 and (self.groups >= 0).any():
            self.n_groups = int(self.groups.max()) + 1
        if self.majority is None:
            finite = np.isfinite(self.soft).all(1)
            self.majority = np.full(n, -1, dtype=np.int64)
            self.majority[finite] = strict_majority(self.soft[finite])
        self.majority = np.asarray(self.majority, dtype=np.int64)
        used = np.concatenate([self.train_idx, self.dev_idx, self.test_idx])
        if len(self.soft) != n or len(self.groups) != n or len(self.majority) != n:
            raise ValueError("features, soft, groups and majority must have the same rows")
        if not np.isfinite(self.soft[used]).all():
            raise ValueError("some train/dev/test rows have no (finite) soft label")
        if (self.groups >= self.n_groups).any():
            raise ValueError(f"group ids must be < n_groups={self.n_groups}")

    @property
    def n_classes(self) -> int:
        return self.soft.shape[1]

    def __getstate__(self) -> dict:
        """Pickle a memory-mapped `features` as a reference to its file (reopened read-only
        on unpickling): worker processes read the store instead of receiving a copy."""
        state = dict(self.__dict__)
        state["features"] = MemmapRef.of(self.features) or self.features
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["features"], MemmapRef):
            state["features"] = state["features"].open()
        self.__dict__.update(state)

    @classmethod
    def from_objects(cls, store: Any, manifest: Any, split: Any, groups: Any = None) -> TrainData:
        """Align a FeatureStore, Manifest, Split and optional GroupAssignment by utt_id.

        Split utterances whose feature extraction failed (``store.failures``) are left out and
        counted in ``info['missing_features']``; any other unknown id raises. A store, split or
        group assignment made from another manifest is refused
        (`emodebias.features.store.check_inputs`).
        """
        from emodebias.features.store import check_inputs

        check_inputs(store, manifest, split, groups)
        utt = [str(u) for u in store.utt_ids]
        failures = set(getattr(store, "failures", {}) or {})
        missing = {}

        def rows(ids: list[str], part: str) -> np.ndarray:
            kept = [u for u in ids if u not in failures]
            if len(kept) != len(ids):
                missing[part] = len(ids) - len(kept)
                log.warning("%d %s utterances have no features (extraction failed)",
                            len(ids) - len(kept), part)
            return np.asarray(store.rows(kept), dtype=np.int64)

        pos = pd.Index(manifest.utt_ids).get_indexer(pd.Index(utt))
        labels = manifest.soft_labels()
        soft = np.full((len(utt), len(manifest.classes)), np.nan, dtype=np.float32)
        soft[pos >= 0] = labels[pos[pos >= 0]]
        gids, gprobs, n_groups = None, None, 0
        if groups is not None:
            aligned = groups.align(utt)
            gids, gprobs, n_groups = aligned.ids, aligned.probs, aligned.n_groups
        info = {"missing_features": missing, "split": getattr(split, "name", None),
                "group_source": getattr(groups, "source", None)}
        return cls(store.features, soft, rows(split.train, "train"), rows(split.dev, "dev"),
                   rows(split.test, "test"), gids, gprobs, n_groups, None, utt,
                   list(manifest.classes), info)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings ([IDI] App. A defaults). `select`: "dev_loss" or "last".

    `epochs`, `lr` and `weight_decay` are per run: runs that differ only in them (the trials
    of a hyperparameter search) train in one stack (`PER_RUN_FIELDS`)."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    device: str = "cpu"
    select: str = "dev_loss"
    max_stack: int = 64  # most runs trained together in one stack
    preload_max_gb: float = 1.0  # preload rows up to this (and 1/4 of free RAM)
    eval_chunk: int = 1024


@dataclass
class RunConfig:
    """One run of a grid: method, hyperparameter overrides, seed and loop settings."""

    method: str = "erm"
    hparams: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    config: TrainConfig = field(default_factory=TrainConfig)
