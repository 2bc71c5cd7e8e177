"""CREMA-D, official layout: AudioWAV/, processedResults/tabulatedVotes.csv, VideoDemographics.csv.

Labels come from the **audio-only** ratings (queryType 1; the row id of tabulatedVotes.csv is
100000*queryType + clip number), turned into EMO-SUPERB distributional labels with
`labels.soft_from_votes`. These votes are fewer than the ones behind the EMO-SUPERB label files,
so labels differ clip by clip from `emo_superb` (use that adapter for benchmark numbers); the
speakers and the 5 folds are the same: EMO-SUPERB's actor blocks A=1001-1018 ... E=1073-1091,
fold k tests block k and selects on block k+1 (PAPERS.md §1.4).

Demographics (VideoDemographics.csv) give gender, age, age_group (Young 20-35, Middle 36-49,
Elderly 50-75), race and ethnicity; "Unknown" becomes NA. `join_demographics` is reused by the
EMO-SUPERB adapter.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from emodebias.data.corpora._base import (
    MISSING_VALUES,
    SRC,
    BadInput,
    CorpusError,
    build_manifest,
    check_audio,
    duplicated_ids,
    normalize_gender,
    read_table,
    soft_from_vote_columns,
)
from emodebias.data.manifest import Manifest
from emodebias.data.splits import block_folds

CLASSES = ["angry", "sad", "disgust", "fear", "neutral", "happy"]
VOTE_COLUMNS = {"A": "angry", "S": "sad", "D": "disgust", "F": "fear", "N": "neutral", "H": "happy"}
INTENDED = {"ANG": "angry", "SAD": "sad", "DIS": "disgust", "FEA": "fear", "NEU": "neutral",
            "HAP": "happy"}
SPEAKER_BLOCKS = [(1001, 1018), (1019, 1036), (1037, 1054), (1055, 1072), (1073, 1091)]
AGE_GROUPS = [("Young", 20, 35), ("Middle", 36, 49), ("Elderly", 50, 75)]
QUERY_TYPES = {1: "voice", 2: "face", 3: "audio-visual"}
CLIP_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
OPTION_HELP = {
    "votes_file": "tabulatedVotes.csv (default: <root>/processedResults/tabulatedVotes.csv).",
    "demographics": "VideoDemographics.csv (default: <root>/VideoDemographics.csv).",
    "audio_dir": "Folder of the clips (default: <root>/AudioWAV).",
    "query_type": "Ratings used: 1 voice only, 2 face only, 3 audio-visual.",
    "require_audio": "Check that every audio file exists (CLI: --no-require-audio).",
    "skip_bad": "Skip and count bad rows instead of stopping (CLI: --skip-bad).",
    "audio_ext": "Extension of the clips in audio_dir (e.g. .flac for a FLAC copy).",
}


def age_group(age: float | None) -> str | None:
    """IDI age bands: Young 20-35, Middle 36-49, Elderly 50-75; other or missing ages -> None."""
    if age is None or pd.isna(age):
        return None
    for name, lo, hi in AGE_GROUPS:
        if lo <= age <= hi:
            return name
    return None


def speaker_blocks() -> list[list[str]]:
    """The EMO-SUPERB CREMA-D actor blocks A..E (fold k: test block k, dev block k+1)."""
    return [[str(s) for s in range(lo, hi + 1)] for lo, hi in SPEAKER_BLOCKS]


def read_demographics(path: str | Path) -> pd.DataFrame:
    """VideoDemographics.csv -> one row per actor id: gender, age, age_group, race, ethnicity."""
    demo = read_table(path, ("ActorID", "Age", "Sex", "Race", "Ethnicity"), "demographics table",
                      hint="pass demographics=PATH (CLI: --demographics)")
    demo["ActorID"] = demo["ActorID"].str.strip()
    dup = demo["ActorID"].duplicated(keep=False)
    if dup.any():
        raise CorpusError(f"{path}: actor(s) listed twice: {demo.loc[dup, SRC].tolist()[:5]}")
    age = pd.to_numeric(demo["Age"], errors="coerce")
    bad_age = age.isna() & ~demo["Age"].str.strip().str.lower().isin(MISSING_VALUES)
    if bad_age.any():
        raise CorpusError(f"{path}: Age is not a number at {demo.loc[bad_age, SRC].tolist()[:5]}")

    def _text(col: str) -> pd.Series:
        v = demo[col].str.strip()
        return v.where(~v.str.lower().isin(MISSING_VALUES), None)

    out = pd.DataFrame({
        "gender": normalize_gender(demo["Sex"], demo[SRC]),
        "age": age,
        "age_group": [age_group(a) for a in age],
        "race": _text("Race"),
        "ethnicity": _text("Ethnicity"),
    })
    out.index = pd.Index(demo["ActorID"], name="speaker")
    return out


def join_demographics(df: pd.DataFrame, path: str | Path, bad: BadInput,
                      gender_from_table: bool = False) -> tuple[pd.DataFrame, dict]:
    """Add age, age_group, race, ethnicity (and gender when asked) by `speaker`.

    A speaker missing from the table is bad input (skipping keeps the rows with NA
    demographics and counts them). Returns the frame and a small report (gender mismatches).
    """
    demo = read_demographics(path)
    unknown = ~df["speaker"].astype(str).isin(demo.index)
    if unknown.any():
        spk = sorted(df.loc[unknown, "speaker"].astype(str).unique())
        if not bad.skip_bad:
            raise CorpusError(
                f"{path}: speaker(s) {spk[:10]} missing from the demographics table "
                f"({int(unknown.sum())} utterance(s), e.g. {df.loc[unknown, SRC].iloc[0]}). "
                "Pass skip_bad=True (CLI: --skip-bad) to keep them with NA demographics."
            )
        bad.note("speaker missing from demographics (kept with NA demographics)",
                 int(unknown.sum()), spk[:5])
    df = df.copy()
    joined = demo.reindex(df["speaker"].astype(str))
    report: dict = {"demographics": str(path)}
    if "gender" in df.columns and not gender_from_table:
        both = df["gender"].notna().to_numpy() & joined["gender"].notna().to_numpy()
        differ = both & (df["gender"].to_numpy(object) != joined["gender"].to_numpy(object))
        report["gender_mismatch_utterances"] = int(differ.sum())
    cols = ["age", "age_group", "race", "ethnicity"] + (["gender"] if gender_from_table else [])
    for c in cols:
        values = joined[c].to_numpy(object)
        df[c] = pd.Series(values, index=df.index).where(pd.notna(values), None)
    df["age"] = pd.to_numeric(df["age"], errors="coerce")
    return df, report


def read_votes(path: str | Path, query_type: int, bad: BadInput) -> pd.DataFrame:
    """tabulatedVotes.csv rows of one query type -> utt_id, speaker, votes_<class>, intended."""
    tab = read_table(path, ("fileName", *VOTE_COLUMNS), "tabulatedVotes.csv",
                     hint="point root at the CREMA-D repository or pass votes_file=PATH")
    first = tab.columns[0]
    row_id = pd.to_numeric(tab[first], errors="coerce")
    if row_id.isna().any():
        where = tab.loc[row_id.isna(), SRC].iloc[0]
        raise CorpusError(f"{path}: row id (first column) is not a number at {where}")
    tab = tab.loc[(row_id // 100000).astype(int).to_numpy() == query_type].copy()
    if tab.empty:
        raise CorpusError(f"{path}: no rows with queryType {query_type} "
                          f"(row id = 100000*queryType + clip; types {QUERY_TYPES})")
    tab["utt_id"] = tab["fileName"].str.strip()
    parts = tab["utt_id"].str.extract(CLIP_NAME)
    tab = bad.reject(tab, parts[0].isna().to_numpy(),
                     "file name not of the form AAAA_SSS_EEE_II (e.g. 1001_DFA_ANG_XX)")
    parts = tab["utt_id"].str.extract(CLIP_NAME)
    tab["speaker"] = parts[0]
    tab["intended"] = parts[2].map(INTENDED)
    tab["intensity"] = parts[3]
    tab = bad.reject(tab, tab["intended"].isna().to_numpy(),
                     f"unknown emotion code in the file name (known: {sorted(INTENDED)})")
    tab = duplicated_ids(tab, bad)
    for code, name in VOTE_COLUMNS.items():
        tab[f"votes_{name}"] = pd.to_numeric(tab[code], errors="coerce")
    return tab


def load(root: str | Path, *, votes_file: str | Path | None = None,
         demographics: str | Path | None = None, audio_dir: str | Path | None = None,
         query_type: int = 1, require_audio: bool = True, skip_bad: bool = False,
         audio_ext: str = ".wav") -> Manifest:
    """CREMA-D from its official layout under `root` -> Manifest with 5 EMO-SUPERB folds."""
    root = Path(root)
    bad = BadInput(skip_bad)
    votes_file = Path(votes_file or root / "processedResults" / "tabulatedVotes.csv")
    demographics = Path(demographics) if demographics else root / "VideoDemographics.csv"
    audio_dir = Path(audio_dir) if audio_dir else root / "AudioWAV"
    df = read_votes(votes_file, int(query_type), bad)
    df = soft_from_vote_columns(df, CLASSES, bad)
    df["path"] = [str(audio_dir / f"{u}{audio_ext}") for u in df["utt_id"]]
    df = check_audio(df, require_audio, bad)
    df, report = join_demographics(df, demographics, bad, gender_from_table=True)
    df = df.reset_index(drop=True)
    df = pd.concat([df, block_folds(df["speaker"], speaker_blocks())], axis=1)
    keep = ["utt_id", "path", "speaker", "gender", "age", "age_group", "race", "ethnicity",
            "intended", "intensity", SRC, *[f"split_{i}" for i in range(1, 6)],
            *[f"votes_{c}" for c in CLASSES], *[f"soft_{c}" for c in CLASSES]]
    df = df[keep]
    df[[f"votes_{c}" for c in CLASSES]] = df[[f"votes_{c}" for c in CLASSES]].astype(np.int64)
    info = {"source": str(votes_file), "query_type": QUERY_TYPES.get(int(query_type)),
            "folds": {"method": "EMO-SUPERB speaker blocks", "blocks": SPEAKER_BLOCKS},
            **report}
    return build_manifest(df, CLASSES, "crema_d", bad, info)
