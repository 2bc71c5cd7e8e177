"""CLI: `emodebias prepare` (corpus -> manifest), `emodebias split` (fold, imbalance -> split)."""

from __future__ import annotations

import warnings
from pathlib import Path

import click
import typer
from typer.core import TyperCommand

from emodebias.cli import app
from emodebias.data.corpora import CORPORA
from emodebias.errors import UserError


def parse_opts(pairs: list[str]) -> dict[str, str]:
    """['k=v', ...] -> {'k': 'v'}; values stay text: `load_corpus` converts each to the type
    its adapter declares, so a wrong type is reported against the option's declaration."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--opt expects NAME=VALUE, got {pair!r}")
        if key in out:
            raise UserError(f"--opt {key} given twice ({out[key]!r} and {value!r})")
        out[key] = value.strip()
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


def _console():  # noqa: ANN202 (rich, imported lazily)
    """A console that never reads markup: class names and paths are user text."""
    from rich.console import Console

    return Console(markup=False, highlight=False, emoji=False)


class PrepareCommand(TyperCommand):
    """`prepare --help` ends with every corpus's options, read from the adapters' signatures."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from emodebias.data.corpora import adapter_options

        super().format_epilog(ctx, formatter)
        for name in CORPORA:
            rows = [(o.usage(), o.help) for o in adapter_options(name) if not o.common]
            with formatter.section(f"Options of --corpus {name} (--opt NAME=VALUE)"):
                formatter.write_dl(rows)


CORPUS_HELP = f"Corpus adapter: {' | '.join(CORPORA)} (options of each below)."


@app.command(cls=PrepareCommand)
def prepare(
    corpus: str = typer.Option(..., help=CORPUS_HELP),
    root: Path = typer.Option(..., help="Corpus root (audio root; for `table`, the table file)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (writes manifest.parquet "
                             "in it) or a .parquet file name."),
    labels_dir: Path | None = typer.Option(None, help="Folder with the label files "
                                                      "(option labels_dir)."),
    demographics: Path | None = typer.Option(None, help="Speaker demographics table "
                                                        "(option demographics)."),
    opt: list[str] = typer.Option([], "--opt", help="Adapter option NAME=VALUE (repeatable); "
                                                    "each corpus's options are listed below."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count bad rows "
                                                            "instead of stopping."),
    require_audio: bool | None = typer.Option(None, "--require-audio/--no-require-audio",
                                              help="Check that every audio file exists."),
    make_folds: int | None = typer.Option(None, "--make-folds", min=3, metavar="K",
                                          help="Add K speaker-independent, gender-balanced "
                                               "folds (corpora without official folds)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the --make-folds speaker "
                                                         "deal (default 0)."),
    fold: str | None = typer.Option(None, help="Fold shown in the summary (default: first)."),
) -> None:
    """Read a corpus into a validated manifest and print counts by emotion x gender x split.

    Every option of the corpus adapter is given as --opt NAME=VALUE (lists as a,b,c); values
    are checked against the adapter's declaration, and an unknown name lists the valid ones.
    """
    from emodebias.data.corpora import load_corpus

    opts: dict[str, object] = dict(parse_opts(opt))
    flags = {"labels_dir": labels_dir, "demographics": demographics,
             "skip_bad": True if skip_bad else None, "require_audio": require_audio,
             "make_folds": make_folds, "fold_seed": seed}
    for key, value in flags.items():
        if value is None:
            continue
        if key in opts:
            raise UserError(f"{key} given both as a flag and as --opt {key}")
        opts[key] = value
    with warnings.catch_warnings():  # skipped rows are reported below, once, on stdout
        warnings.filterwarnings("ignore", message="skipped ", category=UserWarning)
        manifest = load_corpus(corpus, root, **opts)
    path = manifest.save(out if out.suffix == ".parquet" else out / "manifest.parquet")
    summary = manifest_summary(manifest, fold)
    console = _console()
    _print_table(f"{manifest.corpus}: strict-majority emotion x gender"
                 + (f" x split (fold {summary.attrs['fold']})" if summary.attrs["fold"] else ""),
                 summary, console)
    for reason, rec in (manifest.info.get("skipped") or {}).items():
        typer.echo(f"skipped {rec['count']} {reason}: {'; '.join(rec['examples'])}")
    for key in ("filtered", "dropped"):  # left out by the corpus's rules or options, counted
        for reason, n in (manifest.info.get(key) or {}).items():
            if n:
                typer.echo(f"left out {n}: {reason}")
    other = manifest.info.get("other_files") or {}
    if other:
        typer.echo("not audio, ignored: " + ", ".join(f"{n} {ext}" for ext, n in other.items()))
    folds = ", ".join(manifest.folds) or "none (add them with --make-folds K)"
    typer.echo(f"{len(manifest)} utterances, {manifest.df['speaker'].nunique()} speakers, "
               f"classes {', '.join(manifest.classes)}; folds: {folds}")
    typer.echo(f"wrote {path}")


def manifest_summary(manifest, fold: str | None = None):  # noqa: ANN001, ANN201
    """Counts per strict-majority emotion (rows) x split/gender (columns) for one fold."""
    import pandas as pd

    from emodebias.data.manifest import ManifestError
    from emodebias.data.splits import PARTS, majority_counts

    folds = manifest.folds
    if fold is not None and str(fold) not in folds:
        raise ManifestError(f"--fold {fold!r} is not in the manifest; folds: {folds}")
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
    manifest: Path = typer.Option(..., "--manifest", "-m",
                                  help="manifest.parquet (or its folder)."),
    fold: str = typer.Option(..., help="Fold name, e.g. 1."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (writes split.json in "
                             "it) or a .json file name."),
    ratio: str | None = typer.Option(None, help="Gender imbalance 1:r, e.g. 1:20 "
                                                "(default: full train/dev)."),
    direction: str = typer.Option("natural", help="natural | female-major | male-major"),
    seed: int = typer.Option(0, help="Seed of the minority-gender sampling."),
) -> None:
    """Make one fold's train/dev/test split (optionally gender-imbalanced) and print counts."""
    import pandas as pd

    from emodebias.data.manifest import Manifest
    from emodebias.data.splits import SplitError, group_support_warnings, make_split

    m = Manifest.load(manifest)
    if str(fold) not in m.folds:
        hint = ("" if m.folds else "; add speaker-independent folds with "
                "`emodebias prepare ... --make-folds K`")
        raise SplitError(f"fold {fold!r} not in {manifest}; folds: {m.folds or 'none'}{hint}")
    s = make_split(m, fold, ratio=ratio, direction=direction, seed=seed)
    path = s.save(out if out.suffix == ".json" else out / "split.json")
    frame = pd.concat({p: pd.DataFrame(s.info["counts"][p]).T for p in s.info["counts"]}, axis=1)
    frame.columns = [f"{p} {g}" for p, g in frame.columns]
    frame.index.name = "emotion"
    major = ", ".join(f"{k}:{v}" for k, v in s.majority_gender.items()) or "-"
    _print_table(f"{s.name}: strict-majority emotion x gender (majority gender {major})",
                 frame, _console())
    totals = {p: s.info["gender_totals"][p] for p in s.info["gender_totals"]}
    typer.echo(f"totals {totals}")
    for warning in group_support_warnings(m, s):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"wrote {path}")
