"""The built-in synthetic corpus: real 16 kHz speech-like audio, deterministic by seed.

Why: the demo and the tests need a corpus that ships with the code, is small enough for 2 CPU
cores, and reproduces the *mechanism* the fairness papers study -- emotion cues that partly
coincide with gender cues, so that training at 1:20 gender imbalance produces a real gap.

Voice (source-filter). A Rosenberg/LF-like glottal flow derivative at F0 (with jitter, shimmer,
open quotient and pulsed aspiration noise) is shaped, frame by frame in the STFT domain, by four
formant resonances that glide between vowel targets (one vowel per syllable, consonant gaps with
fricative noise or closures) and by a spectral tilt. Speaker sex sets the F0 (female ~200 Hz,
male ~115 Hz, +-1.5 semitones between speakers) and the vocal-tract length (formants x1.17 for
female voices); female voices are also slightly breathier.

Emotion is prosody, relative to the speaker's neutral voice (table `PROSODY`): F0 level
(semitones) and accent range, syllable rate, level (dB), spectral tilt (dB/octave), breathiness,
jitter, open quotient and F0 tremor. Angry/happy/fear raise F0 by 4-6 semitones, so a male
high-arousal voice (~145-165 Hz) sits between male and female neutral voices and a female
sad/disgust voice (~180-190 Hz) near male high-arousal ones: F0 is evidence for arousal *and*
for gender, which is what lets an imbalanced model lean on gender. Each utterance has a random
intensity (how strongly the emotion is rendered) and, for a share of "ambiguous" utterances, a
blend with a second, confusable emotion.

Annotators. Each utterance gets 8-10 votes from a confusion model: an annotator names the
rendered emotion (the blend, if any) with probability 0.35 + 0.45 * intensity, otherwise a
confusable one (row of `CONFUSIONS`). Votes -> `labels.soft_from_votes`, so the labels are
multi-label like CREMA-D's (about 1.5-2 positives per utterance, most with a strict majority).

Demographics. ``gender`` F/M; ``age_group`` Young/Middle/Elderly (one third of each gender's
speakers each; ``age`` drawn in the IDI bands 20-35/36-49/50-75; older voices have more jitter,
shimmer, breathiness and a slower rate, and female F0 drops); ``race`` is a *synthetic,
dialect-like* stand-in with values A/B/C (shares 1/2, 1/3, 1/6 in each block of six speakers
of a gender) that shifts vowel
formants, speaking rate and accent range a little. It stands for no real population; it
exists so that multi-attribute gaps and cluster-based group inference can be demonstrated.

Natural trend. Like CREMA-D, each emotion has a majority gender (`TREND`: angry, disgust and
neutral male; fear, happy and sad female): speakers of the other gender record
``round(minority_share * utterances_per_emotion)`` utterances of it instead of
``utterances_per_emotion``, which fixes the "natural" direction of the IDI imbalance rule.

Determinism: every speaker and utterance has its own seed derived from (seed, its indices), so
the same arguments write the same bytes, and adding speakers leaves existing voices unchanged.
The manifest is cached at ``<root>/manifest.parquet`` with relative paths and the generator
configuration; `load` regenerates when the configuration differs.
"""

from __future__ import annotations

import inspect
import io
import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy import fft as sp_fft

from emodebias import progress
from emodebias.data.corpora._base import CorpusError
from emodebias.data.labels import soft_from_votes
from emodebias.data.manifest import Manifest, ManifestError
from emodebias.data.splits import make_folds

GENERATOR_VERSION = 1
SR = 16_000
N_FFT = 512
HOP = 128
CLASSES = ["angry", "sad", "disgust", "fear", "neutral", "happy"]
TREND = {"angry": "M", "sad": "F", "disgust": "M", "fear": "F", "neutral": "M", "happy": "F"}
AGE_BANDS = {"Young": (20, 35), "Middle": (36, 49), "Elderly": (50, 75)}
RACE_BLOCK = ["A", "A", "A", "B", "B", "C"]  # shares 1/2, 1/3, 1/6 in every block of six

# Prosody per emotion, relative to the speaker's neutral voice.
# f0_st: F0 shift (semitones); range: accent-excursion multiplier; rate: syllable-rate
# multiplier; gain_db: level; tilt: spectral tilt change (dB/octave above 500 Hz);
# breath: aspiration-noise level; jitter: cycle-to-cycle F0 perturbation (fraction);
# oq: glottal open quotient (low = pressed, high = breathy/lax); tremor_st: 7 Hz F0 tremor depth.
PROSODY_FIELDS = ("f0_st", "range", "rate", "gain_db", "tilt", "breath", "jitter", "oq",
                  "tremor_st")
PROSODY = {
    "angry":   (5.0, 1.5, 1.15, 8.0, 3.0, 0.02, 0.008, 0.42, 0.0),
    "sad":     (-2.0, 0.45, 0.72, -6.0, -3.0, 0.14, 0.006, 0.75, 0.0),
    "disgust": (-1.0, 1.2, 0.82, 1.0, -1.0, 0.06, 0.018, 0.60, 0.0),
    "fear":    (6.0, 0.8, 1.25, 1.0, 0.5, 0.18, 0.020, 0.65, 0.7),
    "neutral": (0.0, 1.0, 1.0, 0.0, 0.0, 0.04, 0.004, 0.60, 0.0),
    "happy":   (4.0, 1.9, 1.12, 4.0, 1.5, 0.06, 0.005, 0.55, 0.0),
}
# Which emotions annotators (and blends) confuse: row = rendered, weights over the others.
CONFUSIONS = {
    "angry":   {"disgust": 0.45, "happy": 0.2, "fear": 0.15, "neutral": 0.15, "sad": 0.05},
    "sad":     {"neutral": 0.5, "fear": 0.25, "disgust": 0.15, "angry": 0.05, "happy": 0.05},
    "disgust": {"angry": 0.35, "neutral": 0.35, "sad": 0.2, "fear": 0.05, "happy": 0.05},
    "fear":    {"sad": 0.4, "neutral": 0.2, "angry": 0.15, "disgust": 0.15, "happy": 0.1},
    "neutral": {"sad": 0.35, "disgust": 0.25, "happy": 0.2, "angry": 0.1, "fear": 0.1},
    "happy":   {"neutral": 0.45, "angry": 0.2, "fear": 0.2, "disgust": 0.1, "sad": 0.05},
}
# Vowel formant targets F1-F4 (Hz) for a male vocal tract, and formant bandwidths (Hz).
VOWELS = np.array([[730, 1090, 2440, 3400], [530, 1840, 2480, 3500], [270, 2290, 3010, 3700],
                   [570, 840, 2410, 3400], [300, 870, 2240, 3300], [660, 1720, 2410, 3400]],
                  dtype=np.float64)
BANDWIDTHS = np.array([80.0, 100.0, 150.0, 220.0])
SEX = {"F": {"f0": 200.0, "formant": 1.17, "breath": 0.04, "oq": 0.05},
       "M": {"f0": 115.0, "formant": 1.00, "breath": 0.0, "oq": 0.0}}
AGE_VOICE = {  # f0 shift (st) by sex, jitter, shimmer, breath, rate multiplier
    "Young": {"f0_F": 0.5, "f0_M": 0.5, "jitter": 0.0, "shimmer": 0.03, "breath": 0.0,
              "rate": 1.05},
    "Middle": {"f0_F": -0.5, "f0_M": 0.0, "jitter": 0.003, "shimmer": 0.05, "breath": 0.02,
               "rate": 1.0},
    "Elderly": {"f0_F": -2.0, "f0_M": 1.0, "jitter": 0.010, "shimmer": 0.09, "breath": 0.06,
                "rate": 0.88},
}
RACE_VOICE = {  # formant shift (F1, F2 factors), rate multiplier, accent-range multiplier
    "A": (1.0, 1.0, 1.0, 1.0), "B": (1.06, 0.95, 0.93, 1.2), "C": (0.95, 1.07, 1.08, 0.85),
}


@dataclass
class SyntheticConfig:
    """Everything that determines the corpus; stored in the manifest to detect stale caches."""

    n_speakers_per_gender: int = 12
    utterances_per_emotion: int = 8
    minority_share: float = 0.75
    seconds: tuple[float, float] = (1.0, 2.0)
    votes: tuple[int, int] = (8, 10)
    ambiguous_share: float = 0.25
    seed: int = 0
    trend: dict[str, str] = field(default_factory=lambda: dict(TREND))
    version: int = GENERATOR_VERSION

    def check(self) -> None:
        if self.n_speakers_per_gender < 1 or self.utterances_per_emotion < 1:
            raise CorpusError("n_speakers_per_gender and utterances_per_emotion must be >= 1")
        if not 0 < self.minority_share <= 1:
            raise CorpusError(f"minority_share must be in (0, 1], got {self.minority_share}")
        lo, hi = self.seconds
        if not 0.5 <= lo <= hi <= 30:
            raise CorpusError(f"seconds must satisfy 0.5 <= min <= max <= 30, got {self.seconds}")
        if not 1 <= self.votes[0] <= self.votes[1]:
            raise CorpusError(f"votes must be (min, max) with 1 <= min <= max, got {self.votes}")
        if not 0 <= self.ambiguous_share <= 1:
            raise CorpusError(f"ambiguous_share must be in [0, 1], got {self.ambiguous_share}")
        if set(self.trend) != set(CLASSES) or set(self.trend.values()) - {"F", "M"}:
            raise CorpusError(f"trend must map each of {CLASSES} to 'F' or 'M', got {self.trend}")

    def as_json(self) -> dict:
        """JSON-normalised form (tuples become lists), comparable with a reloaded one."""
        return json.loads(json.dumps(asdict(self)))


# ----------------------------------------------------------------------------- speakers
def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=keys))


def _deal(n: int, block: list[str], seed: int, *keys: int) -> list[str]:
    """Group of each of n speakers: consecutive blocks, each a seeded shuffle of `block`.

    Every full block holds the groups in the block's proportions, and speaker j's group does not
    depend on n, so a corpus with more speakers extends a smaller one.
    """
    n_blocks = -(-n // len(block))
    return [g for b in range(n_blocks) for g in _rng(seed, *keys, b).permutation(block)][:n]


def make_speakers(cfg: SyntheticConfig) -> pd.DataFrame:
    """One row per speaker: id, gender, age, age_group, race and the voice parameters."""
    rows = []
    for g_i, gender in enumerate(("F", "M")):
        n = cfg.n_speakers_per_gender
        ages = _deal(n, list(AGE_BANDS), cfg.seed, 2, g_i, 0)
        races = _deal(n, RACE_BLOCK, cfg.seed, 2, g_i, 1)
        for j in range(n):
            idx = 2 * j + g_i  # interleave genders so ids carry no gender information
            r = _rng(cfg.seed, 0, idx)
            sex, age = SEX[gender], AGE_VOICE[ages[j]]
            lo, hi = AGE_BANDS[ages[j]]
            rows.append({
                "speaker": f"S{idx + 1:03d}", "idx": idx, "gender": gender, "age_group": ages[j],
                "age": int(r.integers(lo, hi + 1)), "race": races[j],
                "f0": sex["f0"] * 2 ** ((r.normal(0, 1.5) + age[f"f0_{gender}"]) / 12),
                "formant": sex["formant"] * (1 + r.normal(0, 0.03)),
                "rate": 4.5 * age["rate"] * RACE_VOICE[races[j]][2] * np.exp(r.normal(0, 0.08)),
                "range_st": 2.5 * RACE_VOICE[races[j]][3] * np.exp(r.normal(0, 0.15)),
                "expressive": float(np.exp(r.normal(0, 0.2))),
                "jitter": 0.004 + age["jitter"], "shimmer": age["shimmer"],
                "breath": sex["breath"] + age["breath"], "oq": sex["oq"],
                "gain_db": r.normal(0, 1.5),
            })
    return pd.DataFrame(rows).sort_values("speaker", ignore_index=True)


# ----------------------------------------------------------------------------- rendering
def _prosody(emotion: str, blend: str | None, weight: float, strength: float) -> dict:
    """Prosody of the (blended) emotion, its deviation from neutral scaled by `strength`."""
    base = np.array(PROSODY["neutral"])
    p = np.array(PROSODY[emotion]) * (1 - weight)
    p = p + (np.array(PROSODY[blend]) * weight if blend else 0.0)
    return dict(zip(PROSODY_FIELDS, base + strength * (p - base), strict=True))


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    """Hann-weighted moving average over n points along the last axis (edges held)."""
    if n <= 1:
        return x
    k = np.hanning(n + 2)[1:-1]
    pad = [(0, 0)] * (x.ndim - 1) + [(n, n)]
    xp = np.pad(x, pad, mode="edge")
    out = np.apply_along_axis(np.convolve, -1, xp, k / k.sum(), mode="same")
    return out[..., n:-n]


_WIN = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic Hann: sum of w^2 at hop N/4 = 1.5
_OLA = N_FFT // HOP


def _stft(x: np.ndarray) -> np.ndarray:
    """[..., n] -> [..., frames, bins]; frame i is centred on sample i * HOP - N_FFT / 2."""
    n = x.shape[-1]
    total = -(-(n + 2 * N_FFT) // HOP) * HOP
    pad = [(0, 0)] * (x.ndim - 1) + [(N_FFT, total - n - N_FFT)]
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, pad), N_FFT, axis=-1)[..., ::HOP, :]
    return sp_fft.rfft(frames * _WIN, axis=-1)


def _istft(spec: np.ndarray, n: int) -> np.ndarray:
    """Weighted overlap-add inverse of `_stft` (exact for an unmodified spectrum)."""
    frames = sp_fft.irfft(spec, n=N_FFT, axis=-1).astype(np.float32) * _WIN
    n_frames = frames.shape[0]
    chunks = frames.reshape(n_frames, _OLA, HOP)
    out = np.zeros((n_frames + _OLA - 1, HOP), np.float32)
    for j in range(_OLA):
        out[j:j + n_frames] += chunks[:, j]
    return out.reshape(-1)[N_FFT: N_FFT + n] / np.float32(1.5)


PEAK = 10 ** (-1 / 20)  # -1 dBFS
CTRL = 16  # control-rate decimation: envelopes and F0 are computed every 1 ms, then interpolated


def render(spk: pd.Series | dict, pro: dict, seconds: float,
           rng: np.random.Generator) -> np.ndarray:
    """One utterance of speaker `spk` with prosody `pro`: float32 mono at 16 kHz."""
    rate = spk["rate"] * pro["rate"]
    n_syl = max(2, int(round(seconds * rate)))
    lead, trail = rng.uniform(0.08, 0.15, size=2)
    speech = n_syl / rate
    n = int(round((lead + speech + trail) * SR))
    durs = rng.dirichlet(np.full(n_syl, 12.0)) * speech
    bounds = lead + np.concatenate([[0.0], np.cumsum(durs)])
    cons = rng.uniform(0.15, 0.35, n_syl)  # consonant share at each syllable's start
    fric = rng.random(n_syl) < 0.5  # fricative (noise) or closure (silence) consonant
    syl_gain = 10 ** (rng.normal(0, 2.0, n_syl) / 20)
    accents = spk["range_st"] * pro["range"] * rng.uniform(-0.3, 1.0, n_syl)
    tremor_phase = rng.uniform(0, 2 * np.pi)

    # Control rate (1 kHz): syllable timeline, amplitude envelopes, F0 contour in semitones.
    tc = np.arange(0, n + CTRL, CTRL) / SR
    syl = np.searchsorted(bounds, tc, side="right") - 1
    inside = (syl >= 0) & (syl < n_syl)
    s = np.clip(syl, 0, n_syl - 1)
    pos = np.clip((tc - bounds[s]) / durs[s], 0, 1)
    vowel_part = inside & (pos >= cons[s])
    vpos = np.clip((pos - cons[s]) / (1 - cons[s]), 0, 1)
    env = np.stack([np.where(vowel_part, np.sin(np.pi * vpos) ** 0.4 * syl_gain[s], 0.0),
                    np.where(inside & ~vowel_part & fric[s], syl_gain[s], 0.0)])
    env = _smooth(env, 10)  # ~10 ms on- and offsets
    st = (pro["f0_st"] * spk["expressive"] - 2.0 * np.clip((tc - lead) / speech, 0, 1)
          + np.where(inside, accents[s] * np.sin(np.pi * pos), 0.0)
          + pro["tremor_st"] * np.sin(2 * np.pi * 7.0 * tc + tremor_phase))
    jitter = spk["jitter"] + pro["jitter"]
    f0_c = spk["f0"] * 2 ** (st / 12) * (1 + jitter * rng.standard_normal(len(tc)))

    # Sample rate: glottal flow derivative (Rosenberg pulse), shimmer, pulsed aspiration noise.
    t = np.arange(n, dtype=np.float32) / np.float32(SR)
    voiced_env = np.interp(t, tc, env[0]).astype(np.float32)
    fric_env = np.interp(t, tc, env[1]).astype(np.float32)
    f0 = np.interp(t, tc, f0_c).astype(np.float32)
    phase = np.cumsum(f0, dtype=np.float64) / SR
    cycle = phase.astype(np.int64)
    theta = (phase - cycle).astype(np.float32)
    oq = float(np.clip(pro["oq"] + spk["oq"], 0.3, 0.9))
    tp = 0.6 * oq
    rising = 0.5 - 0.5 * np.cos(np.float32(np.pi / tp) * theta)
    falling = np.cos(np.float32(0.5 * np.pi / (oq - tp)) * (theta - np.float32(tp)))
    flow = np.where(theta < tp, rising, np.where(theta < oq, falling, np.float32(0)))
    pulse = np.diff(flow, prepend=flow[:1]) * (np.float32(SR / 4.0) / f0)  # ~unit peaks
    shimmer = 1 + np.float32(spk["shimmer"]) * rng.standard_normal(
        int(cycle[-1]) + 1, dtype=np.float32)[cycle]
    breath = np.float32(spk["breath"] + pro["breath"])
    noise = rng.standard_normal((2, n), dtype=np.float32)
    gate = np.where(theta < oq, np.float32(1.0), np.float32(0.4))
    source = voiced_env * (pulse * shimmer + breath * gate * noise[0])
    frication = np.float32(0.15) * fric_env * noise[1]

    # Filter in the STFT domain: vowel envelopes cross-faded between syllables, tilt, frication.
    spec = _stft(np.stack([source, frication]))  # [2, frames, bins]
    freqs = np.fft.rfftfreq(N_FFT, 1 / SR)
    times = (np.arange(spec.shape[1]) * HOP - N_FFT / 2) / SR
    frame_syl = np.clip(np.searchsorted(bounds, times, side="right") - 1, 0, n_syl - 1)
    vowel_of = rng.integers(0, len(VOWELS), n_syl)
    race = RACE_VOICE[spk["race"]]
    targets = VOWELS * spk["formant"] * np.array([race[0], race[1], 1.0, 1.0])
    ratio = freqs[None, :, None] / targets[:, None, :]  # [vowels, bins, formants]
    bw = BANDWIDTHS[None, None, :] / targets[:, None, :]
    log_env = -0.5 * np.log((1 - ratio**2) ** 2 + (ratio * bw) ** 2).sum(axis=2)
    log_env += pro["tilt"] * np.log2(np.maximum(freqs, 250.0) / 500.0) * (np.log(10) / 20)
    mix = _smooth(np.eye(len(VOWELS))[vowel_of[frame_syl]].T, int(0.04 * SR / HOP)).T
    vocal = np.exp(mix @ log_env)  # [frames, bins]: 40 ms glides between vowels
    fric_freq = rng.uniform(2500, 5000, n_syl)[frame_syl]
    fric_shape = 1 / np.sqrt(1 + ((freqs[None, :] - fric_freq[:, None]) / 1200.0) ** 2)
    y = _istft(spec[0] * vocal.astype(np.float32) + spec[1] * fric_shape.astype(np.float32), n)

    # Level: -30 dBFS RMS over the active part, moved by emotion and speaker gain; the rare
    # utterance whose peak would pass -1 dBFS is turned down (a recording gain), never clipped.
    active = (voiced_env + fric_env) > 0.05
    rms = float(np.sqrt(np.mean(y[active] ** 2))) if active.any() else 1.0
    level_db = -30.0 + pro["gain_db"] * spk["expressive"] + spk["gain_db"] + rng.normal(0, 1.0)
    y = y * np.float32(10 ** (level_db / 20) / max(rms, 1e-9))
    y *= np.float32(min(1.0, PEAK / max(float(np.abs(y).max()), 1e-9)))
    y += np.float32(10 ** (-65 / 20)) * rng.standard_normal(n, dtype=np.float32)
    return y


# ----------------------------------------------------------------------------- annotators
def annotate(emotion: str, blend: str | None, weight: float, intensity: float, n_votes: int,
             rng: np.random.Generator) -> np.ndarray:
    """Vote counts [K] from simulated annotators (a confusion model, see module docstring)."""
    k = len(CLASSES)
    rendered = np.zeros(k)
    rendered[CLASSES.index(emotion)] = 1 - weight
    if blend:
        rendered[CLASSES.index(blend)] += weight
    confuse = np.array([[CONFUSIONS[a].get(b, 0.0) for b in CLASSES] for a in CLASSES])
    p_right = float(np.clip(0.35 + 0.45 * intensity, 0.3, 0.9))
    q = p_right * rendered + (1 - p_right) * rendered @ confuse
    return rng.multinomial(n_votes, q / q.sum())


# ----------------------------------------------------------------------------- corpus
def _plan(cfg: SyntheticConfig, speakers: pd.DataFrame) -> pd.DataFrame:
    """One row per utterance to render: speaker, emotion, take, and its own seed keys."""
    minority_n = max(1, int(round(cfg.minority_share * cfg.utterances_per_emotion)))
    rows = []
    for s_i, spk in speakers.iterrows():
        for e_i, emo in enumerate(CLASSES):
            n = cfg.utterances_per_emotion if cfg.trend[emo] == spk["gender"] else minority_n
            rows += [{"spk_row": s_i, "speaker": spk["speaker"], "intended": emo, "e_i": e_i,
                      "take": k} for k in range(n)]
    return pd.DataFrame(rows)


def _write_wav(path: Path, wav: np.ndarray) -> None:
    """16-bit PCM wav via memory: soundfile's own file flush syncs to disk, 10x slower here."""
    buf = io.BytesIO()
    sf.write(buf, wav, SR, format="WAV", subtype="PCM_16")
    path.write_bytes(buf.getvalue())


def make_config(n_speakers_per_gender: int = 12, utterances_per_emotion: int = 8, seed: int = 0,
                **options: object) -> SyntheticConfig:
    """A checked SyntheticConfig; `options` are its other fields (minority_share, seconds, votes,
    ambiguous_share, trend). Unknown names raise a TypeError listing the accepted ones."""
    accepted = {f for f in SyntheticConfig.__dataclass_fields__} - {
        "n_speakers_per_gender", "utterances_per_emotion", "seed", "version"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"synthetic corpus has no option(s) {unknown}; it takes "
                        f"n_speakers_per_gender, utterances_per_emotion, seed, folds, "
                        f"{', '.join(sorted(accepted))}")
    opts = {k: v for k, v in options.items() if v is not None}
    for key in ("seconds", "votes"):
        if key in opts:
            opts[key] = tuple(opts[key])  # type: ignore[arg-type]
    cfg = SyntheticConfig(int(n_speakers_per_gender), int(utterances_per_emotion), seed=int(seed),
                          **opts)  # type: ignore[arg-type]
    cfg.check()
    return cfg


def generate(out_dir: str | Path, n_speakers_per_gender: int = 12, utterances_per_emotion: int = 8,
             seed: int = 0, *, folds: int | None = 5, **options: object) -> Manifest:
    """Write the corpus (``wav/*.wav`` + ``manifest.parquet``) under `out_dir` and return it.

    `options`: minority_share, seconds (min, max), votes (min, max), ambiguous_share, trend (see
    `SyntheticConfig`). Returned paths are absolute; the saved manifest keeps them relative to
    `out_dir` so the folder can be moved. `folds` speaker-independent folds come from
    `splits.make_folds` (0/None: no folds).
    """
    cfg = make_config(n_speakers_per_gender, utterances_per_emotion, seed, **options)
    out_dir = Path(out_dir)
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    speakers = make_speakers(cfg)
    plan = _plan(cfg, speakers)
    records = []
    for row in progress.track(plan.itertuples(index=False), f"synthetic corpus -> {out_dir}",
                              total=len(plan)):
        spk = speakers.loc[row.spk_row]
        rng = _rng(cfg.seed, 1, int(spk["idx"]), row.e_i, row.take)
        intensity = float(rng.uniform(0.4, 1.2))
        blend, weight = None, 0.0
        if rng.random() < cfg.ambiguous_share:
            row_c = CONFUSIONS[row.intended]
            blend = str(rng.choice(list(row_c), p=np.array(list(row_c.values()))))
            weight = float(rng.uniform(0.2, 0.5))
        seconds_ = float(rng.uniform(*cfg.seconds))
        wav = render(spk, _prosody(row.intended, blend, weight, intensity), seconds_, rng)
        counts = annotate(row.intended, blend, weight, intensity,
                          int(rng.integers(cfg.votes[0], cfg.votes[1] + 1)), rng)
        utt = f"{spk['speaker']}_{row.intended}_{row.take:02d}"
        _write_wav(wav_dir / f"{utt}.wav", wav)
        records.append({"utt_id": utt, "path": f"wav/{utt}.wav", "speaker": spk["speaker"],
                        "gender": spk["gender"], "age": spk["age"], "age_group": spk["age_group"],
                        "race": spk["race"], "intended": row.intended,
                        "intensity": round(intensity, 4), "blend": blend,
                        "blend_weight": round(weight, 4), "duration": len(wav) / SR,
                        **{f"votes_{c}": int(v) for c, v in zip(CLASSES, counts, strict=True)}})
    df = pd.DataFrame(records)
    soft = soft_from_votes(df[[f"votes_{c}" for c in CLASSES]].to_numpy(), df["utt_id"].tolist())
    for j, c in enumerate(CLASSES):
        df[f"soft_{c}"] = soft[:, j]
    voice_cols = ["speaker", "gender", "age_group", "race", "f0", "formant", "rate"]
    info = {"config": cfg.as_json(), "sample_rate": SR,
            "speakers": speakers[voice_cols].round(4).to_dict(orient="records")}
    manifest = Manifest(df, CLASSES, corpus="synthetic", info=info)
    if folds:
        manifest = make_folds(manifest, k=int(folds), seed=cfg.seed)
    manifest.save(out_dir / "manifest.parquet")
    return _absolute(manifest, out_dir)


def _absolute(manifest: Manifest, root: Path) -> Manifest:
    df = manifest.df.copy()
    df["path"] = [str((root / p).resolve()) for p in df["path"]]
    return Manifest(df, manifest.classes, manifest.corpus, manifest.info)


OPTION_HELP = {
    "folds": "Number of speaker-independent, gender-balanced folds (0: none).",
    "regenerate": "Write the corpus again even when a matching one is cached at root.",
    "n_speakers_per_gender": "Speakers of each gender.",
    "utterances_per_emotion": "Utterances per speaker and emotion (majority gender).",
    "seed": "Seed of the voices, annotators and folds.",
    "minority_share": "Share of utterances a speaker of an emotion's minority gender records.",
    "seconds": "Shortest and longest utterance, in seconds (min,max).",
    "votes": "Fewest and most annotator votes per utterance (min,max).",
    "ambiguous_share": "Share of utterances that blend two emotions.",
    "trend": "Majority gender per emotion, e.g. angry:M,sad:F,... (all six classes).",
}


def keyword_options() -> list[inspect.Parameter]:
    """The generator settings `load` takes as ``**options``: `make_config`'s parameters and the
    other `SyntheticConfig` fields, with resolved type hints (for option listings and checks)."""
    hints = {**typing.get_type_hints(SyntheticConfig), **typing.get_type_hints(make_config)}
    named = [p.replace(annotation=hints[p.name], kind=p.KEYWORD_ONLY)
             for p in inspect.signature(make_config).parameters.values()
             if p.kind is not p.VAR_KEYWORD]
    taken = {p.name for p in named} | {"version"}
    rest = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                              default=f.default if f.default_factory is MISSING
                              else f.default_factory())
            for f in fields(SyntheticConfig) if f.name not in taken]
    return named + rest


def load(root: str | Path, *, folds: int | None = 5, regenerate: bool = False,
         **options: object) -> Manifest:
    """The synthetic corpus at `root`: reuse the cached one if its configuration matches, else
    (re)generate it. `options` are `generate`'s (n_speakers_per_gender, utterances_per_emotion,
    seed, minority_share, ...). A foreign manifest at `root` is never overwritten."""
    root = Path(root)
    cached = root / "manifest.parquet"
    want = make_config(**options)  # type: ignore[arg-type]
    if cached.is_file() and not regenerate:
        try:
            old = Manifest.load(cached)
        except ManifestError as exc:
            raise CorpusError(f"{cached}: unreadable manifest ({exc}); delete it or pass "
                              "regenerate=True") from exc
        if old.corpus != "synthetic":
            raise CorpusError(f"{cached} holds corpus {old.corpus!r}, not a synthetic one; "
                              "choose an empty folder for the synthetic corpus")
        same_folds = len(old.folds) == (int(folds) if folds else 0)
        files_ok = all((root / p).is_file() for p in old.df["path"])
        if old.info.get("config") == want.as_json() and same_folds and files_ok:
            return _absolute(old, root)
    return generate(root, folds=folds, **options)  # type: ignore[arg-type]
