"""Train SER heads on cached features: one run (`fit`) or a stack of runs at once (`fit_many`).

Runs that share a method, its structural hyperparameters, the TrainConfig and the size of the
(manipulated) training list train as ONE stacked model: parameters carry a leading run
dimension R, each step gathers an [R, B] batch from one shared feature tensor through per-run
index lists, the summed loss gives every run exactly its own gradient, and Adam's per-element
state is naturally per run. Each run owns three generators derived from its seed (init, data
preparation, batching + in-loop randomness), so a run gives the same numbers alone or stacked.
Model selection is per run: the epoch with the lowest dev class-balanced CE (weights from that
run's training set) is kept.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from emodebias.labels import strict_majority
from emodebias.losses import class_balanced_ce, class_weights_for
from emodebias.methods import Batch, Method, MethodContext, Prepared, get_method
from emodebias.model import run_slice

log = logging.getLogger(__name__)


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

    @classmethod
    def from_objects(cls, store: Any, manifest: Any, split: Any, groups: Any = None) -> TrainData:
        """Align a FeatureStore, Manifest, Split and optional GroupAssignment by utt_id.

        Split utterances whose feature extraction failed (``store.failures``) are left out and
        counted in ``info['missing_features']``; any other unknown id raises.
        """
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
    preload_max_gb: float = 1.0  # preload needed rows as float32 up to this size (and 1/4 of free RAM)
    eval_chunk: int = 1024


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
        tmp = d / "result.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1, default=_jsonable))
        tmp.replace(d / "result.json")
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


# ---------------------------------------------------------------------------- features
def _available_bytes() -> float:
    """MemAvailable from /proc/meminfo (inf where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


class FeatureBank:
    """The feature rows, labels and groups a stack needs, compacted and on the device.

    Rows are copied once as float32 when they fit `preload_max_gb` (and a quarter of the
    available RAM); otherwise each batch is read from the memory-mapped store, so stores larger
    than RAM still train.
    """

    def __init__(self, data: TrainData, rows: np.ndarray, device: torch.device, max_gb: float):
        self.rows = np.unique(rows)
        self.lookup = np.full(len(data.features), -1, dtype=np.int64)
        self.lookup[self.rows] = np.arange(len(self.rows))
        self.data, self.device = data, device
        shape = data.features.shape
        self.n_layers, self.dim = int(shape[1]), int(shape[2])
        nbytes = len(self.rows) * self.n_layers * self.dim * 4
        self.x = None
        if nbytes <= min(max_gb * 2**30, _available_bytes() / 4):
            self.x = torch.empty((len(self.rows), self.n_layers, self.dim), dtype=torch.float32)
            for s in range(0, len(self.rows), 4096):  # float16 -> float32 once, in chunks
                chunk = np.asarray(data.features[self.rows[s : s + 4096]])
                self.x[s : s + len(chunk)] = torch.from_numpy(chunk)
            self.x = self.x.to(device)

        def put(a: np.ndarray | None, dtype: torch.dtype) -> torch.Tensor | None:
            return None if a is None else torch.as_tensor(a[self.rows], dtype=dtype, device=device)

        self.soft = put(data.soft, torch.float32)
        self.majority = put(data.majority, torch.long)
        self.groups = put(data.groups, torch.long)
        self.group_probs = put(data.group_probs, torch.float32)

    def compact(self, full_rows: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(self.lookup[np.asarray(full_rows)], device=self.device)

    def features(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 features [*rows.shape, L, D] for compact row indices."""
        flat = rows.reshape(-1)
        if self.x is not None:
            x = self.x[flat]
        else:
            full = self.rows[flat.cpu().numpy()]
            order = np.argsort(full, kind="stable")
            fetched = np.empty((len(full), self.n_layers, self.dim), dtype=self.data.features.dtype)
            fetched[order] = self.data.features[full[order]]
            x = torch.from_numpy(fetched).to(self.device)
        return x.to(torch.float32).reshape(*rows.shape, self.n_layers, self.dim)

    def batch(self, rows: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> Batch:
        probs = None if self.group_probs is None else self.group_probs[rows]
        return Batch(self.features(rows), self.soft[rows], self.majority[rows], self.groups[rows],
                     probs, index, weight)


# ---------------------------------------------------------------------------- loop
def _seeds(seed: int) -> tuple[int, int, int]:
    """Independent (init, prepare, loop) seeds from one run seed."""
    return tuple(int(s) for s in np.random.SeedSequence(seed).generate_state(3))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class _Plan:
    pos: int
    run: RunConfig
    cls: type[Method]
    hp: dict[str, Any]
    prep: Prepared | None
    seeds: tuple[int, int, int]


def _plan(data: TrainData, pos: int, run: RunConfig) -> _Plan:
    cls = get_method(run.method)
    hp = cls.resolve(run.hparams)
    cls.check_data(data)
    seeds = _seeds(run.seed)
    prep = cls.prepare(data, hp, _gen(seeds[1]), run.config) if cls.trains else None
    return _Plan(pos, run, cls, hp, prep, seeds)


def _stack_key(p: _Plan) -> tuple:
    if not p.cls.trains:
        return ("untrained", p.pos)
    cfg = tuple(sorted(asdict(p.run.config).items()))
    return (p.cls.name, p.cls.stack_key(p.hp), cfg, len(p.prep.idx))


def fit_many(data: TrainData, runs: list[RunConfig]) -> list[FitResult]:
    """Train `runs`, stacking compatible ones; results in the order of `runs`."""
    plans = [_plan(data, i, run) for i, run in enumerate(runs)]
    stacks: dict[tuple, list[_Plan]] = defaultdict(list)
    for p in plans:
        stacks[_stack_key(p)].append(p)
    results: list[FitResult | None] = [None] * len(runs)
    for members in stacks.values():
        size = max(1, members[0].run.config.max_stack)
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            for p, res in zip(chunk, _train_stack(data, chunk), strict=True):
                results[p.pos] = res
    return results  # type: ignore[return-value]


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


@torch.no_grad()
def _logits(method: Method, bank: FeatureBank, rows: torch.Tensor, chunk: int) -> torch.Tensor:
    """Logits [R, n, K] of every run for shared rows, in chunks."""
    return torch.cat([method.logits(bank.features(rows[s : s + chunk]))
                      for s in range(0, len(rows), chunk)], dim=1)


def _train_stack(data: TrainData, plans: list[_Plan]) -> list[FitResult]:
    if not plans[0].cls.trains:
        return [_untrained(data, p) for p in plans]
    t0 = time.perf_counter()
    cls, cfg = plans[0].cls, plans[0].run.config
    device = torch.device(cfg.device)
    n_runs = len(plans)
    needed = np.concatenate([data.dev_idx, data.test_idx, *[p.prep.idx for p in plans]])
    bank = FeatureBank(data, needed, device, cfg.preload_max_gb)
    train_rows = torch.stack([bank.compact(p.prep.idx) for p in plans])  # [R, n]
    weight = torch.as_tensor(np.stack([
        np.ones(len(p.prep.idx)) if p.prep.weight is None else p.prep.weight for p in plans
    ]), dtype=torch.float32, device=device)
    loop_gens = [_gen(p.seeds[2]) for p in plans]
    idx = np.stack([p.prep.idx for p in plans])
    ctx = MethodContext(
        bank.n_layers, bank.dim, data.n_classes, data.n_groups,
        init_gens=[_gen(p.seeds[0]) for p in plans], loop_gens=loop_gens,
        train_majority=data.majority[idx], train_groups=data.groups[idx],
        train_group_probs=None if data.group_probs is None else data.group_probs[idx],
    )
    method = cls([p.hp for p in plans], ctx).to(device)
    class_w = np.stack([class_weights_for(data.soft[p.prep.idx]) for p in plans])
    method.class_w.copy_(torch.as_tensor(class_w, dtype=torch.float32))
    opt = torch.optim.Adam(method.param_groups(cfg.lr), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           foreach=True)

    dev_rows, test_rows = bank.compact(data.dev_idx), bank.compact(data.test_idx)
    dev_soft = bank.soft[dev_rows].unsqueeze(0)
    best_loss = torch.full((n_runs,), float("inf"), device=device)
    best_epoch = [0] * n_runs
    best_state = {k: v.clone() for k, v in method.state_dict().items()}
    history: list[list[dict]] = [[] for _ in plans]
    n, bs = train_rows.shape[1], cfg.batch_size
    for epoch in range(1, cfg.epochs + 1):
        method.epoch = epoch
        perm = torch.stack([torch.randperm(n, generator=g) for g in loop_gens]).to(device)
        total = torch.zeros(n_runs, device=device)
        n_batches = 0
        for s in range(0, n, bs):
            pos = perm[:, s : s + bs]
            batch = bank.batch(train_rows.gather(1, pos), pos, weight.gather(1, pos))
            loss = method.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            method.step += 1
            total += loss.detach()
            n_batches += 1
        dev_logits = _logits(method, bank, dev_rows, cfg.eval_chunk)
        dev_loss = class_balanced_ce(dev_logits, dev_soft, method.class_w).mean(-1)
        extra = method.epoch_log()
        for r in range(n_runs):
            row = {"epoch": epoch, "train_loss": float(total[r] / n_batches),
                   "dev_loss": float(dev_loss[r])}
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
            mask = better.view(-1, *([1] * (v.dim() - 1)))
            best_state[k] = torch.where(mask, v, best_state[k])
        log.info("epoch %d/%d dev loss %s", epoch, cfg.epochs, dev_loss.tolist())

    method.load_state_dict(best_state)
    dev_probs = torch.softmax(_logits(method, bank, dev_rows, cfg.eval_chunk), -1).cpu().numpy()
    test_probs = torch.softmax(_logits(method, bank, test_rows, cfg.eval_chunk), -1).cpu().numpy()
    wall = (time.perf_counter() - t0) / n_runs
    final_state = method.state_dict()
    results = []
    for r, p in enumerate(plans):
        dev_r, test_r, post = method.postprocess(r, dev_probs[r], test_probs[r], data)
        info = {"dims": {"n_layers": bank.n_layers, "dim": bank.dim, "n_classes": data.n_classes,
                         "n_groups": data.n_groups},
                "n_train": len(p.prep.idx), "prepare": p.prep.info, "stack_size": n_runs,
                "best_dev_loss": float(best_loss[r]), **post}
        results.append(FitResult(
            np.asarray(test_r, dtype=np.float32), np.asarray(dev_r, dtype=np.float32),
            best_epoch[r], history[r], run_slice(final_state, r), p.hp, wall, cls.name,
            p.run.seed, asdict(p.run.config), info,
        ))
    return results


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
           "load_method", "predict_probs"]
