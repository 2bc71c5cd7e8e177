"""MSP-Podcast adapter on small Labels/ files written in the release's formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emodebias.data.corpora import load_corpus
from emodebias.data.corpora._base import CorpusError
from emodebias.data.corpora.msp_podcast import CLASSES, load

CONSENSUS = (
    "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n"
    "MSP-PODCAST_0001_0008.wav,N,4.2,4.0,4.4,127,Female,Train\n"
    "MSP-PODCAST_0001_0019.wav,A,5.5,2.0,5.0,127,Female,Train\n"
    "MSP-PODCAST_0002_0033.wav,X,3.0,4.0,3.6,3,Male,Development\n"
    "MSP-PODCAST_0003_0001.wav,O,3.8,4.5,4.0,Unknown,Unknown,Test1\n"
    "MSP-PODCAST_0004_0002.wav,H,5.0,6.2,5.0,12,Male,Test2\n"
    "MSP-PODCAST_0005_0002.wav,C,3.0,2.2,4.0,15,Female,Test3\n"
)
DETAILED = (
    "FileName,WorkerID,EmoClass_Major,EmoClass_Second,EmoAct,EmoVal,EmoDom\n"
    "MSP-PODCAST_0001_0008.wav,WORKER1,Neutral,Neutral,4,4,4\n"
    "MSP-PODCAST_0001_0008.wav,WORKER2,Neutral,Concerned,4,4,5\n"
    "MSP-PODCAST_0001_0008.wav,WORKER3,Sad,Sad,4,4,4\n"
    "MSP-PODCAST_0001_0019.wav,WORKER1,Angry,Angry,5,2,5\n"
    "MSP-PODCAST_0001_0019.wav,WORKER4,Contempt,Angry,6,2,5\n"
    "MSP-PODCAST_0001_0019.wav,WORKER5,Other-Annoyed,Angry,6,2,5\n"
    "MSP-PODCAST_0002_0033.wav,WORKER1,Surprise,Happy,3,4,4\n"
    "MSP-PODCAST_0002_0033.wav,WORKER2,Happy,Happy,3,4,3\n"
    "MSP-PODCAST_0003_0001.wav,WORKER2,Other-Bored,Neutral,4,4,4\n"
    "MSP-PODCAST_0004_0002.wav,WORKER2,Happy,Happy,5,6,5\n"
    "MSP-PODCAST_0005_0002.wav,WORKER2,Contempt,Angry,3,2,4\n"
)


def _corpus(root: Path, detailed: str | None = DETAILED, consensus: str = CONSENSUS,
            audio: bool = True) -> Path:
    (root / "Labels").mkdir(parents=True)
    (root / "Labels" / "labels_consensus.csv").write_text(consensus)
    if detailed is not None:
        (root / "Labels" / "labels_detailed.csv").write_text(detailed)
    if audio:
        (root / "Audios").mkdir()
        for line in consensus.splitlines()[1:]:
            sf.write(root / "Audios" / line.split(",")[0], np.zeros(1600, np.float32), 16000)
    return root


def _soft(m, utt: str) -> list[float]:
    return m.df.set_index("utt_id").loc[utt, [f"soft_{c}" for c in CLASSES]].tolist()


def test_detailed_votes_give_distributions(tmp_path: Path) -> None:
    m = load_corpus("msp_podcast", _corpus(tmp_path))
    assert m.classes == ["angry", "sad", "disgust", "contempt", "fear", "neutral", "surprise",
                         "happy"]
    floor = 0.05 / 7  # K = 8
    # 2 neutral + 1 sad -> p = (0, 1/3, 0, 0, 0, 2/3, 0, 0); y' = (1 - 8/7*0.05) p + floor
    a = 0.05 * 8 / 7
    expect = np.full(8, floor)
    expect[1] += (1 - a) / 3
    expect[5] += (1 - a) * 2 / 3
    np.testing.assert_allclose(_soft(m, "MSP-PODCAST_0001_0008"), expect)
    df = m.df.set_index("utt_id")
    # the "Other-Annoyed" vote is dropped: angry 1, contempt 1
    assert df.loc["MSP-PODCAST_0001_0019", ["votes_angry", "votes_contempt"]].tolist() == [1, 1]
    assert m.info["other_votes_dropped"] == 2
    # X (no agreement) keeps its vote distribution; O with only "other" votes is dropped
    assert "MSP-PODCAST_0002_0033" in df.index
    assert "MSP-PODCAST_0003_0001" not in df.index
    assert m.info["dropped"]["only_other_votes"] == 1
    # official partitions: fold 1 tests on Test1, fold 2 on Test2; Test3 is in no fold
    assert m.folds == ["1", "2"]
    assert df["split_1"].fillna("-").tolist() == ["train", "train", "dev", "-", "-"]
    assert df.loc["MSP-PODCAST_0004_0002", "split_2"] == "test"
    assert df.loc["MSP-PODCAST_0005_0002"].filter(like="split_").isna().all()
    assert df["gender"].tolist() == ["F", "F", "M", "M", "F"]
    assert df.loc["MSP-PODCAST_0001_0008", "speaker"] == "127"
    assert df.loc["MSP-PODCAST_0001_0008", "EmoAct"] == pytest.approx(4.2)


def test_consensus_only(tmp_path: Path) -> None:
    m = load(_corpus(tmp_path, detailed=None))
    df = m.df.set_index("utt_id")
    assert "MSP-PODCAST_0002_0033" not in df.index and "MSP-PODCAST_0003_0001" not in df.index
    assert m.info["dropped"]["consensus_other_or_no_agreement"] == 2
    soft = _soft(m, "MSP-PODCAST_0001_0019")
    assert soft[0] == pytest.approx(0.95) and soft[1] == pytest.approx(0.05 / 7)
    assert df.loc["MSP-PODCAST_0005_0002", "votes_contempt"] == 1
    assert load(tmp_path, use_detailed=False).info["votes"].startswith("consensus")


def test_unknown_codes(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "a", consensus=CONSENSUS.replace(",H,5.0", ",Q,5.0"), audio=False)
    with pytest.raises(CorpusError, match=r"unknown emotion code in EmoClass.*line 6 "
                                          r"\(MSP-PODCAST_0004_0002\)"):
        load(root, require_audio=False)
    with pytest.warns(UserWarning):
        assert len(load(root, require_audio=False, skip_bad=True)) == 4
    root = _corpus(tmp_path / "b", detailed=DETAILED.replace("WORKER3,Sad", "WORKER3,Joyful"),
                   audio=False)
    with pytest.raises(CorpusError, match=r"unknown emotion code in EmoClass_Major.*"
                                          r"labels_detailed.csv line 4"):
        load(root, require_audio=False)


def test_missing_audio_columns_and_duplicates(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "a")
    (root / "Audios" / "MSP-PODCAST_0001_0019.wav").unlink()
    with pytest.raises(CorpusError, match=r"missing audio file.*MSP-PODCAST_0001_0019"):
        load(root)
    root = _corpus(tmp_path / "b", consensus=CONSENSUS.replace(",Split_Set", ",Part"), audio=False)
    with pytest.raises(CorpusError, match=r"lacks required column\(s\) \['Split_Set'\]"):
        load(root)
    dup = CONSENSUS + "MSP-PODCAST_0001_0008.wav,N,4.2,4.0,4.4,127,Female,Train\n"
    root = _corpus(tmp_path / "c", consensus=dup, audio=False)
    with pytest.raises(CorpusError, match=r"duplicated utterance id.*line 8"):
        load(root, require_audio=False)
    no_votes = DETAILED.replace("MSP-PODCAST_0004_0002.wav,WORKER2,Happy,Happy,5,6,5\n", "")
    root = _corpus(tmp_path / "d", detailed=no_votes, audio=False)
    with pytest.raises(CorpusError, match=r"no annotations in labels_detailed.csv.*0004_0002"):
        load(root, require_audio=False)
    odd = CONSENSUS.replace("Test2", "Holdout")
    with pytest.raises(CorpusError, match=r"unknown Split_Set value.*line 6"):
        load(_corpus(tmp_path / "e", consensus=odd, audio=False), require_audio=False)


def test_missing_labels_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"labels_consensus.csv not found: .*Labels/labels_cons"
                                          r"ensus.csv; .* pass labels_dir= \(CLI: --labels-dir\)"):
        load(tmp_path)
