"""RAVDESS (Livingstone & Russo 2018) audio-only files from their names.

Layout: ``<root>/Actor_XX/MM-VV-EE-II-SS-RR-AA.wav`` (any folder depth; any audio format
soundfile reads, e.g. ``.flac``; other files are counted in ``info["other_files"]``):
modality (03 = audio-only), vocal channel (01 speech, 02 song), emotion (01 neutral, 02 calm,
03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust, 08 surprised), intensity (01 normal,
02 strong; neutral has no strong), statement (01/02), repetition (01/02), actor (01-24; odd =
male, even = female).

Classes, in this order: the six CREMA-D/EMO-SUPERB classes in their order, then calm and
surprise: ``angry, sad, disgust, fear, neutral, happy, calm, surprise``.

Song files (vocal channel 02) are left out unless ``include_song=True`` and counted in
``info["filtered"]``. A name that breaks the scheme (wrong modality, unknown code, neutral at
strong intensity, actor not matching its ``Actor_XX`` folder) is bad input: an error naming the
file, or a counted skip with ``skip_bad=True``. Labels: one vote for the acted emotion (the
perceptual validation ratings are not part of the audio release). Folds: `splits.make_folds`.
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
from emodebias.data.corpora._base import BadInput, build_manifest, duplicated_ids
from emodebias.data.manifest import Manifest

CLASSES = ["angry", "sad", "disgust", "fear", "neutral", "happy", "calm", "surprise"]
EMOTION_CODES = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
                 "06": "fear", "07": "disgust", "08": "surprise"}
CHANNELS = {"01": "speech", "02": "song"}
INTENSITIES = {"01": "normal", "02": "strong"}
NAME = r"^(03)-(\d{2})-(\d{2})-(\d{2})-(0[12])-(0[12])-(\d{2})$"
FIELDS = ["modality", "channel_code", "emotion_code", "intensity_code", "statement",
          "repetition", "actor"]
OPTION_HELP = {
    "include_song": "Keep the sung files (vocal channel 02) too.",
    "skip_bad": "Skip and count badly named files instead of stopping (CLI: --skip-bad).",
    "folds": "Number of speaker-independent, gender-balanced folds (0: none).",
    "fold_seed": "Seed of the speaker deal into folds.",
}


def load(root: str | Path, *, include_song: bool = False, skip_bad: bool = False,
         folds: int | None = 5, fold_seed: int = 0) -> Manifest:
    """RAVDESS audio under `root` -> Manifest (8 classes, gender from the actor number)."""
    root = Path(root)
    bad = BadInput(skip_bad)
    df, other = scan_audio(root, recursive=True,
                           hint="point root at the folder holding Actor_01 ... Actor_24")
    df = parse_names(df, NAME, FIELDS, bad,
                     expected="03-01-05-02-01-01-12.wav (modality 03, 7 two-digit fields)")
    df = map_codes(df, "channel_code", CHANNELS, "vocal_channel", bad, "RAVDESS vocal channel")
    df = map_codes(df, "emotion_code", EMOTION_CODES, "intended", bad, "RAVDESS emotion code")
    df = map_codes(df, "intensity_code", INTENSITIES, "intensity", bad, "RAVDESS intensity code")
    df = bad.reject(df, ((df["intended"] == "neutral") & (df["intensity"] == "strong")).to_numpy(),
                    "strong-intensity neutral (RAVDESS has none)")
    df = bad.reject(df, (df["actor"].astype(int) == 0).to_numpy(), "actor number 00")
    folder = df["_src"].map(lambda s: Path(s).parent.name)
    in_actor_dir = folder.str.fullmatch(r"Actor_\d+")
    mismatch = in_actor_dir & (folder.str[6:].astype("string").str.zfill(2) != df["actor"])
    df = bad.reject(df, mismatch.to_numpy(), "actor number differs from its Actor_XX folder")
    df = duplicated_ids(df, bad)

    info: dict = {"source": str(root), "label": "one vote for the acted emotion",
                  "other_files": other}
    song = (df["vocal_channel"] == "song").to_numpy()
    if not include_song:
        info["filtered"] = {"song (vocal channel 02; include_song=True keeps it)": int(song.sum())}
        df = df.loc[~song]
    df = df.copy()
    df["speaker"] = df["actor"]
    df["gender"] = (df["actor"].astype(int) % 2).map({1: "M", 0: "F"})
    df = acted_labels(df, CLASSES, bad)
    keep = ["utt_id", "path", "speaker", "gender", "intended", "intensity", "vocal_channel",
            "statement", "repetition", *[f"votes_{c}" for c in CLASSES],
            *[f"soft_{c}" for c in CLASSES], "_src"]
    manifest = build_manifest(pd.DataFrame(df[keep]).reset_index(drop=True), CLASSES, "ravdess",
                              bad, info)
    return add_folds(manifest, folds, fold_seed)
