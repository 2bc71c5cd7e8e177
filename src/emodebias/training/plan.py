"""Run planning: a plan per run (method, resolved hyperparameters, seeds, data-level
preparation), which runs share a stack (`stack_key`), which train once (twins), and how a stack
is cut into chunks (train length, `max_stack`)."""

from __future__ import annotations

import functools
import inspect
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from emodebias.errors import UserError
from emodebias.training.data import PER_RUN_FIELDS, FeatureError, RunConfig, TrainData
from emodebias.training.feature_bank import store_id
from emodebias.training.methods import Method, MethodContext, Prepared, get_method
from emodebias.training.methods.base import AuxTrainer
from emodebias.training.results import FitResult


def seeds_of(seed: int) -> tuple[int, int, int]:
    """Independent (init, prepare, loop) seeds from one run seed."""
    return tuple(int(s) for s in np.random.SeedSequence(seed).generate_state(3))


def make_gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class Plan:
    pos: int
    data: TrainData
    run: RunConfig
    cls: type[Method]
    hp: dict[str, Any]
    prep: Prepared | None
    seeds: tuple[int, int, int]
    twins: list[Plan] = field(default_factory=list)  # runs whose training is this one's
    error: UserError | None = None  # the run cannot train (bad input): reported, not trained


def make_plans(pairs: Pairs, workers: int, trainer: AuxTrainer,
               scan: FeatureScan | None = None) -> list[Plan]:
    """A plan per run, in order; each method's data-level hook runs once for all its runs
    (`Method.prepare_many`: JTT trains its identification models as one stacked grid). A run
    whose hook fails with a UserError gets that error; the others still train. `scan` holds
    the rows already checked for non-finite features (a call's auxiliary trainings share
    it)."""
    plans = []
    bad_rows = (scan or FeatureScan()).update([d for d, _ in pairs])
    for data, runs in pairs:
        data_error = feature_error(data, bad_rows)
        for run in runs:
            cls = get_method(run.method)
            hp = cls.resolve(run.hparams)
            p = Plan(len(plans), data, run, cls, hp, None, seeds_of(run.seed))
            try:
                cls.check_data(data)
                if data_error is not None and cls.trains:
                    raise data_error
            except UserError as exc:
                p.error = exc
            plans.append(p)
    by_class: dict[type[Method], list[Plan]] = defaultdict(list)
    for p in plans:
        if p.cls.trains and p.error is None:
            by_class[p.cls].append(p)
    for cls, members in by_class.items():
        items = [(p.data, p.hp, make_gen(p.seeds[1]), p.run.config) for p in members]
        for p, prep in zip(members, cls.prepare_many(items, workers, trainer), strict=True):
            if isinstance(prep, UserError):
                p.error = prep
            else:
                p.prep = prep
    return plans


def non_finite_rows(features: Any, rows: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """The rows (sorted, from sorted `rows`) whose features hold a NaN or inf, read in
    chunks."""
    bad = []
    for s in range(0, len(rows), chunk):
        part = rows[s : s + chunk]
        finite = np.isfinite(np.asarray(features[part])).reshape(len(part), -1).all(1)
        bad.append(part[~finite])
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


class FeatureScan:
    """Non-finite feature rows per store among the rows runs read, each row read at most once
    per scan: a `fit_stream` call's auxiliary trainings (JTT's identification models) read the
    same rows again, so they reuse its scan instead of reading the store once more."""

    def __init__(self) -> None:
        self.scanned: dict[tuple, np.ndarray] = {}
        self.bad: dict[tuple, np.ndarray] = {}

    def update(self, datas: list[TrainData]) -> dict[tuple, np.ndarray]:
        """Scan the rows of `datas` not scanned yet -> every store's bad rows so far."""
        rows: dict[tuple, list[np.ndarray]] = defaultdict(list)
        arrays: dict[tuple, Any] = {}
        for d in datas:
            key = store_id(d.features)
            arrays[key] = d.features
            rows[key].append(np.concatenate([d.train_idx, d.dev_idx, d.test_idx]))
        empty = np.zeros(0, dtype=np.int64)
        for key, parts in rows.items():
            done = self.scanned.get(key, empty)
            new = np.setdiff1d(np.concatenate(parts), done)
            if key in self.scanned and not len(new):
                continue
            self.scanned[key] = np.union1d(done, new)
            self.bad[key] = np.union1d(self.bad.get(key, empty),
                                       non_finite_rows(arrays[key], new))
        return self.bad


def feature_error(data: TrainData, bad_rows: dict[tuple, np.ndarray]) -> FeatureError | None:
    """The input error of a TrainData whose train/dev/test rows include non-finite features."""
    bad = bad_rows.get(store_id(data.features))
    if bad is None or not len(bad):
        return None
    parts = {name: np.intersect1d(getattr(data, f"{name}_idx"), bad)
             for name in ("train", "dev", "test")}
    hit = np.unique(np.concatenate(list(parts.values())))
    if not len(hit):
        return None
    names = [str(data.utt_ids[i]) if data.utt_ids is not None else f"row {i}" for i in hit]
    where = ", ".join(f"{k} {len(v)}" for k, v in parts.items() if len(v))
    shown = ", ".join(names[:10]) + (f" (+{len(names) - 10} more)" if len(names) > 10 else "")
    return FeatureError(
        f"{len(hit)} utterance(s) have non-finite (NaN/inf) features ({where}): {shown}; "
        "re-extract them, or leave them out of the split"
    )


# runs of one stack differ in train length by at most this factor (shorter runs idle, masked)
MAX_LENGTH_RATIO = 1.5


# class attributes that differ between methods yet are per run (defaults, data-level hooks)
_PER_RUN_ATTRS = frozenset({"name", "family", "supervision", "HPARAMS", "PER_RUN_HPARAMS",
                            "prepare", "prepare_many", "postprocess", "check_data", "resolve",
                            "untrained_probs", "run_info", "reading_dependent", "extra",
                            "SEARCH"})


@functools.cache
def impl_key(cls: type[Method]) -> tuple:
    """What a stack shares: every attribute the Method classes define (not nn.Module's, which
    libraries may patch at runtime) but the per-run ones and default values, so classes that
    differ only in defaults (GDRO / GADRO) or in their data-level hook (ERM / RW / DS) train in
    one stack."""
    names = {n for k in cls.__mro__ if issubclass(k, Method) for n in vars(k)}
    out = [("HPARAMS", tuple(sorted(set(cls.HPARAMS) - cls.PER_RUN_HPARAMS)))]
    for n in sorted(names):
        if (n.startswith("__") and n.endswith("__")) or n in _PER_RUN_ATTRS:
            continue
        out.append((n, describe(inspect.getattr_static(cls, n))))
    return tuple(out)


def describe(v: Any) -> str:
    """A class attribute by where it is defined (functions, descriptors) or its value, never
    its memory address, so equal code gives equal keys in every process and test order."""
    fn = getattr(v, "__func__", v)
    if callable(fn) and hasattr(fn, "__qualname__"):
        return f"{getattr(fn, '__module__', '')}.{fn.__qualname__}"
    return repr(v)


def reads_groups(cls: type[Method]) -> bool:
    """Whether training reads groups (not just `prepare`): group-supervised, non-plain heads."""
    return cls.supervision != "none" and impl_key(cls) != impl_key(Method)


def stack_key(p: Plan) -> tuple:
    """Runs with equal keys may train in one stack (lengths may differ unless the method
    reads the global step; runs with no full batch, whose first step comes later, stack only
    with each other)."""
    if not p.cls.trains:
        return ("untrained", p.pos)
    d = p.data
    cfg = tuple(sorted((k, v) for k, v in asdict(p.run.config).items() if k not in PER_RUN_FIELDS))
    n = len(p.prep.idx)
    length = n if p.cls.reads_step(p.hp) else n >= p.run.config.batch_size
    groups = None
    if reads_groups(p.cls):
        groups = (d.n_groups, d.group_probs is not None and p.cls.supervision == "soft")
    return (store_id(d.features), d.n_classes, groups, impl_key(p.cls),
            p.cls.stack_key(p.hp), cfg, length)


def training_key(p: Plan) -> tuple:
    """What a run's training depends on beyond its stack key: its data object, seeds, the
    hyperparameters training reads, its per-run settings (epochs, lr, weight decay), and its rows
    and weights. Runs of one stack with equal keys
    (e.g. ERM and EO thresholds, whose head is ERM's, on one cell) train once."""
    hp = sorted((k, repr(v)) for k, v in p.hp.items() if k not in p.cls.PER_RUN_HPARAMS)
    weight = None if p.prep.weight is None else np.asarray(p.prep.weight).tobytes()
    sample = None if p.prep.sample is None else np.asarray(p.prep.sample).tobytes()
    per_run = tuple(getattr(p.run.config, k) for k in sorted(PER_RUN_FIELDS))
    return (id(p.data), p.seeds, tuple(hp), per_run, np.asarray(p.prep.idx).tobytes(), weight,
            sample)


def merge_twins(members: list[Plan]) -> list[Plan]:
    """One plan per distinct training, the others attached to it as `twins`."""
    first: dict[tuple, Plan] = {}
    for p in members:
        rep = first.setdefault(training_key(p), p)
        if rep is not p:
            rep.twins.append(p)
    return list(first.values())


def chunks(members: list[Plan], max_stack: int) -> list[list[Plan]]:
    """Split a stack by train length (sorted, ratio <= MAX_LENGTH_RATIO) and max_stack."""
    members = sorted(members, key=lambda p: len(p.prep.idx))
    out: list[list[Plan]] = []
    for p in members:
        n = len(p.prep.idx)
        if out and len(out[-1]) < max_stack and n <= MAX_LENGTH_RATIO * len(out[-1][0].prep.idx):
            out[-1].append(p)
        else:
            out.append([p])
    return out


Pairs = Sequence[tuple[TrainData, Sequence[RunConfig]]]


def cost(chunk: list[Plan]) -> float:
    """A stack's expected training time: rows seen x parameters (memory traffic per row)."""
    p = chunk[0]
    return sum(len(q.prep.idx) * q.run.config.epochs for q in chunk) * n_params(
        p.cls, tuple(p.data.features.shape[1:]), p.data.n_classes, max(p.data.n_groups, 1))


@functools.cache
def n_params(cls: type[Method], dims: tuple[int, int], n_classes: int, n_groups: int) -> int:
    gen = [make_gen(0)]
    zeros = np.zeros((1, 2), dtype=np.int64)
    ctx = MethodContext(dims[0], dims[1], n_classes, n_groups, gen, gen, zeros, zeros)
    return sum(t.numel() for t in cls([cls.resolve()], ctx).parameters())


def untrained(data: TrainData, p: Plan) -> FitResult:
    t0 = time.perf_counter()
    gen = make_gen(p.seeds[2])
    k = data.n_classes
    dev = p.cls.untrained_probs(len(data.dev_idx), k, p.hp, gen)
    test = p.cls.untrained_probs(len(data.test_idx), k, p.hp, gen)
    return FitResult(test, dev, 0, [], {}, p.hp, time.perf_counter() - t0, p.cls.name,
                     p.run.seed, asdict(p.run.config), {"trained": False})


def pad(arrays: list[np.ndarray], fill: float) -> np.ndarray:
    """Stack per-run arrays [n_r, ...] into [R, max n_r, ...], padding with `fill`."""
    n = max(len(a) for a in arrays)
    out = np.full((len(arrays), n, *arrays[0].shape[1:]), fill, dtype=arrays[0].dtype)
    for r, a in enumerate(arrays):
        out[r, : len(a)] = a
    return out
