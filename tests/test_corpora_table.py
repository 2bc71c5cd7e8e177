"""Generic table adapter (CSV / Parquet + column mapping) and the corpus registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from emodebias.data.corpora import CORPORA, load_corpus
from emodebias.data.corpora._base import CorpusError
from emodebias.data.corpora.table import class_names, load
from emodebias.data.labels import soft_from_votes


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
    (lambda d: d.drop(columns="speaker"), r"no speaker column 'speaker'; map it with speaker="),
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
    assert m.utt_ids == ["u1", "u3"] and m.classes == ["ang", "sad"]  # common prefix n_ dropped
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
    with pytest.raises(CorpusError, match="unknown corpus 'iemocap'; known: emo_superb, crema_d"):
        load_corpus("iemocap", tmp_path)
    with pytest.raises(CorpusError, match=r"unknown option\(s\) colour for corpus 'table' "
                                          r"takes: table=TEXT.*utt_id=TEXT"):
        load_corpus("table", tmp_path, colour="red")


def _clips(tmp_path: Path, n_spk: int = 6, per_spk: int = 4) -> pd.DataFrame:
    """A table of short real wavs: speakers alternate F/M, labels cycle angry/happy/sad."""
    (tmp_path / "clips").mkdir()
    rows = []
    for s in range(n_spk):
        for u in range(per_spk):
            name = f"clips/s{s}_u{u}.wav"
            sf.write(tmp_path / name, np.full(1600, 0.1, np.float32), 16000)
            emo = ("angry", "happy", "sad")[u % 3]
            rows.append({"file": name, "talker": f"spk{s}", "sex": "FM"[s % 2],
                         "label_angry": 0.9 if emo == "angry" else 0.05,
                         "label_happy": 0.9 if emo == "happy" else 0.05,
                         "label_sad": 0.9 if emo == "sad" else 0.05, "emo": emo})
    return pd.DataFrame(rows)


def test_utt_id_defaults_to_file_name(tmp_path: Path) -> None:
    _clips(tmp_path).to_csv(tmp_path / "t.csv", index=False)
    m = load(tmp_path / "t.csv", path="file", speaker="talker", gender="sex", label="emo")
    assert m.utt_ids[:3] == ["s0_u0", "s0_u1", "s0_u2"] and len(m) == 24
    assert m.df["path"].iloc[0] == str(tmp_path / "clips" / "s0_u0.wav")
    assert "file" not in m.df and "talker" not in m.df  # mapped columns become the standard ones
    same = load(tmp_path / "t.csv", utt_id="file", path="file", speaker="talker", label="emo")
    assert same.utt_ids[0] == "clips/s0_u0.wav" and same.df["path"].iloc[0] == m.df["path"].iloc[0]


def test_duplicate_file_names_need_an_id_column(tmp_path: Path) -> None:
    df = _clips(tmp_path, n_spk=2, per_spk=2)
    (tmp_path / "other").mkdir()
    sf.write(tmp_path / "other" / "s0_u0.wav", np.full(1600, 0.1, np.float32), 16000)
    df.loc[3, "file"] = "other/s0_u0.wav"
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(CorpusError, match=r"duplicated utterance id: 1 row\(s\): t.csv line 5 "
                                          r"\(s0_u0\).*map utt_id=<column>"):
        load(tmp_path / "t.csv", path="file", speaker="talker", label="emo")


@pytest.mark.parametrize("soft", ["label_angry,label_happy,label_sad", "prefix:label_",
                                  ["label_angry", "label_happy", "label_sad"]])
def test_soft_prefix_stripped(tmp_path: Path, soft: object) -> None:
    df = _clips(tmp_path)
    df.to_csv(tmp_path / "t.csv", index=False)
    m = load(tmp_path / "t.csv", path="file", speaker="talker", soft=soft)
    assert m.classes == ["angry", "happy", "sad"]
    np.testing.assert_allclose(m.df["soft_happy"], df["label_happy"])
    assert "label_happy" not in m.df


def test_class_names_rule() -> None:
    assert class_names(["label_angry", "label_anxious"]) == ["angry", "anxious"]
    assert class_names(["p.angry", "p.sad"]) == ["angry", "sad"]
    assert class_names(["angry", "anxious"]) == ["angry", "anxious"]  # no separator: kept
    assert class_names(["n_a-x", "n_a-y"]) == ["x", "y"]


def test_votes_prefix_and_bad_prefix(tmp_path: Path) -> None:
    _frame().to_csv(tmp_path / "t.csv", index=False)
    m = load(tmp_path / "t.csv", **MAP, votes="prefix:n_", require_audio=False)
    assert m.classes == ["ang", "sad"] and m.votes()[0].tolist() == [3, 1]
    with pytest.raises(CorpusError, match=r"no column starts with 'cnt_' \(votes=prefix:cnt_\)"):
        load(tmp_path / "t.csv", **MAP, votes="prefix:cnt_", require_audio=False)
    with pytest.raises(CorpusError, match="give class names"):
        load(tmp_path / "t.csv", **MAP, votes="n_ang,n_ang", require_audio=False)


@pytest.mark.parametrize("name", ["t.xlsx", "t.json", "t"])
def test_table_must_be_csv_or_parquet(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("utt_id,path,speaker\n")
    with pytest.raises(CorpusError, match=rf"{name}: not a CSV or Parquet table .*\.csv, .*"
                                          r"\.parquet"):
        load_corpus("table", tmp_path / name)
    with pytest.raises(CorpusError, match="is a folder: pass the table file"):
        load_corpus("table", tmp_path)


def test_options_typed_from_text(tmp_path: Path) -> None:
    """CLI/YAML text becomes the declared type; a wrong type names the option and its kind."""
    _frame().to_csv(tmp_path / "t.csv", index=False)
    m = load_corpus("table", tmp_path, table="t.csv", **MAP, votes="n_ang,n_sad",
                    require_audio="false", skip_bad="no")
    assert len(m) == 3
    with pytest.raises(CorpusError, match=r"option require_audio=maybe of corpus 'table' must be "
                                          r"BOOL \(require_audio=BOOL \(default true\)\)"):
        load_corpus("table", tmp_path / "t.csv", **MAP, label="emo", require_audio="maybe")
    with pytest.raises(CorpusError, match="option make_folds=two of corpus 'table' must be INT"):
        load_corpus("table", tmp_path / "t.csv", make_folds="two")
    with pytest.raises(CorpusError, match="fold_seed .* only applies with make_folds"):
        load_corpus("table", tmp_path / "t.csv", **MAP, label="emo", require_audio=False,
                    fold_seed=3)


def _fold_speakers(m, fold: str) -> dict[str, set[str]]:  # noqa: ANN001
    col = m.df[f"split_{fold}"]
    return {p: set(m.df.loc[col == p, "speaker"]) for p in ("train", "dev", "test")}


def test_make_folds_on_a_table(tmp_path: Path) -> None:
    _clips(tmp_path, n_spk=9).to_csv(tmp_path / "t.csv", index=False)
    opts = {"path": "file", "speaker": "talker", "gender": "sex", "label": "emo"}
    m = load_corpus("table", tmp_path / "t.csv", **opts, make_folds="3", fold_seed="7")
    assert m.folds == ["1", "2", "3"] and m.info["folds"]["seed"] == 7
    gender = m.df.groupby("speaker")["gender"].first()
    tested: list[str] = []
    for f in m.folds:
        parts = _fold_speakers(m, f)
        assert not parts["train"] & parts["test"] and not parts["dev"] & parts["test"]
        assert not parts["train"] & parts["dev"] and len(parts["test"]) == 3
        n_f = int((gender[sorted(parts["test"])] == "F").sum())
        assert n_f in (1, 2)  # 5 F and 4 M speakers dealt into 3 blocks: 2/1 or 1/2
        tested += sorted(parts["test"])
    assert sorted(tested) == sorted(gender.index)  # every speaker tested exactly once
    again = load_corpus("table", tmp_path / "t.csv", **opts, make_folds=3, fold_seed=7)
    other = load_corpus("table", tmp_path / "t.csv", **opts, make_folds=3, fold_seed=8)
    assert again.df.equals(m.df) and not other.df.equals(m.df)
    (tmp_path / "x").mkdir()
    df = _clips(tmp_path / "x", n_spk=3)
    df["set"] = ["train", "dev", "test"] * 4
    df.to_csv(tmp_path / "x" / "s.csv", index=False)
    with pytest.raises(CorpusError, match=r"already has folds \['1'\].*make_folds adds folds "
                                          "only to corpora without them"):
        load_corpus("table", tmp_path / "x" / "s.csv", **opts, split="set", make_folds=3)
