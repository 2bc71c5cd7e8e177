"""Generic table adapter (CSV / Parquet + column mapping) and the corpus registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from emodebias.corpora import CORPORA, load_corpus
from emodebias.corpora._base import CorpusError
from emodebias.corpora.table import load
from emodebias.labels import soft_from_votes


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "id": ["u1", "u2", "u3"], "wav": ["a/u1.wav", "a/u2.wav", "/abs/u3.wav"],
        "spk": ["s1", "s1", "s2"], "sex": ["female", "F", "Male"],
        "n_ang": [3, 0, 1], "n_sad": [1, 2, 1], "emo": ["ang", "sad", "ang"],
        "set": ["Train", "valid", "test"], "age": [30, 41, 55],
    })


MAP = {"utt_id": "id", "path": "wav", "speaker": "spk", "gender": "sex", "split": "set"}


def test_votes_columns(tmp_path: Path) -> None:
    _frame().to_csv(tmp_path / "t.csv", index=False)
    m = load(tmp_path / "t.csv", **MAP, votes="n_ang,n_sad", classes="angry,sad",
             require_audio=False)
    assert m.classes == ["angry", "sad"]
    np.testing.assert_allclose(m.soft_labels(), soft_from_votes(np.array([[3, 1], [0, 2], [1, 1]])))
    assert m.votes()[0].tolist() == [3, 1]
    assert m.df["gender"].tolist() == ["F", "F", "M"]
    assert m.df["split_1"].tolist() == ["train", "dev", "test"]
    assert m.df["path"].tolist()[:2] == [str(tmp_path / "a/u1.wav"), str(tmp_path / "a/u2.wav")]
    assert m.df["path"].iloc[2] == "/abs/u3.wav"
    assert m.df["age"].tolist() == ["30", "41", "55"]  # other columns are kept


def test_categorical_label_and_parquet_and_registry(tmp_path: Path) -> None:
    _frame().to_parquet(tmp_path / "t.parquet")
    m = load_corpus("table", tmp_path, table="t.parquet", **MAP, label="emo", require_audio=False)
    assert m.classes == ["ang", "sad"]  # sorted distinct values
    np.testing.assert_allclose(m.soft_labels()[0], [0.95, 0.05])
    assert m.df["age"].tolist() == [30, 41, 55]
    with pytest.raises(CorpusError, match=r"unknown emotion label in emo.*t.parquet row 2 \(u2\)"):
        load(tmp_path / "t.parquet", **MAP, label="emo", classes="ang,hap", require_audio=False)


def test_soft_columns_auto_detected_and_audio(tmp_path: Path) -> None:
    df = pd.DataFrame({"utt_id": ["x", "y"], "path": ["x.wav", "y.wav"], "speaker": ["1", "2"],
                       "soft_a": [0.9, 0.2], "soft_b": [0.1, 0.8]})
    df.to_csv(tmp_path / "t.csv", index=False)
    for name in ("x.wav", "y.wav"):
        sf.write(tmp_path / name, np.zeros(1600, np.float32), 16000)
    m = load(tmp_path / "t.csv")
    assert m.classes == ["a", "b"] and "gender" not in m.df and m.soft_labels()[1, 1] == 0.8
    (tmp_path / "y.wav").unlink()
    with pytest.raises(CorpusError, match=r"missing audio file.*t.csv line 3 \(y\)"):
        load(tmp_path / "t.csv")


@pytest.mark.parametrize(("change", "match"), [
    (lambda d: d.assign(soft_a=[0.9, 0.5]), r"do not sum to 1.*line 3 \(y\)"),
    (lambda d: d.assign(utt_id=["x", "x"]), r"duplicated utterance id.*line 3"),
    (lambda d: d.drop(columns="speaker"), r"lacks required column\(s\) \['speaker'\]"),
    (lambda d: d.assign(gender=["F", "robot"]), r"'robot' at t.csv line 3"),
])
def test_bad_soft_tables(tmp_path: Path, change, match: str) -> None:
    df = pd.DataFrame({"utt_id": ["x", "y"], "path": ["x.wav", "y.wav"], "speaker": ["1", "2"],
                       "soft_a": [0.9, 0.2], "soft_b": [0.1, 0.8]})
    change(df).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(CorpusError, match=match):
        load(tmp_path / "t.csv", require_audio=False)


def test_bad_votes_skip_counts(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[1, ["n_ang", "n_sad"]] = 0
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(CorpusError, match=r"votes all zero.*line 3 \(u2\)"):
        load(tmp_path / "t.csv", **MAP, votes="n_ang,n_sad", require_audio=False)
    with pytest.warns(UserWarning, match="skipped 1"):
        m = load(tmp_path / "t.csv", **MAP, votes="n_ang,n_sad", require_audio=False,
                 skip_bad=True)
    assert m.utt_ids == ["u1", "u3"] and m.classes == ["n_ang", "n_sad"]
    assert m.info["skipped"]["votes all zero (no vote for any target class)"]["count"] == 1


def test_mapping_errors(tmp_path: Path) -> None:
    _frame().to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(CorpusError, match="no label columns"):
        load(tmp_path / "t.csv", **MAP, require_audio=False)
    with pytest.raises(CorpusError, match="only one of"):
        load(tmp_path / "t.csv", **MAP, label="emo", votes="n_ang", require_audio=False)
    with pytest.raises(CorpusError, match=r"lacks label column\(s\) \['n_hap'\]"):
        load(tmp_path / "t.csv", **MAP, votes="n_ang,n_hap", require_audio=False)
    with pytest.raises(CorpusError, match="3 class names for 2"):
        load(tmp_path / "t.csv", **MAP, votes="n_ang,n_sad", classes="a,b,c", require_audio=False)
    pd.DataFrame({"utt_id": ["x"], "path": ["x"], "speaker": ["1"], "e": ["sad"]}).to_csv(
        tmp_path / "one.csv", index=False)
    with pytest.raises(CorpusError, match="single class"):
        load(tmp_path / "one.csv", label="e", require_audio=False)
    assert load(tmp_path / "one.csv", label="e", classes="sad,happy", require_audio=False)
    with pytest.raises(CorpusError, match="not found"):
        load(tmp_path / "missing.csv")


def test_registry_errors(tmp_path: Path) -> None:
    assert set(CORPORA) == {"emo_superb", "crema_d", "msp_podcast", "emodb", "ravdess", "table",
                            "synthetic"}
    with pytest.raises(ValueError, match="unknown corpus 'iemocap'"):
        load_corpus("iemocap", tmp_path)
    with pytest.raises(TypeError, match=r"does not take option\(s\) \['colour'\]"):
        load_corpus("table", tmp_path, colour="red")
