"""Find a stage's output inside the folder that stage was given as `--out`.

Each stage writes a marker file: `prepare` OUT/manifest.parquet, `split` OUT/split.json,
`extract` OUT/meta.json (the store is OUT itself), `groups` OUT/<source>/groups.json (one
sub-folder per assignment). A consumer accepts the marker's file, its folder, or a folder whose
sub-folders hold exactly one of them; anything else is a one-line `UserError` that lists what
the folder holds, so the user can pick one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emodebias.errors import UserError

MAX_LISTED = 8


@dataclass(frozen=True)
class Stage:
    """What a stage writes and how the user makes it."""

    what: str  # "feature store", "group assignment", ...
    marker: str  # the file that marks a finished output folder
    made_by: str  # the command that makes one
    option: str  # the consumer's option, for messages
    file_suffix: str | None = None  # a file of this kind may be given instead of a folder


MANIFEST = Stage("manifest", "manifest.parquet", "emodebias prepare", "--manifest", ".parquet")
SPLIT = Stage("split", "split.json", "emodebias split", "--split", ".json")
FEATURES = Stage("feature store", "meta.json", "emodebias extract", "--features")
GROUPS = Stage("group assignment", "groups.json", "emodebias groups", "--groups")


def candidates(folder: Path, stage: Stage) -> list[Path]:
    """Sub-folders of `folder` (one level) that hold the stage's marker."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and (d / stage.marker).is_file())


def listing(paths: list[Path], base: Path) -> str:
    names = [str(p.relative_to(base)) if p.is_relative_to(base) else str(p)
             for p in paths[:MAX_LISTED]]
    more = f", ... ({len(paths) - MAX_LISTED} more)" if len(paths) > MAX_LISTED else ""
    return ", ".join(names) + more


def resolve(path: str | Path, stage: Stage) -> Path:
    """The folder holding `stage.marker` (or a file of `stage.file_suffix`), given the marker
    file, its folder, or a parent folder with exactly one such sub-folder."""
    path = Path(path)
    if path.is_file():
        if path.name == stage.marker:
            return path.parent
        if stage.file_suffix and path.suffix == stage.file_suffix:
            return path
        raise UserError(f"{stage.option} {path}: expected a {stage.what} folder (with "
                        f"{stage.marker}), got a file")
    if not path.is_dir():
        raise UserError(f"{stage.option} {path}: no such file or folder; make the "
                        f"{stage.what} with `{stage.made_by} --out {path}`")
    if (path / stage.marker).is_file():
        return path
    found = candidates(path, stage)
    if len(found) == 1:
        return found[0]
    if not found:
        inside = sorted(p.name for p in path.iterdir())
        held = f" (it holds: {listing([path / n for n in inside], path)})" if inside else \
            " (it is empty)"
        raise UserError(f"{stage.option} {path}: no {stage.what} here or in its sub-folders"
                        f"{held}; make one with `{stage.made_by} --out {path}`")
    raise UserError(f"{stage.option} {path} holds {len(found)} {stage.what}s: "
                    f"{listing(found, path)}; pass one of them, e.g. {stage.option} {found[0]}")
