"""Shared plumbing of the corpus adapters: reading tables, bad-input policy, manifest assembly.

Every adapter follows one policy (DESIGN.md "Conventions"): bad input raises a `CorpusError`
naming the file and line (or utterance), unless the user passed ``skip_bad=True``; then the bad
rows are dropped, counted per reason, and the counts travel in ``Manifest.info["skipped"]``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from emodebias.data.labels import LabelError, soft_from_votes
from emodebias.data.manifest import Manifest, ManifestError

SRC = "_src"  # helper column "file:line" carried until the manifest is built
GENDER_VALUES = {
    "f": "F", "female": "F", "woman": "F", "w": "F",
    "m": "M", "male": "M", "man": "M",
}
MISSING_VALUES = {"", "unknown", "na", "n/a", "nan", "none", "?"}


class CorpusError(ManifestError):
    """Corpus files that cannot become a manifest; the message names the file and row."""


TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".parquet": None, ".pq": None}
COMPRESSIONS = {".gz", ".bz2", ".zip", ".xz", ".zst"}


def table_format(path: Path) -> str:
    """The table suffix of `path` ('.csv', '.parquet', ...; '.csv.gz' reads as '.csv'), or a
    CorpusError naming the formats that can be read."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    fmt = suffixes[-1] if suffixes else ""
    if fmt not in TABLE_SUFFIXES:
        raise CorpusError(f"{path}: not a CSV or Parquet table (known suffixes: "
                          f"{', '.join(TABLE_SUFFIXES)}); save it as .csv or .parquet")
    return fmt


def read_table(path: str | Path, required: tuple[str, ...] | list[str] = (),
               what: str = "table", hint: str = "") -> pd.DataFrame:
    """Read a CSV/TSV or Parquet file and add the `_src` column (``name:line``) for errors;
    `hint` (which option points at the file) ends the not-found message."""
    path = Path(path)
    if path.is_dir():
        raise CorpusError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise CorpusError(f"{what} not found: {path}" + (f"; {hint}" if hint else ""))
    fmt = table_format(path)
    try:
        if TABLE_SUFFIXES[fmt] is None:
            df = pd.read_parquet(path)
            first_line = 1  # rows counted from 1
        else:
            df = pd.read_csv(path, sep=TABLE_SUFFIXES[fmt], dtype=str, keep_default_na=False)
            first_line = 2  # line 1 is the header
    except Exception as exc:  # parser errors carry line numbers of their own
        raise CorpusError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CorpusError(
            f"{path}: {what} lacks required column(s) {missing}; it has {list(df.columns)}"
        )
    label = "row" if first_line == 1 else "line"
    df[SRC] = [f"{path.name} {label} {i + first_line}" for i in range(len(df))]
    return df


class BadInput:
    """Either raise on bad rows (default) or drop them and count why (``skip_bad=True``)."""

    def __init__(self, skip_bad: bool = False) -> None:
        self.skip_bad = skip_bad
        self.skipped: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def reject(self, df: pd.DataFrame, bad: np.ndarray | pd.Series, reason: str,
               hint: str = "") -> pd.DataFrame:
        """Return `df` without the `bad` rows, or raise naming them when not skipping."""
        bad = np.asarray(bad, dtype=bool)
        if not bad.any():
            return df
        n = int(bad.sum())
        where = df.loc[bad, SRC].astype(str).tolist() if SRC in df else [""] * n
        ids = df.loc[bad, "utt_id"].astype(str).tolist() if "utt_id" in df else [""] * n
        names = [f"{w} ({u})" if w and u else (w or u) for w, u in zip(where, ids, strict=True)]
        shown = "; ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
        if not self.skip_bad:
            tail = f" {hint}" if hint else ""
            raise CorpusError(
                f"{reason}: {int(bad.sum())} row(s): {shown}.{tail} "
                "Fix the input or pass skip_bad=True (CLI: --skip-bad) to skip and count them."
            )
        self.note(reason, n, names)
        return df.loc[~bad]

    def note(self, reason: str, count: int, examples: list[str]) -> None:
        """Count `count` skipped items under `reason` and warn (used when skipping)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        kept = self.examples.setdefault(reason, [])
        kept.extend(examples[: max(0, 5 - len(kept))])
        shown = "; ".join(examples[:5]) + (f" (+{count - 5} more)" if count > 5 else "")
        warnings.warn(f"skipped {count} row(s) with {reason}: {shown}", stacklevel=3)

    def report(self) -> dict:
        """JSON-ready summary for ``Manifest.info["skipped"]``."""
        return {k: {"count": v, "examples": self.examples.get(k, [])}
                for k, v in self.skipped.items()}


def normalize_gender(values: pd.Series, where: pd.Series | None = None) -> pd.Series:
    """Map Female/Male/F/M/woman/man (any case) to 'F'/'M'; unknown/empty to NA; else raise."""
    low = values.astype("string").str.strip().str.lower()
    out = low.map(lambda v: GENDER_VALUES.get(v, pd.NA) if isinstance(v, str) else pd.NA)
    odd = low.notna() & out.isna() & ~low.isin(MISSING_VALUES)
    if odd.any():
        first = odd.to_numpy().nonzero()[0][0]
        loc = f" at {where.iloc[first]}" if where is not None else ""
        raise CorpusError(
            f"gender value {values.iloc[first]!r}{loc} is not one of F/M/Female/Male "
            f"(or empty/Unknown for missing)"
        )
    return out.astype(object).where(out.notna(), None)


def duplicated_ids(df: pd.DataFrame, bad: BadInput, hint: str = "") -> pd.DataFrame:
    """Duplicated utterance ids are an error (or, skipping, all copies but the first go)."""
    return bad.reject(df, df["utt_id"].duplicated(keep="first").to_numpy(),
                      "duplicated utterance id", hint=hint)


def check_audio(df: pd.DataFrame, require_audio: bool, bad: BadInput) -> pd.DataFrame:
    """With `require_audio`, every `path` must be an existing file."""
    if not require_audio:
        return df
    gone = ~df["path"].map(lambda p: Path(p).is_file()).to_numpy(bool)
    first = df.loc[gone, "path"].iloc[0] if gone.any() else ""
    return bad.reject(df, gone, "missing audio file",
                      hint=f"First missing: {first}. Point the audio root at the corpus audio, "
                           "or pass require_audio=False (CLI: --no-require-audio) for a "
                           "label-only manifest.")


def soft_from_vote_columns(df: pd.DataFrame, classes: list[str], bad: BadInput) -> pd.DataFrame:
    """Add `soft_<c>` from `votes_<c>`; rows whose target-class votes are all zero are bad."""
    vote_cols = [f"votes_{c}" for c in classes]
    votes = df[vote_cols].to_numpy(np.float64)
    neg = ~np.isfinite(votes).all(1) | (votes < 0).any(1)
    df = bad.reject(df, neg, "negative or non-numeric vote counts")
    df = bad.reject(df, df[vote_cols].to_numpy(np.float64).sum(1) == 0,
                    "votes all zero (no vote for any target class)")
    try:
        soft = soft_from_votes(df[vote_cols].to_numpy(np.float64))
    except LabelError as exc:  # unreachable after the checks above; kept for clarity
        raise CorpusError(str(exc)) from exc
    df = df.copy()
    for j, c in enumerate(classes):
        df[f"soft_{c}"] = soft[:, j]
    return df


def check_soft_sums(df: pd.DataFrame, classes: list[str], bad: BadInput,
                    atol: float = 1e-4) -> pd.DataFrame:
    """Published distributional labels must be finite, non-negative and sum to 1."""
    soft = df[[f"soft_{c}" for c in classes]].to_numpy(np.float64)
    broken = ~np.isfinite(soft).all(1) | (soft < 0).any(1) | (np.abs(soft.sum(1) - 1) > atol)
    return bad.reject(df, broken, "labels that do not sum to 1 (or are not numbers)")


def numeric(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Coerce label columns to float; unparsable cells become NaN and fail the sum checks."""
    df = df.copy()
    for c in cols:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def build_manifest(df: pd.DataFrame, classes: list[str], corpus: str, bad: BadInput,
                   info: dict | None = None) -> Manifest:
    """Drop helper columns, record what was skipped, and validate; an empty result is an error."""
    if df.empty:
        raise CorpusError(f"{corpus}: no utterances left"
                          + (f" after skipping {bad.report()}" if bad.skipped else ""))
    info = dict(info or {})
    info["skipped"] = bad.report()
    info["n_utterances"] = len(df)
    out = df.drop(columns=[c for c in df.columns if c.startswith("_")])
    out["utt_id"] = out["utt_id"].astype(str)
    out["speaker"] = out["speaker"].astype(str)
    out["path"] = out["path"].astype(str)
    return Manifest(out, classes, corpus=corpus, info=info)
