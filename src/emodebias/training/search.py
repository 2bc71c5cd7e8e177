"""Hyperparameter search spaces and deterministic random draws (DomainBed style).

Each method declares, beside its `HPARAMS` defaults, a class attribute ``SEARCH``: a
`SearchSpace` mapping a hyperparameter name to a distribution. The shared training settings
(`SHARED`: learning rate, epochs) are searched for every method. Trial 0 of a search is the
defaults (the grid's training settings and the method's `HPARAMS`), as in DomainBed; trial t > 0
draws every searched value from its own random stream, seeded by a stable hash of (search seed,
method, trial, hyperparameter name), so adding a method, a trial or a hyperparameter to a grid
never shifts another's draws, in any process.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from emodebias.errors import UserError

# training settings a search may vary per trial (they stay out of cell and task keys, so the
# trials of one method share data and can train in one stack)
SEARCHED_TRAIN = ("lr", "weight_decay", "epochs")


class SearchError(UserError):
    """A search setting is malformed (trials, seed or a space's bounds)."""


@dataclass(frozen=True)
class LogUniform:
    """10^U(log10 low, log10 high): scales such as learning rates and loss weights."""

    low: float
    high: float

    def draw(self, rng: np.random.Generator, default: Any) -> float:
        return float(10 ** rng.uniform(math.log10(self.low), math.log10(self.high)))

    def contains(self, value: Any, default: Any) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Uniform:
    """U(low, high)."""

    low: float
    high: float

    def draw(self, rng: np.random.Generator, default: Any) -> float:
        return float(rng.uniform(self.low, self.high))

    def contains(self, value: Any, default: Any) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class IntRange:
    """An integer in [low, high], uniformly."""

    low: int
    high: int

    def draw(self, rng: np.random.Generator, default: Any) -> int:
        return int(rng.integers(self.low, self.high + 1))

    def contains(self, value: Any, default: Any) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high


@dataclass(frozen=True)
class Choice:
    """One of the listed values, uniformly."""

    options: tuple

    def draw(self, rng: np.random.Generator, default: Any) -> Any:
        return self.options[int(rng.integers(len(self.options)))]

    def contains(self, value: Any, default: Any) -> bool:
        return value in self.options


@dataclass(frozen=True)
class Scale:
    """The default times one of `factors` (rounded, at least 1, for integers): a budget such as
    epochs that should follow the grid's own setting rather than a fixed list."""

    factors: tuple

    def draw(self, rng: np.random.Generator, default: Any) -> Any:
        v = default * self.factors[int(rng.integers(len(self.factors)))]
        return max(1, round(v)) if isinstance(default, int) else float(v)

    def contains(self, value: Any, default: Any) -> bool:
        return any(value == self.draw_factor(default, f) for f in self.factors)

    @staticmethod
    def draw_factor(default: Any, f: float) -> Any:
        v = default * f
        return max(1, round(v)) if isinstance(default, int) else float(v)


Distribution = LogUniform | Uniform | IntRange | Choice | Scale


class SearchSpace(Mapping):
    """Name -> distribution, read-only. A search space never changes how a run trains: the
    trainer's stack key leaves `SEARCH` out (GDRO and GADRO keep stacking though their spaces
    differ)."""

    def __init__(self, dists: Mapping[str, Distribution] | None = None) -> None:
        self._d = dict(dists or {})

    def __getitem__(self, key: str) -> Distribution:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"SearchSpace({self.describe()})"

    def describe(self) -> dict[str, str]:
        """name -> readable distribution, for `emodebias methods` and the docs."""
        return {k: _describe(v) for k, v in self._d.items()}


def _describe(d: Distribution) -> str:
    if isinstance(d, LogUniform):
        return f"log-uniform[{d.low:g}, {d.high:g}]"
    if isinstance(d, Uniform):
        return f"uniform[{d.low:g}, {d.high:g}]"
    if isinstance(d, IntRange):
        return f"int[{d.low}, {d.high}]"
    if isinstance(d, Choice):
        return f"choice{list(d.options)}"
    return f"default x {list(d.factors)}"


# shared by every method: DomainBed's lr range, shifted to the heads' 1e-4 default; epochs as a
# share of the grid's budget (a stack runs as long as its longest member)
SHARED = SearchSpace({"lr": LogUniform(1e-5, 1e-2), "epochs": Scale((0.5, 1.0))})


def method_space(cls: type) -> SearchSpace:
    """The method's own space (its `SEARCH`, empty when it declares none)."""
    space = getattr(cls, "SEARCH", None)
    return space if isinstance(space, SearchSpace) else SearchSpace()


def spaces() -> dict[str, dict[str, str]]:
    """Every registered method's searched hyperparameters (own and shared), described."""
    from emodebias.training.methods import REGISTRY

    return {name: {**method_space(cls).describe(), **SHARED.describe()}
            for name, cls in sorted(REGISTRY.items())}


def stream(seed: int, method: str, trial: int, name: str) -> np.random.Generator:
    """The random stream of one draw: a stable hash (never Python's `hash`, which is salted
    per process) of (seed, method, trial, name) seeds a SeedSequence."""
    digest = hashlib.sha256(f"{seed}\0{method}\0{trial}\0{name}".encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest[:16], "little")))


def draw(method: str, seed: int, trial: int, train: Mapping[str, Any] | None = None,
         fixed: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(method hyperparameters, training settings) of one trial; trial 0 is the defaults.

    `train` are the grid's training settings (the shared space's defaults, e.g. its epochs);
    names in `fixed` (the grid's own `hparams`/`train` values) are not searched. Only searched
    names are returned, so a trial's spec lists exactly what the search chose.
    """
    from emodebias.training import TrainConfig
    from emodebias.training.methods import get_method

    cls = get_method(method)
    fixed = fixed or {}
    base = {**{k: getattr(TrainConfig(), k) for k in SHARED}, **(train or {})}
    hp: dict[str, Any] = {}
    tr: dict[str, Any] = {}
    for out, space, defaults in ((hp, method_space(cls), cls.HPARAMS), (tr, SHARED, base)):
        for name, dist in space.items():
            if name in fixed:
                continue
            default = defaults[name]
            value = default if trial == 0 else dist.draw(stream(seed, method, trial, name),
                                                         default)
            out[name] = type(default)(value) if isinstance(default, (int, float)) else value
    return hp, tr


def check_search(value: Any, at: str) -> dict[str, int]:
    """`search: {trials: N, seed: S}` -> {"trials": N, "seed": S}; one-line errors."""
    if not isinstance(value, dict):
        raise SearchError(f"{at}search must be a mapping like {{trials: 20, seed: 0}}, got "
                          f"{value!r}")
    bad = set(value) - {"trials", "seed"}
    if bad:
        raise SearchError(f"{at}unknown search key(s) {sorted(map(str, bad))}; allowed: "
                          "['seed', 'trials']")
    trials, seed = value.get("trials"), value.get("seed", 0)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise SearchError(f"{at}search.trials must be an integer >= 1, got {trials!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SearchError(f"{at}search.seed must be an integer >= 0, got {seed!r}")
    return {"trials": trials, "seed": seed}
