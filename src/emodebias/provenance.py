"""What produced a result: package versions, the git commit, the command line and the grid file.

Every run record (`emodebias train`, `emodebias bench`) and every report carries this block, so a
number can be traced to the code and the invocation that made it. Versions are read from the
installed package metadata (no torch or transformers import: the CLI stays fast); the commit is
looked up only when emodebias itself runs from a git checkout, and is `None` anywhere else
(an installed wheel, no git binary): provenance never fails a run.
"""

from __future__ import annotations

import functools
import json
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("emodebias", "torch", "transformers", "numpy")


def versions() -> dict[str, str | None]:
    """Installed versions of emodebias, torch, transformers, numpy and Python."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


@functools.cache
def git_commit(start: str | None = None) -> dict[str, Any] | None:
    """{commit, dirty} of the checkout holding the emodebias sources; None outside a checkout."""
    here = Path(start or __file__).resolve().parent
    root = next((d for d in (here, *here.parents) if (d / ".git").exists()), None)
    if root is None:
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def command_line(argv: list[str] | None = None) -> str:
    """The invocation as a shell would read it; the program is named by its base name."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return shlex.join(argv)


def grid_source(grid: str | Path | None) -> dict[str, Any] | None:
    """A grid file or shipped preset: where it came from and a hash of its parsed content."""
    if grid is None:
        return None
    from emodebias.bench.grid import content_hash, read_grid

    try:
        parsed, source = read_grid(grid)
    except ValueError:  # an unreadable grid fails elsewhere, with its own message
        return {"source": str(grid), "hash": None}
    if Path(grid).is_file():
        source = str(Path(grid).resolve())
    return {"source": source, "hash": content_hash(parsed, n=16)}


def collect(grid: str | Path | None = None, command: str | None = None) -> dict[str, Any]:
    """The provenance block of a record or report (see the module docstring)."""
    git = git_commit()
    return {
        "versions": versions(),
        "git_commit": git["commit"] if git else None,
        "git_dirty": git["dirty"] if git else None,
        "command": command if command is not None else command_line(),
        "grid": grid_source(grid),
        "platform": platform.platform(),
    }


def rows(prov: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, value) pairs for a table: versions first, then commit, command and grid."""
    out = [(name, str(v)) for name, v in (prov.get("versions") or {}).items()]
    commit = prov.get("git_commit")
    out.append(("git commit", "-" if not commit else
                commit + (" (uncommitted changes)" if prov.get("git_dirty") else "")))
    out.append(("command", prov.get("command") or "-"))
    grid = prov.get("grid")
    if grid:
        out.append(("grid", f"{grid['source']} (content hash {grid.get('hash')})"))
    return out


def summarize(blocks: Iterable[dict | None]) -> list[dict[str, Any]]:
    """Distinct (versions, commit, grid) among runs' provenance blocks, with run counts and
    one example command each: what a report's runs were made with."""
    groups: dict[str, dict[str, Any]] = {}
    for prov in blocks:
        prov = prov or {}
        entry = {"versions": prov.get("versions"), "git_commit": prov.get("git_commit"),
                 "git_dirty": prov.get("git_dirty"), "grid": prov.get("grid")}
        key = json.dumps(entry, sort_keys=True, default=str)
        if key not in groups:
            groups[key] = {**entry, "command": prov.get("command"), "n_runs": 0}
        groups[key]["n_runs"] += 1
    return list(groups.values())
