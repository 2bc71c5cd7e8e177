"""Every tutorial in docs/tutorials/ runs as written, and its outputs are checked.

One generic runner executes a tutorial's blocks in order in a fresh folder: ```bash blocks (only
`emodebias ...` command lines, `\\` continuations, `$VARS` the test sets) through typer's
CliRunner, ```python blocks in one namespace (what they print is captured), and ```yaml blocks
whose first line is `# <file name>` are written to that file, as the reader saves them. The
reader's own inputs (a predictions CSV, a corpus table with audio, a checkpoint folder, new
clips) are made by the fixtures below. Each tutorial then has a check that compares its outputs
with independent computations (sklearn, transformers, the saved predictions), not only exit
codes; a tutorial without a check fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from sklearn.metrics import f1_score, recall_score
from typer.testing import CliRunner

from emodebias.cli import app

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
BLOCK = re.compile(r"^```(bash|python|yaml)\n(.*?)^```", re.S | re.M)
SR = 16_000


@dataclass
class Outcome:
    """What a tutorial produced: CLI results per command, the Python namespace and its prints."""

    cli: dict[str, list] = field(default_factory=dict)  # command name -> [Result, ...]
    scope: dict = field(default_factory=dict)
    printed: list[str] = field(default_factory=list)  # stdout of each python block

    def out(self, command: str, i: int = 0) -> str:
        return self.cli[command][i].stdout


def blocks(path: Path) -> list[tuple[str, str]]:
    return BLOCK.findall(path.read_text())


def commands(block: str) -> list[list[str]]:
    """A bash block -> argv lists: continuations joined, comments dropped, $VARS expanded."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        expanded = os.path.expandvars(line)
        assert "$" not in expanded.split("#")[0], f"unset variable in {line!r}"
        args = shlex.split(expanded, comments=True)
        if args:
            assert args[0] == "emodebias", f"only emodebias commands in tutorials: {line!r}"
            out.append(args)
    return out


def run_tutorial(path: Path) -> Outcome:
    result = Outcome()
    for lang, code in blocks(path):
        if lang == "bash":
            for argv in commands(code):
                res = CliRunner().invoke(app, argv[1:])
                assert res.exit_code == 0, f"{path.name}: {shlex.join(argv)}\n{res.output}" \
                                           f"{res.exception!r}"
                result.cli.setdefault(argv[1], []).append(res)
        elif lang == "yaml":
            first = code.splitlines()[0]
            assert first.startswith("# "), f"{path.name}: a yaml block starts with # <file name>"
            Path(first[2:].strip()).write_text(code)
        else:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(compile(code, str(path), "exec"), result.scope)  # noqa: S102 (the doc)
            result.printed.append(buf.getvalue())
    return result


def binary_f1(targets: np.ndarray, probs: np.ndarray) -> float:
    """Independent macro-F1: targets and probabilities binarised at 1/K (ties count positive)."""
    k = targets.shape[1]
    y = targets >= 1 / k - 1e-9
    return float(f1_score(y, probs > 1 / k, average="macro", zero_division=0))


def saved_predictions(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "predictions.npz") as z:
        return {k: z[k] for k in z.files}


def record(run: Path) -> dict:
    return json.loads((run / "record.json").read_text())


# ----------------------------------------------------------------------------- reader inputs
CLASSES = ["angry", "happy", "neutral", "sad"]


@pytest.fixture(scope="module")
def predictions_table() -> pd.DataFrame:
    """A model's predictions: men's are noisier, 20 speakers, ages in years."""
    rng = np.random.default_rng(0)
    n = 600
    spk = rng.integers(0, 20, n)
    gender = np.where(spk % 2 == 0, "female", "male")
    targets = rng.dirichlet(np.full(4, 0.5), n)
    logits = 3 * targets + np.where(gender == "male", 2.0, 0.6)[:, None] * rng.normal(size=(n, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    df = pd.DataFrame({"utt_id": [f"u{i}" for i in range(n)], "speaker": [f"s{s}" for s in spk],
                       "gender": gender, "age": 20 + (spk * 7) % 45})
    for j, c in enumerate(CLASSES):
        df[f"prob_{c}"] = probs[:, j]
    for j, c in enumerate(CLASSES):
        df[f"label_{c}"] = targets[:, j]
    return df


@pytest.fixture(scope="module")
def own_corpus(tmp_path_factory) -> Path:
    """`my-corpus/`: synthetic audio and a corpus.csv with file, speaker, gender, emotion."""
    from emodebias.data.corpora import load_corpus

    root = tmp_path_factory.mktemp("own") / "my-corpus"
    man = load_corpus("synthetic", root / "audio", n_speakers_per_gender=3,
                      utterances_per_emotion=2, folds=None, seconds=(0.8, 1.2))
    pd.DataFrame({
        "file": [Path(p).relative_to(root).as_posix() for p in man.df["path"]],
        "speaker": man.df["speaker"],
        "gender": man.df["gender"].map({"F": "female", "M": "male"}),
        "emotion": np.asarray(man.classes)[man.soft_labels().argmax(1)],
    }).to_csv(root / "corpus.csv", index=False)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny randomly initialised WavLM saved as a HuggingFace checkpoint folder."""
    import torch
    from conftest import tiny_wavlm_config
    from transformers import WavLMModel

    torch.manual_seed(0)
    cfg = tiny_wavlm_config(3)
    path = tmp_path_factory.mktemp("hf") / "my-wavlm"
    WavLMModel(cfg).eval().save_pretrained(path)
    return path


def write_clips(folder: Path) -> list[Path]:
    """Two new voiced clips (harmonic tones at 44.1 kHz, resampled on reading)."""
    folder.mkdir(parents=True, exist_ok=True)
    sr = 44_100
    t = np.arange(int(1.2 * sr)) / sr
    paths = []
    for i, f0 in enumerate((120.0, 210.0), start=1):
        wav = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6)) * 0.1
        sf.write(folder / f"clip{i}.wav", wav.astype(np.float32), sr)
        paths.append(folder / f"clip{i}.wav")
    return paths


# ----------------------------------------------------------------------------- checks
def check_evaluate_predictions(o: Outcome, df: pd.DataFrame) -> None:
    y = df[[f"label_{c}" for c in CLASSES]].to_numpy()
    p = df[[f"prob_{c}" for c in CLASSES]].to_numpy()
    macro = binary_f1(y, p)
    assert f"macro_f1     {macro:.4f}" in o.out("evaluate")
    # the page's sample output is this table's (same data): its lines are the real ones
    page = (ROOT / "docs" / "tutorials" / "evaluate-predictions.md").read_text()
    sample = page[page.index("```text\n600 utterances"):].split("```")[1].splitlines()[1:]
    assert all(line in o.out("evaluate").splitlines() for line in sample if line != "..."), \
        "update the sample output in docs/tutorials/evaluate-predictions.md"
    # the TPR gap of two groups: RMS over classes of the per-class recall difference
    yb, pb = y > 0.25, p > 0.25
    diffs = [recall_score(yb[m, j], pb[m, j]) - recall_score(yb[~m, j], pb[~m, j])
             for j in range(4) for m in [df["gender"].to_numpy() == "female"]]
    tpr_gap = float(np.sqrt(np.mean(np.square(diffs))))
    gaps = pd.read_csv("metrics/gaps.csv")
    row = gaps[(gaps.attribute == "gender") & (gaps.metric == "tpr_gap")].iloc[0]
    assert row.value == pytest.approx(tpr_gap, abs=1e-12)
    assert row.status == "ok" and row.ci_low <= row.value_bc <= row.ci_high
    assert row.p_perm < 0.05 and row.noise_floor < row.value  # men's predictions are noisier
    assert set(gaps.attribute) == {"gender", "age"}
    assert "[age] speakers per group: <30:" in o.out("evaluate")
    for name in ("per_class.csv", "table.csv", "summary.json"):
        assert Path("metrics", name).stat().st_size > 0
    res = o.scope["res"]  # the Python block: the same numbers
    assert res.summary["macro_f1"] == pytest.approx(macro, abs=1e-12)
    assert res.summary["gender.tpr_gap"] == pytest.approx(tpr_gap, abs=1e-12)
    assert o.printed[0].splitlines()[0].split() == [str(round(macro, 3)), str(round(tpr_gap, 3))]
    num = ["value", "value_bc", "ci_low", "ci_high", "p_perm"]
    np.testing.assert_allclose(res.gaps[num].to_numpy(float), gaps[num].to_numpy(float),
                               atol=1e-12)


def check_own_corpus(o: Outcome) -> None:
    assert "wrote work/manifest/manifest.parquet" in o.out("prepare")
    man = pd.read_parquet("work/manifest/manifest.parquet")
    table = pd.read_csv("my-corpus/corpus.csv")
    assert len(man) == len(table) and set(man["gender"]) == {"F", "M"}
    assert man["utt_id"].tolist() == [Path(f).stem for f in table["file"]]  # ids: file names
    folds = [c for c in man.columns if c.startswith("split_")]
    assert len(folds) == 3
    for col in folds:  # speaker-independent folds
        parts = man.groupby("speaker")[col].nunique()
        assert (parts == 1).all(), col
    assert "wrote work/groups/truth_gender" in o.out("groups")
    runs = {m: Path("work/runs", m) for m in ("erm", "rw", "gdro")}
    for method, run in runs.items():
        rec, pred = record(run), saved_predictions(run)
        assert rec["kind"] == "train" and rec["spec"]["method"] == method
        assert rec["spec"]["groups"] == ("none" if method == "erm" else "truth:gender")
        assert rec["metrics"]["summary"]["macro_f1"] == pytest.approx(
            binary_f1(pred["targets"], pred["probs"]), abs=1e-9)
        assert 0 <= rec["best_epoch"] <= 30
    assert o.out("collect").startswith("3 runs (3 train)")
    tidy = pd.read_parquet("work/runs/results.parquet")
    gaps = tidy[(tidy.part == "summary") & (tidy.attribute == "gender")
                & (tidy.metric == "tpr_gap")].set_index("run")["value"]
    assert sorted(gaps.index) == ["erm", "gdro", "rw"] and gaps.between(0, 1).all()
    for run, value in gaps.items():
        assert value == pytest.approx(record(runs[run])["metrics"]["summary"]["gender.tpr_gap"])
        assert re.search(rf"^{run}\s+{value:.3f}$", o.printed[0], re.M), o.printed[0]
    md = Path("work/runs/report/report.md").read_text()
    assert md.startswith("# My corpus: ERM vs RW vs GDRO")
    assert all(f"| {m} |" in o.out("report") for m in ("ERM", "RW", "GDRO"))
    assert Path("work/runs/report/report.html").stat().st_size > 10_000


def check_demo(o: Outcome) -> None:
    from emodebias.bench.grid import load_grid, read_grid

    # the page describes the quick preset: 10 speakers, 2 folds, ERM / RW / GDRO, 20 epochs, 1:5
    preset, _ = read_grid("demo-quick")
    specs = load_grid("demo-quick")
    assert (2 * preset["corpus"]["n_speakers_per_gender"], len(preset["folds"]),
            preset["train"]["epochs"], preset["ratios"]) == (10, 2, 20, ["1:5"]), \
        "demo-quick changed: update docs/tutorials/demo.md"
    assert {s.method for s in specs} == {"erm", "rw", "gdro"}
    full, _ = read_grid("demo")  # ... and the full one: 32 speakers, 3 folds, 2 seeds, 7 methods
    assert (2 * full["corpus"]["n_speakers_per_gender"], len(full["folds"]), len(full["seeds"]),
            len({s.method for s in load_grid("demo")}), full["ratios"]) == (32, 3, 2, 7,
                                                                            ["1:20"])
    recs = [json.loads(p.read_text()) for p in Path("work/demo/runs").glob("*/record.json")]
    assert sorted(r["hash"] for r in recs) == sorted(s.hash for s in specs)
    assert all(r["status"] == "ok" and r["kind"] == "grid" for r in recs)
    erm = [r["metrics"]["summary"]["macro_f1"] for r in recs if r["spec"]["method"] == "erm"]
    assert f"| ERM | – | {np.mean(erm):.3f} ± {np.std(erm, ddof=1):.3f} |" in o.out("demo")
    # Gain ● (macro-F1): the mean over the gender-label methods' means, relative to ERM's
    truth = [np.mean([r["metrics"]["summary"]["macro_f1"] for r in recs
                      if (r["spec"]["method"], r["spec"]["groups"]) == (m, "truth:gender")])
             for m in ("rw", "gdro")]
    gain = (np.mean(truth) - np.mean(erm)) / np.mean(erm)
    assert f"| Gain | ● | {100 * gain:+.2f}% |" in o.out("demo")
    for r in recs:  # each record's macro-F1 is that of its saved predictions
        pred = saved_predictions(Path("work/demo/runs", r["hash"]))
        assert r["metrics"]["summary"]["macro_f1"] == pytest.approx(
            binary_f1(pred["targets"], pred["probs"]), abs=1e-9)
    assert Path("work/demo/report/report.html").is_file()
    md = Path("work/demo-report/report.md").read_text()
    assert md.startswith("# Synthetic demo") and "## Provenance" in md
    assert "data:image/png;base64," in Path("work/demo-report/report.html").read_text()
    assert json.loads(Path("work/demo-report/report.json").read_text())
    table = o.scope["table"]
    assert table.loc[("erm", "none"), "macro_f1"] == pytest.approx(np.mean(erm))
    assert set(table.index) == {(s.method, s.groups) for s in specs}
    assert table.notna().all().all() and table.to_numpy().min() >= 0


def check_hf_encoder(o: Outcome, ckpt: Path) -> None:
    import torch
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    enc = o.scope["enc"]
    assert (enc.n_layers, enc.dim) == (4, 32)  # CNN output + 3 transformer layers
    meta = json.loads(Path("work/wavlm/meta.json").read_text())
    man = pd.read_parquet("work/corpus/manifest.parquet")
    feats = np.load("work/wavlm/features.npy", mmap_mode="r")
    assert feats.shape == (len(man), 4, 32) and not meta.get("failures")
    # the stored features equal transformers' hidden states, mean over frames (no
    # preprocessor_config.json: the feature extractor's default, a normalised waveform)
    model = AutoModel.from_pretrained(ckpt).eval()
    row = 5
    path = man.set_index("utt_id").loc[meta["utt_ids"][row], "path"]
    wav, sr = sf.read(path, dtype="float32")
    assert sr == SR
    x = Wav2Vec2FeatureExtractor()(wav, sampling_rate=SR, return_tensors="pt").input_values
    with torch.no_grad():
        hidden = model(x, output_hidden_states=True).hidden_states
    ref = np.stack([h[0].mean(0).numpy() for h in hidden])
    np.testing.assert_allclose(np.asarray(feats[row], np.float32), ref, rtol=1e-2, atol=2e-3)
    rec = record(Path("work/runs/wavlm-erm"))
    assert rec["encoder"]["name"] == str(ckpt.resolve()) and rec["encoder"]["n_layers"] == 4
    pred = saved_predictions(Path("work/runs/wavlm-erm"))
    assert np.allclose(pred["probs"].sum(1), 1, atol=1e-5)
    assert rec["metrics"]["summary"]["macro_f1"] == pytest.approx(
        binary_f1(pred["targets"], pred["probs"]), abs=1e-9)


def check_predict(o: Outcome) -> None:
    import emodebias as ed

    run = ed.load_run("work/runs/erm")
    clips = ["new/clip1.wav", "new/clip2.wav"]
    probs = o.scope["probs"]
    assert probs.shape == (2, 6) and np.allclose(probs.sum(1), 1, atol=1e-5)
    text = o.out("predict", 0)
    assert text.count("positive:") == 2 and all(c in text for c in clips)
    out = json.loads(o.out("predict", 1))
    assert [x["path"] for x in out] == clips
    for x, row in zip(out, probs, strict=True):
        assert list(x["probs"]) == run.classes and x["error"] is None
        np.testing.assert_allclose(list(x["probs"].values()), row, atol=1e-6)
        assert x["positive"] == [c for c, p in zip(run.classes, row, strict=True) if p > 1 / 6]
    rows = pd.read_csv(io.StringIO(o.out("predict", 2)))
    assert rows["path"].tolist() == clips and rows["error"].isna().all()
    np.testing.assert_allclose(rows[[f"prob_{c}" for c in run.classes]], probs, atol=1e-5)
    # from audio alone, a test utterance gets the probabilities saved when the run was scored
    saved = saved_predictions(Path("work/runs/erm"))
    man = pd.read_parquet("work/corpus/manifest.parquet").set_index("utt_id")
    utt = str(saved["utt_ids"][0])
    np.testing.assert_allclose(run.predict([man.loc[utt, "path"]])[0], saved["probs"][0],
                               atol=1e-4)
    grid = [p.parent for p in Path("work/grid/runs").glob("*/record.json")]
    assert len(grid) == 1 and record(grid[0])["kind"] == "grid"
    assert record(grid[0])["spec"]["method"] == "gdro"
    bench = json.loads(o.out("predict", 3))
    np.testing.assert_allclose([list(x["probs"].values()) for x in bench],
                               ed.load_run(grid[0]).predict(clips), atol=1e-6)


def check_notebook(o: Outcome) -> None:
    code = blocks(ROOT / "docs" / "tutorials" / "notebook.md")[0][1]
    assert len([line for line in code.splitlines() if line.strip()]) < 20
    runs, idi, metrics, probs = (o.scope[k] for k in ("runs", "idi", "metrics", "probs"))
    assert [r.method for r in runs] == ["erm", "rw", "gdro"]
    assert [r.record["spec"]["groups"] for r in (*runs, idi)] == [
        "none", "truth:gender", "truth:gender", "cluster:acoustic:k=4"]
    for name, run in zip(["0-erm-s0", "1-rw-s0", "2-gdro-s0", "gdro-k4"], (*runs, idi),
                         strict=True):
        pred = saved_predictions(Path("work/runs", name))
        assert record(Path("work/runs", name))["hash"] == run.hash
        assert run.summary["macro_f1"] == pytest.approx(
            binary_f1(pred["targets"], pred["probs"]), abs=1e-9)
    s = metrics.summary
    assert s["macro_f1"] == pytest.approx(runs[2].summary["macro_f1"], abs=1e-12)
    assert 0 <= s["macro_f1.ci_low"] <= s["macro_f1.ci_high"] <= 1
    assert probs.shape == (3, 6) and np.allclose(probs.sum(1), 1, atol=1e-5)
    clusters = o.scope["clusters"]
    assert sorted(set(clusters.ids.tolist())) == [0, 1, 2, 3]
    table = o.scope["table"]
    assert len(table) == 4 and table["macro_f1"].between(0, 1).all()
    assert sorted(table["macro_f1"]) == pytest.approx(sorted(r.summary["macro_f1"]
                                                             for r in (*runs, idi)))


# ----------------------------------------------------------------------------- the test
def _link(target: Path, name: str) -> None:
    Path(name).symlink_to(target, target_is_directory=target.is_dir())


def setup_evaluate_predictions(request) -> tuple:
    df = request.getfixturevalue("predictions_table")
    df.to_csv("predictions.csv", index=False)
    return (df,)


def setup_own_corpus(request) -> tuple:
    _link(request.getfixturevalue("own_corpus"), "my-corpus")
    return ()


def setup_hf_encoder(request) -> tuple:
    ckpt = request.getfixturevalue("checkpoint")
    Path("models").mkdir()
    _link(ckpt, "models/my-wavlm")
    return (Path("models/my-wavlm").resolve(),)


def setup_predict(request) -> tuple:
    write_clips(Path("new"))
    return ()


def no_setup(request) -> tuple:
    return ()


TUTORIAL_SETUP: dict[str, Callable] = {
    "evaluate-predictions.md": setup_evaluate_predictions, "own-corpus.md": setup_own_corpus,
    "demo.md": no_setup, "hf-encoder.md": setup_hf_encoder, "predict.md": setup_predict,
    "notebook.md": no_setup,
}
TUTORIAL_CHECK: dict[str, Callable] = {
    "evaluate-predictions.md": check_evaluate_predictions, "own-corpus.md": check_own_corpus,
    "demo.md": check_demo, "hf-encoder.md": check_hf_encoder, "predict.md": check_predict,
    "notebook.md": check_notebook,
}


def test_runner_reads_blocks_as_a_shell_would(monkeypatch) -> None:
    monkeypatch.setenv("CLIPS", "a.wav b.wav")
    assert commands("emodebias predict --model 'my runs/x' \\\n    $CLIPS  # comment\n") == [
        ["emodebias", "predict", "--model", "my runs/x", "a.wav", "b.wav"]]
    with pytest.raises(AssertionError, match="only emodebias commands"):
        commands("rm -rf work\n")
    with pytest.raises(AssertionError, match="unset variable"):
        commands("emodebias predict $NOT_SET_ANYWHERE\n")


def test_every_tutorial_is_checked() -> None:
    assert sorted(TUTORIAL_CHECK) == sorted(p.name for p in TUTORIALS)
    for path in TUTORIALS:
        langs = [lang for lang, _ in blocks(path)]
        assert "bash" in langs or "python" in langs, path.name


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_as_written(path, tmp_path, monkeypatch, request) -> None:
    assert path.name in TUTORIAL_SETUP, f"{path.name} has no setup/check in {__file__}"
    monkeypatch.chdir(tmp_path)
    args = TUTORIAL_SETUP[path.name](request)
    outcome = run_tutorial(path)
    TUTORIAL_CHECK[path.name](outcome, *args)
