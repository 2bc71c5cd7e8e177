"""The synthetic corpus: deterministic real audio whose labels, voices and biases behave as
designed -- checked with measurements made here (autocorrelation pitch, log-mel statistics +
logistic regression), not with the generator's own numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from emodebias.data.audio import load_audio
from emodebias.data.corpora import synthetic
from emodebias.data.corpora._base import CorpusError
from emodebias.data.manifest import Manifest

SPK, UPE = 8, 4  # 16 speakers; 4 takes of the trend-gender emotions, round(0.75*4)=3 otherwise


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.load(root, n_speakers_per_gender=SPK, utterances_per_emotion=UPE,
                          seconds=(1.0, 1.6))


# ----------------------------------------------------------------------------- measurements
def _mel_bank(n_mels: int = 40, n_fft: int = 512, sr: int = 16000) -> np.ndarray:
    mel = 2595 * np.log10(1 + np.array([50.0, sr / 2]) / 700)
    hz = 700 * (10 ** (np.linspace(mel[0], mel[1], n_mels + 2) / 2595) - 1)
    f = np.fft.rfftfreq(n_fft, 1 / sr)
    lo, c, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    return np.maximum(0, np.minimum((f - lo) / (c - lo), (hi - f) / (hi - c)))


MEL = _mel_bank()


def _logmel_stats(path: str) -> np.ndarray:
    """Mean and std of 40 log-mel bands and std of their frame-to-frame deltas (120 dims)."""
    x, _ = sf.read(path, dtype="float32")
    frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::256] * np.hanning(512)
    lm = np.log(np.abs(np.fft.rfft(frames, axis=1)) ** 2 @ MEL.T + 1e-8)  # [frames, mels]
    return np.concatenate([lm.mean(0), lm.std(0), np.diff(lm, axis=0).std(0)])


def _pitch(x: np.ndarray, sr: int = 16000, frame: int = 1024, hop: int = 256) -> float:
    """Median F0 over voiced frames: peak of the normalised autocorrelation in 70-400 Hz."""
    starts = np.arange(0, len(x) - frame, hop)
    frames = x[starts[:, None] + np.arange(frame)] * np.hanning(frame)
    frames = frames[np.sqrt((frames**2).mean(1)) > 0.01]
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * frame)) ** 2)[:, :frame]
    ac /= ac[:, :1]
    lo, hi = sr // 400, sr // 70
    lag = lo + ac[:, lo:hi].argmax(1)
    voiced = ac[np.arange(len(ac)), lag] > 0.5
    return float(np.median(sr / lag[voiced]))


# ----------------------------------------------------------------------------- structure
def test_counts_and_demographics(corpus: Manifest) -> None:
    df = corpus.df
    n_minor = round(0.75 * UPE)
    assert len(df) == 2 * SPK * 3 * (UPE + n_minor)
    cell = df.groupby(["speaker", "intended"]).size()
    gender = df.groupby("speaker")["gender"].first()
    for (spk, emo), n in cell.items():
        assert n == (UPE if synthetic.TREND[emo] == gender[spk] else n_minor)
    assert gender.value_counts().to_dict() == {"F": SPK, "M": SPK}
    assert df.groupby("speaker")[["gender", "age", "race"]].nunique().max().max() == 1
    per = df.groupby("speaker")[["gender", "age_group", "race", "age"]].first()
    for g in "FM":  # speakers of a gender, in order, form blocks of 3 ages and of 6 "races"
        mine = per[per.gender == g].sort_index()
        assert sorted(mine.age_group[:6].value_counts().tolist()) == [2, 2, 2]
        assert mine.age_group.value_counts().between(2, 3).all()
        assert mine.race[:6].value_counts().to_dict() == {"A": 3, "B": 2, "C": 1}
    bands = {"Young": (20, 35), "Middle": (36, 49), "Elderly": (50, 75)}
    assert all(bands[a][0] <= n <= bands[a][1] for a, n in zip(per.age_group, per.age, strict=True))
    assert corpus.classes == ["angry", "sad", "disgust", "fear", "neutral", "happy"]
    assert corpus.folds == ["1", "2", "3", "4", "5"]
    for f in corpus.folds:
        col = df[f"split_{f}"]
        assert not set(df.speaker[col == "test"]) & set(df.speaker[col == "train"])


def test_audio_files(corpus: Manifest) -> None:
    for row in corpus.df.sample(20, random_state=0).itertuples():
        info = sf.info(row.path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames / 16000 == pytest.approx(row.duration)
        x = load_audio(row.path)
        assert 0.9 < len(x) / 16000 < 2.6
        assert 0.005 < np.sqrt(np.mean(x**2)) < 0.3 and np.abs(x).max() < 0.9  # never clipped


def test_labels(corpus: Manifest) -> None:
    votes = corpus.votes()
    assert votes.sum(1).min() >= 8 and votes.sum(1).max() <= 10
    p = votes / votes.sum(1, keepdims=True)
    np.testing.assert_allclose(corpus.soft_labels(), 0.94 * p + 0.01)  # EMO-SUPERB, K = 6
    positives = (p > 1 / 6).sum(1)
    assert 1.3 < positives.mean() < 2.2
    majority = p.max(1) > 0.5
    assert majority.mean() > 0.6
    intended = np.array([corpus.classes.index(e) for e in corpus.df["intended"]])
    assert (p.argmax(1)[majority] == intended[majority]).mean() > 0.85
    amb = corpus.df["blend"].notna().to_numpy()
    assert 0.1 < amb.mean() < 0.4
    # blended (ambiguous) renditions get less agreement than clean ones
    assert p.max(1)[amb].mean() < p.max(1)[~amb].mean()


# ----------------------------------------------------------------------------- determinism
def test_deterministic_by_seed(tmp_path: Path) -> None:
    kw = dict(n_speakers_per_gender=2, utterances_per_emotion=1, seconds=(1.0, 1.1), folds=None)
    a = synthetic.generate(tmp_path / "a", **kw)
    b = synthetic.generate(tmp_path / "b", **kw)
    c = synthetic.generate(tmp_path / "c", seed=1, **kw)
    assert a.utt_ids == b.utt_ids == c.utt_ids
    cols = [col for col in a.df.columns if col != "path"]
    pd.testing.assert_frame_equal(a.df[cols], b.df[cols])
    for pa, pb, pc in zip(a.df.path, b.df.path, c.df.path, strict=True):
        assert Path(pa).read_bytes() == Path(pb).read_bytes() != Path(pc).read_bytes()
    assert not np.array_equal(a.votes(), c.votes())
    # more speakers leave the existing voices unchanged
    d = synthetic.generate(tmp_path / "d", **{**kw, "n_speakers_per_gender": 3})
    same = d.df.set_index("utt_id").loc[a.utt_ids, "path"]
    assert all(Path(p).read_bytes() == Path(q).read_bytes()
               for p, q in zip(a.df.path, same, strict=True))


def test_load_caches_and_regenerates(tmp_path: Path) -> None:
    kw = dict(n_speakers_per_gender=1, utterances_per_emotion=1, seconds=(1.0, 1.0), folds=None)
    first = synthetic.load(tmp_path, **kw)
    stamp = (tmp_path / "manifest.parquet").stat().st_mtime_ns
    again = synthetic.load(tmp_path, **kw)
    assert (tmp_path / "manifest.parquet").stat().st_mtime_ns == stamp
    assert again.utt_ids == first.utt_ids and Path(again.df.path[0]).is_absolute()
    saved = Manifest.load(tmp_path)  # the cache keeps paths relative to the corpus root
    assert saved.df.path[0].startswith("wav/")
    bigger = synthetic.load(tmp_path, **{**kw, "utterances_per_emotion": 2})
    assert len(bigger) == 2 * 3 * (2 + 2)  # round(0.75 * 2) = 2 minority takes
    (tmp_path / "wav" / f"{bigger.utt_ids[0]}.wav").unlink()
    redone = synthetic.load(tmp_path, **{**kw, "utterances_per_emotion": 2})
    assert Path(redone.df.path[0]).is_file()


def test_bad_options_and_foreign_root(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="no option"):
        synthetic.load(tmp_path, speakers=3)
    with pytest.raises(ValueError, match="minority_share"):
        synthetic.generate(tmp_path, minority_share=0)
    with pytest.raises(ValueError, match="trend"):
        synthetic.generate(tmp_path, trend={"angry": "X"})
    df = pd.DataFrame({"utt_id": ["u"], "path": ["u.wav"], "speaker": ["s"]})
    Manifest(df, ["a", "b"], corpus="emodb").save(tmp_path / "manifest.parquet")
    with pytest.raises(CorpusError, match="not a synthetic one"):
        synthetic.load(tmp_path)


# ----------------------------------------------------------------------------- acoustics
def test_f0_by_gender(corpus: Manifest) -> None:
    df = corpus.df[corpus.df["intended"] == "neutral"].groupby("speaker").head(2)
    measured = df.assign(f0=[_pitch(load_audio(p)) for p in df.path])
    per = measured.groupby("speaker").agg(f0=("f0", "median"), gender=("gender", "first"))
    assert per.loc[per.gender == "F", "f0"].between(150, 260).all()
    assert per.loc[per.gender == "M", "f0"].between(85, 150).all()
    intended = pd.DataFrame(corpus.info["speakers"]).set_index("speaker")["f0"]
    np.testing.assert_allclose(per["f0"], intended[per.index], rtol=0.15)
    # emotion moves F0 across the gender boundary: male fear is above female sadness on average
    high = corpus.df[(corpus.df.intended == "fear") & (corpus.df.gender == "M")].head(6)
    low = corpus.df[(corpus.df.intended == "sad") & (corpus.df.gender == "F")].head(6)
    pitch = {k: np.median([_pitch(load_audio(p)) for p in d.path])
             for k, d in (("male fear", high), ("female sad", low))}
    assert pitch["male fear"] > 0.8 * pitch["female sad"]


def _fit_predict(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray) -> np.ndarray:
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
    return clf.fit(x_tr, y_tr).predict(x_te)


def _idi_subset(train: np.ndarray, y: np.ndarray, gender: np.ndarray, r: int,
                seed: int) -> np.ndarray:
    """IDI rule, written here independently: keep every majority-gender utterance of each
    emotion, sample floor(n_major / r) of the other gender."""
    rng = np.random.default_rng(seed)
    keep = []
    for k in range(6):
        n_f, n_m = ((y == k) & (gender == "F")).sum(), ((y == k) & (gender == "M")).sum()
        major = "M" if n_m > n_f else "F"
        a = np.flatnonzero(train & (y == k) & (gender == major))
        b = np.flatnonzero(train & (y == k) & (gender != major))
        keep += [a, rng.permutation(b)[: min(len(b), len(a) // r)]]
    return np.concatenate(keep)


def test_learnable_and_biased_at_1_to_20(corpus: Manifest) -> None:
    df = corpus.df
    x = np.stack([_logmel_stats(p) for p in df.path])
    p = corpus.votes() / corpus.votes().sum(1, keepdims=True)
    y = np.where(p.max(1) > 0.5, p.argmax(1), -1)  # strict-majority emotion
    gender = df["gender"].to_numpy()
    first = df.groupby("speaker")["gender"].first()
    test_spk = set(first[first == "F"].index[:3]) | set(first[first == "M"].index[:3])
    te = df["speaker"].isin(test_spk).to_numpy()
    tr, ok = ~te, y >= 0

    emo_acc = (_fit_predict(x[tr & ok], y[tr & ok], x[te & ok]) == y[te & ok]).mean()
    assert emo_acc > 0.45  # chance is 1/6
    assert (_fit_predict(x[tr], gender[tr], x[te]) == gender[te]).mean() > 0.9

    yt, gt = y[te & ok], gender[te & ok]

    def recall_gap(idx: np.ndarray) -> float:
        pred = _fit_predict(x[idx], y[idx], x[te & ok])
        rec = {(k, g): (pred[(yt == k) & (gt == g)] == k).mean() for k in range(6) for g in "FM"}
        return float(np.mean([abs(rec[k, "F"] - rec[k, "M"]) for k in range(6)]))

    balanced = np.mean([recall_gap(_idi_subset(tr & ok, y, gender, 1, s)) for s in range(2)])
    skewed = np.mean([recall_gap(_idi_subset(tr & ok, y, gender, 20, s)) for s in range(2)])
    assert skewed > balanced + 0.2, (balanced, skewed)
