"""Run a grid's specs on a Ray cluster (``emodebias bench --backend ray --address ...``).

The same tasks as the local runner (`runner.plan_tasks`, at least one per CPU slot) become Ray
tasks that call `runner.run_task`: only the specs (small dicts) and the output path travel; every
worker opens the cached feature memmaps by path, so features are read, not copied. This needs the
output folder (and the cache inside it) on a filesystem every node sees, and emodebias installed
on every node. Records are committed by the workers with the same atomic protocol, so a Ray grid
is resumable exactly like a local one, and the two backends give the same records.
"""

from __future__ import annotations

from pathlib import Path

from emodebias.bench.grid import RunSpec
from emodebias.bench.runner import (
    DEFAULT_EXECUTOR,
    MAX_BATCH,
    GridProgress,
    GridSummary,
    grid_lock,
    plan_tasks,
    prepare_out,
    run_task,
    task_outcomes,
)


def run_ray(specs: list[RunSpec], out: str | Path, address: str | None = None,
            executor: str = DEFAULT_EXECUTOR, progress: bool = True, max_batch: int = MAX_BATCH,
            cpus_per_task: float = 1.0, grid: str | Path | None = None) -> GridSummary:
    """Send every spec not yet done to Ray; connects to `address` unless Ray is already up.
    `grid` (file or preset name) goes into the records' provenance."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("the Ray backend needs ray: pip install 'emodebias[ray]'") from None
    out = Path(out).resolve()
    with grid_lock(out):  # one grid at a time in a folder, as with the local runner
        todo = prepare_out(out, specs, grid)
        started = False
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
            started = True
        try:
            slots = int(ray.cluster_resources().get("CPU", 1) // cpus_per_task) or 1
            tasks = plan_tasks(todo, max_batch, workers=slots)
            remote = ray.remote(num_cpus=cpus_per_task, max_retries=0)(run_task)
            refs = {remote.remote(executor, [s.to_dict() for s in t], str(out)): t for t in tasks}
            with GridProgress(out, specs, todo, show=progress) as prog:
                pending = list(refs)
                while pending:
                    finished, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                    for ref in finished:
                        prog.add_outcomes(task_outcomes(_RayFuture(ray, ref), refs[ref], out))
                    prog.refresh()
                return prog.summary()
        finally:
            if started:
                ray.shutdown()


class _RayFuture:
    """Adapts an ObjectRef to the `.result()` interface of `runner.task_outcomes`."""

    def __init__(self, ray: object, ref: object):
        self.ray, self.ref = ray, ref

    def result(self) -> list[dict]:
        return self.ray.get(self.ref)
