"""CLI: bench | collect | report | demo | predict | evaluate (heavy imports inside commands)."""

from __future__ import annotations

from pathlib import Path

import typer

from emodebias.cli import app

MAX_BATCH = 256  # = emodebias.bench.runner.MAX_BATCH (not imported: the CLI starts light)


def _vars(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--var takes NAME=VALUE, got {p!r}")
        out[key.strip()] = value
    return out


def _load_specs(grid: str, variables: dict) -> list:
    """The grid's RunSpecs; a bad grid is a usage error with the grid's own message."""
    from emodebias.bench.grid import GridError, load_grid

    try:
        return load_grid(grid, variables)
    except GridError as exc:
        raise typer.BadParameter(str(exc), param_hint="GRID") from None


def _run_grid(grid: str, out: Path, variables: dict, workers: int, backend: str,
              address: str | None, max_batch: int, progress: bool = True):
    from rich.console import Console

    specs = _load_specs(grid, variables)
    Console(stderr=True).print(f"[bold]{grid}[/]: {len(specs)} runs -> {out}")
    if backend == "ray":
        from emodebias.bench.ray_runner import run_ray

        return run_ray(specs, out, address=address, progress=progress, max_batch=max_batch)
    if backend != "local":
        raise typer.BadParameter(f"--backend must be local or ray, got {backend!r}")
    from emodebias.bench.runner import run_local

    return run_local(specs, out, workers=workers, progress=progress, max_batch=max_batch)


def _print_failures(summary) -> None:  # noqa: ANN001 (GridSummary, lazy import)
    from rich.console import Console

    console = Console(stderr=True)
    console.print(f"runs: {summary.total} total, {summary.skipped} already done, "
                  f"{summary.completed} completed now, {len(summary.failed)} failed "
                  f"({summary.wall_time:.1f} s)")
    for f in summary.failed[:10]:
        console.print(f"[red]failed[/] {f.get('name', f['hash'])}: {f.get('error')}")
    if len(summary.failed) > 10:
        console.print(f"... and {len(summary.failed) - 10} more (see failures/*.json)")


@app.command()
def bench(
    grid: str = typer.Argument(..., help="grid YAML file or preset name (idi-table1, "
                               "idi-table2, idi-k-sweep, emo-debias, demo)"),
    out: Path = typer.Option(Path("bench-out"), help="output folder (records, cache, results)"),
    var: list[str] = typer.Option(None, "--var", help="grid variable NAME=VALUE (repeatable)"),
    workers: int = typer.Option(1, help="local worker processes"),
    backend: str = typer.Option("local", help="local | ray"),
    address: str = typer.Option(None, help="Ray cluster address (backend ray)"),
    max_batch: int = typer.Option(MAX_BATCH, help="most runs in one task (one fit_many call)"),
    dry_run: bool = typer.Option(False, help="only list the runs the grid expands to"),
) -> None:
    """Run a benchmark grid (resumable: rerun the same command to finish what is missing)."""
    if dry_run:
        from emodebias.bench.results import is_done

        for s in _load_specs(grid, _vars(var)):
            typer.echo(f"{s.hash}  {'done' if is_done(out, s) else 'todo'}  {s.name}")
        return
    summary = _run_grid(grid, out, _vars(var), workers, backend, address, max_batch)
    from emodebias.bench.results import collect as collect_records

    df = collect_records(out)
    _print_failures(summary)
    typer.echo(f"results: {out / 'results.parquet'} ({df['hash'].nunique()} runs)")
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def collect(
    out: Path = typer.Argument(..., help="benchmark output folder"),
    path: Path = typer.Option(None, help="Parquet file to write (default OUT/results.parquet)"),
) -> None:
    """Gather every run record under OUT into one tidy Parquet table."""
    from emodebias.bench.results import collect as collect_records

    df = collect_records(out, path)
    typer.echo(f"{df['hash'].nunique()} runs, {len(df)} rows -> "
               f"{path or out / 'results.parquet'}")


def _report(out: Path, report_dir: Path | None, title: str):
    from emodebias.bench.results import collect as collect_records
    from emodebias.report.html import find_tsne, write_report

    tidy = collect_records(out)
    return write_report(tidy, report_dir or out / "report", title, find_tsne(out))


@app.command()
def report(
    out: Path = typer.Argument(..., help="benchmark output folder"),
    report_dir: Path = typer.Option(None, help="where to write (default OUT/report)"),
    title: str = typer.Option("emodebias report", help="report title"),
) -> None:
    """Write report.md and a self-contained report.html (tables, figures, tests vs ERM)."""
    rep = _report(out, report_dir, title)
    typer.echo(rep.headline)
    typer.echo(f"\nreport: {rep.html}\n        {rep.markdown}")


@app.command()
def demo(
    out: Path = typer.Option(Path("emodebias-demo"), help="output folder"),
    quick: bool = typer.Option(False, help="smaller grid (CI): 2 folds, fewer methods, 5 epochs"),
    workers: int = typer.Option(2, help="local worker processes"),
) -> None:
    """The whole pipeline on the built-in synthetic corpus, ending in a report."""
    grid = "demo-quick" if quick else "demo"
    summary = _run_grid(grid, out, {}, workers, "local", None, MAX_BATCH)
    _print_failures(summary)
    if not quick:
        _demo_tsne(grid, out)
    rep = _report(out, None, f"emodebias demo ({grid})")
    typer.echo(rep.headline)
    typer.echo(f"\nreport: {rep.html}\n        {rep.markdown}")
    if not summary.ok:
        raise typer.Exit(1)


def _demo_tsne(grid: str, out: Path) -> Path | None:
    """t-SNE of the first cluster-group source's embeddings, coloured by cluster (IDI Fig. 1)."""
    from emodebias.bench import pipeline
    from emodebias.bench.grid import load_grid
    from emodebias.groups.embeddings import load_embeddings
    from emodebias.groups.tsne import tsne_figure

    spec = next((s for s in load_grid(grid) if s.groups.startswith("cluster:")), None)
    path = out / "figures" / "tsne_clusters.png"
    if spec is None or path.is_file():
        return None
    cache = out / "cache"
    manifest = pipeline.stage_manifest(spec, cache)
    split = pipeline.stage_split(spec, manifest, cache)
    groups = pipeline.stage_groups(spec, manifest, split, cache)
    store = pipeline.stage_features(manifest, spec.groups.split(":")[1], {}, cache)
    x, _, _ = load_embeddings(store, "mean", groups.utt_ids)
    genders = manifest.df.set_index("utt_id").loc[groups.utt_ids, "gender"].to_numpy()
    return tsne_figure(x, groups, path, genders=genders, title=f"{groups.source} (fold "
                       f"{spec.fold} fit)")


@app.command()
def predict(
    audio: list[Path] = typer.Argument(..., help="audio files"),
    model: Path = typer.Option(..., help="a run folder (OUT/runs/<hash>) with a saved model"),
    device: str = typer.Option("cpu"),
) -> None:
    """Each file's emotion distribution and positive classes (> 1/K) from a trained run."""
    import numpy as np

    from emodebias.audio import AudioError, load_audio
    from emodebias.bench.results import load_predictions, read_record
    from emodebias.encoders import get_encoder
    from emodebias.train import FitResult, predict_probs

    rec = read_record(model)
    if not rec.get("model"):
        raise typer.BadParameter(f"{model} has no saved model (method {rec['spec']['method']!r}"
                                 " trains none)")
    classes = [str(c) for c in load_predictions(model)["classes"]]
    fit = FitResult.load(model / rec["model"])
    encoder = get_encoder(rec["spec"]["encoder"], **rec["spec"]["encoder_opts"])
    for path in audio:
        try:
            wav = load_audio(path, target_sr=encoder.sample_rate, max_seconds=10)
        except AudioError as exc:
            typer.echo(f"{path}: {exc}", err=True)
            continue
        probs = predict_probs(fit, encoder.encode([wav]), device=device)[0]
        pos = [c for c, p in zip(classes, probs, strict=True) if p > 1.0 / len(classes)]
        dist = "  ".join(f"{c} {p:.3f}" for c, p in zip(classes, probs, strict=True))
        typer.echo(f"{path}\n  {dist}\n  positive: {', '.join(pos) or '-'}"
                   f"  (argmax {classes[int(np.argmax(probs))]})")


@app.command()
def evaluate(
    predictions: Path = typer.Option(..., help="predictions .npz (utt_ids, probs[, targets])"),
    manifest: Path = typer.Option(..., help="manifest .parquet (or its folder)"),
    attributes: str = typer.Option("gender,age_group,race", help="comma-separated"),
    n_boot: int = typer.Option(0, help="speaker-bootstrap resamples for 95% CIs"),
    out: Path = typer.Option(None, help="also write the tidy metric table (.csv/.parquet)"),
) -> None:
    """Metrics (accuracy and fairness gaps per attribute) of saved predictions."""
    from emodebias.metrics import from_predictions

    res = from_predictions(predictions, manifest,
                           attributes=[a.strip() for a in attributes.split(",") if a.strip()],
                           n_boot=n_boot)
    width = max(map(len, res.summary), default=0)
    for key, value in res.summary.items():
        typer.echo(f"{key:<{width}}  {value:.4f}")
    for s in res.skipped:
        if s.get("metric") == "*":
            typer.echo(f"(skipped {s['attribute']}: {s['reason']})", err=True)
    if out is not None:
        if out.suffix == ".csv":
            res.table.to_csv(out, index=False)
        else:
            res.table.to_parquet(out, index=False)
        typer.echo(f"table -> {out}")
