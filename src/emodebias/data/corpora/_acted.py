"""Shared steps of the acted corpora whose labels live in file names (EmoDB, RAVDESS).

Such corpora have no annotator votes in their file names, only the emotion the actor was asked
to portray, so the label is a single "vote" for that emotion: after EMO-SUPERB smoothing that is
0.95 on the acted class and 0.05/(K-1) on each other (`labels.soft_from_votes`). Bad file names
go through `_base.BadInput`: an error naming the file, or a counted skip with ``skip_bad=True``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pandas as pd

from emodebias.data.audio import is_audio_name
from emodebias.data.corpora._base import SRC, BadInput, CorpusError, soft_from_vote_columns
from emodebias.data.manifest import Manifest
from emodebias.data.splits import make_folds

SHOWN_FORMATS = (".wav", ".flac", ".ogg")  # examples named in the "no audio files" error
ARCHIVES = {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"}
HIDDEN = "(hidden)"  # dot-files, e.g. the "._name.wav" resource forks of copies made on macOS


def _kind_of(path: Path) -> str | None:
    """None for an audio file to read; else what the file is counted as (extension/hidden)."""
    if path.name.startswith("."):
        return HIDDEN
    return None if is_audio_name(path) else (path.suffix.lower() or "(no extension)")


def _nothing_found(root: Path, recursive: bool, other: Counter[str], hint: str) -> CorpusError:
    """The "no audio files" error: what the folder holds instead, and what to do about it."""
    where = f"{root}{' or its subfolders' if recursive else ''}"
    if not other:
        seen = "it holds no files"
    else:
        listed = ", ".join(f"{n} {ext}" for ext, n in other.most_common(5))
        todo = ("unpack the archive(s) first" if ARCHIVES & set(other)
                else "convert them to WAV or FLAC")
        seen = f"it holds {listed} file(s), none in an audio format soundfile reads ({todo})"
    return CorpusError(f"no audio files ({', '.join(SHOWN_FORMATS)}, ...) in {where}; {seen}; "
                       f"{hint}")


def scan_audio(root: Path, recursive: bool, hint: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per audio file under `root` (any format soundfile reads, e.g. WAV, FLAC, OGG):
    path, utt_id (file stem), _src; and the count of the other files by extension (not audio)
    or as hidden (dot-files)."""
    if not root.is_dir():
        raise CorpusError(f"corpus root {root} is not a directory; {hint}")
    found = sorted(p for p in (root.rglob("*") if recursive else root.iterdir()) if p.is_file())
    kinds = [_kind_of(p) for p in found]
    files = [p for p, k in zip(found, kinds, strict=True) if k is None]
    other = Counter(k for k in kinds if k is not None)
    if not files:
        raise _nothing_found(root, recursive, other, hint)
    return pd.DataFrame({
        "path": [str(p.resolve()) for p in files],
        "utt_id": [p.stem for p in files],
        SRC: [str(p.relative_to(root)) for p in files],
    }), dict(sorted(other.items()))


def parse_names(df: pd.DataFrame, regex: str, fields: list[str], bad: BadInput,
                expected: str) -> pd.DataFrame:
    """Split each file stem into `fields` with `regex`; names that do not match are bad."""
    parts = df["utt_id"].str.extract(re.compile(regex))
    parts.columns = fields
    df = pd.concat([df, parts], axis=1)
    return bad.reject(df, parts.isna().any(axis=1).to_numpy(), "file name not in corpus format",
                      hint=f"Expected names like {expected}.")


def map_codes(df: pd.DataFrame, column: str, mapping: dict[str, str], out: str,
              bad: BadInput, what: str) -> pd.DataFrame:
    """`out` = mapping[df[column]]; codes outside `mapping` are bad input."""
    unknown = ~df[column].isin(list(mapping)).to_numpy()
    df = bad.reject(df, unknown, f"unknown {what}",
                    hint=f"Known {what}s: {', '.join(sorted(mapping))}.")
    df = df.copy()
    df[out] = df[column].map(mapping)
    return df


def acted_labels(df: pd.DataFrame, classes: list[str], bad: BadInput,
                 column: str = "intended") -> pd.DataFrame:
    """One vote for the acted emotion -> votes_<c> (0/1) and smoothed soft_<c>."""
    df = df.copy()
    for c in classes:
        df[f"votes_{c}"] = (df[column] == c).astype("int64")
    return soft_from_vote_columns(df, classes, bad)


def add_folds(manifest: Manifest, folds: int | None, fold_seed: int) -> Manifest:
    """Speaker-independent folds from `splits.make_folds` (none when `folds` is 0/None)."""
    if not folds:
        return manifest
    return make_folds(manifest, k=int(folds), seed=fold_seed)
