"""EmoDB adapter on the real shared files, counts checked by an independent parse of the names."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emodebias.data.audio import load_audio
from emodebias.data.corpora import emodb, load_corpus
from emodebias.data.corpora._base import CorpusError

MALE = {"03", "10", "11", "12", "15"}
FEMALE = {"08", "09", "13", "14", "16"}
LETTER_TO_CLASS = dict(zip("WTEANFL", emodb.CLASSES, strict=True))


@pytest.fixture(scope="module")
def real(shared_data: Path) -> tuple[Path, emodb.Manifest]:
    root = shared_data / "emodb"
    return root, emodb.load(root)


def test_counts_match_independent_parse(real) -> None:
    root, m = real
    names = [n for n in (root / "wav").iterdir() if n.suffix == ".wav"]
    hits = [re.fullmatch(r"(\d\d)\w{3}(\w)\w\.wav", n.name) for n in names]
    spk = Counter(h.group(1) for h in hits)
    emo = Counter(LETTER_TO_CLASS[h.group(2)] for h in hits)
    assert len(m) == len(names) == 535
    assert m.df["speaker"].nunique() == 10
    assert m.df["speaker"].value_counts().to_dict() == dict(spk)
    assert m.df["intended"].value_counts().to_dict() == dict(emo)
    assert emo["angry"] == 127 and emo["disgust"] == 46  # published EmoDB counts
    genders = m.df.groupby("speaker")["gender"].agg(set).to_dict()
    assert {s for s, g in genders.items() if g == {"M"}} == MALE
    assert {s for s, g in genders.items() if g == {"F"}} == FEMALE
    assert (m.df["gender"] == "M").sum() == sum(spk[s] for s in MALE)
    assert set(m.df["age_group"]) == {"Young"}
    assert m.df.loc[m.df["speaker"] == "09", "age"].iloc[0] == 21


def test_labels_are_smoothed_one_vote(real) -> None:
    _, m = real
    soft = m.soft_labels()
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-12)
    k = len(m.classes)
    a = 0.05 * k / (k - 1)  # EMO-SUPERB smoothing, computed here from the formula
    letters = m.df["utt_id"].str[5]
    hot = np.array([m.classes.index(LETTER_TO_CLASS[x]) for x in letters])
    np.testing.assert_allclose(soft[np.arange(len(m)), hot], 1 - a + a / k)
    np.testing.assert_allclose(np.sort(soft, 1)[:, :-1], a / k)
    assert (m.votes().sum(1) == 1).all()


def test_ratings_match_file(real) -> None:
    root, m = real
    rows = {}
    for line in (root / "erkennung.txt").read_text(encoding="latin-1").splitlines()[1:]:
        _, name, rec, nat = line.split()
        rows[name[:-4]] = (float(rec.replace(",", ".")), float(nat.replace(",", ".")))
    got = m.df.set_index("utt_id")[["recognition", "naturalness"]]
    for u in got.index:
        assert tuple(got.loc[u]) == rows[u]
    m90 = emodb.load(root, min_recognition=90, folds=None)
    expect = sum(rows[u][0] >= 90 for u in got.index)
    assert len(m90) == expect < 535
    assert m90.info["filtered"]["recognition < 90%"] == 535 - expect


def test_folds_speaker_independent(real) -> None:
    _, m = real
    assert m.folds == ["1", "2", "3", "4", "5"]
    tested = Counter()
    for f in m.folds:
        col = m.df[f"split_{f}"]
        parts = {p: set(m.df.loc[col == p, "speaker"]) for p in ("train", "dev", "test")}
        assert not parts["train"] & parts["test"] and not parts["dev"] & parts["test"]
        assert not parts["train"] & parts["dev"]
        tested.update(parts["test"])
        genders = set(m.df.loc[m.df[f"split_{f}"] == "test", "gender"])
        assert genders == {"F", "M"}  # balanced deal: one speaker of each gender per block
    assert tested == Counter({s: 1 for s in MALE | FEMALE})


def _copy(src: Path, dst: Path) -> None:
    dst.write_bytes(src.read_bytes())


def test_bad_names(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "emodb" / "wav"
    wav = tmp_path / "wav"
    wav.mkdir()
    for n in ("03a01Fa.wav", "08a01Na.wav"):
        _copy(src / n, wav / n)
    _copy(src / "03a01Wa.wav", wav / "03a01Xa.wav")  # unknown emotion letter
    with pytest.raises(CorpusError, match=r"unknown EmoDB emotion letter.*03a01Xa"):
        emodb.load(tmp_path, folds=None)
    with pytest.warns(UserWarning, match="skipped 1"):
        m = emodb.load(tmp_path, folds=None, skip_bad=True)
    assert sorted(m.utt_ids) == ["03a01Fa", "08a01Na"]
    assert m.info["skipped"]["unknown EmoDB emotion letter"]["count"] == 1
    assert m.info["ratings"] is None

    (wav / "03a01Xa.wav").unlink()
    _copy(src / "03a01Wa.wav", wav / "99a01Wa.wav")
    with pytest.raises(CorpusError, match=r"unknown EmoDB speaker id.*99a01Wa"):
        emodb.load(tmp_path, folds=None)
    (wav / "99a01Wa.wav").unlink()
    (wav / "notes.wav").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"file name not in corpus format.*notes"):
        emodb.load(tmp_path, folds=None)
    (wav / "notes.wav").unlink()
    m = emodb.load(wav, folds=None)  # the wav folder itself works as root
    assert m.df["recognition"].isna().all()
    with pytest.raises(CorpusError, match="min_recognition needs the perception ratings"):
        emodb.load(tmp_path, folds=None, min_recognition=80)


def test_empty_root(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no audio files"):
        emodb.load(tmp_path)
    with pytest.raises(CorpusError, match="not a directory"):
        emodb.load(tmp_path / "missing")


def test_flac_and_ogg_copies(real, tmp_path: Path) -> None:
    """A converted copy (FLAC, OGG) reads like the WAV one; other files are counted, not read."""
    root, m = real
    src = sorted((root / "wav").glob("*.wav"))
    picked = [p for i, p in enumerate(src) if i % 27 == 0]  # 20 files across all speakers
    for i, p in enumerate(picked):
        wav, sr = sf.read(p)
        sf.write(tmp_path / f"{p.stem}.{'flac' if i % 2 else 'ogg'}", wav, sr)
    (tmp_path / "notes.txt").write_text("not audio")
    copy = emodb.load(tmp_path, folds=None)
    assert sorted(copy.utt_ids) == sorted(p.stem for p in picked) and len(copy) == 20
    assert {Path(p).suffix for p in copy.df["path"]} == {".flac", ".ogg"}
    assert copy.info["other_files"] == {".txt": 1}
    ref = m.df.set_index("utt_id").loc[copy.utt_ids]
    assert copy.df["speaker"].tolist() == ref["speaker"].tolist()
    np.testing.assert_allclose(copy.soft_labels(), m.soft_labels()[m.index_of(copy.utt_ids)])
    flac = copy.df.loc[copy.df["path"].str.endswith(".flac"), "path"].iloc[0]
    assert len(load_audio(flac)) == 32000  # the copy's 2.0 s at 16 kHz


def test_no_audio_hint_names_what_is_there(tmp_path: Path) -> None:
    for n in ("03a01Wa.mp4", "03a01Fa.mp4"):
        (tmp_path / n).write_bytes(b"\0")
    with pytest.raises(CorpusError, match=r"no audio files \(.wav, .flac, .ogg, ...\) in .*; it "
                                          r"holds 2 .mp4 file\(s\), none in an audio format .*"
                                          r"convert them to WAV or FLAC.*EmoDB folder"):
        emodb.load(tmp_path)


def test_make_folds_replaces_default_folds(real) -> None:
    root, _ = real
    m = load_corpus("emodb", root, make_folds=3, fold_seed=1)
    assert m.folds == ["1", "2", "3"] and m.info["folds"] == {
        **m.info["folds"], "method": "make_folds", "k": 3, "seed": 1}
    gender = m.df.groupby("speaker")["gender"].first()
    for f in m.folds:
        col = m.df[f"split_{f}"]
        test = set(m.df.loc[col == "test", "speaker"])
        assert not test & set(m.df.loc[col != "test", "speaker"])
        n_f = int((gender[sorted(test)] == "F").sum())
        assert abs(n_f - (len(test) - n_f)) <= 1  # gender-balanced speaker deal
    with pytest.raises(CorpusError, match="give folds= or make_folds="):
        load_corpus("emodb", root, folds=4, make_folds=3)
