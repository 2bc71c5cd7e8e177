"""RAVDESS adapter on small wavs the test writes with the corpus's real naming scheme."""

from __future__ import annotations

from collections import Counter
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emodebias.data.audio import load_audio
from emodebias.data.corpora import ravdess
from emodebias.data.corpora._base import CorpusError

CODE_TO_CLASS = {1: "neutral", 2: "calm", 3: "happy", 4: "sad", 5: "angry", 6: "fear",
                 7: "disgust", 8: "surprise"}
TONE = (0.1 * np.sin(np.arange(3200) / 16000 * 2 * np.pi * 220)).astype(np.float32)


def _write(root: Path, name: str, folder: str | None = None) -> Path:
    actor = name[-6:-4]
    d = root / (folder or f"Actor_{actor}")
    d.mkdir(parents=True, exist_ok=True)
    sf.write(d / name, TONE, 16000)
    return d / name


def _speech_names(actor: int) -> list[str]:
    """Every audio-only speech file RAVDESS has for one actor (60 of them)."""
    out = []
    for emo, inten, stmt, rep in product(range(1, 9), (1, 2), (1, 2), (1, 2)):
        if emo == 1 and inten == 2:
            continue  # no strong neutral
        out.append(f"03-01-{emo:02d}-{inten:02d}-{stmt:02d}-{rep:02d}-{actor:02d}.wav")
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ravdess")
    for actor in range(1, 7):
        for n in _speech_names(actor):
            _write(root, n)
    _write(root, "03-02-03-01-01-01-01.wav")  # a song file
    return root


def test_counts_gender_labels(corpus: Path) -> None:
    m = ravdess.load(corpus)
    names = [p.name for p in corpus.rglob("*.wav") if p.name.split("-")[1] == "01"]
    assert len(m) == len(names) == 6 * 60
    assert m.df["speaker"].value_counts().to_dict() == {f"{a:02d}": 60 for a in range(1, 7)}
    by_emotion = Counter(CODE_TO_CLASS[int(n.split("-")[2])] for n in names)
    assert m.df["intended"].value_counts().to_dict() == dict(by_emotion)
    assert by_emotion["neutral"] == 6 * 4 and by_emotion["angry"] == 6 * 8
    male = m.df["speaker"].astype(int) % 2 == 1
    assert (m.df.loc[male, "gender"] == "M").all() and (m.df.loc[~male, "gender"] == "F").all()
    soft = m.soft_labels()
    hot = np.array([m.classes.index(c) for c in m.df["intended"]])
    assert (soft.argmax(1) == hot).all()
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(soft.max(1), 0.95)  # EMO-SUPERB: a unanimous vote -> 0.95
    assert m.info["filtered"] == {"song (vocal channel 02; include_song=True keeps it)": 1}
    row = m.df.set_index("utt_id").loc["03-01-05-02-01-02-03"]
    assert (row["intensity"], row["statement"], row["repetition"]) == ("strong", "01", "02")
    assert len(load_audio(row["path"])) == 3200
    assert len(m.folds) == 5
    for f in m.folds:
        test = set(m.df.loc[m.df[f"split_{f}"] == "test", "speaker"])
        train = set(m.df.loc[m.df[f"split_{f}"] == "train", "speaker"])
        assert test and not test & train


def test_include_song(corpus: Path) -> None:
    m = ravdess.load(corpus, include_song=True, folds=None)
    assert len(m) == 361
    assert m.df.loc[m.df["vocal_channel"] == "song", "utt_id"].tolist() == ["03-02-03-01-01-01-01"]


@pytest.mark.parametrize(
    "name, folder, reason",
    [
        ("03-01-09-01-01-01-01.wav", None, "unknown RAVDESS emotion code"),
        ("03-01-01-02-01-01-01.wav", None, "strong-intensity neutral"),
        ("03-01-03-03-01-01-01.wav", None, "unknown RAVDESS intensity code"),
        ("03-01-03-01-01-01-02.wav", "Actor_01", "actor number differs"),
        ("01-01-03-01-01-01-01.wav", None, "file name not in corpus format"),
        ("03-01-03-01-01-01.wav", "Actor_01", "file name not in corpus format"),
    ],
)
def test_bad_names(tmp_path: Path, name: str, folder: str | None, reason: str) -> None:
    for n in _speech_names(1)[:3]:
        _write(tmp_path, n)
    _write(tmp_path, name, folder)
    with pytest.raises(CorpusError, match=rf"{reason}.*{name[:-4]}"):
        ravdess.load(tmp_path, folds=None)
    with pytest.warns(UserWarning, match="skipped 1"):
        m = ravdess.load(tmp_path, folds=None, skip_bad=True)
    assert len(m) == 3
    (skipped,) = m.info["skipped"].values()
    assert skipped["count"] == 1 and name[:-4] in skipped["examples"][0]


def test_no_files(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no audio files"):
        ravdess.load(tmp_path)


def test_flac_copy(corpus: Path, tmp_path: Path) -> None:
    """RAVDESS converted to FLAC gives the same manifest (ids, labels), paths to the .flac files."""
    for p in corpus.rglob("*.wav"):
        dst = tmp_path / p.relative_to(corpus).with_suffix(".flac")
        dst.parent.mkdir(parents=True, exist_ok=True)
        data, sr = sf.read(p)
        sf.write(dst, data, sr)
    wav, flac = ravdess.load(corpus, folds=None), ravdess.load(tmp_path, folds=None)
    assert flac.utt_ids == wav.utt_ids and len(flac) == 360
    np.testing.assert_array_equal(flac.soft_labels(), wav.soft_labels())
    assert all(p.endswith(".flac") for p in flac.df["path"])
    assert len(load_audio(flac.df["path"].iloc[0])) == 3200


def test_hidden_files_counted_and_archives_hinted(corpus: Path, tmp_path: Path) -> None:
    """macOS '._' copies are not read (counted as hidden); a zip alone says to unpack it."""
    (corpus / "Actor_01" / "._03-01-01-01-01-01-01.wav").write_bytes(b"\0\5\26\7")
    try:
        m = ravdess.load(corpus, folds=None)
    finally:
        (corpus / "Actor_01" / "._03-01-01-01-01-01-01.wav").unlink()
    assert len(m) == 360 and m.info["other_files"] == {"(hidden)": 1}
    (tmp_path / "Audio_Speech_Actors_01-24.zip").write_bytes(b"PK\3\4")
    with pytest.raises(CorpusError, match=r"no audio files \(.wav, .flac, .ogg, ...\) in .* or "
                                          r"its subfolders; it holds 1 .zip file\(s\), .*unpack "
                                          r"the archive\(s\) first\); point root at the folder "
                                          r"holding Actor_01"):
        ravdess.load(tmp_path)
