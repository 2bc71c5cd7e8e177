"""Train SER heads on cached features: one run (`fit`) or a stack of runs at once (`fit_many`).

Runs that share a feature store, a method, its structural hyperparameters, the TrainConfig and
the number of groups train as ONE stacked model, even across different train/dev/test lists and
group sources: parameters carry a leading run dimension R, each step gathers an [R, B] batch
from one shared feature tensor through per-run index lists, and the summed loss gives every run
exactly its own gradient. Uneven train lengths (ratio <= MAX_LENGTH_RATIO) use per-run step
masks: a run without a batch in a sub-step makes no update (StackedAdam keeps per-run step
counts; its per-run buffers and generators are restored). Each run owns three generators derived
from its seed (init, data preparation, batching + in-loop randomness), so a run gives the same
numbers alone or stacked. Model selection is per run: the epoch with the lowest dev
class-balanced CE on its own dev list (weights from that run's training set) is kept.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from emodebias.errors import UserError
from emodebias.feature_bank import FeatureBank, MemmapRef, RunGroups, store_id
from emodebias.fileio import write_text_atomic
from emodebias.labels import strict_majority
from emodebias.losses import class_balanced_ce, class_weights_for
from emodebias.methods import Batch, Method, MethodContext, Prepared, get_method
from emodebias.model import Encoder, run_slice
from emodebias.optim import StackedAdam
from emodebias.workers import init_worker

log = logging.getLogger(__name__)

# per-epoch lines are detail in a grid (a progress bar shows it); `train` raises this logger's
# level to show them for a single run
EPOCH_LOG_LEVEL = logging.DEBUG
# a run whose selected epoch falls in the last LATE_SHARE of its epochs is flagged: the dev loss
# was still falling, so more epochs or a larger learning rate may change its numbers
LATE_SHARE = 0.1


class TrainingError(UserError):
    """A run learned nothing that can be selected: no epoch had a finite dev loss (empty dev
    part, non-finite inputs, divergence, zero epochs). Training never saves the untrained
    initial weights as if they were a result."""


class FeatureError(UserError):
    """Some feature rows a run reads are not finite (NaN or inf); the message names them."""


# ---------------------------------------------------------------------------- data
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
        group assignment made from another manifest is refused (`emodebias.store.check_inputs`).
        """
        from emodebias.store import check_inputs

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


# ---------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings ([IDI] App. A defaults). `select`: "dev_loss" or "last"."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    device: str = "cpu"
    select: str = "dev_loss"
    max_stack: int = 64  # most runs trained together in one stack
    preload_max_gb: float = 1.0  # preload rows up to this (and 1/4 of free RAM)
    eval_chunk: int = 1024
    kernels: str = "auto"  # "auto": native CPU kernels where they build; "torch": PyTorch only

    def __post_init__(self) -> None:
        if self.kernels not in ("auto", "torch"):
            raise ValueError(f"kernels must be 'auto' or 'torch', not {self.kernels!r}")


@dataclass
class RunConfig:
    """One run of a grid: method, hyperparameter overrides, seed and loop settings."""

    method: str = "erm"
    hparams: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    config: TrainConfig = field(default_factory=TrainConfig)


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


# ---------------------------------------------------------------------------- loop
def _seeds(seed: int) -> tuple[int, int, int]:
    """Independent (init, prepare, loop) seeds from one run seed."""
    return tuple(int(s) for s in np.random.SeedSequence(seed).generate_state(3))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class _Plan:
    pos: int
    data: TrainData
    run: RunConfig
    cls: type[Method]
    hp: dict[str, Any]
    prep: Prepared | None
    seeds: tuple[int, int, int]
    twins: list[_Plan] = field(default_factory=list)  # runs whose training is this one's
    error: UserError | None = None  # the run cannot train (bad input): reported, not trained


def _plans(pairs: Pairs, workers: int) -> list[_Plan]:
    """A plan per run, in order; each method's data-level hook runs once for all its runs
    (`Method.prepare_many`: JTT trains its identification models as one stacked grid)."""
    plans = []
    bad_rows = _non_finite_rows([d for d, _ in pairs])
    for data, runs in pairs:
        feature_error = _feature_error(data, bad_rows)
        for run in runs:
            cls = get_method(run.method)
            hp = cls.resolve(run.hparams)
            p = _Plan(len(plans), data, run, cls, hp, None, _seeds(run.seed))
            try:
                cls.check_data(data)
                if feature_error is not None and cls.trains:
                    raise feature_error
            except UserError as exc:
                p.error = exc
            plans.append(p)
    by_class: dict[type[Method], list[_Plan]] = defaultdict(list)
    for p in plans:
        if p.cls.trains and p.error is None:
            by_class[p.cls].append(p)
    for cls, members in by_class.items():
        items = [(p.data, p.hp, _gen(p.seeds[1]), p.run.config) for p in members]
        for p, prep in zip(members, cls.prepare_many(items, workers), strict=True):
            p.prep = prep
    return plans


def _non_finite_rows(datas: list[TrainData], chunk: int = 1024) -> dict[tuple, np.ndarray]:
    """Rows (sorted) whose features hold a NaN or inf, among the rows the runs read, per store;
    each store is read once however many TrainData objects share it."""
    rows: dict[tuple, list[np.ndarray]] = defaultdict(list)
    arrays: dict[tuple, Any] = {}
    for d in datas:
        key = store_id(d.features)
        arrays[key] = d.features
        rows[key].append(np.concatenate([d.train_idx, d.dev_idx, d.test_idx]))
    out = {}
    for key, parts in rows.items():
        used = np.unique(np.concatenate(parts))
        bad = [used[s : s + chunk][~np.isfinite(np.asarray(arrays[key][used[s : s + chunk]])
                                                ).reshape(len(used[s : s + chunk]), -1).all(1)]
               for s in range(0, len(used), chunk)]
        out[key] = np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)
    return out


def _feature_error(data: TrainData, bad_rows: dict[tuple, np.ndarray]) -> FeatureError | None:
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
                            "_soft"})


@functools.cache
def _impl_key(cls: type[Method]) -> tuple:
    """What a stack shares: every attribute the Method classes define (not nn.Module's, which
    libraries may patch at runtime) but the per-run ones and default values, so classes that
    differ only in defaults (GDRO / GADRO) or in their data-level hook (ERM / RW / DS) train in
    one stack."""
    names = {n for k in cls.__mro__ if issubclass(k, Method) for n in vars(k)}
    out = [("HPARAMS", tuple(sorted(set(cls.HPARAMS) - cls.PER_RUN_HPARAMS)))]
    for n in sorted(names):
        if (n.startswith("__") and n.endswith("__")) or n in _PER_RUN_ATTRS:
            continue
        out.append((n, _describe(inspect.getattr_static(cls, n))))
    return tuple(out)


def _describe(v: Any) -> str:
    """A class attribute by where it is defined (functions, descriptors) or its value, never
    its memory address, so equal code gives equal keys in every process and test order."""
    fn = getattr(v, "__func__", v)
    if callable(fn) and hasattr(fn, "__qualname__"):
        return f"{getattr(fn, '__module__', '')}.{fn.__qualname__}"
    return repr(v)


def _reads_groups(cls: type[Method]) -> bool:
    """Whether training reads groups (not just `prepare`): group-supervised, non-plain heads."""
    return cls.supervision != "none" and _impl_key(cls) != _impl_key(Method)


def _stack_key(p: _Plan) -> tuple:
    """Runs with equal keys may train in one stack (lengths may differ unless the method
    reads the global step; runs with no full batch, whose first step comes later, stack only
    with each other)."""
    if not p.cls.trains:
        return ("untrained", p.pos)
    d = p.data
    cfg = tuple(sorted(asdict(p.run.config).items()))
    n = len(p.prep.idx)
    length = n if p.cls.reads_step(p.hp) else n >= p.run.config.batch_size
    groups = None
    if _reads_groups(p.cls):
        groups = (d.n_groups, d.group_probs is not None and p.cls.supervision == "soft")
    return (store_id(d.features), d.n_classes, groups, _impl_key(p.cls),
            p.cls.stack_key(p.hp), cfg, length)


def _training_key(p: _Plan) -> tuple:
    """What a run's training depends on beyond its stack key: its data object, seeds, the
    hyperparameters training reads, and its rows and weights. Runs of one stack with equal keys
    (e.g. ERM and EO thresholds, whose head is ERM's, on one cell) train once."""
    hp = sorted((k, repr(v)) for k, v in p.hp.items() if k not in p.cls.PER_RUN_HPARAMS)
    weight = None if p.prep.weight is None else np.asarray(p.prep.weight).tobytes()
    sample = None if p.prep.sample is None else np.asarray(p.prep.sample).tobytes()
    return id(p.data), p.seeds, tuple(hp), np.asarray(p.prep.idx).tobytes(), weight, sample


def _merge_twins(members: list[_Plan]) -> list[_Plan]:
    """One plan per distinct training, the others attached to it as `twins`."""
    first: dict[tuple, _Plan] = {}
    for p in members:
        rep = first.setdefault(_training_key(p), p)
        if rep is not p:
            rep.twins.append(p)
    return list(first.values())


def _chunks(members: list[_Plan], max_stack: int) -> list[list[_Plan]]:
    """Split a stack by train length (sorted, ratio <= MAX_LENGTH_RATIO) and max_stack."""
    members = sorted(members, key=lambda p: len(p.prep.idx))
    out: list[list[_Plan]] = []
    for p in members:
        n = len(p.prep.idx)
        if out and len(out[-1]) < max_stack and n <= MAX_LENGTH_RATIO * len(out[-1][0].prep.idx):
            out[-1].append(p)
        else:
            out.append([p])
    return out


Pairs = Sequence[tuple[TrainData, Sequence[RunConfig]]]


def fit_many(data: TrainData | Pairs, runs: Sequence[RunConfig] | None = None, *,
             workers: int = 1) -> list[FitResult]:
    """Train runs, stacking compatible ones; results in the order given.

    `fit_many(data, runs)` trains `runs` on one TrainData; `fit_many([(data_a, runs_a),
    (data_b, runs_b), ...])` trains runs whose splits / group sources differ (TrainData objects
    sharing one `features` array, e.g. `dataclasses.replace(data, train_idx=...)`)
    and stacks runs of one method across them; results follow the pairs' runs in order.
    `workers` > 1 trains the stacks in that many processes (see `fit_stream`).
    A run that cannot train or selects nothing raises its error (`TrainingError`,
    `FeatureError`, `GroupSupervisionError`) once every run has finished.
    """
    done = dict(fit_stream(data, runs, workers=workers))
    out = [done[i] for i in range(len(done))]
    for r in out:
        if isinstance(r, BaseException):
            raise r
    return out


def fit_stream(data: TrainData | Pairs, runs: Sequence[RunConfig] | None = None, *,
               workers: int = 1) -> Iterator[tuple[int, FitResult | UserError]]:
    """`fit_many`, yielding (position, result) as each stack finishes, so a caller can save
    finished runs while the rest train (an interrupted grid keeps them). A run that cannot
    train (bad input) or whose training selects nothing (`TrainingError`) yields its error
    instead of a result, so one failed run does not stop the others of its stack.

    With `workers` > 1, stacks train in that many spawned processes, one torch thread each,
    largest first; a memory-mapped store is reopened by path in each process (see
    `TrainData.__getstate__`), in-memory features are copied to it. Numbers do not depend on
    `workers`.
    """
    pairs = [(data, runs or [])] if isinstance(data, TrainData) else list(data)
    plans = _plans(pairs, workers)
    stacks: dict[tuple, list[_Plan]] = defaultdict(list)
    for p in plans:
        if p.error is not None:
            yield p.pos, p.error
        else:
            stacks[_stack_key(p)].append(p)
    chunks: list[list[_Plan]] = []
    for members in stacks.values():
        if not members[0].cls.trains:
            yield members[0].pos, _untrained(members[0].data, members[0])
        else:
            chunks += _chunks(_merge_twins(members), max(1, members[0].run.config.max_stack))
    rows = {}  # every row a store's stacks read: one bank per store and process
    for q in plans:
        if q.cls.trains and q.error is None:
            rows.setdefault(store_id(q.data.features), []).append(
                np.concatenate([q.data.dev_idx, q.data.test_idx, q.prep.idx]))
    store_rows = {k: np.unique(np.concatenate(v)) for k, v in rows.items()}
    tasks = [(c, store_rows[store_id(c[0].data.features)]) for c in chunks]
    if workers <= 1 or len(tasks) <= 1:
        tasks.sort(key=lambda t: repr(store_id(t[0][0].data.features)))  # a store at a time
        banks: dict[tuple, FeatureBank] = {}
        for chunk, task_rows in tasks:
            yield from _train_chunk(chunk, task_rows, banks)
        return
    if any(k[0] == "object" for k in store_rows):
        log.warning("workers=%d with in-memory features: each stack's process gets a copy; "
                    "a memory-mapped FeatureStore is reopened by path instead", workers)
    tasks.sort(key=lambda t: -_cost(t[0]))  # longest first: the last to finish is short
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=init_worker) as pool:
        futures = [pool.submit(_train_chunk_list, *t) for t in tasks]
        try:
            for f in as_completed(futures):
                yield from f.result()
        finally:  # an error or a consumer that stops early: start nothing more
            for f in futures:
                f.cancel()


def _cost(chunk: list[_Plan]) -> float:
    """A stack's expected training time: rows seen x parameters (memory traffic per row)."""
    p = chunk[0]
    return sum(len(q.prep.idx) for q in chunk) * p.run.config.epochs * _n_params(
        p.cls, tuple(p.data.features.shape[1:]), p.data.n_classes, max(p.data.n_groups, 1))


@functools.cache
def _n_params(cls: type[Method], dims: tuple[int, int], n_classes: int, n_groups: int) -> int:
    gen = [_gen(0)]
    zeros = np.zeros((1, 2), dtype=np.int64)
    ctx = MethodContext(dims[0], dims[1], n_classes, n_groups, gen, gen, zeros, zeros)
    return sum(t.numel() for t in cls([cls.resolve()], ctx).parameters())


def _train_chunk(chunk: list[_Plan], rows: np.ndarray,
                 banks: dict[tuple, FeatureBank]) -> Iterator[tuple[int, FitResult | UserError]]:
    """Train one stack on the bank of its store's `rows` (built once per store in `banks`)."""
    cfg = chunk[0].run.config
    key = (store_id(chunk[0].data.features), cfg.device, cfg.preload_max_gb, cfg.kernels)
    if key not in banks:
        banks.clear()  # one store's bank at a time
        banks[key] = FeatureBank(chunk[0].data.features, rows, torch.device(cfg.device),
                                 cfg.preload_max_gb, native=cfg.kernels == "auto")
    yield from _train_stack(chunk, banks[key])


# a worker process's bank, kept between the stacks it trains
_WORKER_BANKS: dict[tuple, FeatureBank] = {}


def _train_chunk_list(chunk: list[_Plan],
                      rows: np.ndarray) -> list[tuple[int, FitResult | UserError]]:
    """Worker-process entry point (a picklable list, not a generator)."""
    return list(_train_chunk(chunk, rows, _WORKER_BANKS))


def fit(
    data: TrainData, method: str = "erm", hparams: dict[str, Any] | None = None, seed: int = 0,
    config: TrainConfig | None = None,
) -> FitResult:
    """Train one run: `fit_many` with a single RunConfig."""
    run = RunConfig(method, dict(hparams or {}), seed, config or TrainConfig())
    return fit_many(data, [run])[0]


def _untrained(data: TrainData, p: _Plan) -> FitResult:
    t0 = time.perf_counter()
    gen = _gen(p.seeds[2])
    k = data.n_classes
    dev = p.cls.untrained_probs(len(data.dev_idx), k, p.hp, gen)
    test = p.cls.untrained_probs(len(data.test_idx), k, p.hp, gen)
    return FitResult(test, dev, 0, [], {}, p.hp, time.perf_counter() - t0, p.cls.name,
                     p.run.seed, asdict(p.run.config), {"trained": False})


def _pad(arrays: list[np.ndarray], fill: float) -> np.ndarray:
    """Stack per-run arrays [n_r, ...] into [R, max n_r, ...], padding with `fill`."""
    n = max(len(a) for a in arrays)
    out = np.full((len(arrays), n, *arrays[0].shape[1:]), fill, dtype=arrays[0].dtype)
    for r, a in enumerate(arrays):
        out[r, : len(a)] = a
    return out


class _EvalSet:
    """Per-run evaluation rows (dev or test): shared rows when every run has the same list,
    else a padded [R, m] table read in one padded pass."""

    def __init__(self, bank: FeatureBank, idx: list[np.ndarray], soft: list[np.ndarray],
                 device: torch.device) -> None:
        self.sizes = [len(i) for i in idx]
        self.shared = all(np.array_equal(i, idx[0]) for i in idx)
        fill = next((int(i[0]) for i in idx if len(i)), 0)  # any row of the bank
        padded = idx[0] if self.shared else _pad(idx, fill)
        self.rows = bank.compact(padded)
        # runs whose lists are equal read each chunk once (PyTorch path)
        self.groups = None if self.shared or bank.native else RunGroups.of(
            padded, np.array(self.sizes), device)
        self.soft = torch.as_tensor(_pad(soft, 0.0), device=device)  # [R, m, K]
        mask = _pad([np.ones(n, dtype=np.float32) for n in self.sizes], 0.0)
        self.count = torch.as_tensor(np.maximum(self.sizes, 1), dtype=torch.float32,
                                     device=device)
        # an empty list has no loss (NaN), never a mean of 0 that would look like a selection
        self.empty = torch.as_tensor(np.array(self.sizes) == 0, device=device)
        self.mask = torch.as_tensor(mask, device=device)

    @torch.no_grad()
    def logits(self, method: Method, bank: FeatureBank, chunk: int) -> torch.Tensor:
        """Logits [R, m, K] of every run on its own rows, in chunks."""
        if self.shared:
            parts = [method.logits(bank.features(self.rows[s : s + chunk]))
                     for s in range(0, len(self.rows), chunk)]
        else:
            step = max(1, chunk // self.rows.shape[0])
            parts = [method.logits(bank.batch(self.rows[:, s : s + step], self.groups))
                     for s in range(0, self.rows.shape[1], step)]
        if not parts:
            return torch.zeros(*self.soft.shape, device=self.soft.device)
        return torch.cat(parts, dim=1)

    def loss(self, logits: torch.Tensor, class_w: torch.Tensor) -> torch.Tensor:
        """Per-run mean class-balanced CE [R] over each run's own rows."""
        per = class_balanced_ce(logits, self.soft, class_w)
        mean = per.mean(-1) if self.shared else (per * self.mask).sum(-1) / self.count
        return torch.where(self.empty, float("nan"), mean)

    def probs(self, logits: torch.Tensor) -> list[np.ndarray]:
        p = torch.softmax(logits, -1).cpu().numpy()
        return [p[r, :n] for r, n in enumerate(self.sizes)]


@dataclass
class _Positions:
    """A stack's training inputs by position in each run's list, [R, n, ...]: `take(perm)`
    puts them in an epoch's order once, so a step takes a column slice of each (no per-step
    gathers or host-to-device copies)."""

    pos: torch.Tensor  # [R, n] positions in the run's training list
    rows: torch.Tensor  # [R, n] bank rows
    soft: torch.Tensor  # [R, n, K]
    majority: torch.Tensor  # [R, n]
    group: torch.Tensor  # [R, n]
    probs: torch.Tensor | None  # [R, n, G]
    weight: torch.Tensor  # [R, n]

    def take(self, cols: torch.Tensor | slice) -> _Positions:
        """Every field at columns `cols`: a slice (views), or per-run positions [R, m]."""
        if isinstance(cols, slice):
            index: tuple = (slice(None), cols)
        else:
            index = (torch.arange(len(cols), device=cols.device).unsqueeze(1), cols)
        return _Positions(*(None if (t := getattr(self, f.name)) is None else t[index]
                            for f in fields(self)))


Start = int | np.ndarray  # a sub-step's first position: one for every run, or per run [R]


def _schedule(lengths: np.ndarray, bs: int) -> list[tuple[int, Start, np.ndarray | None]]:
    """One epoch's sub-steps (batch size, start position, active mask or None = all).

    Run r takes its n_r // bs full batches in order, then its partial batch (if any); runs
    that have no batch of a sub-step's size at that point are masked (they make no update;
    what they read is any of their own positions).
    """
    n_full = lengths // bs
    steps: list[tuple[int, Start, np.ndarray | None]] = []
    for s in range(int(n_full.max())):
        active = n_full > s
        steps.append((bs, s * bs, None if active.all() else active))
    rest = lengths - n_full * bs
    for size in sorted(set(rest[rest > 0].tolist())):
        active = rest == size
        steps.append((size, np.where(active, n_full * bs, 0), None if active.all() else active))
    return steps


def _restore_masked(method: Method, saved: dict[str, torch.Tensor], gen_states: dict,
                    gens: list[torch.Generator], active: np.ndarray) -> None:
    """Undo a masked sub-step's side effects on idle runs: per-run buffers and generators."""
    keep = torch.as_tensor(active)
    for mod_name, mod in method.named_modules():
        for name, buf in list(mod._buffers.items()):
            old = saved.get(f"{mod_name}.{name}")
            if old is None or buf is None:
                continue
            view = keep.view((-1,) + (1,) * (buf.dim() - 1)).to(buf.device)
            mod._buffers[name] = torch.where(view, buf, old)
    for r, state in gen_states.items():
        gens[r].set_state(state)


def _snapshot(method: Method, gens: list[torch.Generator], active: np.ndarray,
              n_runs: int) -> tuple[dict[str, torch.Tensor], dict]:
    saved = {f"{mn}.{n}": b.clone() for mn, m in method.named_modules()
             for n, b in m._buffers.items()
             if b is not None and b.dim() >= 1 and b.shape[0] == n_runs}
    return saved, {r: gens[r].get_state() for r in np.flatnonzero(~active).tolist()}


def _position_dims(cls: type[Method], hp: dict[str, Any], ctx: MethodContext) -> dict[str, int]:
    """State keys whose size follows the train length (per-position state) -> that dim."""
    shapes = []
    for n in (1, 2):
        zeros = np.zeros((1, n), dtype=np.int64)
        c = replace(ctx, init_gens=[_gen(0)], loop_gens=[_gen(0)], train_majority=zeros,
                    train_groups=zeros, train_group_probs=None)
        shapes.append({k: v.shape for k, v in cls([hp], c).state_dict().items()})
    return {k: next(i for i, (a, b) in enumerate(zip(s, shapes[1][k], strict=True)) if a != b)
            for k, s in shapes[0].items() if s != shapes[1][k]}


def _train_stack(plans: list[_Plan], bank: FeatureBank) -> list[tuple[int, FitResult | UserError]]:
    """Train one stack of runs (same method and settings; own rows, groups and lengths) ->
    (position, result) of each run and of its twins (same head, own per-run hooks)."""
    t0 = time.perf_counter()
    cls, cfg = plans[0].cls, plans[0].run.config
    d0 = plans[0].data
    device = bank.device
    n_runs = len(plans)
    idx = [p.prep.idx for p in plans]
    lengths = np.array([len(i) for i in idx])
    host_rows = bank.lookup[_pad(idx, idx[0][0])]  # [R, n_max] bank rows
    maj = _pad([p.data.majority[i] for p, i in zip(plans, idx, strict=True)], -1)
    grp = _pad([p.data.groups[i] for p, i in zip(plans, idx, strict=True)], -1)
    read_probs = d0.group_probs is not None and cls.supervision == "soft" and _reads_groups(cls)
    probs = None if not read_probs else _pad(
        [p.data.group_probs[i] for p, i in zip(plans, idx, strict=True)], 0.0)
    n_max, bs = int(lengths.max()), cfg.batch_size
    table = _Positions(
        torch.arange(n_max, device=device).expand(n_runs, n_max),
        torch.as_tensor(host_rows, device=device),
        torch.as_tensor(_pad([p.data.soft[i] for p, i in zip(plans, idx, strict=True)], 0.0),
                        device=device),
        torch.as_tensor(maj, device=device), torch.as_tensor(grp, device=device),
        None if probs is None else torch.as_tensor(probs, device=device),
        torch.as_tensor(_pad([np.ones(len(p.prep.idx)) if p.prep.weight is None
                              else np.asarray(p.prep.weight) for p in plans], 0.0),
                        dtype=torch.float32, device=device),
    )
    loop_gens = [_gen(p.seeds[2]) for p in plans]
    ctx = MethodContext(
        bank.n_layers, bank.dim, d0.n_classes, max(p.data.n_groups for p in plans),
        init_gens=[_gen(p.seeds[0]) for p in plans], loop_gens=loop_gens,
        train_majority=maj, train_groups=grp, train_group_probs=probs,
    )
    method = cls([p.hp for p in plans], ctx).to(device)
    class_w = np.stack([class_weights_for(p.data.soft[p.prep.idx]) for p in plans])
    method.class_w.copy_(torch.as_tensor(class_w, dtype=torch.float32))
    encoders = [m for m in method.modules() if isinstance(m, Encoder)] if bank.native else []
    opt = StackedAdam(method.param_groups(cfg.lr), n_runs, cfg.weight_decay,
                      factored=[e.defer_weight_grads() for e in encoders])

    def eval_set(part: str) -> _EvalSet:
        ids = [getattr(p.data, part) for p in plans]
        return _EvalSet(bank, ids, [p.data.soft[i] for p, i in zip(plans, ids, strict=True)],
                        device)

    dev, test = eval_set("dev_idx"), eval_set("test_idx")
    best_loss = torch.full((n_runs,), float("inf"), device=device)
    best_epoch = [0] * n_runs
    best_state = {k: v.clone() for k, v in method.state_dict().items()}
    history: list[list[dict]] = [[] for _ in plans]
    schedule = _schedule(lengths, bs)
    draw = [None if p.prep.sample is None else torch.as_tensor(p.prep.sample, dtype=torch.float64)
            for p in plans]
    n_batches = torch.as_tensor(-(-lengths // bs), dtype=torch.float32, device=device)
    for epoch in range(1, cfg.epochs + 1):
        method.epoch = epoch
        perm = torch.zeros(n_runs, n_max, dtype=torch.long)
        for r, g in enumerate(loop_gens):
            n_r = int(lengths[r])
            if draw[r] is None:
                perm[r, :n_r] = torch.randperm(n_r, generator=g)
            else:  # group-balanced sampler: n_r draws with replacement
                perm[r, :n_r] = torch.multinomial(draw[r], n_r, replacement=True, generator=g)
        order = table.take(perm.to(device))
        shared = None if bank.native else RunGroups.of(  # runs that read the same rows
            np.take_along_axis(host_rows, perm.numpy(), 1), lengths, device)
        total = torch.zeros(n_runs, device=device)
        for size, start, active in schedule:
            if isinstance(start, int):
                step = order.take(slice(start, start + size))
            else:
                cols = torch.as_tensor(start[:, None] + np.arange(size), device=device)
                step = order.take(cols.clamp_max(n_max - 1))
            batch = Batch(bank.batch(step.rows, shared), step.soft, step.majority, step.group,
                          step.probs, step.pos, step.weight)
            saved = None if active is None else _snapshot(method, loop_gens, active, n_runs)
            loss = method.loss(batch)
            opt.zero_grad()
            loss.sum().backward()
            opt.step(active)
            method.step += 1
            if saved is None:
                total += loss.detach()
            else:
                _restore_masked(method, *saved, loop_gens, active)
                total += torch.where(torch.as_tensor(active, device=device), loss.detach(), 0.0)
        dev_loss = dev.loss(dev.logits(method, bank, cfg.eval_chunk), method.class_w)
        extra = method.epoch_log()
        train_loss = (total / n_batches).tolist()
        dev_list = dev_loss.tolist()
        for r in range(n_runs):
            row = {"epoch": epoch, "train_loss": train_loss[r], "dev_loss": dev_list[r]}
            history[r].append(row | {k: v[r] for k, v in extra.items()})
        if cfg.select == "last":
            better = torch.ones(n_runs, dtype=torch.bool, device=device)
        else:
            better = torch.isfinite(dev_loss) & (dev_loss < best_loss)
        best_loss = torch.where(better, dev_loss, best_loss)
        for r in torch.nonzero(better).flatten().tolist():
            best_epoch[r] = epoch
        state = method.state_dict()
        for k, v in state.items():
            mask_k = better.view(-1, *([1] * (v.dim() - 1)))
            best_state[k] = torch.where(mask_k, v, best_state[k])
        log.log(EPOCH_LOG_LEVEL, "epoch %d/%d dev loss %s", epoch, cfg.epochs,
                 " ".join(f"{v:.3f}" for v in dev_list))

    for e in encoders:  # back to ordinary gradients (the model may be trained further)
        e.sink = None
    method.load_state_dict(best_state)
    dev_probs = dev.probs(dev.logits(method, bank, cfg.eval_chunk))
    test_probs = test.probs(test.logits(method, bank, cfg.eval_chunk))
    wall = (time.perf_counter() - t0) / sum(1 + len(p.twins) for p in plans)
    final_state = method.state_dict()
    per_position = _position_dims(cls, plans[0].hp, ctx) if lengths.min() < n_max else {}
    results: list[tuple[int, FitResult | UserError]] = []
    for r, rep in enumerate(plans):
        failure = _no_selection(rep, history[r], float(best_loss[r]))
        for p in (rep, *rep.twins):
            if failure is not None:
                results.append((p.pos, failure))
                continue
            d = p.data
            state = run_slice(final_state, r)
            for k, dim in per_position.items():  # drop the padding of per-position state
                state[k] = state[k].narrow(dim, 0, int(lengths[r])).clone()
            dev_r, test_r, post = p.cls.postprocess(p.hp, dev_probs[r], test_probs[r], d)
            info = {"dims": {"n_layers": bank.n_layers, "dim": bank.dim,
                             "n_classes": d.n_classes, "n_groups": d.n_groups},
                    "n_train": len(p.prep.idx), "prepare": p.prep.info, "stack_size": n_runs,
                    "twins": len(rep.twins), "best_dev_loss": float(best_loss[r]),
                    "convergence": _convergence(best_epoch[r], cfg, f"{p.cls.name} seed "
                                                f"{p.run.seed}"),
                    **p.cls.run_info(p.hp, history[r], d), **post}
            results.append((p.pos, FitResult(
                np.asarray(test_r, dtype=np.float32), np.asarray(dev_r, dtype=np.float32),
                best_epoch[r], [dict(h) for h in history[r]], state, p.hp, wall, p.cls.name,
                p.run.seed, asdict(p.run.config), info,
            )))
    return results


def _no_selection(p: _Plan, history: list[dict], best: float) -> TrainingError | None:
    """The error of a run whose training selected nothing finite (None when it did)."""
    if np.isfinite(best):
        return None
    cfg = p.run.config
    what = f"run {p.cls.name} (seed {p.run.seed})"
    n_dev = len(p.data.dev_idx)
    if n_dev == 0:
        why = "its dev part is empty; make a split with dev utterances"
    elif cfg.epochs < 1:
        why = f"epochs is {cfg.epochs}; train at least one epoch"
    elif history and not np.isfinite(history[-1]["train_loss"]):
        why = (f"training diverged (train loss {history[-1]['train_loss']}); lower the "
               f"learning rate (lr {cfg.lr:g})")
    else:
        why = ("the dev loss was never finite; check the dev labels and features, or lower "
               f"the learning rate (lr {cfg.lr:g})")
    return TrainingError(f"{what}: no epoch of {cfg.epochs} had a finite dev loss "
                         f"({n_dev} dev utterances): {why}")


def _convergence(selected: int, cfg: TrainConfig, run: str = "run") -> dict:
    """Whether the dev-selected epoch is in the last LATE_SHARE of training (then the dev loss
    was still falling when training stopped: the run may be under-trained)."""
    last = max(1, int(np.ceil(LATE_SHARE * cfg.epochs)))
    late = cfg.select == "dev_loss" and selected > cfg.epochs - last
    if late:
        log.warning("%s: selected epoch %d of %d is in the last %d%% of training: it may not "
                    "have converged (more epochs or a larger lr)", run, selected, cfg.epochs,
                    round(100 * LATE_SHARE))
    return {"selected_epoch": int(selected), "epochs": int(cfg.epochs), "late": bool(late),
            "late_share": LATE_SHARE}


# ---------------------------------------------------------------------------- predict
def load_method(result: FitResult, device: str = "cpu") -> Method:
    """Rebuild a trained run's model (R = 1) from its FitResult for prediction."""
    cls = get_method(result.method)
    if not cls.trains:
        raise ValueError(f"method {result.method!r} trains no model; nothing to load")
    dims, n = result.info["dims"], result.info["n_train"]
    zeros = np.zeros((1, n), dtype=np.int64)
    gen = [_gen(0)]
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


__all__ = ["FeatureBank", "FitResult", "RunConfig", "TrainConfig", "TrainData", "fit", "fit_many",
           "fit_stream", "load_method", "predict_probs"]
