"""Command-line hygiene of `extract`, `bench` and `demo`: bad options and output folders are one
`error:` line with exit code 2, user text (paths, install hints, bar labels) prints verbatim
(never as Rich markup), and `-q` turns the progress bars off."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from cli_checks import one_error_line
from rich.console import Console
from typer.testing import CliRunner

from emodebias import progress
from emodebias.cli import app
from emodebias.data.manifest import Manifest

SR = 16_000


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory) -> Path:
    """Three short tones as a manifest (enough for the acoustic encoder)."""
    root = tmp_path_factory.mktemp("hyg")
    rows = []
    for i in range(3):
        t = np.arange(int((0.4 + 0.1 * i) * SR)) / SR
        path = root / f"u{i}.wav"
        sf.write(path, (0.3 * np.sin(2 * np.pi * (120 + 40 * i) * t)).astype(np.float32), SR)
        rows.append({"utt_id": f"u{i}", "path": str(path), "speaker": f"s{i}",
                     "soft_neu": 1.0 - 0.3 * i, "soft_ang": 0.3 * i})
    return Manifest(pd.DataFrame(rows), classes=["neu", "ang"], corpus="t").save(
        root / "manifest.parquet")



@pytest.mark.parametrize("args, says", [
    (["--max-seconds", "-1"], "--max-seconds"),
    (["--workers", "0"], "--workers"),
    (["--batch-seconds", "0"], "--batch-seconds must be > 0"),
    (["--device", "gpu"], "--device must be cpu, cuda, cuda:N or mps"),
    (["--nonsense"], "No such option: --nonsense"),
])
def test_extract_bad_options_are_one_line(manifest_path, tmp_path, args, says) -> None:
    res = CliRunner().invoke(app, ["extract", "-m", str(manifest_path), "-o",
                                   str(tmp_path / "s"), *args])
    assert says in one_error_line(res)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", [
    ["bench", "demo-quick", "--workers", "0"],
    ["bench", "demo-quick", "--max-batch", "0"],
    ["bench", "demo-quick", "--device", "tpu"],
    ["bench", "demo-quick", "--var", "novalue"],
    ["bench", "demo-quick", "--backend", "slurm"],
    ["demo", "--quick", "--workers", "0"],
    ["demo", "--quick", "--device", "gpu:0"],
])
def test_grid_bad_options_are_one_line(tmp_path, command) -> None:
    res = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "o")])
    assert command[-2] in one_error_line(res)  # names the bad option
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_missing_cuda_device_is_one_line(tmp_path) -> None:
    res = CliRunner().invoke(app, ["bench", "demo-quick", "-d", "cuda", "-o", str(tmp_path)])
    assert "--device cuda: torch sees 0 CUDA device(s)" in one_error_line(res)


@pytest.mark.parametrize("command", [["extract", "-m", "{m}"], ["bench", "demo-quick"],
                                     ["demo", "--quick"]])
def test_existing_file_as_out_is_one_line(manifest_path, tmp_path, command) -> None:
    target = tmp_path / "a-file"
    target.write_text("keep me")
    args = [a.replace("{m}", str(manifest_path)) for a in command]
    res = CliRunner().invoke(app, [*args, "-o", str(target)])
    assert f"--out {target} is an existing file" in one_error_line(res)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("command", [["extract", "-m", "{m}"], ["bench", "demo-quick"]])
def test_read_only_out_folder_is_one_line(manifest_path, tmp_path, monkeypatch,
                                          command) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root ignores mode bits: report what a user would see
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and Path(p) != locked)
    args = [a.replace("{m}", str(manifest_path)) for a in command]
    try:
        res = CliRunner().invoke(app, [*args, "-o", str(locked / "out")])
    finally:
        locked.chmod(0o755)
    assert f"{locked} is not writable" in one_error_line(res)


def test_bracketed_paths_print_verbatim(manifest_path, tmp_path) -> None:
    """`[/x]` would close a Rich markup tag (and crash a markup printer); it must survive."""
    out = tmp_path / "a[/x]b" / "[bold]store"
    res = CliRunner().invoke(app, ["extract", "-m", str(manifest_path), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}: 3 utterances" in res.stdout
    missing = tmp_path / "no[/x]where" / "manifest.parquet"
    res = CliRunner().invoke(app, ["extract", "-m", str(missing), "-o", str(tmp_path / "s")])
    assert "[/x]" in one_error_line(res)


def test_progress_labels_are_not_markup() -> None:
    with progress.Bar(3, "extract [/x] [bold]wavlm[/bold]", enabled=True,
                      detail="[red]1 file[/red]") as bar:
        bar.advance(1)
        console = Console(record=True, width=200, file=io.StringIO())
        console.print(bar._progress.get_renderable())
    text = console.export_text()
    assert "extract [/x] [bold]wavlm[/bold]" in text and "[red]1 file[/red]" in text


def test_install_hint_keeps_the_extra(manifest_path, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # as if not installed
    res = CliRunner().invoke(app, ["extract", "-m", str(manifest_path), "-e", "resemblyzer",
                                   "-o", str(tmp_path / "s")])
    assert "pip install 'emodebias[speaker]'" in one_error_line(res)


def test_quiet_turns_progress_off(manifest_path, tmp_path, monkeypatch) -> None:
    import emodebias.features.store

    seen = []
    real = emodebias.features.store.extract

    def spy(*args, **kwargs):
        seen.append(kwargs["progress"])
        return real(*args, **kwargs)

    monkeypatch.setattr(emodebias.features.store, "extract", spy)
    for flags, out in ((["-q"], "a"), ([], "b")):
        res = CliRunner().invoke(app, [*flags, "extract", "-m", str(manifest_path), "-o",
                                       str(tmp_path / out)])
        assert res.exit_code == 0, res.output
    assert seen == [False, True]
    progress.set_enabled(False)


def test_bars_follow_the_switch_and_nest_in_one_display() -> None:
    progress.set_enabled(False)
    assert not progress.Bar(3, "off").active  # library default: silent
    with progress.Bar(3, "asked", enabled=True) as asked:
        assert asked.active
    progress.set_enabled(True)
    try:
        with progress.Bar(2, "outer") as outer:
            with progress.suppressed():
                assert not progress.Bar(1, "under another live display").active
            with progress.Bar(None, "inner") as inner:
                assert inner._progress is outer._progress  # one live display, two lines
                assert len(outer._progress.tasks) == 2
            assert [t.description for t in outer._progress.tasks] == ["outer"]
    finally:
        progress.set_enabled(False)
    assert progress._live["progress"] is None


SHORT_FLAGS = {"--manifest": "-m", "--out": "-o", "--features": "-f", "--device": "-d",
               "--source": "-s", "--workers": "-w", "--encoder": "-e", "--predictions": "-p"}


def test_short_flags_mean_the_same_everywhere() -> None:
    """One convention: where a command has one of these options, it has its short flag, and a
    short flag never names another option (`-o` is also what collect/report write)."""
    import typer.main

    group = typer.main.get_command(app)
    writes = {"--path", "--report-dir"}  # collect / report: what they write
    for name, command in group.commands.items():
        for param in command.params:
            if param.param_type_name != "option":
                continue
            longs = [o for o in param.opts if o.startswith("--")]
            shorts = [o for o in param.opts if not o.startswith("--")]
            for long in longs:
                if long in SHORT_FLAGS:
                    assert shorts == [SHORT_FLAGS[long]], (name, long, shorts)
            for short in shorts:
                meaning = [k for k, v in SHORT_FLAGS.items() if v == short]
                assert meaning and (set(longs) & {*meaning, *writes}), (name, param.opts)
