"""MSP-Podcast: Labels/labels_consensus.csv (+ labels_detailed.csv votes) and Audios/.

Classes follow the EMO-SUPERB Primary config (PAPERS.md §1.2): angry, sad, disgust, contempt,
fear, neutral, surprise, happy (codes A, S, D, C, F, N, U, H). "Other" (O) and "no agreement"
(X) are not target classes:

- with ``labels_detailed.csv`` (one row per annotator; the vote in ``EmoClass_Major`` or
  ``EmoClass``, as a code or a name such as ``Angry``; ``Other-...`` answers are dropped), the
  distributional label is built from the target-class votes, so X utterances keep their
  (ambiguous) distribution; utterances with no target-class vote are dropped and counted;
- without it, the consensus class is one vote (y' = 0.95 / floor) and O/X utterances are
  dropped and counted.

Official partitions become folds: ``split_1`` = Train/Development/Test1, and, when the file has
Test2 rows, ``split_2`` = the same Train/Development with Test2 as test. Other partitions (e.g.
the unlabelled Test3) are in no fold.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from emodebias.data.corpora._base import (
    SRC,
    BadInput,
    CorpusError,
    build_manifest,
    check_audio,
    duplicated_ids,
    normalize_gender,
    numeric,
    read_table,
    soft_from_vote_columns,
)
from emodebias.data.labels import count_votes
from emodebias.data.manifest import Manifest

CLASSES = ["angry", "sad", "disgust", "contempt", "fear", "neutral", "surprise", "happy"]
CODES = {"A": "angry", "S": "sad", "D": "disgust", "C": "contempt", "F": "fear", "N": "neutral",
         "U": "surprise", "H": "happy"}
OTHER_CODES = {"O", "X"}
REQUIRED = ("FileName", "EmoClass", "SpkrID", "Gender", "Split_Set")
PARTS = {"Train": "train", "Development": "dev"}
TESTS = {"Test1": "1", "Test2": "2"}
UNUSED_PARTS = {"Test3"}
OPTION_HELP = {
    "labels_dir": "Folder of labels_consensus.csv (and labels_detailed.csv); default "
                  "<root>/Labels (CLI: --labels-dir).",
    "audio_dir": "Folder of the audio files (default: <root>/Audios).",
    "use_detailed": "Build labels from the per-annotator votes in labels_detailed.csv.",
    "require_audio": "Check that every audio file exists (CLI: --no-require-audio).",
    "skip_bad": "Skip and count bad rows instead of stopping (CLI: --skip-bad).",
}


def emotion_of(value: str) -> str | None:
    """'A' / 'Angry' / 'angry' -> 'angry'; 'O', 'X', 'Other-...', 'No agreement' -> 'other';
    anything else -> None (unknown)."""
    v = str(value).strip()
    if v.upper() in CODES:
        return CODES[v.upper()]
    low = v.lower()
    if low in CLASSES:
        return low
    if v.upper() in OTHER_CODES or low.startswith("other") or low in {"no agreement", ""}:
        return "other"
    return None


def _votes_from_detailed(path: Path, bad: BadInput) -> tuple[pd.DataFrame, set[str], dict]:
    """Per-annotator rows -> vote counts per utterance, the annotated ids, and a report."""
    det = read_table(path, ("FileName",), "labels_detailed.csv")
    col = next((c for c in ("EmoClass_Major", "EmoClass") if c in det.columns), None)
    if col is None:
        raise CorpusError(f"{path}: needs a vote column EmoClass_Major (or EmoClass); "
                          f"it has {list(det.columns)}")
    det["utt_id"] = det["FileName"].str.strip().map(lambda f: Path(f).stem)
    det["emotion"] = det[col].map(emotion_of)
    det = bad.reject(det, det["emotion"].isna().to_numpy(),
                     f"unknown emotion code in {col} (known: {sorted(CODES)} or class names, "
                     "O/X/Other-... for other)")
    target = det[det["emotion"] != "other"]
    votes = count_votes(target["utt_id"].to_numpy(), target["emotion"].tolist(), CLASSES)
    out = pd.DataFrame(votes, columns=[f"votes_{c}" for c in CLASSES],
                       index=pd.Index(pd.unique(target["utt_id"].to_numpy(object)), name="utt_id"))
    report = {"detailed_rows": len(det),
              "other_votes_dropped": int((det["emotion"] == "other").sum()),
              "annotated_utterances": int(det["utt_id"].nunique())}
    return out, set(det["utt_id"]), report


def load(root: str | Path, labels_dir: str | Path | None = None, *,
         audio_dir: str | Path | None = None, use_detailed: bool = True,
         require_audio: bool = True, skip_bad: bool = False) -> Manifest:
    """MSP-Podcast under `root` (Labels/, Audios/) -> Manifest with official-partition folds."""
    root = Path(root)
    labels_dir = Path(labels_dir) if labels_dir else root / "Labels"
    audio_dir = Path(audio_dir) if audio_dir else root / "Audios"
    bad = BadInput(skip_bad)
    df = read_table(labels_dir / "labels_consensus.csv", REQUIRED, "labels_consensus.csv",
                    hint="point root at the MSP-Podcast folder (Labels/, Audios/) or pass "
                         "labels_dir= (CLI: --labels-dir)")
    df["utt_id"] = df["FileName"].str.strip().map(lambda f: Path(f).stem)
    df = duplicated_ids(df, bad)
    df["consensus"] = df["EmoClass"].map(emotion_of)
    df = bad.reject(df, df["consensus"].isna().to_numpy(),
                    f"unknown emotion code in EmoClass (known: {sorted(CODES)}, O, X)")
    split = df["Split_Set"].str.strip()
    known = set(PARTS) | set(TESTS) | UNUSED_PARTS
    df = bad.reject(df, ~split.isin(known).to_numpy(),
                    f"unknown Split_Set value (known: {sorted(known)})")
    present = set(df["Split_Set"].str.strip())  # folds follow the file, before any dropping
    folds = [f for t, f in TESTS.items() if t in present] or ["1"]
    info: dict = {"labels_dir": str(labels_dir), "dropped": {}}
    detailed = labels_dir / "labels_detailed.csv"
    if use_detailed and detailed.is_file():
        votes, annotated, report = _votes_from_detailed(detailed, bad)
        info.update(report, votes="labels_detailed.csv")
        df = bad.reject(df, ~df["utt_id"].isin(annotated).to_numpy(),
                        "no annotations in labels_detailed.csv")
        votes = votes.reindex(df["utt_id"]).fillna(0.0)
        no_target = votes.sum(axis=1).to_numpy() == 0
        info["dropped"]["only_other_votes"] = int(no_target.sum())
        df = df.loc[~no_target].copy()
        votes = votes.loc[~no_target]
        for c in votes.columns:
            df[c] = votes[c].to_numpy()
    else:
        other = (df["consensus"] == "other").to_numpy()
        info["dropped"]["consensus_other_or_no_agreement"] = int(other.sum())
        info["votes"] = "consensus class (one vote)"
        df = df.loc[~other].copy()
        for c in CLASSES:
            df[f"votes_{c}"] = (df["consensus"] == c).astype(float).to_numpy()
    df = soft_from_vote_columns(df, CLASSES, bad)
    split = df["Split_Set"].str.strip()
    for fold in folds:
        test = next(t for t, f in TESTS.items() if f == fold)
        df[f"split_{fold}"] = split.map({**PARTS, test: "test"}).astype(object)
    info["dropped"]["unused_partitions"] = int(split.isin(UNUSED_PARTS).sum())
    df["speaker"] = df["SpkrID"].str.strip().replace({"Unknown": "unknown", "": "unknown"})
    df["gender"] = normalize_gender(df["Gender"], df[SRC])
    df["path"] = [str(audio_dir / f.strip()) for f in df["FileName"]]
    df = check_audio(df, require_audio, bad)
    dims = [c for c in ("EmoAct", "EmoVal", "EmoDom") if c in df.columns]
    df = numeric(df, dims)
    cols = ["utt_id", "path", "speaker", "gender", "consensus", *dims, SRC,
            *[f"split_{f}" for f in folds], *[f"votes_{c}" for c in CLASSES],
            *[f"soft_{c}" for c in CLASSES]]
    return build_manifest(df[cols], CLASSES, "msp_podcast", bad, info)

