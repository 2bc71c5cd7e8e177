"""The package tree: every dotted `emodebias.*` name in code, benchmarks, scripts and docs
resolves (a module, or an attribute of one: imports inside functions and names in docstrings
are checked too, so a moved module leaves no stale reference), and the tree's top level reads
as the pipeline."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOTTED = re.compile(r"\bemodebias(?:\.[A-Za-z_]\w*)+")
TOP_LEVEL = {"api", "auditing", "bench", "cli", "data", "errors", "features", "fileio", "groups",
             "locate", "metrics", "progress", "provenance", "report", "runs", "training",
             "workers"}


def _sources() -> list[Path]:
    out = [*ROOT.glob("src/**/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py"),
           *ROOT.glob("scripts/*.py"), *ROOT.glob("docs/**/*.md"), ROOT / "README.md"]
    return sorted(p for p in out if p.is_file())


def _resolves(dotted: str) -> bool:
    """Whether the longest importable prefix of `dotted` has the rest as attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            obj = importlib.import_module(name)
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


def test_every_dotted_name_resolves():
    stale = {f"{path.relative_to(ROOT)}: {name}" for path in _sources()
             for name in set(DOTTED.findall(path.read_text())) if not _resolves(name)}
    assert not stale, sorted(stale)


def test_top_level_is_the_pipeline():
    pkg = ROOT / "src" / "emodebias"
    names = {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in pkg.iterdir() if (p / "__init__.py").is_file()}
    assert names == TOP_LEVEL, names ^ TOP_LEVEL
    assert not list(pkg.rglob("*.c")), "no native sources in the package"
