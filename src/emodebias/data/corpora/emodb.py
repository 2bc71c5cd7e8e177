"""EmoDB (Berlin Database of Emotional Speech, Burkhardt et al. 2005) from its file names.

Layout: ``<root>/wav/SSTTTEV.wav`` (or ``root`` is the wav folder itself): SS speaker, TTT text
code, E emotion letter (German initial), V version. Any audio format soundfile reads works
(``.flac``, ``.ogg``, ...); other files are counted in ``info["other_files"]``. Speakers and
ages come from the corpus documentation: male 03 (31 y), 10 (32), 11 (26), 12 (30), 15 (25);
female 08 (34), 09 (21), 13 (32), 14 (35), 16 (31) -- all in the Young age band (20-35).

Classes, in this order: the six CREMA-D/EMO-SUPERB classes in their order, then boredom:
``angry, sad, disgust, fear, neutral, happy, boredom`` (W, T, E, A, N, F, L), so the shared
classes line up with CREMA-D across corpora.

Labels: one vote for the acted emotion (`_acted.acted_labels`). The optional ``erkennung.txt``
perception test gives, per file, only the share of 20 listeners who recognised the *intended*
emotion and a naturalness score -- not which other emotions were chosen -- so turning it into a
distribution would invent the confusions. It is kept as the ``recognition`` and ``naturalness``
columns (percent), and ``min_recognition`` keeps only files recognised at least that well (the
literature's usual subset is >= 80), counting what it drops in ``info["filtered"]``.

No official folds: 5 speaker-independent, gender-balanced folds from `splits.make_folds`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from emodebias.data.corpora._acted import (
    acted_labels,
    add_folds,
    map_codes,
    parse_names,
    scan_audio,
)
from emodebias.data.corpora._base import BadInput, CorpusError, build_manifest, duplicated_ids
from emodebias.data.corpora.crema_d import age_group
from emodebias.data.manifest import Manifest

CLASSES = ["angry", "sad", "disgust", "fear", "neutral", "happy", "boredom"]
EMOTION_LETTERS = {"W": "angry", "T": "sad", "E": "disgust", "A": "fear", "N": "neutral",
                   "F": "happy", "L": "boredom"}
SPEAKERS = {"03": ("M", 31), "08": ("F", 34), "09": ("F", 21), "10": ("M", 32), "11": ("M", 26),
            "12": ("M", 30), "13": ("F", 32), "14": ("F", 35), "15": ("M", 25), "16": ("F", 31)}
NAME = r"^(\d{2})([a-z]\d{2})([A-Za-z])([a-z])$"
RATINGS_FILE = "erkennung.txt"
OPTION_HELP = {
    "skip_bad": "Skip and count badly named files instead of stopping (CLI: --skip-bad).",
    "ratings": "The perception-test file erkennung.txt (default: <root>/erkennung.txt).",
    "min_recognition": "Keep only files recognised by at least this percentage of listeners "
                       "(the usual subset: 80).",
    "folds": "Number of speaker-independent, gender-balanced folds (0: none).",
    "fold_seed": "Seed of the speaker deal into folds.",
}


def read_ratings(path: str | Path) -> pd.DataFrame:
    """erkennung.txt (Latin-1, tab-separated, decimal commas) -> utt_id, recognition, naturalness.

    Percentages; a value that is not one raises naming the line.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, sep="\t", encoding="latin-1", dtype=str)
    except Exception as exc:  # parser errors name the line themselves
        raise CorpusError(f"{path}: cannot read the EmoDB perception ratings ({exc})") from exc
    raw.columns = [c.strip() for c in raw.columns]
    need = ["Satz", "erkannt", "natuerlich"]
    if any(c not in raw.columns for c in need):
        raise CorpusError(f"{path}: expected columns {need}, found {list(raw.columns)}")
    out = pd.DataFrame({"utt_id": raw["Satz"].str.strip().str.replace(r"\.wav$", "", regex=True)})
    for src, dst in (("erkannt", "recognition"), ("natuerlich", "naturalness")):
        text = raw[src].str.strip().str.replace(",", ".", regex=False)
        out[dst] = pd.to_numeric(text, errors="coerce")
        broken = out[dst].isna() | ~out[dst].between(0, 100)
        if broken.any():
            i = int(broken.to_numpy().nonzero()[0][0])
            raise CorpusError(f"{path} line {i + 2}: {src} value {raw[src].iloc[i]!r} is not a "
                              "percentage")
    return out.drop_duplicates("utt_id", keep="first")


def load(root: str | Path, *, skip_bad: bool = False, ratings: str | Path | None = None,
         min_recognition: float | None = None, folds: int | None = 5,
         fold_seed: int = 0) -> Manifest:
    """EmoDB under `root` -> Manifest (7 classes, gender/age from the speaker id, 5 folds)."""
    root = Path(root)
    wav_dir = root / "wav" if (root / "wav").is_dir() else root
    bad = BadInput(skip_bad)
    df, other = scan_audio(wav_dir, recursive=False,
                           hint="point root at the EmoDB folder (the one holding wav/) or at "
                                "the folder of its audio files")
    df = parse_names(df, NAME, ["speaker", "text", "letter", "version"], bad,
                     expected="03a01Wa.wav (speaker, text, emotion letter, version)")
    df = map_codes(df, "letter", EMOTION_LETTERS, "intended", bad, "EmoDB emotion letter")
    df = map_codes(df, "speaker", {s: s for s in SPEAKERS}, "speaker", bad, "EmoDB speaker id")
    df = duplicated_ids(df, bad)
    df["gender"] = df["speaker"].map(lambda s: SPEAKERS[s][0])
    df["age"] = df["speaker"].map(lambda s: SPEAKERS[s][1]).astype("int64")
    df["age_group"] = df["age"].map(age_group)
    info: dict = {"source": str(wav_dir), "label": "one vote for the acted emotion",
                  "other_files": other}

    ratings = Path(ratings) if ratings else root / RATINGS_FILE
    if ratings.is_file():
        df = df.merge(read_ratings(ratings), on="utt_id", how="left")
        info["ratings"] = str(ratings)
    else:
        df["recognition"] = df["naturalness"] = float("nan")
        info["ratings"] = None
    if min_recognition is not None:
        if info["ratings"] is None:
            raise CorpusError(f"min_recognition needs the perception ratings, not found at "
                              f"{ratings}; pass ratings=PATH to erkennung.txt")
        unrated = df["recognition"].isna()
        low = ~unrated & (df["recognition"] < min_recognition)
        info["filtered"] = {f"recognition < {min_recognition:g}%": int(low.sum()),
                            "no perception rating": int(unrated.sum())}
        df = df.loc[~(low | unrated)]

    df = acted_labels(df, CLASSES, bad)
    keep = ["utt_id", "path", "speaker", "gender", "age", "age_group", "text", "intended",
            "version", "recognition", "naturalness",
            *[f"votes_{c}" for c in CLASSES], *[f"soft_{c}" for c in CLASSES]]
    manifest = build_manifest(df[keep + ["_src"]].reset_index(drop=True), CLASSES, "emodb",
                              bad, info)
    return add_folds(manifest, folds, fold_seed)
