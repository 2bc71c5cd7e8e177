"""Run a grid's specs on local worker processes: resumable, crash-safe, with progress.

* Resumable: a spec whose record exists is never recomputed (see `results` for the atomic
  commit); after any crash, including ``kill -9`` of the whole process group, a rerun completes
  only what is missing. Failed runs leave `failures/<hash>.json` and are retried next time.
  A record that cannot be read is moved to ``damaged/`` (with a warning) and its run redone.
* One grid per folder: the invoking process holds the folder's write lock (a second `bench`
  into it fails at once), and a folder holding runs that are not in this grid is refused, so
  the results table never pools two grids (a grid extended with new runs resumes in place).
* Batched: specs that share features and a training config go to tasks of whole cells (split +
  groups), dealt over the workers, so the executor trains each task in one
  `emodebias.training.fit_many` call that stacks runs across folds and group sources.
  Batching never changes numbers; it only changes how work is packed.
* Pluggable: the executor is named by a dotted path ``module:function`` taking
  ``(specs: list[RunSpec], out: Path)`` and yielding `RunResult` / `RunFailure`; it is resolved
  inside the worker, so it need not be picklable. The default is the real pipeline.
* Traceable: the invoking process writes ``<out>/provenance.json`` (versions, git commit, its
  command line and the grid file) and every run record committed by any worker carries it.
* Workers are spawned (not forked: torch and OpenMP do not survive fork) and die with the
  runner (Linux parent-death signal), so killing the runner never leaves orphans writing later.
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from emodebias.bench.grid import GridError, RunSpec
from emodebias.bench.results import (
    PROVENANCE,
    RECORD,
    clean_stale,
    is_done,
    read_record,
    write_failure,
    write_run,
)
from emodebias.fileio import folder_lock, write_text_atomic
from emodebias.workers import init_worker

DEFAULT_EXECUTOR = "emodebias.bench.pipeline:execute"
MAX_BATCH = 256  # most runs in one task (one fit_many call)
MAX_POOL_BREAKS = 3  # pools rebuilt after a worker died before every remaining task runs alone
log = logging.getLogger(__name__)


@dataclass
class RunFailure:
    """An executor's report that one spec failed; the runner records it and carries on."""

    spec: RunSpec
    error: BaseException


@dataclass
class GridSummary:
    total: int
    skipped: int  # already done before this invocation
    completed: int
    failed: list[dict] = field(default_factory=list)  # {hash, name, error}
    wall_time: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def resolve_executor(ref: str | Callable) -> Callable:
    """'module:function' -> the function (callables pass through)."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    if not name:
        raise ValueError(f"executor {ref!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module), name)


def plan_tasks(specs: Iterable[RunSpec], max_batch: int = MAX_BATCH,
               workers: int = 1) -> list[list[RunSpec]]:
    """Pack specs into tasks: cells (specs sharing split, features and groups: the batch key)
    stay whole, and the cells of one store and training config (train key) are dealt to
    `workers` tasks or more, largest cell to the lightest task, so each task trains its runs as
    one `fit_many` call that stacks them across cells; a task holds at most `max_batch` runs
    (a larger cell is split). First-seen order is kept within a task."""
    cells: dict[str, dict[str, list[RunSpec]]] = {}
    for s in specs:
        cells.setdefault(s.train_key, {}).setdefault(s.batch_key, []).append(s)
    cap = max(1, max_batch)
    tasks: list[list[RunSpec]] = []
    for by_cell in cells.values():
        parts = [c[i : i + cap] for c in by_cell.values() for i in range(0, len(c), cap)]
        total = sum(len(p) for p in parts)
        bins: list[list[RunSpec]] = [[] for _ in range(max(min(workers, len(parts)),
                                                           -(-total // cap)))]
        for part in sorted(parts, key=len, reverse=True):
            fits = [b for b in bins if len(b) + len(part) <= cap] or bins
            min(fits, key=len).extend(part)
        tasks += [b for b in bins if b]
    return tasks


def run_task(executor: str, spec_dicts: list[dict], out: str) -> list[dict]:
    """Execute one task and commit each finished run; returns one outcome per spec.

    This is the unit a worker (process or Ray task) runs; it only takes plain data."""
    out_path = Path(out)
    specs = [RunSpec.from_dict(d) for d in spec_dicts]
    pending = {s.hash: s for s in specs if not is_done(out_path, s)}
    outcomes = [{"hash": h, "ok": True, "skipped": True} for h in
                (s.hash for s in specs) if h not in pending]
    if not pending:
        return outcomes
    try:
        fn = resolve_executor(executor)
        for item in fn(list(pending.values()), out_path):
            spec = item.spec
            if spec.hash not in pending:
                raise RuntimeError(f"executor returned a spec it was not given: {spec.name}")
            del pending[spec.hash]
            if isinstance(item, RunFailure):
                write_failure(out_path, spec, item.error)
                outcomes.append({"hash": spec.hash, "name": spec.name, "ok": False,
                                 "error": f"{type(item.error).__name__}: {item.error}"})
            else:
                write_run(out_path, item)
                outcomes.append({"hash": spec.hash, "ok": True, "wall": item.wall_time})
    except Exception as exc:  # the whole task broke: every spec not yet done failed with it
        for spec in pending.values():
            write_failure(out_path, spec, exc)
            outcomes.append({"hash": spec.hash, "name": spec.name, "ok": False,
                             "error": f"{type(exc).__name__}: {exc}"})
        pending.clear()
    for spec in pending.values():
        err = RuntimeError("the executor returned no result for this spec")
        write_failure(out_path, spec, err)
        outcomes.append({"hash": spec.hash, "name": spec.name, "ok": False, "error": str(err)})
    return outcomes


def set_aside_damaged(out: Path) -> list[str]:
    """Move run folders whose record cannot be read to ``damaged/`` (with a warning), so the
    run counts as not done and is recomputed instead of blocking the grid; returns their names."""
    moved = []
    for d in sorted((out / "runs").glob("*")):
        if ".tmp-" in d.name or not d.is_dir():
            continue
        try:
            read_record(d)
            continue
        except (ValueError, TypeError, KeyError) as exc:
            reason = exc
        if not (d / RECORD).exists():
            reason = ValueError(f"no {RECORD}")
        target = out / "damaged" / f"{d.name}-{time.strftime('%Y%m%dT%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if (d / RECORD).exists():  # kept for inspection, no longer read as a run
            (d / RECORD).rename(d / f"{RECORD}.damaged")
        d.rename(target)
        moved.append(d.name)
        log.warning("run %s had a damaged record (%s); moved to %s, it will run again",
                    d.name, reason, target)
    return moved


def refuse_foreign_runs(out: Path, specs: list[RunSpec]) -> None:
    """A folder holding runs of another grid is refused: their records would be pooled with
    this grid's into one results table. Runs of an earlier version of the same grid (a subset
    of its specs) are fine: that is resuming or extending it."""
    mine = {s.hash for s in specs}
    foreign = sorted(d.name for d in (out / "runs").glob("*")
                     if ".tmp-" not in d.name and d.is_dir() and d.name not in mine)
    if foreign:
        raise GridError(f"{out} holds {len(foreign)} run(s) that are not in this grid (e.g. "
                        f"runs/{foreign[0]}), from another grid; results would pool both: use "
                        "another --out, or move those runs away")


@contextmanager
def grid_lock(out: Path) -> Iterator[Path]:
    """The write lock of a grid's output folder, held by the invoking process for the whole
    grid: a second `bench` into the same folder fails at once instead of interleaving."""
    with folder_lock(out, "grid", timeout=0,
                     hint="wait for that `emodebias bench` to finish or use another --out"):
        yield out


def prepare_out(out: Path, specs: list[RunSpec], grid: str | Path | None = None
                ) -> list[RunSpec]:
    """Create the output folder, drop stale temporaries, list specs and record this
    invocation's provenance (`grid`: the grid file or preset); return the specs not done."""
    from emodebias import provenance

    out.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    set_aside_damaged(out)
    refuse_foreign_runs(out, specs)
    write_text_atomic(out / PROVENANCE, json.dumps(provenance.collect(grid=grid), indent=1))
    write_text_atomic(out / "specs.jsonl", "".join(
        json.dumps({"hash": s.hash, "name": s.name, "spec": s.to_dict()}, sort_keys=True) + "\n"
        for s in specs))
    return [s for s in specs if not is_done(out, s)]


class GridProgress:
    """runs done / total, ETA and failures so far (rich); counts records on disk, so it works
    for any backend."""

    def __init__(self, out: Path, specs: list[RunSpec], todo: list[RunSpec], show: bool = True):
        from emodebias.progress import Bar

        self.out, self.todo = out, todo
        self.total, self.skipped = len(specs), len(specs) - len(todo)
        self.failed: list[dict] = []
        self.bar = Bar(self.total, "runs", enabled=show, detail="failed 0")
        self.bar.advance(self.skipped)
        self.shown = self.skipped
        self.t0 = time.time()

    def __enter__(self) -> GridProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh()
        self.bar.close()

    def add_outcomes(self, outcomes: list[dict]) -> None:
        self.failed += [o for o in outcomes if not o["ok"]]
        self.refresh()

    def refresh(self) -> None:
        done = self.skipped + sum(is_done(self.out, s) for s in self.todo) + len(self.failed)
        self.bar.advance(done - self.shown, detail=f"failed {len(self.failed)}")
        self.shown = done

    def summary(self) -> GridSummary:
        done = sum(is_done(self.out, s) for s in self.todo)
        return GridSummary(self.total, self.skipped, done, self.failed, time.time() - self.t0)


def run_local(specs: list[RunSpec], out: str | Path, workers: int = 1,
              executor: str = DEFAULT_EXECUTOR, progress: bool = True, max_batch: int = MAX_BATCH,
              threads_per_worker: int = 1, grid: str | Path | None = None) -> GridSummary:
    """Run every spec not yet done under `out` on `workers` processes (1 = in this process);
    `grid` (file or preset name) goes into the records' provenance."""
    out = Path(out)
    with grid_lock(out), interrupt_on_sigterm():
        return _run_local(specs, out, workers, executor, progress, max_batch, threads_per_worker,
                          grid)


def _run_local(specs: list[RunSpec], out: Path, workers: int, executor: str, progress: bool,
               max_batch: int, threads_per_worker: int, grid: str | Path | None) -> GridSummary:
    """`run_local` under the grid's write lock."""
    todo = prepare_out(out, specs, grid)
    tasks = plan_tasks(todo, max_batch, workers)
    with GridProgress(out, specs, todo, show=progress) as prog:
        if workers <= 1:
            for task in tasks:
                prog.add_outcomes(run_task(executor, [s.to_dict() for s in task], str(out)))
        else:
            _run_pool(tasks, executor, out, workers, threads_per_worker, prog)
        return prog.summary()


def _run_pool(tasks: list[list[RunSpec]], executor: str, out: Path, workers: int,
              threads: int, prog: GridProgress) -> None:
    """Tasks on `workers` spawned processes. A worker that dies (e.g. the OOM killer) breaks
    the whole process pool, so every task then running ends with `BrokenProcessPool`: those are
    retried one by one, each alone in a fresh process, so only the task that kills its worker
    fails (its runs are redone by the next invocation); tasks that had not started go back to
    a fresh pool."""
    queue, breaks = tasks, 0
    while queue:
        suspects, queue = _pool_round(queue, executor, out, workers, threads, prog)
        if suspects or queue:
            breaks += 1
        if breaks > MAX_POOL_BREAKS:  # whatever kills workers was never seen running: isolate all
            suspects, queue = suspects + queue, []
        for task in suspects:
            left = [s for s in task if not is_done(out, s)]
            if left:
                for lost in _pool_round([left], executor, out, 1, threads, prog)[0]:
                    prog.add_outcomes(task_outcomes(_Died(), lost, out))


def _pool_round(tasks: list[list[RunSpec]], executor: str, out: Path, workers: int,
                threads: int, prog: GridProgress) -> tuple[list, list]:
    """Run `tasks` on one pool until done or broken: (tasks running when it broke, tasks that
    had not started). An interrupt (SIGINT, or SIGTERM turned into one) stops the workers at
    once instead of letting them finish the grid."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                               initializer=init_worker, initargs=(threads,))
    futures = {pool.submit(run_task, executor, [s.to_dict() for s in t], str(out)): t
               for t in tasks}
    running: set = set()
    suspects, waiting = [], []
    try:
        pending = set(futures)
        while pending:
            running = {f for f in pending if f.running()} or running
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for f in finished:
                if isinstance(f.exception(), BrokenProcessPool):
                    (suspects if f in running else waiting).append(futures[f])
                else:
                    prog.add_outcomes(task_outcomes(f, futures[f], out))
            prog.refresh()
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)
    return suspects, waiting


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (they would otherwise finish)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.terminate()
    for proc in processes:
        proc.join(timeout=5)


class _Died:
    """A future whose worker died: `task_outcomes` records its unfinished runs as failures."""

    def result(self) -> list[dict]:
        raise BrokenProcessPool("the worker process died (killed, e.g. out of memory)")


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM to the runner stops the grid as Ctrl-C does (workers ended, lock released)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def task_outcomes(future: object, task: list[RunSpec], out: Path) -> list[dict]:
    """A finished task's outcomes; a worker that died takes its task's unfinished runs down
    as failures (recorded, retried next time)."""
    try:
        return future.result()
    except Exception as exc:
        lost = [s for s in task if not is_done(out, s)]
        for s in lost:
            write_failure(out, s, exc)
        return [{"hash": s.hash, "name": s.name, "ok": False,
                 "error": f"worker failed: {type(exc).__name__}: {exc}"} for s in lost]
