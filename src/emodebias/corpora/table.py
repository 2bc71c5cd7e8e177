"""Any CSV/TSV/Parquet table a user writes -> Manifest, through a column mapping.

Labels come from exactly one of:
- ``soft``: distributional-label columns (must sum to 1 per row), kept as they are;
- ``votes``: annotator vote-count columns -> EMO-SUPERB labels via `labels.soft_from_votes`;
- ``label``: one categorical column (one vote per utterance, so y' = 0.95 / floor).
With none given, ``soft_*`` or else ``votes_*`` columns are picked up. Class names come from
``classes`` (in the order of the label columns), else from the column names without their
``soft_`` / ``votes_`` prefix, else (``label``) the sorted distinct values.

A ``split`` column (train/dev/test; Train/Development/Test/valid/val accepted) becomes fold 1;
existing ``split_<fold>`` columns pass through. Relative audio paths are resolved against
``audio_root`` (default: the table's folder). Every other column (age, race, ...) is kept.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from emodebias.corpora._base import (
    SRC,
    BadInput,
    CorpusError,
    build_manifest,
    check_audio,
    check_soft_sums,
    duplicated_ids,
    normalize_gender,
    numeric,
    read_table,
    soft_from_vote_columns,
)
from emodebias.labels import count_votes
from emodebias.manifest import Manifest

SPLIT_ALIASES = {"train": "train", "training": "train", "dev": "dev", "development": "dev",
                 "valid": "dev", "validation": "dev", "val": "dev", "test": "test"}


def _names(value: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """'a,b,c' or ['a','b','c'] -> list; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _strip_prefix(cols: list[str], prefix: str) -> list[str]:
    return [c[len(prefix):] if c.startswith(prefix) else c for c in cols]


def _label_columns(df: pd.DataFrame, soft: list[str] | None, votes: list[str] | None,
                   label: str | None, where: Path) -> tuple[str, list[str] | str]:
    given = [k for k, v in (("soft", soft), ("votes", votes), ("label", label)) if v]
    if len(given) > 1:
        raise CorpusError(f"give only one of soft=, votes=, label= (got {given})")
    if not given:
        for kind in ("soft", "votes"):
            auto = [c for c in df.columns if c.startswith(f"{kind}_")]
            if auto:
                return kind, auto
        raise CorpusError(
            f"{where}: no label columns: pass soft=<cols>, votes=<cols> or label=<col> "
            f"(columns: {[c for c in df.columns if c != SRC]})"
        )
    kind = given[0]
    cols: list[str] | str = label if kind == "label" else (soft or votes)  # type: ignore[assignment]
    need = [cols] if isinstance(cols, str) else cols
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise CorpusError(f"{where}: lacks label column(s) {missing}; it has "
                          f"{[c for c in df.columns if c != SRC]}")
    return kind, cols


def load(root: str | Path, table: str | None = None, *, utt_id: str = "utt_id",
         path: str = "path", speaker: str = "speaker", gender: str | None = None,
         classes: str | list[str] | None = None, soft: str | list[str] | None = None,
         votes: str | list[str] | None = None, label: str | None = None,
         split: str | None = None, audio_root: str | Path | None = None,
         require_audio: bool = True, skip_bad: bool = False, corpus: str = "table") -> Manifest:
    """A user table (`root` itself, or `root`/`table`) -> Manifest; see the module docstring."""
    file = Path(root) / table if table else Path(root)
    bad = BadInput(skip_bad)
    df = read_table(file, (utt_id, path, speaker), "table")
    kind, cols = _label_columns(df, _names(soft), _names(votes), label, file)
    wanted = _names(classes)
    used = {utt_id, path, speaker}
    df = df.rename(columns={utt_id: "_utt", path: "_path", speaker: "_speaker"})
    df["utt_id"], df["speaker"] = df.pop("_utt").astype(str).str.strip(), df.pop("_speaker")
    df = duplicated_ids(df, bad)
    if kind == "label":
        values = df[cols].astype("string").str.strip()
        df = bad.reject(df, (values.isna() | (values == "")).to_numpy(), f"empty label in {cols}")
        values = df[cols].astype(str).str.strip()
        class_list = wanted or sorted(values.unique())
        if len(class_list) < 2:
            raise CorpusError(f"{file}: {cols} has the single class {class_list}; pass "
                              "classes=<all class names> (at least 2)")
        df = bad.reject(df, ~values.isin(class_list).to_numpy(),
                        f"unknown emotion label in {cols} (known: {class_list})")
        v = count_votes(df["utt_id"].to_numpy(), df[cols].astype(str).str.strip().tolist(),
                        class_list)
        for j, c in enumerate(class_list):
            df[f"votes_{c}"] = v[:, j]
        used.add(cols)
    else:
        prefix = f"{kind}_"
        class_list = wanted or _strip_prefix(list(cols), prefix)
        if len(class_list) != len(cols):
            raise CorpusError(f"{len(class_list)} class names for {len(cols)} {kind} columns")
        src = list(cols)
        df = numeric(df, src)
        renamed = df[src].copy()
        renamed.columns = [f"{prefix}{c}" for c in class_list]
        df = pd.concat([df.drop(columns=src), renamed], axis=1)
        used.update(src)
    if kind == "soft":
        df = check_soft_sums(df, class_list, bad)
    else:
        df = soft_from_vote_columns(df, class_list, bad)
    gcol = gender or ("gender" if "gender" in df.columns else None)
    if gcol:
        if gcol not in df.columns:
            raise CorpusError(f"{file}: lacks the gender column {gcol!r}")
        df["gender"] = normalize_gender(df.pop(gcol) if gcol != "gender" else df["gender"],
                                        df[SRC])
    scol = split or ("split" if "split" in df.columns else None)
    if scol:
        if scol not in df.columns:
            raise CorpusError(f"{file}: lacks the split column {scol!r}")
        low = df[scol].astype(str).str.strip().str.lower()
        df["split_1"] = low.map(SPLIT_ALIASES).astype(object)
        df = bad.reject(df, (df["split_1"].isna() & (low != "")).to_numpy(),
                        f"unknown split value in {scol} (known: {sorted(SPLIT_ALIASES)})")
        df = df.drop(columns=[scol])
    base = Path(audio_root) if audio_root else file.parent
    df["path"] = [str(p if Path(p).is_absolute() else base / p)
                  for p in df.pop("_path").astype(str).str.strip()]
    df = check_audio(df, require_audio, bad)
    return build_manifest(df, class_list, corpus, bad, {"table": str(file), "labels": kind,
                                                        "columns": sorted(used)})
