"""EMO-SUPERB label files -> Manifest: real CREMA-D files (§1.4) and small written ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from emodebias.data.corpora import load_corpus
from emodebias.data.corpora._base import CorpusError
from emodebias.data.corpora.emo_superb import load
from emodebias.data.manifest import Manifest

CLASSES = ["angry", "sad", "disgust", "fear", "neutral", "happy"]
HEADER = "FileName,angry,sad,disgust,fear,neutral,happy,SpkrID,Gender,Split_Set\n"
ROWS = [
    "1001_DFA_ANG_XX.wav,0.95,0.01,0.01,0.01,0.01,0.01,1001,Male,Train",
    "1002_DFA_SAD_XX.wav,0.01,0.95,0.01,0.01,0.01,0.01,1002,Female,Train",
    "1003_DFA_HAP_XX.wav,0.198,0.104,0.104,0.292,0.292,0.01,1003,Female,Development",
    "1004_DFA_NEU_XX.wav,0.01,0.01,0.01,0.01,0.95,0.01,1004,Male,Test",
]


@pytest.fixture(scope="module")
def real(shared_data) -> Manifest:
    return load(shared_data / "nowhere", shared_data / "emo-superb" / "crema-d",
                demographics=shared_data / "crema-d" / "VideoDemographics.csv",
                require_audio=False)


def test_real_crema_d_files(real: Manifest, shared_data) -> None:
    assert len(real) == 7442 and real.classes == CLASSES
    assert real.folds == ["1", "2", "3", "4", "5"]
    assert real.df["gender"].value_counts().to_dict() == {"M": 3930, "F": 3512}
    assert real.df["speaker"].nunique() == 91
    # PAPERS.md §1.4: test speakers = block k, dev = block k+1, sizes per fold
    sizes = {1: (1463, 889, 574, 1470, 4509), 2: (1470, 574, 896, 1476, 4496),
             3: (1476, 656, 820, 1476, 4490), 4: (1476, 574, 902, 1557, 4409),
             5: (1557, 819, 738, 1463, 4422)}
    blocks = [(1001, 1018), (1019, 1036), (1037, 1054), (1055, 1072), (1073, 1091)]
    spk = real.df["speaker"].astype(int)
    for k, (n_test, n_f, n_m, n_dev, n_train) in sizes.items():
        col = real.df[f"split_{k}"]
        test = real.df[col == "test"]
        assert (len(test), (test.gender == "F").sum(), (test.gender == "M").sum()) == (
            n_test, n_f, n_m)
        assert ((col == "dev").sum(), (col == "train").sum()) == (n_dev, n_train)
        lo, hi = blocks[k - 1]
        assert spk[col == "test"].between(lo, hi).all()
        lo, hi = blocks[k % 5]
        assert spk[col == "dev"].between(lo, hi).all()
    # labels are the file's values, unchanged
    raw = pd.read_csv(shared_data / "emo-superb" / "crema-d" / "labels_consensus_3.csv")
    raw["utt_id"] = raw.FileName.str[:-4]
    mine = real.df.set_index("utt_id").loc[raw.utt_id, [f"soft_{c}" for c in CLASSES]]
    np.testing.assert_array_equal(mine.to_numpy(), raw[CLASSES].to_numpy())
    assert real.df["path"].iloc[0].endswith(".wav")


def test_real_demographics_join(real: Manifest) -> None:
    by_spk = real.df.drop_duplicates("speaker").set_index("speaker")
    assert by_spk.loc["1001", ["age", "age_group", "race"]].tolist() == [51, "Elderly", "Caucasian"]
    assert by_spk.loc["1002", ["age", "age_group"]].tolist() == [21, "Young"]
    assert set(real.df["age_group"].dropna()) == {"Young", "Middle", "Elderly"}
    assert real.df["race"].isna().sum() > 0  # the actor with race "Unknown" becomes NA
    assert real.info["gender_mismatch_utterances"] == 0
    assert real.info["skipped"] == {}


def _write(tmp: Path, rows: list[str], name: str = "labels_consensus_1.csv",
           header: str = HEADER) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / name).write_text(header + "\n".join(rows) + "\n")
    return tmp


def _wavs(root: Path, names: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        sf.write(root / n, np.zeros(1600, dtype=np.float32), 16000)


def test_small_files_with_audio_and_header_classes(tmp_path: Path) -> None:
    labels = _write(tmp_path / "labels", ROWS)
    _write(labels, [*ROWS[:2], ROWS[2].replace("Development", "Test")],
           name="labels_consensus_2.csv")
    audio = tmp_path / "audio"
    _wavs(audio, [r.split(",")[0] for r in ROWS])
    m = load_corpus("emo_superb", audio, labels_dir=labels)
    assert m.classes == CLASSES  # no config.json: from the CSV header
    assert m.folds == ["1", "2"]
    df = m.df.set_index("utt_id")
    assert df.loc["1003_DFA_HAP_XX", "split_1"] == "dev"
    assert df.loc["1003_DFA_HAP_XX", "split_2"] == "test"
    assert pd.isna(df.loc["1004_DFA_NEU_XX", "split_2"])  # absent from fold 2's file
    assert df["gender"].tolist() == ["M", "F", "F", "M"]
    assert Path(df.loc["1001_DFA_ANG_XX", "path"]).is_file()


def test_config_json_sets_class_order(tmp_path: Path) -> None:
    labels = _write(tmp_path, ROWS)
    order = ["happy", "neutral", "fear", "disgust", "sad", "angry"]
    (labels / "config.json").write_text(json.dumps({"categorical": {"emo_type": order}}))
    m = load(tmp_path, require_audio=False)
    assert m.classes == order
    assert m.soft_labels()[0].tolist() == [0.01, 0.01, 0.01, 0.01, 0.01, 0.95]
    (labels / "config.json").write_text(json.dumps({"categorical": {"emo_type": ["bored"]}}))
    with pytest.raises(CorpusError, match=r"labels_consensus_1.csv: lacks emotion column.*bored"):
        load(tmp_path, require_audio=False)


def test_missing_audio_error_and_skip(tmp_path: Path) -> None:
    labels = _write(tmp_path / "labels", ROWS)
    audio = tmp_path / "audio"
    _wavs(audio, [r.split(",")[0] for r in ROWS[:3]])
    with pytest.raises(CorpusError, match=r"missing audio file.*line 5 \(1004_DFA_NEU_XX\)"):
        load(audio, labels)
    with pytest.warns(UserWarning, match="skipped 1"):
        m = load(audio, labels, skip_bad=True)
    assert len(m) == 3 and m.info["skipped"]["missing audio file"]["count"] == 1


@pytest.mark.parametrize(("row", "match"), [
    ("1001_DFA_ANG_XX.wav,0.01,0.95,0.01,0.01,0.01,0.01,1001,Male,Train",
     r"duplicated utterance id.*line 6 \(1001_DFA_ANG_XX\)"),
    ("1005_DFA_ANG_XX.wav,0.5,0.01,0.01,0.01,0.01,0.01,1005,Male,Train",
     r"do not sum to 1.*line 6 \(1005_DFA_ANG_XX\)"),
    ("1005_DFA_ANG_XX.wav,abc,0.95,0.01,0.01,0.01,0.01,1005,Male,Train",
     r"do not sum to 1.*line 6"),
    ("1005_DFA_ANG_XX.wav,0.95,0.01,0.01,0.01,0.01,0.01,1005,Male,Validation",
     r"unknown Split_Set.*line 6"),
])
def test_bad_rows_named_or_skipped(tmp_path: Path, row: str, match: str) -> None:
    labels = _write(tmp_path, [*ROWS, row])
    with pytest.raises(CorpusError, match=match):
        load(tmp_path, require_audio=False)
    with pytest.warns(UserWarning):
        m = load(tmp_path, require_audio=False, skip_bad=True)
    assert len(m) == 4 and sum(v["count"] for v in m.info["skipped"].values()) == 1
    assert labels.is_dir()


def test_bad_gender_and_missing_column(tmp_path: Path) -> None:
    _write(tmp_path / "a", [ROWS[0].replace("Male", "Robot")])
    with pytest.raises(CorpusError, match="'Robot' at labels_consensus_1.csv line 2"):
        load(tmp_path / "a", require_audio=False)
    _write(tmp_path / "b", [r.rsplit(",", 1)[0] for r in ROWS],
           header=HEADER.replace(",Split_Set", ""))
    with pytest.raises(CorpusError, match=r"lacks required column\(s\) \['Split_Set'\]"):
        load(tmp_path / "b", require_audio=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"no labels_consensus_<fold>.csv files in .*empty; "
                                          r"point labels_dir= \(CLI: --labels-dir\)"):
        load(tmp_path / "empty")


def test_folds_must_agree(tmp_path: Path) -> None:
    _write(tmp_path, ROWS)
    changed = [ROWS[0].replace("0.95,0.01", "0.01,0.95", 1), *ROWS[1:]]
    _write(tmp_path, changed, name="labels_consensus_2.csv")
    with pytest.raises(CorpusError, match=r"labels_consensus_2.csv: 1 utterance.*1001_DFA_ANG_XX"):
        load(tmp_path, require_audio=False)
    with pytest.warns(UserWarning):
        m = load(tmp_path, require_audio=False, skip_bad=True)
    assert "1001_DFA_ANG_XX" not in m.utt_ids and len(m) == 3


def test_speaker_missing_from_demographics(tmp_path: Path, shared_data) -> None:
    demo = tmp_path / "demo.csv"
    shutil.copy(shared_data / "crema-d" / "VideoDemographics.csv", demo)
    _write(tmp_path / "l", [*ROWS, "9999_DFA_ANG_XX.wav,0.95,0.01,0.01,0.01,0.01,0.01,9999,Male,"
                                   "Train"])
    with pytest.raises(CorpusError, match=r"speaker\(s\) \['9999'\] missing from the demograph"):
        load(tmp_path / "l", require_audio=False, demographics=demo)
    m = load(tmp_path / "l", require_audio=False, demographics=demo, skip_bad=True)
    row = m.df.set_index("utt_id").loc["9999_DFA_ANG_XX"]
    assert pd.isna(row["age"]) and pd.isna(row["race"]) and len(m) == 5
    assert list(m.info["skipped"].values())[0]["count"] == 1
