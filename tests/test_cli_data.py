"""`emodebias prepare` and `emodebias split` end to end on the real EMO-SUPERB CREMA-D files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from emodebias.cli import app
from emodebias.commands.data import parse_opts
from emodebias.manifest import Manifest

runner = CliRunner()


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
    assert res.exit_code == 1 and "r >= 1" in res.output
    res = runner.invoke(app, ["split", "--manifest", str(prepared), "--fold", "7",
                              "--out", str(tmp_path)])
    assert res.exit_code == 1 and "fold '7' not in manifest" in res.output


def test_prepare_bad_input_and_skip(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    pd.DataFrame({"id": ["a", "b"], "wav": ["a.wav", "b.wav"], "spk": ["1", "2"],
                  "emo": ["sad", "angry"], "n": [0, 0]}).to_csv(table, index=False)
    common = ["prepare", "--corpus", "table", "--root", str(table), "--opt", "utt_id=id",
              "--opt", "path=wav", "--opt", "speaker=spk", "--opt", "label=emo",
              "--out", str(tmp_path / "o")]
    res = runner.invoke(app, common, terminal_width=200)
    assert res.exit_code == 1
    assert "missing audio file" in res.output and "t.csv line 2" in res.output
    res = runner.invoke(app, [*common, "--skip-bad"], terminal_width=200)
    assert res.exit_code == 1 and "no utterances left after skipping" in res.output
    (tmp_path / "a.wav").write_bytes(b"")
    res = runner.invoke(app, [*common, "--skip-bad"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "skipped 1 missing audio file" in res.output
    assert Manifest.load(tmp_path / "o").utt_ids == ["a"]
    res = runner.invoke(app, [*common, "--no-require-audio", "--opt", "colour=red"])
    assert res.exit_code == 1 and "colour" in res.output


def test_parse_opts() -> None:
    assert parse_opts(["a=1", "b=true", "c=x,y", "d=-3", "e=False"]) == {
        "a": 1, "b": True, "c": "x,y", "d": -3, "e": False}
    with pytest.raises(typer.BadParameter):
        parse_opts(["novalue"])
