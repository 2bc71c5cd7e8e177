"""CLI: `emodebias prepare` (corpus -> manifest), `emodebias split` (fold, imbalance -> split)."""

from __future__ import annotations

from pathlib import Path

import typer

from emodebias.cli import app


def parse_opts(pairs: list[str]) -> dict[str, object]:
    """['k=v', ...] -> dict; 'true'/'false' become bools, integers ints, the rest stays text."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--opt expects key=value, got {pair!r}")
        low = value.strip().lower()
        if low in {"true", "false"}:
            out[key.strip()] = low == "true"
        elif low.lstrip("-").isdigit():
            out[key.strip()] = int(low)
        else:
            out[key.strip()] = value.strip()
    return out


def _print_table(title: str, frame, console) -> None:  # noqa: ANN001 (pandas + rich, lazy)
    from rich.table import Table

    table = Table(title=title)
    table.add_column(frame.index.name or "")
    for c in frame.columns:
        table.add_column(str(c), justify="right")
    for idx, row in frame.iterrows():
        table.add_row(str(idx), *[str(v) for v in row.tolist()])
    console.print(table)


@app.command()
def prepare(
    corpus: str = typer.Option(..., help="emo_superb | crema_d | msp_podcast | emodb | ravdess | "
                                         "table | synthetic"),
    root: Path = typer.Option(..., help="Corpus root (audio root; for `table`, the table file)."),
    out: Path = typer.Option(..., help="Output folder; writes manifest.parquet."),
    labels_dir: Path | None = typer.Option(None, help="Folder with the label files."),
    demographics: Path | None = typer.Option(None, help="Speaker demographics table "
                                                        "(CREMA-D VideoDemographics.csv)."),
    opt: list[str] = typer.Option([], "--opt", help="Adapter option key=value (repeatable)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count bad rows "
                                                            "instead of stopping."),
    require_audio: bool | None = typer.Option(None, "--require-audio/--no-require-audio",
                                              help="Check that every audio file exists."),
    fold: str | None = typer.Option(None, help="Fold shown in the summary (default: first)."),
) -> None:
    """Read a corpus into a validated manifest and print counts by emotion x gender x split."""
    from rich.console import Console

    from emodebias.corpora import load_corpus
    from emodebias.manifest import ManifestError

    opts = parse_opts(opt)
    for key, value in (("labels_dir", labels_dir), ("demographics", demographics)):
        if value is not None:
            opts[key] = value
    if skip_bad:
        opts["skip_bad"] = True
    if require_audio is not None:
        opts["require_audio"] = require_audio
    console = Console()
    try:
        manifest = load_corpus(corpus, root, **opts)
    except (ManifestError, ValueError, TypeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    path = manifest.save(out / "manifest.parquet")
    summary = manifest_summary(manifest, fold)
    _print_table(f"{manifest.corpus}: strict-majority emotion x gender"
                 + (f" x split (fold {summary.attrs['fold']})" if summary.attrs["fold"] else ""),
                 summary, console)
    skipped = manifest.info.get("skipped") or {}
    for reason, rec in skipped.items():
        console.print(f"[yellow]skipped {rec['count']}[/yellow] {reason}: {rec['examples']}")
    console.print(f"wrote {path} ({len(manifest)} utterances, classes {manifest.classes})")


def manifest_summary(manifest, fold: str | None = None):  # noqa: ANN001, ANN201
    """Counts per strict-majority emotion (rows) x split/gender (columns) for one fold."""
    import pandas as pd

    from emodebias.splits import PARTS, majority_counts

    folds = manifest.folds
    fold = fold if fold is not None else (folds[0] if folds else None)
    blocks = {}
    if fold is not None:
        col = manifest.df[f"split_{fold}"]
        for part in PARTS:
            blocks[part] = majority_counts(manifest, manifest.df.loc[col == part, "utt_id"])
    blocks["all"] = majority_counts(manifest)
    frame = pd.concat({k: v.loc[:, (v.sum(axis=0) > 0) | (v.columns != "NA")]
                       for k, v in blocks.items()}, axis=1)
    frame.columns = [f"{p} {g}" for p, g in frame.columns]
    frame.index.name = "emotion"
    frame.attrs["fold"] = fold
    return frame


@app.command()
def split(
    manifest: Path = typer.Option(..., help="manifest.parquet (or its folder)."),
    fold: str = typer.Option(..., help="Fold name, e.g. 1."),
    out: Path = typer.Option(..., help="Output folder; writes split.json."),
    ratio: str | None = typer.Option(None, help="Gender imbalance 1:r, e.g. 1:20 "
                                                "(default: full train/dev)."),
    direction: str = typer.Option("natural", help="natural | female-major | male-major"),
    seed: int = typer.Option(0, help="Seed of the minority-gender sampling."),
) -> None:
    """Make one fold's train/dev/test split (optionally gender-imbalanced) and print counts."""
    import pandas as pd
    from rich.console import Console

    from emodebias.manifest import Manifest, ManifestError
    from emodebias.splits import SplitError, make_split

    console = Console()
    try:
        m = Manifest.load(manifest)
        s = make_split(m, fold, ratio=ratio, direction=direction, seed=seed)
    except (ManifestError, SplitError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    path = s.save(out / "split.json")
    frame = pd.concat({p: pd.DataFrame(s.info["counts"][p]).T for p in s.info["counts"]}, axis=1)
    frame.columns = [f"{p} {g}" for p, g in frame.columns]
    frame.index.name = "emotion"
    major = ", ".join(f"{k}:{v}" for k, v in s.majority_gender.items()) or "-"
    _print_table(f"{s.name}: strict-majority emotion x gender (majority gender {major})",
                 frame, console)
    totals = {p: s.info["gender_totals"][p] for p in s.info["gender_totals"]}
    console.print(f"totals {totals}")
    console.print(f"wrote {path}")
