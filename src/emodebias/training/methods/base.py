"""The method base class and registry (DomainBed-style: a decorator registers a class by name).

A method is an `nn.Module` holding the stacked parameters of R runs (leading dim R everywhere).
Two hooks cover every algorithm:

- data level: ``prepare(data, hp, gen, config) -> Prepared`` picks the training rows and per-sample
  weights once, before training (RW, DS, JTT; ``prepare_many`` runs it for a grid's runs at once);
- loss level: ``loss(batch) -> [R]`` maps a batch (features, soft labels, majority class, group,
  index in the training list, data-level weight) to one loss per run (GDRO, ADV, LfF, ...).

``logits(x)`` gives the evaluated model's logits and ``postprocess`` may adjust the selected
model's probabilities (per-group thresholds). Each class declares ``family``, ``supervision``
("none" | "hard" | "soft") and ``HPARAMS`` defaults; float hyperparameters may differ between
stacked runs (they become [R] tensors via ``hp_vec``), everything in ``structural_hparams`` must
be equal for runs to share a stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from emodebias.errors import UserError
from emodebias.training.losses import class_balanced_ce
from emodebias.training.model import SERHead, SharedRows

if TYPE_CHECKING:
    from emodebias.training.data import TrainConfig, TrainData

SUPERVISION = ("none", "hard", "soft")
REGISTRY: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator: add a Method subclass to REGISTRY under `name`."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        if cls.supervision not in SUPERVISION:
            raise ValueError(f"{cls.__name__}.supervision must be one of {SUPERVISION}")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def get_method(name: str) -> type[Method]:
    """The registered class called `name`; unknown names raise listing the valid ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}") from None


class GroupSupervisionError(UserError):
    """A method needs group labels (hard or soft) that the training data does not provide."""


@dataclass
class Prepared:
    """Output of the data-level hook: training rows (may repeat) and optional sample weights."""

    idx: np.ndarray
    weight: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    # per-position draw weights: each epoch draws len(idx) positions with replacement, position
    # j with probability ∝ sample[j] (a group-balanced sampler); None = a plain permutation
    sample: np.ndarray | None = None


class AuxTrainer(Protocol):
    """What the trainer lends a data-level hook that trains models of its own (JTT's
    identification models), so methods never import the trainer."""

    def fit_predict(self, runs: Sequence[tuple[TrainData, str, int, TrainConfig]],
                    workers: int = 1) -> list[np.ndarray | UserError]:
        """Train each (data, method, seed, config), stacked as a grid; each run's softmax
        probabilities [n_train, K] on its data's `train_idx` rows, or the UserError of a run
        that failed (the others still train)."""
        ...


def cell_ids(majority: Any, groups: Any, n_groups: int) -> Any:
    """The class x group cell of each row, majority·G + group (-1 when the row has no strict
    majority class or no group), for numpy arrays or tensors: the one cell numbering of the
    DRO groups, the GR loss gaps and the MMD cells, and of their `run_info` labels."""
    known = (majority >= 0) & (groups >= 0)
    where = torch.where if isinstance(majority, torch.Tensor) else np.where
    return where(known, majority * n_groups + groups, -1)


@dataclass
class Batch:
    """One training step's inputs for R stacked runs (every tensor starts with [R, B])."""

    x: torch.Tensor | SharedRows  # [R, B, L, D] float32 (`SharedRows` when runs share rows)
    soft: torch.Tensor  # [R, B, K]
    majority: torch.Tensor  # [R, B] long, -1 = no strict majority
    group: torch.Tensor  # [R, B] long, -1 = unknown
    group_probs: torch.Tensor | None  # [R, B, G]
    index: torch.Tensor  # [R, B] position in the run's training list (for per-sample state)
    weight: torch.Tensor  # [R, B] data-level sample weights (1 = none)


@dataclass
class MethodContext:
    """What a method needs to build itself for a stack of runs."""

    n_layers: int
    dim: int
    n_classes: int
    n_groups: int
    init_gens: list[torch.Generator]  # one per run: parameter initialisation
    loop_gens: list[torch.Generator]  # one per run: in-loop randomness (shared with batching)
    train_majority: np.ndarray | None = None  # [R, n] majority class of each training position
    train_groups: np.ndarray | None = None  # [R, n] group of each training position
    train_group_probs: np.ndarray | None = None  # [R, n, G]


class Method(nn.Module):
    """ERM-shaped base: one SER head, class-balanced CE times data-level weights."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    supervision: ClassVar[str] = "none"
    HPARAMS: ClassVar[dict[str, Any]] = {}
    STRUCTURAL: ClassVar[frozenset[str]] = frozenset()
    # read only by the per-run hooks (prepare / postprocess): runs may differ in them and stack
    PER_RUN_HPARAMS: ClassVar[frozenset[str]] = frozenset()
    trains: ClassVar[bool] = True
    # the method's formula is one reading of an unreadable or ambiguous source (GR): results
    # tables should say so
    reading_dependent: ClassVar[bool] = False
    # in neither reproduced study (EMO-Debias, IDI): an extra the report marks as such
    extra: ClassVar[bool] = False

    # ------------------------------------------------------------------ class-level API
    @classmethod
    def resolve(cls, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated by `overrides` (cast to the default's type); unknown names raise."""
        hp = dict(cls.HPARAMS)
        for k, v in (overrides or {}).items():
            if k not in hp:
                valid = ", ".join(sorted(hp)) or "(none)"
                raise ValueError(
                    f"unknown hyperparameter {k!r} for method {cls.name!r}; valid: {valid}"
                )
            default = hp[k]
            if isinstance(default, bool):
                v = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")
            elif isinstance(default, (int, float)):
                v = type(default)(v)
            hp[k] = v
        return hp

    @classmethod
    def reads_step(cls, hp: dict[str, Any]) -> bool:
        """Whether the loss reads the global `step` (a shared count that a shorter run's own
        steps lag behind): then only runs of equal train length share a stack."""
        return False

    @classmethod
    def structural_hparams(cls) -> frozenset[str]:
        """Hyperparameters that must be equal across a stack (non-floats + declared ones)."""
        auto = {k for k, v in cls.HPARAMS.items() if not isinstance(v, float)}
        return (frozenset(auto) | cls.STRUCTURAL) - cls.PER_RUN_HPARAMS

    @classmethod
    def stack_key(cls, hp: dict[str, Any]) -> tuple:
        return tuple(sorted((k, repr(hp[k])) for k in cls.structural_hparams()))

    @classmethod
    def check_data(cls, data: TrainData) -> None:
        """Raise GroupSupervisionError when the method's supervision is not available."""
        if cls.supervision == "none":
            return
        has_hard = data.n_groups > 0 and bool((data.groups[data.train_idx] >= 0).any())
        soft = cls.supervision == "soft" and data.group_probs is not None
        if not (soft or has_hard):
            raise GroupSupervisionError(
                f"method {cls.name!r} needs {cls.supervision} group labels for the training set, "
                "but none were given; pass --groups DIR (ground truth, pseudo-labels or clusters)"
            )
        if data.n_groups < 2:
            raise GroupSupervisionError(
                f"method {cls.name!r} compares groups, but the group source has "
                f"{data.n_groups} group; use one with at least two (e.g. clusters with k >= 2)"
            )
        idx = np.asarray(data.train_idx, dtype=np.int64)
        if soft:
            mass = np.asarray(data.group_probs)[idx].sum(0)
        else:
            g = data.groups[idx]
            mass = np.bincount(g[g >= 0], minlength=data.n_groups)
        present = np.flatnonzero(mass > 0)
        if len(present) < 2:
            raise GroupSupervisionError(
                f"method {cls.name!r} compares groups, but only group(s) {present.tolist()} of "
                f"{data.n_groups} have training rows, so it would train as ERM; use a split "
                "whose train part holds every compared group"
            )

    @classmethod
    def prepare(
        cls, data: TrainData, hp: dict[str, Any], gen: torch.Generator, config: TrainConfig
    ) -> Prepared:
        """Data-level hook: by default every training row once, unweighted."""
        return Prepared(np.asarray(data.train_idx, dtype=np.int64))

    @classmethod
    def prepare_many(cls, items: list[tuple[TrainData, dict[str, Any], torch.Generator,
                                            TrainConfig]], workers: int = 1,
                     trainer: AuxTrainer | None = None) -> list[Prepared | UserError]:
        """`prepare` for several runs of this class, (data, hp, gen, config) each: one call per
        grid, so a hook that trains models (JTT) trains them as one stacked grid through
        `trainer` in `workers` processes. A run whose preparation fails with a UserError gets
        that error in its place, so it does not stop the other runs."""
        out: list[Prepared | UserError] = []
        for item in items:
            try:
                out.append(cls.prepare(*item))
            except UserError as exc:
                out.append(exc)
        return out

    # ------------------------------------------------------------------ instance API
    def __init__(self, hps: list[dict[str, Any]], ctx: MethodContext) -> None:
        super().__init__()
        self.hps = hps
        self.ctx = ctx
        self.n_runs = len(hps)
        self.step = 0  # global optimisation step (same for every run of a stack)
        self.epoch = 0
        self.register_buffer("class_w", torch.ones(self.n_runs, ctx.n_classes))
        self._hp_vecs: dict[tuple[str, torch.device], torch.Tensor] = {}
        self.build()

    def build(self) -> None:
        """Create the stacked modules; run r draws only from ctx.init_gens[r]."""
        c = self.ctx
        self.head = SERHead(c.init_gens, c.n_layers, c.dim, c.n_classes)

    def hp_vec(self, name: str) -> torch.Tensor:
        """A float hyperparameter as an [R] tensor (runs of a stack may differ); made once per
        device, so a training step copies nothing from the host (a sync on a GPU)."""
        key = (name, self.class_w.device)
        if key not in self._hp_vecs:
            self._hp_vecs[key] = torch.tensor([float(h[name]) for h in self.hps], device=key[1])
        return self._hp_vecs[key]

    def hp_one(self, name: str) -> Any:
        """A hyperparameter every run of the stack shares."""
        vals = {repr(h[name]) for h in self.hps}
        if len(vals) != 1:
            raise ValueError(f"{self.name}: hyperparameter {name!r} differs within a stack: {vals}")
        return self.hps[0][name]

    def param_groups(self, lr: float | torch.Tensor) -> list[dict[str, Any]]:
        """Optimiser groups; `lr` is the runs' learning rates ([R] tensor, or one float)."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def base_loss(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """Per-sample class-balanced soft-target CE [R, B] with this stack's class weights."""
        return class_balanced_ce(logits, soft, self.class_w)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Loss-level hook: [R] losses; ERM = mean_i(w_i·ℓ_i)."""
        logits = self.head.logits(batch.x)
        return (batch.weight * self.base_loss(logits, batch.soft)).mean(-1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [R, B, K] of the evaluated model for x [B, L, D] or [R, B, L, D]."""
        return self.head.logits(x)

    def epoch_log(self) -> dict[str, list]:
        """Per-run extra values for the history (e.g. GDRO's q); lists of length R."""
        return {}

    @classmethod
    def run_info(cls, hp: dict[str, Any], history: list[dict], data: TrainData) -> dict:
        """Per-run facts for the run record beyond the metrics (e.g. GDRO's q trajectory)."""
        return {}

    @classmethod
    def postprocess(
        cls, hp: dict[str, Any], dev_probs: np.ndarray, test_probs: np.ndarray, data: TrainData
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Adjust one run's selected probabilities (post-processing methods); identity here.
        A class-level hook of the run, so runs of several classes can share a stack."""
        return dev_probs, test_probs, {}
