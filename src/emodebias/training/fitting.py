"""Train runs: one (`fit`), a grid stacked into as few trainings as its runs allow (`fit_many`),
or the same yielding each stack's runs as they finish (`fit_stream`), in-process or in worker
processes. Runs that share a feature store, a method, its structural hyperparameters, the
TrainConfig (but epochs, lr and weight decay) and the number of groups train as one stack
(`training.plan`, `training.loop`)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch

from emodebias.errors import UserError
from emodebias.training.data import RunConfig, TrainConfig, TrainData
from emodebias.training.feature_bank import FeatureBank, store_id
from emodebias.training.loop import train_stack
from emodebias.training.plan import (
    FeatureScan,
    Pairs,
    Plan,
    chunks,
    cost,
    make_plans,
    merge_twins,
    stack_key,
    untrained,
)
from emodebias.training.results import FitResult, predict_probs
from emodebias.workers import init_worker

log = logging.getLogger(__name__)


class _AuxTrainer:
    """The `AuxTrainer` data-level hooks get (JTT's identification models): the runs trained
    as one grid, then each model's probabilities on its training rows (or the run's error).
    It shares its call's `FeatureScan`, so the rows are not scanned for non-finite features
    twice."""

    def __init__(self, scan: FeatureScan | None = None) -> None:
        self.scan = scan or FeatureScan()

    def fit_predict(self, runs: Sequence[tuple[TrainData, str, int, TrainConfig]],
                    workers: int = 1) -> list[np.ndarray | UserError]:
        pairs = [(data, [RunConfig(method, {}, seed, config)])
                 for data, method, seed, config in runs]
        done = dict(_stream(pairs, workers, self.scan))
        return [res if isinstance(res, UserError) else
                predict_probs(res, data.features, data.train_idx, device=config.device)
                for (data, _, _, config), res in zip(runs, (done[i] for i in range(len(runs))),
                                                      strict=True)]


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
    return _stream(pairs, workers, FeatureScan())


def _stream(pairs: Pairs, workers: int,
            scan: FeatureScan) -> Iterator[tuple[int, FitResult | UserError]]:
    """`fit_stream` with the call's `FeatureScan` (shared with its auxiliary trainings)."""
    plans = make_plans(pairs, workers, _AuxTrainer(scan), scan)
    stacks: dict[tuple, list[Plan]] = defaultdict(list)
    for p in plans:
        if p.error is not None:
            yield p.pos, p.error
        else:
            stacks[stack_key(p)].append(p)
    parts: list[list[Plan]] = []
    for members in stacks.values():
        if not members[0].cls.trains:
            yield members[0].pos, untrained(members[0].data, members[0])
        else:
            parts += chunks(merge_twins(members), max(1, members[0].run.config.max_stack))
    rows = {}  # every row a store's stacks read: one bank per store and process
    for q in plans:
        if q.cls.trains and q.error is None:
            rows.setdefault(store_id(q.data.features), []).append(
                np.concatenate([q.data.dev_idx, q.data.test_idx, q.prep.idx]))
    store_rows = {k: np.unique(np.concatenate(v)) for k, v in rows.items()}
    tasks = [(c, store_rows[store_id(c[0].data.features)]) for c in parts]
    if workers <= 1 or len(tasks) <= 1:
        tasks.sort(key=lambda t: repr(store_id(t[0][0].data.features)))  # a store at a time
        banks: dict[tuple, FeatureBank] = {}
        for chunk, task_rows in tasks:
            yield from _train_chunk(chunk, task_rows, banks)
        return
    if any(k[0] == "object" for k in store_rows):
        log.warning("workers=%d with in-memory features: each stack's process gets a copy; "
                    "a memory-mapped FeatureStore is reopened by path instead", workers)
    tasks.sort(key=lambda t: -cost(t[0]))  # longest first: the last to finish is short
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=init_worker) as pool:
        futures = [pool.submit(_train_chunk_list, *t) for t in tasks]
        try:
            for f in as_completed(futures):
                yield from f.result()
        finally:  # an error or a consumer that stops early: start nothing more
            for f in futures:
                f.cancel()


def _train_chunk(chunk: list[Plan], rows: np.ndarray,
                 banks: dict[tuple, FeatureBank]) -> Iterator[tuple[int, FitResult | UserError]]:
    """Train one stack on the bank of its store's `rows` (built once per store in `banks`)."""
    cfg = chunk[0].run.config
    key = (store_id(chunk[0].data.features), cfg.device, cfg.preload_max_gb)
    if key not in banks:
        banks.clear()  # one store's bank at a time
        banks[key] = FeatureBank(chunk[0].data.features, rows, torch.device(cfg.device),
                                 cfg.preload_max_gb)
    yield from train_stack(chunk, banks[key])


# a worker process's bank, kept between the stacks it trains
_WORKER_BANKS: dict[tuple, FeatureBank] = {}


def _train_chunk_list(chunk: list[Plan],
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
