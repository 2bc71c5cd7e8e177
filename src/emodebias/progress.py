"""Progress bars for long steps (rich, on stderr), behind one switch for the whole process.

Library code wraps its long loops (corpus generation, extraction, clustering, grid stages) in
`Bar` or `track`. A bar draws only when asked with ``enabled=True`` or, with ``enabled=None``,
when the process switch is on: the command line turns it on unless ``-q/--quiet``; library
callers and worker processes stay silent by default. Bars opened while another is live join it as
extra lines (rich allows one live display per terminal) and vanish when done. Descriptions are
user text (file names, encoder ids) and print verbatim, never parsed as Rich markup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_switch = {"on": False}
_live: dict[str, Any] = {"progress": None, "users": 0}


def set_enabled(on: bool) -> None:
    """Turn bars with ``enabled=None`` on or off for this process (the CLI: on unless -q)."""
    _switch["on"] = bool(on)


def is_enabled() -> bool:
    return _switch["on"]


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """No switch-controlled bars inside (e.g. work done under another live display)."""
    before = _switch["on"]
    _switch["on"] = False
    try:
        yield
    finally:
        _switch["on"] = before


def _shared_progress():  # noqa: ANN202 (rich.progress.Progress, imported lazily)
    """The live rich Progress bars join; started by the first bar, stopped by the last."""
    if _live["progress"] is None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        _live["progress"] = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}", markup=False), TimeElapsedColumn(),
            TextColumn("ETA", markup=False), TimeRemainingColumn(),
            console=Console(stderr=True, highlight=False), transient=False)
        _live["progress"].start()
    _live["users"] += 1
    return _live["progress"]


def _release() -> None:
    _live["users"] -= 1
    if _live["users"] <= 0 and _live["progress"] is not None:
        _live["progress"].stop()
        _live["progress"], _live["users"] = None, 0


class Bar:
    """One progress line: description, bar, done/total, a free `detail` text, elapsed, ETA.

    A no-op unless enabled (see the module docstring). Use as a context manager or call
    `close()`; `total=None` shows elapsed time only (work of unknown length).
    """

    def __init__(self, total: float | None, description: str, *, enabled: bool | None = None,
                 detail: str = "") -> None:
        self.active = is_enabled() if enabled is None else bool(enabled)
        self._total = total
        if not self.active:
            return
        self._progress = _shared_progress()
        self._task = self._progress.add_task(str(description), total=total, detail=detail)

    def advance(self, n: float = 1, detail: str | None = None) -> None:
        if self.active:
            extra = {} if detail is None else {"detail": detail}
            self._progress.update(self._task, advance=n, **extra)

    def close(self) -> None:
        """Stop; a bar nested in another disappears, the outermost one stays as a record."""
        if self.active:
            self.active = False
            if _live["users"] > 1:
                self._progress.remove_task(self._task)
            elif self._total is None:  # work of unknown length: show it as done
                self._progress.update(self._task, total=1, completed=1)
            self._progress.refresh()
            _release()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], description: str, total: int | None = None, *,
          enabled: bool | None = None) -> Iterator[T]:
    """Yield `items`, advancing a `Bar` by one per item (`total` defaults to ``len(items)``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Bar(total, description, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.advance()
