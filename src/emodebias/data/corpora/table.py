"""Any CSV/TSV/Parquet table a user writes -> Manifest, through a column mapping.

Required columns: the audio path (``path=``, default column ``path``) and the speaker
(``speaker=``, default ``speaker``). ``utt_id=`` names the id column; without it a column
called ``utt_id`` is used, else the audio file name without its extension (``clips/a1.wav`` ->
``a1``). ``utt_id`` and ``path`` may name the same column.

Labels come from exactly one of:
- ``soft``: distributional-label columns (must sum to 1 per row), kept as they are;
- ``votes``: annotator vote-count columns -> EMO-SUPERB labels via `labels.soft_from_votes`;
- ``label``: one categorical column (one vote per utterance, so y' = 0.95 / floor).
``soft=`` / ``votes=`` take comma-separated column names or ``prefix:<text>`` (every column
whose name starts with <text>, in file order). With none given, ``soft_*`` or else ``votes_*``
columns are picked up.

Class names: ``classes=`` (in the order of the label columns), else the label column names
without their longest common prefix that ends in ``_``, ``-``, ``.``, ``:`` or a space
(``label_angry,label_happy`` -> ``angry, happy``; ``soft_a,soft_b`` -> ``a, b``), else
(``label``) the sorted distinct values.

A ``split`` column (train/dev/test; Train/Development/Test/valid/val accepted) becomes fold 1;
existing ``split_<fold>`` columns pass through; ``make_folds=K`` adds folds to a table without
any. Relative audio paths are resolved against ``audio_root`` (default: the table's folder).
Every other column (age, race, ...) is kept.
"""

from __future__ import annotations

from pathlib import Path, PurePath

import pandas as pd

from emodebias.data.corpora._base import (
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
from emodebias.data.labels import count_votes
from emodebias.data.manifest import Manifest

SPLIT_ALIASES = {"train": "train", "training": "train", "dev": "dev", "development": "dev",
                 "valid": "dev", "validation": "dev", "val": "dev", "test": "test"}
SEPARATORS = "_-.: "
PREFIX = "prefix:"

OPTION_HELP = {
    "table": "The table file inside the root folder (when --root is a folder).",
    "utt_id": "Column of unique utterance ids (default: a utt_id column, else the audio file "
              "name without extension).",
    "path": "Column of audio paths, absolute or relative to audio_root.",
    "speaker": "Column of speaker ids (folds are speaker-independent).",
    "gender": "Column of gender (F/M/female/male/...; empty or unknown = NA); default: a "
              "gender column if present.",
    "classes": "Class names, comma-separated, in the order of the label columns.",
    "soft": "Distributional-label columns (sum to 1): a,b,c or prefix:<text>; class names are "
            "the columns minus their common prefix ending in _ - . : (label_a,label_b -> a,b).",
    "votes": "Vote-count columns -> EMO-SUPERB labels: a,b,c or prefix:<text>; classes named "
             "as for soft.",
    "label": "One categorical emotion column (one vote per utterance).",
    "split": "Column of train/dev/test (becomes fold 1); default: a split column if present.",
    "audio_root": "Folder that relative audio paths start from (default: the table's folder).",
    "require_audio": "Check that every audio file exists (CLI: --no-require-audio).",
    "skip_bad": "Skip and count bad rows instead of stopping (CLI: --skip-bad).",
    "corpus": "Corpus name stored in the manifest.",
}


def _names(value: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """'a,b,c' or ['a','b','c'] -> list; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _columns(value: str | list[str] | tuple[str, ...] | None, df: pd.DataFrame, option: str,
             where: Path) -> list[str] | None:
    """Label columns from names or ``prefix:<text>``; a prefix that matches nothing is an error."""
    if isinstance(value, str) and value.strip().startswith(PREFIX):
        start = value.strip()[len(PREFIX):]
        cols = [c for c in df.columns if c != SRC and c.startswith(start)]
        if not start or not cols:
            raise CorpusError(f"{where}: no column starts with {start!r} ({option}={value}); "
                              f"columns: {[c for c in df.columns if c != SRC]}")
        return cols
    return _names(value)


def class_names(cols: list[str]) -> list[str]:
    """Label column names without their longest common prefix that ends in a separator."""
    common = cols[0]
    for c in cols[1:]:
        while not c.startswith(common):
            common = common[:-1]
    cut = max((common.rfind(s) for s in SEPARATORS), default=-1) + 1
    return [c[cut:] for c in cols]


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
            f"(CLI: --opt label=COL; columns: {[c for c in df.columns if c != SRC]})"
        )
    kind = given[0]
    cols: list[str] | str = label if kind == "label" else (soft or votes)  # type: ignore[assignment]
    need = [cols] if isinstance(cols, str) else cols
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise CorpusError(f"{where}: lacks label column(s) {missing} ({kind}=); it has "
                          f"{[c for c in df.columns if c != SRC]}")
    return kind, cols


def _require(df: pd.DataFrame, where: Path, mapping: dict[str, str]) -> None:
    """Each mapped column must exist; the error names the option that maps it."""
    for option, col in mapping.items():
        if col not in df.columns:
            raise CorpusError(
                f"{where}: no {option} column {col!r}; map it with {option}=<column> "
                f"(CLI: --opt {option}=COL); columns: {[c for c in df.columns if c != SRC]}"
            )


def _categorical_votes(df: pd.DataFrame, col: str, wanted: list[str] | None, file: Path,
                       bad: BadInput) -> tuple[pd.DataFrame, list[str]]:
    """One categorical label column -> votes_<class> (one vote per utterance)."""
    values = df[col].astype("string").str.strip()
    df = bad.reject(df, (values.isna() | (values == "")).to_numpy(), f"empty label in {col}")
    values = df[col].astype(str).str.strip()
    class_list = wanted or sorted(values.unique())
    if len(class_list) < 2:
        raise CorpusError(f"{file}: {col} has the single class {class_list}; pass "
                          "classes=<all class names> (at least 2)")
    df = bad.reject(df, ~values.isin(class_list).to_numpy(),
                    f"unknown emotion label in {col} (known: {class_list})")
    v = count_votes(df["utt_id"].to_numpy(), df[col].astype(str).str.strip().tolist(), class_list)
    df = df.copy()
    for j, c in enumerate(class_list):
        df[f"votes_{c}"] = v[:, j]
    return df, class_list


def _numeric_labels(df: pd.DataFrame, cols: list[str], kind: str,
                    wanted: list[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """soft/votes columns -> ``<kind>_<class>`` floats, classes named by `class_names`."""
    if len(cols) < 2:
        raise CorpusError(f"{kind}= needs at least 2 label columns, got {cols}")
    class_list = wanted or class_names(cols)
    if len(class_list) != len(cols):
        raise CorpusError(f"{len(class_list)} class names for {len(cols)} {kind} columns")
    if "" in class_list or len(set(class_list)) != len(class_list):
        raise CorpusError(f"{kind} columns {cols} give class names {class_list}; pass "
                          "classes=<names> in the columns' order")
    df = numeric(df, cols)
    renamed = df[cols].copy()
    renamed.columns = [f"{kind}_{c}" for c in class_list]
    return pd.concat([df.drop(columns=cols), renamed], axis=1), class_list


def load(root: str | Path, table: str | None = None, *, utt_id: str | None = None,
         path: str = "path", speaker: str = "speaker", gender: str | None = None,
         classes: str | list[str] | None = None, soft: str | list[str] | None = None,
         votes: str | list[str] | None = None, label: str | None = None,
         split: str | None = None, audio_root: str | Path | None = None,
         require_audio: bool = True, skip_bad: bool = False, corpus: str = "table") -> Manifest:
    """A user table (`root` itself, or `root`/`table`) -> Manifest; see the module docstring."""
    file = Path(root) / table if table else Path(root)
    if file.is_dir():
        raise CorpusError(f"{file} is a folder: pass the table file as root, or "
                          "table=<file name> (CLI: --opt table=NAME)")
    bad = BadInput(skip_bad)
    df = read_table(file, (), "table")
    id_col = utt_id or ("utt_id" if "utt_id" in df.columns else None)
    _require(df, file, {"path": path, "speaker": speaker, **({"utt_id": id_col} if id_col else {})})
    kind, cols = _label_columns(df, _columns(soft, df, "soft", file),
                                _columns(votes, df, "votes", file), label, file)
    paths = df[path].astype(str).str.strip()
    ids = (df[id_col].astype(str).str.strip() if id_col
           else paths.map(lambda p: PurePath(p).stem))
    speakers = df[speaker].astype(str).str.strip()
    mapped = {c for c in (id_col, path, speaker) if c}
    df = df.drop(columns=sorted(mapped - {"utt_id", "speaker"}))
    df["utt_id"], df["_path"], df["speaker"] = ids, paths, speakers
    for what, col in (("empty audio path", "_path"), ("empty utterance id", "utt_id"),
                      ("empty speaker", "speaker")):
        df = bad.reject(df, (df[col] == "").to_numpy(), what)
    df = duplicated_ids(df, bad, hint="" if id_col else
                        "Ids default to the audio file name; map utt_id=<column> for unique ids.")
    wanted = _names(classes)
    if kind == "label":
        df, class_list = _categorical_votes(df, str(cols), wanted, file, bad)
        used = mapped | {str(cols)}
    else:
        df, class_list = _numeric_labels(df, list(cols), kind, wanted)
        used = mapped | set(cols)
    if kind == "soft":
        df = check_soft_sums(df, class_list, bad)
    else:
        df = soft_from_vote_columns(df, class_list, bad)
    df = _demographics(df, gender, file)
    df = _split_column(df, split, file, bad)
    base = Path(audio_root) if audio_root else file.parent
    df["path"] = [str(p if Path(p).is_absolute() else base / p) for p in df.pop("_path")]
    df = check_audio(df, require_audio, bad)
    return build_manifest(df, class_list, corpus, bad, {"table": str(file), "labels": kind,
                                                        "columns": sorted(used)})


def _demographics(df: pd.DataFrame, gender: str | None, file: Path) -> pd.DataFrame:
    """The gender column (mapped, or one called ``gender``) normalised to F/M/NA."""
    gcol = gender or ("gender" if "gender" in df.columns else None)
    if not gcol:
        return df
    _require(df, file, {"gender": gcol})
    df = df.copy()
    df["gender"] = normalize_gender(df.pop(gcol) if gcol != "gender" else df["gender"], df[SRC])
    return df


def _split_column(df: pd.DataFrame, split: str | None, file: Path,
                  bad: BadInput) -> pd.DataFrame:
    """A train/dev/test column (mapped, or one called ``split``) -> fold ``split_1``."""
    scol = split or ("split" if "split" in df.columns else None)
    if not scol:
        return df
    _require(df, file, {"split": scol})
    low = df[scol].astype(str).str.strip().str.lower()
    df = df.copy()
    df["split_1"] = low.map(SPLIT_ALIASES).astype(object)
    df = bad.reject(df, (df["split_1"].isna() & (low != "")).to_numpy(),
                    f"unknown split value in {scol} (known: {sorted(SPLIT_ALIASES)})")
    return df.drop(columns=[scol])
