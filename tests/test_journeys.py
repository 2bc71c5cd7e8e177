"""User journeys end to end, run as a user runs them: the README's pipeline exactly as written
(shell and Python blocks), an own corpus CSV through every stage to a comparison of `train` runs,
and predictions on new clips from a `train` run and a `bench` run (text, JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from emodebias.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
SR = 16_000


def readme_block(lang: str, heading: str = "## The pipeline") -> str:
    """The first ```lang block after `heading` in README.md."""
    text = README.read_text()
    start = text.index(f"```{lang}\n", text.index(heading)) + len(lang) + 4
    return text[start : text.index("```", start)]


def shell_commands(block: str) -> list[list[str]]:
    """A bash block -> argv lists (continuation lines joined, comments dropped)."""
    lines = block.replace("\\\n", " ").splitlines()
    return [args for args in (shlex.split(line, comments=True) for line in lines) if args]


def cli(*args: str, code: int = 0):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, f"{args}: {result.output}{result.exception!r}"
    return result


def test_readme_pipeline_exactly_as_written(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    outputs = {}
    for argv in shell_commands(readme_block("bash")):
        assert argv[0] == "emodebias", argv
        res = cli(*argv[1:])
        outputs.setdefault(argv[1], []).append(res.stdout)
    assert "wrote work/groups/truth/truth_gender (truth:gender, 2 groups)" in \
        outputs["groups"][0]
    assert "wrote work/groups/cluster/cluster_acoustic_k4" in outputs["groups"][1]
    for text, run in zip(outputs["train"], ("erm", "gdro", "gdro-k4"), strict=True):
        assert "macro_f1" in text and f"wrote work/runs/{run} " in text
    assert outputs["collect"][0].startswith("3 runs (3 train)")
    tidy = pd.read_parquet("work/runs/results.parquet")
    runs = tidy.drop_duplicates("hash").set_index("run")
    assert runs.loc["gdro", "groups"] == "truth:gender" and runs.loc["erm", "groups"] == "none"
    assert runs.loc["gdro-k4", "groups"] == "cluster:acoustic:k=4"
    report = Path("work/runs/report/report.md").read_text()
    assert "GDRO" in report and "## Provenance" in report and "| torch |" in report
    page = Path("work/runs/report/report.html").read_text()
    anchor = re.search(r"<h2 id='(\w+)'>Provenance</h2>", page).group(1)
    assert f"<a href='#{anchor}'>Provenance" in page  # a section of the table of contents
    assert "tpr_gap" in outputs["evaluate"][0]
    assert re.search(r"positive: \S", outputs["predict"][0])


def test_readme_python_pipeline_in_under_20_lines(tmp_path, monkeypatch) -> None:
    code = readme_block("python")
    assert len([line for line in code.splitlines() if line.strip()]) < 20
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the documented snippet)
    runs, probs, metrics = scope["runs"], scope["probs"], scope["metrics"]
    assert [r.method for r in runs] == ["erm", "gdro"]
    assert probs.shape == (3, 6) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert "macro_f1.ci_low" in metrics.summary
    assert metrics.summary["macro_f1"] == pytest.approx(runs[1].summary["macro_f1"])
    res = cli("collect", "work/nb/runs")
    assert res.stdout.startswith("2 runs (2 train)")


# ----------------------------------------------------------------------------- J2 and J5
@pytest.fixture(scope="module")
def own_corpus(tmp_path_factory) -> Path:
    """A user's own corpus: audio files and a CSV with file, speaker, gender, emotion."""
    from emodebias.data.corpora import load_corpus

    root = tmp_path_factory.mktemp("own")
    man = load_corpus("synthetic", root / "audio", n_speakers_per_gender=3,
                      utterances_per_emotion=2, folds=None)
    soft = man.soft_labels()
    table = pd.DataFrame({
        "file": [str(Path(p).relative_to(root)) for p in man.df["path"]],
        "speaker": man.df["speaker"], "gender": man.df["gender"].map({"F": "female",
                                                                       "M": "male"}),
        "emotion": np.asarray(man.classes)[soft.argmax(1)],
    })
    table.to_csv(root / "corpus.csv", index=False)
    return root


@pytest.fixture(scope="module")
def compared(own_corpus) -> Path:
    """J2: own CSV -> prepare (with folds) -> split -> extract -> groups -> train ERM/RW/GDRO."""
    w = own_corpus / "work"
    cli("prepare", "--corpus", "table", "--root", str(own_corpus / "corpus.csv"), "--opt",
        "path=file", "--opt", "label=emotion", "--make-folds", "3", "--out", str(w / "corpus"))
    cli("split", "--manifest", str(w / "corpus"), "--fold", "1", "--ratio", "1:2", "--out",
        str(w / "split"))
    cli("extract", "--manifest", str(w / "corpus"), "--encoder", "acoustic", "--out",
        str(w / "feats"), "--no-progress")
    cli("groups", "--manifest", str(w / "corpus"), "--source", "truth", "--out",
        str(w / "groups"))
    for method in ("erm", "rw", "gdro"):
        res = cli("train", "--features", str(w / "feats"), "--manifest", str(w / "corpus"),
                  "--split", str(w / "split"), "--method", method, "--groups", str(w / "groups"),
                  "--epochs", "4", "--out", str(w / "runs" / method))
        assert "hamming_acc" in res.stdout
    return w


def test_j2_own_csv_to_a_comparison_of_train_runs(compared) -> None:
    res = cli("collect", str(compared / "runs"))
    assert res.stdout.startswith("3 runs (3 train)")
    tidy = pd.read_parquet(compared / "runs" / "results.parquet")
    summary = tidy[tidy["part"] == "summary"]
    assert set(summary["method"]) == {"erm", "rw", "gdro"}
    gaps = summary[(summary["attribute"] == "gender") & (summary["metric"] == "tpr_gap")]
    assert len(gaps) == 3 and gaps["value"].between(0, 1).all()
    assert dict(zip(summary.drop_duplicates("run")["run"], summary.drop_duplicates("run")
                    ["groups"], strict=True)) == {"erm": "none", "gdro": "truth:gender",
                                                  "rw": "truth:gender"}
    rep = cli("report", str(compared / "runs"), "--title", "own corpus")
    assert "| ERM |" in rep.stdout and "| RW |" in rep.stdout and "| GDRO |" in rep.stdout
    md = (compared / "runs" / "report" / "report.md").read_text()
    assert md.startswith("# own corpus") and "## Provenance" in md
    prov = json.loads((compared / "runs" / "report" / "provenance.json").read_text())
    assert prov["runs"][0]["n_runs"] == 3 and prov["report"]["versions"]["numpy"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> Path:
    """A one-run grid on a small synthetic corpus (`emodebias bench`)."""
    root = tmp_path_factory.mktemp("grid")
    (root / "grid.yaml").write_text(
        "corpus: {name: synthetic, n_speakers_per_gender: 3, utterances_per_emotion: 2, "
        "folds: 3}\nencoder: acoustic\nfolds: [1]\nratios: [full]\ntrain: {epochs: 3}\n"
        "runs:\n  - method: erm\n")
    cli("bench", str(root / "grid.yaml"), "--out", str(root / "out"))
    return root / "out"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """New audio: two voiced clips and a file that is not audio."""
    root = tmp_path_factory.mktemp("clips")
    t = np.arange(int(1.2 * SR)) / SR
    paths = []
    for f0 in (120.0, 210.0):
        wav = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6)) * 0.1
        sf.write(root / f"voice{int(f0)}.wav", wav.astype(np.float32), SR)
        paths.append(root / f"voice{int(f0)}.wav")
    (root / "notes.wav").write_text("not audio")
    return [*paths, root / "notes.wav"]


@pytest.mark.parametrize("source", ["train", "bench"])
def test_j5_predict_new_clips_text_json_csv(source, compared, bench_run, clips) -> None:
    import emodebias as ed

    model = str(compared / "runs" / "gdro" if source == "train" else bench_run)
    files = [str(p) for p in clips]
    text = cli("predict", "--model", model, *files)
    assert text.stdout.count("positive:") == 2 and f"failed {files[2]}" in text.stderr
    out = json.loads(cli("predict", "--model", model, "--json", *files).stdout)
    assert [o["path"] for o in out] == files and out[2]["probs"] is None and out[2]["error"]
    run = ed.load_run(model)
    expected = run.predict(files[:2])
    for o, row in zip(out[:2], expected, strict=True):
        assert list(o["probs"]) == run.classes and o["error"] is None
        np.testing.assert_allclose(list(o["probs"].values()), row, atol=1e-6)
        assert o["positive"] == [c for c, p in zip(run.classes, row, strict=True)
                                 if p > 1 / len(row)]
    rows = list(csv.DictReader(io.StringIO(cli("predict", "--model", model, "--csv",
                                               *files).stdout)))
    assert [r["path"] for r in rows] == files and rows[2]["error"] and not rows[0]["error"]
    assert float(rows[0][f"prob_{run.classes[0]}"]) == pytest.approx(expected[0, 0], abs=1e-5)
    res = cli("predict", "--model", model, files[2], code=2)
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: none of the 1 file(s) could be predicted (first: ")
    assert last.count(files[2]) == 2  # the file, then the audio error naming it once


def test_j5_nan_outputs_are_failures_not_argmax(compared, clips, monkeypatch) -> None:
    from emodebias.runs import Run

    monkeypatch.setattr(Run, "predict_features",
                        lambda self, feats, device="cpu": np.full((len(feats), 6), np.nan))
    model = str(compared / "runs" / "erm")
    res = cli("predict", "--model", model, *map(str, clips[:2]), code=2)
    assert "argmax" not in res.stdout and "non-finite" in res.stderr
    out = json.loads(cli("predict", "--model", model, "--json", str(clips[0]), code=2).stdout)
    assert out[0]["probs"] is None and "non-finite" in out[0]["error"]


def test_consumers_take_any_run_folder(compared, bench_run, tmp_path) -> None:
    """collect over a single run folder, a grid folder, and a folder above both."""
    import shutil

    assert cli("collect", str(compared / "runs" / "rw")).stdout.startswith("1 run (1 train)")
    assert cli("collect", str(bench_run)).stdout.startswith("1 run (1 grid)")
    shutil.copytree(compared / "runs", tmp_path / "above" / "train-runs")
    shutil.copytree(bench_run, tmp_path / "above" / "grid")
    both = cli("collect", str(tmp_path / "above"), "--path",
               str(compared / "all.parquet")).stdout
    assert re.match(r"\d+ runs \(", both) and "train" in both and "grid" in both
    missing = cli("collect", str(compared / "feats"), code=2)
    assert "no run records" in missing.stderr
    many = cli("predict", "--model", str(compared / "runs"), "x.wav", code=2)
    assert "holds 3 runs" in many.stderr


def test_evaluate_takes_a_folder_of_runs(compared, tmp_path) -> None:
    """Each run under the folder is evaluated, with the same numbers as evaluating it alone."""
    runs = compared / "runs"
    cli("evaluate", "-p", str(runs), "-m", str(compared / "corpus"), "--n-boot", "50",
        "--n-perm", "50", "-o", str(tmp_path / "all"))
    names = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert names == sorted(p.name for p in runs.iterdir() if (p / "record.json").is_file())
    for name in names:
        cli("evaluate", "-p", str(runs / name), "-m", str(compared / "corpus"), "--n-boot", "50",
            "--n-perm", "50", "-o", str(tmp_path / "one" / name))
        assert (json.loads((tmp_path / "all" / name / "summary.json").read_text())
                == json.loads((tmp_path / "one" / name / "summary.json").read_text()))
