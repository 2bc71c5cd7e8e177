"""Benchmark grids: YAML grid -> RunSpecs (`grid`), the real executor (`pipeline`), local and Ray
runners (`runner`, `ray_runner`; resumable, atomic records) and run records -> tidy Parquet
(`results`)."""

from emodebias.bench.grid import GridError, RunSpec, expand_grid, load_grid, preset_names
from emodebias.bench.results import RunResult, collect, summary_wide
from emodebias.bench.runner import GridSummary, RunFailure, run_local

__all__ = ["GridError", "GridSummary", "RunFailure", "RunResult", "RunSpec", "collect",
           "expand_grid", "load_grid", "preset_names", "run_local", "summary_wide"]
