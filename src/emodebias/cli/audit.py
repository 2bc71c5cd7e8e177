"""CLI: audit — run an existing emotion model over a prepared corpus and report its bias, or
compare audited models side by side (`audit --compare A B ...`)."""

from __future__ import annotations

from pathlib import Path

import typer

from emodebias.cli import app, writable_dir
from emodebias.errors import UserError


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def class_map_spec(items: list[str] | None) -> str | Path | list[str] | None:
    """`--map FILE` (one value without '=') or repeated / comma-separated `--map src=dst`."""
    if not items:
        return None
    if len(items) == 1 and "=" not in items[0]:
        return Path(items[0])
    return [pair for item in items for pair in item.split(",") if pair.strip()]


@app.command()
def audit(
    folders: list[Path] = typer.Argument(None, help=(
        "with --compare: the audit (or run) folders to compare, the first is the baseline")),
    model: Path = typer.Option(None, "--model", help=(
        "the model: a local transformers audio-classification checkpoint folder, or a run "
        "folder made by this toolkit (remote code is never run)")),
    manifest: Path = typer.Option(None, "--manifest", "-m", help=(
        "manifest .parquet (or its folder) of the prepared corpus; with --compare: default "
        "the one the first folder's record names")),
    out: Path = typer.Option(None, "--out", "-o", help=(
        "audit folder to write (a run folder: record.json, predictions.npz, gaps.csv, "
        "per_class.csv, table.csv, summary.json, figures/); with --compare: where "
        "comparison.csv goes (optional)")),
    split: str = typer.Option(None, help=(
        "audit one part of a saved split (split.json, its folder, or a fold name) instead of "
        "the whole corpus")),
    part: str = typer.Option(None, help="the split's part: train, dev or test (default test)"),
    class_map: list[str] = typer.Option(None, "--map", help=(
        "model class -> corpus class: a JSON/YAML file, or MODEL=CORPUS pairs (repeatable or "
        "comma-separated); classes of equal names (any case) map by themselves")),
    drop: list[str] = typer.Option(None, "--drop", help=(
        "a model class to leave out (its probability mass is removed; repeatable)")),
    sampling_rate: int = typer.Option(None, "--sampling-rate", help=(
        "assert the model's input rate (audio is always resampled to the rate of the model's "
        "feature extractor; a different value is an error)")),
    device: str = typer.Option("cpu", "--device", "-d", help="cpu, cuda, cuda:N or mps"),
    batch_size: int = typer.Option(8, help="utterances per forward pass"),
    max_seconds: float = typer.Option(None, help=(
        "use the first seconds of each file (default 10 as `extract`, a run folder's own crop; "
        "0 = whole file)")),
    attributes: str = typer.Option(None, help=(
        "comma-separated attribute columns (default: those of gender, age_group, race present)")),
    intersections: list[str] = typer.Option(None, "--intersections", help=(
        "crossed attributes, e.g. gender,age_group (repeatable)")),
    bins: list[str] = typer.Option(None, "--bin", help=(
        "cut a numeric attribute into groups: NAME=EDGE,EDGE,... e.g. age=20,36,50")),
    n_boot: int = typer.Option(1000, help="stratified speaker-bootstrap resamples (0 = none)"),
    n_perm: int = typer.Option(1000, help=(
        "permutations for each gap's null; with --compare: speaker swaps of the paired test")),
    min_speakers: int = typer.Option(5, help="fewest speakers per group for an interval"),
    seed: int = typer.Option(0, help="seed of the resampling"),
    compare: bool = typer.Option(False, "--compare", help=(
        "compare the audit folders given as arguments on the same utterances (paired tests)")),
) -> None:
    """Audit an existing emotion model for bias on a prepared corpus (no training)."""
    if compare:
        _compare(folders or [], manifest, out, attributes, n_perm, seed)
        return
    if folders:
        raise typer.BadParameter(f"unexpected folders {[str(f) for f in folders]}; pass "
                                 "--compare to compare audit folders", param_hint="FOLDERS")
    if model is None or manifest is None or out is None:
        raise typer.BadParameter("audit needs --model, --manifest and --out (or --compare A B)",
                                 param_hint="--model")
    from emodebias.auditing import audit as run_audit
    from emodebias.auditing.core import describe
    from emodebias.cli.evaluate import summary_lines
    from emodebias.features.encoders.base import check_device
    from emodebias.metrics import parse_bins

    writable_dir(out)
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    res = run_audit(model, manifest, out=out, split=split, part=part,
                    class_map=class_map_spec(class_map), drop=drop or (),
                    sample_rate=sampling_rate, device=check_device(device),
                    batch_size=batch_size, max_seconds=max_seconds,
                    attributes=_csv(attributes),
                    intersections=[_csv(c) or [] for c in intersections or []],
                    bins=parse_bins(bins or []), n_boot=n_boot, n_perm=n_perm,
                    min_speakers=min_speakers, seed=seed)
    for line in [*describe(res.record), "", *summary_lines(res.metrics)]:
        typer.echo(line)
    for path in res.written:
        typer.echo(f"wrote {path}")


def _compare(folders: list[Path], manifest: Path | None, out: Path | None,
             attributes: str | None, n_perm: int, seed: int) -> None:
    from emodebias.auditing.compare import compare_runs

    if out is not None:
        writable_dir(out)
    cmp = compare_runs(folders, manifest=manifest, attributes=_csv(attributes), n_perm=n_perm,
                       seed=seed)
    for line in cmp.lines():
        typer.echo(line)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "comparison.csv"
        cmp.table.to_csv(path, index=False)
        typer.echo(f"wrote {path}")
