"""`emodebias prepare` and `emodebias split` end to end on the real EMO-SUPERB CREMA-D files."""

from __future__ import annotations

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
from emodebias.cli.data import parse_opts
from emodebias.data.corpora import CORPORA, adapter_options
from emodebias.data.manifest import Manifest
from emodebias.errors import UserError

runner = CliRunner()


def _user_error(res, text: str) -> None:  # noqa: ANN001 (click Result)
    """A user mistake: exit code 2 and one line on stderr containing `text`."""
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], res.stderr


def _row(output: str, emotion: str) -> list[int]:
    """The integers of a rich table row, whatever the terminal width."""
    line = next(ln for ln in output.splitlines() if ln.startswith(f"│ {emotion} "))
    return [int(t) for t in re.findall(r"\d+", line)]


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep")
    res = runner.invoke(app, [
        "prepare", "--corpus", "emo_superb", "--root", str(shared_data / "no-audio"),
        "--labels-dir", str(shared_data / "emo-superb" / "crema-d"),
        "--demographics", str(shared_data / "crema-d" / "VideoDemographics.csv"),
        "--no-require-audio", "--out", str(out)], terminal_width=200)
    assert res.exit_code == 0, res.output
    (out / "stdout.txt").write_text(res.output)
    return out


def test_prepare_writes_manifest_and_counts(prepared: Path) -> None:
    m = Manifest.load(prepared)
    assert len(m) == 7442 and m.folds == ["1", "2", "3", "4", "5"] and "race" in m.df
    out = (prepared / "stdout.txt").read_text()
    # fold-1 strict-majority counts (train F/M, dev F/M, test F/M, all F/M) for angry / neutral
    assert _row(out, "angry") == [193, 240, 54, 93, 102, 58, 349, 391]
    assert _row(out, "neutral") == [799, 1081, 206, 384, 263, 250, 1268, 1715]
    assert "7442 utterances" in out


def test_split_writes_json(prepared: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["split", "--manifest", str(prepared / "manifest.parquet"),
                              "--fold", "1", "--ratio", "1:20", "--seed", "0",
                              "--out", str(tmp_path)], terminal_width=200)
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "split.json").read_text())
    assert data["ratio"] == 20 and data["direction"] == "natural" and len(data["test"]) == 1463
    assert data["info"]["selected"]["train"]["angry"] == {"M": 240, "F": 12}
    assert _row(res.output, "angry") == [12, 240, 4, 93, 102, 58]
    res = runner.invoke(app, ["split", "--manifest", str(prepared), "--fold", "1", "--ratio",
                              "1:0.5", "--out", str(tmp_path)])
    _user_error(res, "r >= 1")
    res = runner.invoke(app, ["split", "--manifest", str(prepared), "--fold", "7",
                              "--out", str(tmp_path)])
    _user_error(res, "fold '7' not in")


def test_prepare_bad_input_and_skip(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    pd.DataFrame({"id": ["a", "b"], "wav": ["a.wav", "b.wav"], "spk": ["1", "2"],
                  "emo": ["sad", "angry"], "n": [0, 0]}).to_csv(table, index=False)
    common = ["prepare", "--corpus", "table", "--root", str(table), "--opt", "utt_id=id",
              "--opt", "path=wav", "--opt", "speaker=spk", "--opt", "label=emo",
              "--out", str(tmp_path / "o")]
    res = runner.invoke(app, common, terminal_width=200)
    _user_error(res, "missing audio file")
    assert "t.csv line 2" in res.stderr
    res = runner.invoke(app, [*common, "--skip-bad"], terminal_width=200)
    _user_error(res, "no utterances left after skipping")
    (tmp_path / "a.wav").write_bytes(b"")
    res = runner.invoke(app, [*common, "--skip-bad"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "skipped 1 missing audio file" in res.output
    assert Manifest.load(tmp_path / "o").utt_ids == ["a"]
    res = runner.invoke(app, [*common, "--no-require-audio", "--opt", "colour=red"])
    _user_error(res, "unknown option(s) colour for corpus 'table' takes: table=TEXT")
    assert "utt_id=TEXT" in res.stderr and "label=TEXT" in res.stderr


def test_parse_opts() -> None:
    """Values stay text: the adapter's declared types convert them (see test_corpora_table)."""
    assert parse_opts(["a=1", "b=true", "c=x,y", "d= -3 "]) == {
        "a": "1", "b": "true", "c": "x,y", "d": "-3"}
    with pytest.raises(UserError, match="NAME=VALUE"):
        parse_opts(["novalue"])
    with pytest.raises(UserError, match="given twice"):
        parse_opts(["a=1", "a=2"])


def test_prepare_help_lists_every_adapter_option() -> None:
    """`prepare --help` shows each corpus's options as its adapter declares them."""
    res = runner.invoke(app, ["prepare", "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    sections = re.split(r"^Options of --corpus (\w+) \(--opt NAME=VALUE\):$", res.output,
                        flags=re.M)
    listed = {name: body for name, body in zip(sections[1::2], sections[2::2], strict=True)}
    assert list(listed) == list(CORPORA)
    for name in CORPORA:
        shown = re.findall(r"^  (\w+)=", listed[name], flags=re.M)
        assert shown == [o.name for o in adapter_options(name) if not o.common], name
    assert "utt_id=TEXT (default none)" in listed["table"]
    assert "--make-folds K" in res.output and "--seed" in res.output


@pytest.fixture(scope="module")
def own_csv(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's own table over 60 real EmoDB clips (6 per speaker), written as a researcher
    would: relative paths, their own column names, text emotion labels."""
    root = tmp_path_factory.mktemp("own")
    letters = dict(zip("WTEANFL", ["angry", "sad", "disgust", "fear", "neutral", "happy",
                                   "bored"], strict=True))
    female = {"08", "09", "13", "14", "16"}
    rows = []
    for spk in sorted({p.name[:2] for p in (shared_data / "emodb" / "wav").glob("*.wav")}):
        for p in sorted((shared_data / "emodb" / "wav").glob(f"{spk}*.wav"))[:6]:
            rows.append({"file": f"wav/{p.name}", "talker": f"spk{spk}",
                         "sex": "female" if spk in female else "male",
                         "emotion": letters[p.name[5]]})
    pd.DataFrame(rows).to_csv(root / "my_corpus.csv", index=False)
    return root


def test_own_csv_prepare_make_folds_then_split(own_csv: Path, shared_data: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "work[/x]"  # Rich markup in a path must print as it is
    res = runner.invoke(app, [
        "prepare", "--corpus", "table", "--root", str(own_csv / "my_corpus.csv"),
        "--opt", "path=file", "--opt", "speaker=talker", "--opt", "gender=sex",
        "--opt", "label=emotion", "--opt", f"audio_root={shared_data / 'emodb'}",
        "--make-folds", "3", "--seed", "2", "--out", str(out)], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == f"wrote {out / 'manifest.parquet'}"
    m = Manifest.load(out)
    table = pd.read_csv(own_csv / "my_corpus.csv")
    assert m.utt_ids == [Path(f).stem for f in table["file"]]  # ids default to file names
    assert m.classes == sorted(set(table["emotion"])) and len(m) == 60
    assert m.folds == ["1", "2", "3"] and m.info["folds"]["seed"] == 2
    assert m.df["path"].map(lambda p: Path(p).is_file()).all()
    gender = m.df.groupby("speaker")["gender"].first()
    for f in m.folds:
        col = m.df[f"split_{f}"]
        test = set(m.df.loc[col == "test", "speaker"])
        assert test and not test & set(m.df.loc[col != "test", "speaker"])
        n_f = int((gender[sorted(test)] == "F").sum())
        assert abs(2 * n_f - len(test)) <= 1
    assert "folds: 1, 2, 3" in res.stdout

    res = runner.invoke(app, ["split", "--manifest", str(out), "--fold", "1", "--ratio", "1:1",
                              "--out", str(tmp_path / "split")], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == f"wrote {tmp_path / 'split' / 'split.json'}"
    data = json.loads((tmp_path / "split" / "split.json").read_text())
    assert sorted(data["test"]) == sorted(m.split_ids(1, "test"))
    spk = m.df.set_index("utt_id")["speaker"]
    assert not set(spk[data["train"]]) & set(spk[data["test"]])
    assert data["ratio"] == 1 and len(data["train"]) > 0


def test_split_without_folds_points_to_make_folds(own_csv: Path, shared_data: Path,
                                                   tmp_path: Path) -> None:
    res = runner.invoke(app, [
        "prepare", "--corpus", "table", "--root", str(own_csv / "my_corpus.csv"),
        "--opt", "path=file", "--opt", "speaker=talker", "--opt", "label=emotion",
        "--opt", f"audio_root={shared_data / 'emodb'}", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "folds: none (add them with --make-folds K)" in res.stdout
    res = runner.invoke(app, ["split", "--manifest", str(tmp_path), "--fold", "1",
                              "--out", str(tmp_path / "s")])
    _user_error(res, "folds: none; add speaker-independent folds with `emodebias prepare ... "
                     "--make-folds K`")
    res = runner.invoke(app, ["prepare", "--corpus", "table", "--root",
                              str(own_csv / "my_corpus.csv"), "--opt", "path=file",
                              "--opt", "speaker=talker", "--opt", "label=emotion",
                              "--opt", "folds=5", "--out", str(tmp_path)])
    _user_error(res, "unknown option(s) folds for corpus 'table' takes:")
    assert "make_folds=INT" in res.stderr
    assert res.stderr.strip().endswith("folds come from make_folds=K (CLI: --make-folds K)")


@pytest.mark.parametrize(("args", "message"), [
    (["--corpus", "iemocap"], "unknown corpus 'iemocap'; known: emo_superb, crema_d, msp_podcast,"
                              " emodb, ravdess, table, synthetic"),
    (["--corpus", "table", "--opt", "skip_bad=maybe"],
     "option skip_bad=maybe of corpus 'table' must be BOOL"),
    (["--corpus", "emodb", "--opt", "folds=many"],
     "option folds=many of corpus 'emodb' must be INT"),
    (["--corpus", "emodb", "--labels-dir", "x"], "unknown option(s) labels_dir for corpus 'emodb'"),
    (["--corpus", "table", "--root", "BOOK"], "my_corpus.xlsx: not a CSV or Parquet table"),
    (["--corpus", "table", "--opt", "gender=who"], "no gender column 'who'; map it with "
                                                    "gender=<column>"),
    (["--corpus", "table", "--opt", "label=x", "--opt", "label=y"], "--opt label given twice"),
    (["--corpus", "table", "--opt", "label"], "--opt expects NAME=VALUE, got 'label'"),
    (["--corpus", "table", "--opt", "split=set", "--make-folds", "3"],
     "corpus 'table' already has folds ['1']"),
    (["--corpus", "table", "--fold", "9"], "--fold '9' is not in the manifest; folds: []"),
])
def test_prepare_user_errors_are_one_line(own_csv: Path, tmp_path: Path, args: list[str],
                                          message: str) -> None:
    table = pd.read_csv(own_csv / "my_corpus.csv").assign(set="train")
    table.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "my_corpus.xlsx").write_bytes(b"PK\x03\x04")
    root = ["--root", str(tmp_path / "t.csv")] if "--root" not in args else []
    args = [str(tmp_path / "my_corpus.xlsx") if a == "BOOK" else a for a in args]
    res = runner.invoke(app, ["prepare", *root, *args, "--opt", "path=file", "--opt",
                              "speaker=talker", "--opt", "label=emotion", "--no-require-audio",
                              "--out", str(tmp_path / "o")]
                        if args[1] == "table" else
                        ["prepare", "--root", str(tmp_path), *args, "--out", str(tmp_path / "o")])
    _user_error(res, message)


def test_docs_own_csv_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The own-CSV example in docs/corpora.md, run as written (audio made by the test)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "corpora.md").read_text()
    example = doc.split("### Example: your own CSV", 1)[1].split("\n## ", 1)[0]
    csv = re.search(r"```csv\n(.*?)```", example, flags=re.S).group(1)
    commands = re.search(r"```sh\n(.*?)```", example, flags=re.S).group(1).strip().splitlines()
    monkeypatch.chdir(tmp_path)
    Path("my_corpus.csv").write_text(csv)
    table = pd.read_csv("my_corpus.csv")
    Path("clips").mkdir()
    for i, f in enumerate(table["file"]):
        sf.write(f, 0.1 * np.sin(np.arange(8000) * (0.05 + 0.01 * i)), 16000)
    outputs = []
    for line in commands:
        argv = shlex.split(line)
        assert argv[0] == "emodebias"
        res = runner.invoke(app, argv[1:], terminal_width=200)
        assert res.exit_code == 0, res.output
        outputs.append(res.stdout.strip().splitlines()[-1])
    assert outputs == ["wrote work/manifest/manifest.parquet", "wrote work/split/split.json"]
    m = Manifest.load("work/manifest")
    assert m.utt_ids[:2] == ["f1_01", "f1_02"] and m.classes == ["angry", "happy", "neutral"]
    assert m.folds == ["1", "2", "3"] and m.df["age"].tolist() == table["age"].astype(str).tolist()
    assert sorted(m.df["gender"].unique()) == ["F", "M"]
    split = json.loads(Path("work/split/split.json").read_text())
    assert sorted(split["test"]) == sorted(m.split_ids(1, "test")) and split["train"]


def test_user_text_is_printed_as_is(tmp_path: Path) -> None:
    """Class names and paths that look like Rich markup are printed literally."""
    clips = tmp_path / "a[/x]"  # two folders, "a[" and "x]"
    clips.mkdir(parents=True)
    rows = []
    for i in range(4):
        sf.write(clips / f"c{i}.wav", np.zeros(1600, np.float32), 16000)
        rows.append({"path": f"a[/x]/c{i}.wav", "speaker": f"s{i}",
                     "emo": "[bold]calm" if i % 2 else "sad"})
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    res = runner.invoke(app, ["prepare", "--corpus", "table", "--root", str(tmp_path / "t.csv"),
                              "--opt", "label=emo", "--out", str(clips)], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "│ [bold]calm " in res.stdout and "classes [bold]calm, sad;" in res.stdout
    assert res.stdout.strip().splitlines()[-1] == f"wrote {clips / 'manifest.parquet'}"


def test_prepare_emodb_reports_what_it_left_out(shared_data: Path, tmp_path: Path) -> None:
    present = {p.name for p in (shared_data / "emodb" / "wav").glob("*.wav")}
    ratings = (shared_data / "emodb" / "erkennung.txt").read_text(encoding="latin-1")
    rows = [line.split() for line in ratings.splitlines()[1:]]
    low = sum(float(rec.replace(",", ".")) < 90 for _, name, rec, _ in rows if name in present)
    res = runner.invoke(app, ["prepare", "--corpus", "emodb", "--root", str(shared_data / "emodb"),
                              "--opt", "min_recognition=90", "--make-folds", "4",
                              "--out", str(tmp_path)], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert f"left out {low}: recognition < 90%" in res.stdout and 0 < low < 535
    m = Manifest.load(tmp_path)
    assert len(m) == 535 - low and m.folds == ["1", "2", "3", "4"]
    assert m.info["folds"]["method"] == "make_folds"
