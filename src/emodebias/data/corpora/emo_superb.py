"""EMO-SUPERB label files (`labels_consensus_<fold>.csv`) + an audio root -> one Manifest.

The format (PAPERS.md §1.3): ``FileName, <K emotion columns>, [EmoAct, EmoVal, EmoDom,] SpkrID,
Gender, Split_Set``; one file per fold, each holding the same utterances with the fold's
Train/Development/Test assignment. The label columns are already distributional (smoothed), so
they are kept as ``soft_<class>`` unchanged. The class order comes from ``config.json``
(``categorical.emo_type``) when present, else from the CSV header. Folds become ``split_<n>``
columns; an utterance must carry the same labels, speaker and gender in every fold file.

Optional `demographics` (a CREMA-D VideoDemographics.csv, or any table with ActorID, Age, Sex,
Race, Ethnicity) adds age, age_group, race and ethnicity by speaker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
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
)
from emodebias.data.manifest import Manifest

META_COLUMNS = ("FileName", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
REQUIRED = ("FileName", "SpkrID", "Gender", "Split_Set")
SPLIT_NAMES = {"Train": "train", "Development": "dev", "Test": "test"}
FOLD_FILE = re.compile(r"^labels_consensus(?:_(\w+))?\.csv$")
CONSISTENT_ATOL = 1e-6
OPTION_HELP = {
    "labels_dir": "Folder of labels_consensus_<fold>.csv and config.json (default: root; "
                  "CLI: --labels-dir).",
    "demographics": "Speaker table (ActorID, Age, Sex, Race, Ethnicity) adding age and race "
                    "(CLI: --demographics).",
    "require_audio": "Check that every audio file exists (CLI: --no-require-audio).",
    "skip_bad": "Skip and count bad rows instead of stopping (CLI: --skip-bad).",
    "corpus": "Corpus name stored in the manifest (default: emo_superb:<labels folder>).",
}


def read_config(labels_dir: Path) -> tuple[list[str] | None, dict[str, str]]:
    """Classes and split names from an EMO-SUPERB config.json (absent -> defaults)."""
    path = labels_dir / "config.json"
    if not path.is_file():
        return None, dict(SPLIT_NAMES)
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}: not valid JSON ({exc})") from exc
    classes = cfg.get("categorical", {}).get("emo_type")
    names = dict(SPLIT_NAMES)
    for part, name in cfg.get("data_split_type", {}).items():
        names[str(name)] = {"train": "train", "dev": "dev", "test": "test"}.get(part, part)
    return (list(classes) if classes else None), names


def fold_files(labels_dir: Path) -> dict[str, Path]:
    """fold name -> labels_consensus_<fold>.csv (a lone labels_consensus.csv is fold '1')."""
    found = {}
    for p in sorted(labels_dir.glob("labels_consensus*.csv")):
        m = FOLD_FILE.match(p.name)
        if m:
            found[m.group(1) or "1"] = p
    if not found:
        raise CorpusError(f"no labels_consensus_<fold>.csv files in {labels_dir}; point "
                          "labels_dir= (CLI: --labels-dir) at the EMO-SUPERB label folder")
    return dict(sorted(found.items(), key=lambda kv: (not kv[0].isdigit(), kv[0].zfill(9))))


def _read_fold(path: Path, classes: list[str] | None, split_names: dict[str, str],
               bad: BadInput) -> tuple[pd.DataFrame, list[str]]:
    df = read_table(path, REQUIRED, "EMO-SUPERB label file")
    header = [c for c in df.columns if c not in META_COLUMNS and c != SRC]
    classes = classes or header
    missing = [c for c in classes if c not in df.columns]
    if missing:
        raise CorpusError(f"{path}: lacks emotion column(s) {missing} named in config.json")
    df["utt_id"] = df["FileName"].str.strip().map(lambda f: Path(f).stem)
    df = duplicated_ids(df, bad)
    df = df.rename(columns={c: f"soft_{c}" for c in classes})
    df = numeric(df, [f"soft_{c}" for c in classes])
    df = check_soft_sums(df, classes, bad)
    df["part"] = df["Split_Set"].str.strip().map(split_names)
    df = bad.reject(df, df["part"].isna().to_numpy(),
                    f"unknown Split_Set value (known: {sorted(split_names)})")
    return df, classes


def load(root: str | Path, labels_dir: str | Path | None = None, *,
         demographics: str | Path | None = None, require_audio: bool = True,
         skip_bad: bool = False, corpus: str | None = None) -> Manifest:
    """All fold files in `labels_dir` (default `root`) -> Manifest; audio at root/FileName."""
    root = Path(root)
    labels_dir = Path(labels_dir) if labels_dir else root
    bad = BadInput(skip_bad)
    classes, split_names = read_config(labels_dir)
    files = fold_files(labels_dir)
    base: pd.DataFrame | None = None
    rejected: set[str] = set()  # conflicting utterances skipped (skip_bad), not re-added later
    for fold, path in files.items():
        df, classes = _read_fold(path, classes, split_names, bad)
        df = df.set_index("utt_id", drop=False)
        if base is None:
            base = df.drop(columns=["part", "Split_Set"])
        else:
            base = _merge_fold(base, df, classes, path, bad, rejected)
        base[f"split_{fold}"] = df["part"].reindex(base.index).astype(object)
    assert base is not None and classes is not None
    base = base.reset_index(drop=True)
    base["speaker"] = base["SpkrID"].str.strip()
    base["gender"] = normalize_gender(base["Gender"], base[SRC])
    base["path"] = [str(root / f.strip()) for f in base["FileName"]]
    base = check_audio(base, require_audio, bad)
    info: dict = {"labels_dir": str(labels_dir),
                  "fold_files": {k: v.name for k, v in files.items()}}
    if demographics:
        from emodebias.data.corpora.crema_d import join_demographics

        base, report = join_demographics(base, demographics, bad)
        info.update(report)
    extra = [c for c in ("EmoAct", "EmoVal", "EmoDom") if c in base.columns]
    demo = [c for c in ("age", "age_group", "race", "ethnicity") if c in base.columns]
    cols = ["utt_id", "path", "speaker", "gender", *demo, *extra, SRC,
            *[f"split_{f}" for f in files], *[f"soft_{c}" for c in classes]]
    base = base[cols]
    base = numeric(base, extra)
    name = corpus or f"emo_superb:{labels_dir.resolve().name}"
    return build_manifest(base, classes, name, bad, info)


def _merge_fold(base: pd.DataFrame, df: pd.DataFrame, classes: list[str], path: Path,
                bad: BadInput, rejected: set[str]) -> pd.DataFrame:
    """Utterances must agree across fold files; new ones are appended (NA in earlier folds)."""
    common = base.index.intersection(df.index)
    soft = [f"soft_{c}" for c in classes]
    diff = np.abs(base.loc[common, soft].to_numpy() - df.loc[common, soft].to_numpy()).max(1)
    other = ((base.loc[common, "SpkrID"] != df.loc[common, "SpkrID"])
             | (base.loc[common, "Gender"] != df.loc[common, "Gender"])).to_numpy()
    conflict = (diff > CONSISTENT_ATOL) | other
    if conflict.any():
        rows = df.loc[common[conflict]]
        if not bad.skip_bad:
            raise CorpusError(
                f"{path}: {int(conflict.sum())} utterance(s) have labels, speaker or gender that "
                f"differ from the earlier fold files, e.g. {rows[SRC].iloc[0]} "
                f"({rows['utt_id'].iloc[0]})"
            )
        rejected.update(common[conflict])
        base = bad.reject(base, base.index.isin(common[conflict]),
                          "labels differing between fold files")
    new = df.loc[~df.index.isin(base.index) & ~df.index.isin(list(rejected))]
    new = new.drop(columns=["part", "Split_Set"])
    return pd.concat([base, new]) if len(new) else base
