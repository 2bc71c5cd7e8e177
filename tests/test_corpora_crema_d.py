"""CREMA-D official layout: real metadata (no audio) and a small layout written by the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from emodebias.data.corpora import load_corpus
from emodebias.data.corpora._base import CorpusError
from emodebias.data.corpora.crema_d import CLASSES, age_group, load, speaker_blocks
from emodebias.data.labels import soft_from_votes
from emodebias.data.manifest import Manifest

VOTE_HEADER = '"","A","D","F","H","N","S","fileName","numResponses"\n'
DEMO = ('"ActorID","Age","Sex","Race","Ethnicity"\n1001,51,"Male","Caucasian","Not Hispanic"\n'
        '1002,21,"Female","African American","Not Hispanic"\n'
        '1020,36,"Female","Asian","Hispanic"\n')


@pytest.fixture(scope="module")
def real(shared_data) -> Manifest:
    return load(shared_data / "crema-d", require_audio=False)


def test_real_metadata(real: Manifest, shared_data) -> None:
    assert len(real) == 7442 and real.classes == CLASSES
    assert real.info["query_type"] == "voice"
    tab = pd.read_csv(shared_data / "crema-d" / "processedResults" / "tabulatedVotes.csv")
    voice = tab[tab.iloc[:, 0] // 100000 == 1].set_index("fileName")
    df = real.df.set_index("utt_id")
    # votes are the audio-only (queryType 1) rows, mapped A,S,D,F,N,H -> class order
    np.testing.assert_array_equal(df[[f"votes_{c}" for c in CLASSES]].to_numpy(),
                                  voice.loc[df.index, ["A", "S", "D", "F", "N", "H"]].to_numpy())
    np.testing.assert_allclose(real.soft_labels(), soft_from_votes(real.votes()))
    # face-only rows would give other labels: check that we did not pick them
    face = tab[tab.iloc[:, 0] // 100000 == 2].set_index("fileName")
    assert (face.loc[df.index, "A"].to_numpy() != df["votes_angry"].to_numpy()).any()
    spk = df.drop_duplicates("speaker")
    assert len(spk) == 91 and spk["gender"].value_counts().to_dict() == {"M": 48, "F": 43}
    assert df.loc["1001_DFA_ANG_XX", "intended"] == "angry"
    assert df.loc["1001_DFA_ANG_XX", "age_group"] == "Elderly"


def test_folds_identical_to_emo_superb(real: Manifest, shared_data) -> None:
    es = load_corpus("emo_superb", shared_data, labels_dir=shared_data / "emo-superb" / "crema-d",
                     require_audio=False)
    a = es.df.set_index("utt_id")
    b = real.df.set_index("utt_id").loc[a.index]
    for k in range(1, 6):
        assert (a[f"split_{k}"] == b[f"split_{k}"]).all(), k
    assert (a["gender"] == b["gender"]).all()


def test_age_groups_and_blocks() -> None:
    assert [age_group(a) for a in (20, 35, 36, 49, 50, 75, 19, 80, None)] == [
        "Young", "Young", "Middle", "Middle", "Elderly", "Elderly", None, None, None]
    blocks = speaker_blocks()
    assert [len(b) for b in blocks] == [18, 18, 18, 18, 19]
    assert blocks[0][0] == "1001" and blocks[4][-1] == "1091"


def _layout(root: Path, rows: list[str], demo: str = DEMO, wavs: bool = True) -> Path:
    (root / "processedResults").mkdir(parents=True)
    lines = [f'"{100000 * q + i + 1}",{r},9' for q in (1, 2) for i, r in enumerate(rows)]
    # the face-only copy (queryType 2) gets different votes: all for neutral
    lines[len(rows):] = [f'"{200000 + i + 1}",0,0,0,0,9,0,{r.split(",")[-1]},9'
                         for i, r in enumerate(rows)]
    (root / "processedResults" / "tabulatedVotes.csv").write_text(VOTE_HEADER + "\n".join(lines))
    (root / "VideoDemographics.csv").write_text(demo)
    if wavs:
        (root / "AudioWAV").mkdir()
        for r in rows:
            sf.write(root / "AudioWAV" / f"{r.split(',')[-1].strip(chr(34))}.wav",
                     np.zeros(1600, dtype=np.float32), 16000)
    return root


ROWS = ['2,1,1,3,3,0,"1001_DFA_ANG_XX"', '0,0,0,9,0,0,"1002_IEO_HAP_HI"',
        '0,0,0,0,1,5,"1020_TIE_SAD_LO"']


def test_small_layout_with_audio(tmp_path: Path) -> None:
    m = load_corpus("crema_d", _layout(tmp_path, ROWS))
    df = m.df.set_index("utt_id")
    # votes A,D,F,H,N,S = 2,1,1,3,3,0 -> class order angry,sad,disgust,fear,neutral,happy
    assert df.loc["1001_DFA_ANG_XX", [f"votes_{c}" for c in CLASSES]].tolist() == [2, 0, 1, 1, 3, 3]
    np.testing.assert_allclose(df.loc["1001_DFA_ANG_XX", [f"soft_{c}" for c in CLASSES]],
                               [0.198, 0.01, 0.104, 0.104, 0.292, 0.292])
    assert df.loc["1002_IEO_HAP_HI", "soft_happy"] == pytest.approx(0.95)
    assert df.loc["1020_TIE_SAD_LO", ["gender", "race", "age_group", "ethnicity"]].tolist() == [
        "F", "Asian", "Middle", "Hispanic"]
    assert df.loc["1001_DFA_ANG_XX", "split_1"] == "test"
    assert df.loc["1020_TIE_SAD_LO", "split_1"] == "dev"
    assert df.loc["1020_TIE_SAD_LO", "split_2"] == "test"


def test_missing_audio(tmp_path: Path) -> None:
    root = _layout(tmp_path, ROWS)
    (root / "AudioWAV" / "1002_IEO_HAP_HI.wav").unlink()
    with pytest.raises(CorpusError, match=r"missing audio file.*tabulatedVotes.csv line 3 "
                                          r"\(1002_IEO_HAP_HI\).*AudioWAV/1002_IEO_HAP_HI.wav"):
        load(root)
    with pytest.warns(UserWarning):
        m = load(root, skip_bad=True)
    assert len(m) == 2 and m.info["skipped"]["missing audio file"]["count"] == 1
    assert len(load(root, require_audio=False)) == 3


@pytest.mark.parametrize(("row", "match"), [
    ('0,0,0,0,0,0,"1001_DFA_NEU_XX"', r"votes all zero.*line 5 \(1001_DFA_NEU_XX\)"),
    ('1,0,0,0,0,0,"1001_DFA_XYZ_XX"', r"unknown emotion code.*line 5 \(1001_DFA_XYZ_XX\)"),
    ('1,0,0,0,0,0,"1001_DFA_ANG_XX"', r"duplicated utterance id.*line 5"),
    ('1,0,0,0,0,0,"clip42"', r"file name not of the form.*line 5"),
    ('1,0,0,0,0,0,"9999_DFA_ANG_XX"', r"speaker\(s\) \['9999'\] missing from the demographics"),
])
def test_bad_rows(tmp_path: Path, row: str, match: str) -> None:
    root = _layout(tmp_path, [*ROWS, row], wavs=False)
    with pytest.raises(CorpusError, match=match):
        load(root, require_audio=False)
    with pytest.warns(UserWarning, match="1"):
        m = load(root, require_audio=False, skip_bad=True)
    assert sum(v["count"] for v in m.info["skipped"].values()) == 1


def test_missing_columns(tmp_path: Path) -> None:
    root = _layout(tmp_path, ROWS, demo='"ActorID","Age","Sex"\n1001,51,"Male"\n', wavs=False)
    with pytest.raises(CorpusError, match=r"VideoDemographics.csv: demographics table lacks "
                                          r"required column\(s\) \['Race', 'Ethnicity'\]"):
        load(root, require_audio=False)
    with pytest.raises(CorpusError, match="tabulatedVotes.csv not found: .*nothing/processedResu"
                                          "lts/tabulatedVotes.csv; point root at the CREMA-D"):
        load(tmp_path / "nothing", require_audio=False)
    with pytest.raises(CorpusError, match="no rows with queryType 3"):
        load(_layout(tmp_path / "b", ROWS, wavs=False), require_audio=False, query_type=3)
