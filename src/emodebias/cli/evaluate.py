"""CLI: evaluate — metrics with intervals, flags and nulls for saved predictions."""

from __future__ import annotations

from pathlib import Path

import typer

from emodebias.cli import app


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def _fmt(x: object, digits: int = 4) -> str:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "—"
    return "—" if v != v else f"{v:.{digits}f}"  # NaN -> dash


@app.command()
def evaluate(
    predictions: Path = typer.Option(..., "--predictions", "-p", help=(
        "predictions: CSV/Parquet table (prob_<class>, label_<class>, speaker and attribute "
        "columns), .npz (utt_ids, probs[, targets, classes]), a run folder, or a folder of "
        "runs (each evaluated; --out gets one subfolder per run)")),
    manifest: Path = typer.Option(None, "--manifest", "-m", help=(
        "manifest .parquet (or its folder) for targets, speakers and attributes the "
        "predictions lack; matched by utt_id, classes reordered by name")),
    attributes: str = typer.Option(None, help=(
        "comma-separated attribute columns (default: those of gender, age_group, race present);"
        " a named attribute that is absent is an error")),
    intersections: list[str] = typer.Option(None, "--intersections", help=(
        "crossed attributes, e.g. gender,age_group (repeatable)")),
    bins: list[str] = typer.Option(None, "--bin", help=(
        "cut a numeric attribute into groups: NAME=EDGE,EDGE,... e.g. age=20,36,50")),
    speaker: str = typer.Option("speaker", help="speaker column ('' = resample utterances)"),
    utt_id: str = typer.Option("utt_id", help="utterance id column"),
    prob_prefix: str = typer.Option("prob_", help="prefix of probability columns"),
    label_prefix: str = typer.Option("label_", help="prefix of target columns"),
    threshold: float = typer.Option(None, help="decision threshold on probs (default 1/K)"),
    n_boot: int = typer.Option(1000, help="stratified speaker-bootstrap resamples (0 = none)"),
    n_perm: int = typer.Option(1000, help="permutations for each gap's null (0 = none)"),
    min_speakers: int = typer.Option(5, help="fewest speakers per group for an interval"),
    seed: int = typer.Option(0, help="seed of the resampling"),
    out: Path = typer.Option(None, "--out", "-o", help=(
        "folder to write gaps.csv (summary with intervals), per_class.csv, table.csv and "
        "summary.json")),
) -> None:
    """Accuracy and fairness gaps with intervals, "not estimable" flags and permutation nulls."""
    from emodebias.metrics import evaluate_predictions, parse_bins

    if out is not None and out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is an existing file; --out takes a folder",
                                 param_hint="--out")
    sources = _prediction_sources(predictions)
    if manifest is not None and len(sources) > 1:  # read once for every run
        from emodebias.data.manifest import Manifest

        manifest = Manifest.load(manifest)
    for name, source in sources:
        res = evaluate_predictions(
            source, manifest=manifest, attributes=_split(attributes),
            intersections=[_split(c) for c in intersections or []],
            bins=parse_bins(bins or []), speaker=speaker or None, utt_id=utt_id,
            prob_prefix=prob_prefix, label_prefix=label_prefix, threshold=threshold,
            n_boot=n_boot, n_perm=n_perm, min_speakers=min_speakers, seed=seed)
        if len(sources) > 1:
            typer.echo(f"\n== {name}")
        for line in summary_lines(res):
            typer.echo(line)
        for s in res.skipped:
            if s.get("metric") == "*" and "not estimable" not in s["reason"]:
                typer.echo(f"note: {s['attribute']} {s['group']}: {s['reason']} ({s['count']})",
                           err=True)
        if out is not None:
            for path in write_outputs(res, out / name if len(sources) > 1 else out):
                typer.echo(f"wrote {path}")


def _prediction_sources(path: Path) -> list[tuple[str, Path]]:
    """A predictions file or one run folder as it is; a folder of runs (`train` outputs, a
    grid folder) as each of its runs, named by their path below it."""
    if not path.is_dir() or (path / "predictions.npz").is_file():
        return [(path.name, path)]
    from emodebias.bench.results import find_run_dirs

    runs = [d for d in find_run_dirs(path) if (d / "predictions.npz").is_file()]
    if not runs:
        return [(path.name, path)]  # the reader says what the folder lacks
    return [(d.relative_to(path).as_posix(), d) for d in runs]


def summary_lines(res) -> list[str]:  # noqa: ANN001 (MetricsResult, lazy import)
    """The printed report: overall scores, then one table per attribute, then the rules."""
    s, info = res.summary, res.info
    ci = f"{info['ci']:.0%}"
    lines = [f"{info['n']} utterances, {info['k']} classes ({', '.join(info['classes'])}), "
             f"bootstrap unit: {info['bootstrap_unit']}"]
    for m in ("macro_f1", "hamming_acc"):
        interval = (f"  {ci} CI [{_fmt(s[f'{m}.ci_low'])}, {_fmt(s[f'{m}.ci_high'])}]"
                    if f"{m}.ci_low" in s else "")
        lines.append(f"{m:<12} {_fmt(s.get(m))}{interval}")
    head = (f"{'gap':<15}{'paper':>8}{'bias-corr.':>11}  {ci + ' CI':<18}{'p perm':>8}"
            f"{'floor':>8}  worst class")
    for attr, rows in res.gaps.groupby("attribute", sort=False):
        lines += ["", f"[{attr}] speakers per group: {rows['speakers'].iloc[0] or '—'}", head]
        for r in rows.itertuples(index=False):
            interval = (f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if r.status == "ok"
                        else r.status)
            worst = f"{r.worst_class} ({_fmt(r.worst_class_term, 3)})" if r.worst_class else "—"
            lines.append(f"{r.metric:<15}{_fmt(r.value):>8}{_fmt(r.value_bc):>11}  "
                         f"{interval:<18}{_fmt(r.p_perm, 3):>8}{_fmt(r.noise_floor):>8}  {worst}")
        reasons = rows.loc[rows["status"] != "ok", ["metric", "status", "reason"]]
        for r in reasons.drop_duplicates("reason").itertuples(index=False):
            lines.append(f"  {r.status}: {r.reason}")
    lines += ["", f"Class averaging: {info['averaging']}. 'paper' is the "
              "plug-in value of the papers (biased upward by noise); 'bias-corr.' and its "
              f"interval: {info['interval_gap']} from a speaker bootstrap stratified by group "
              f"({info['n_boot']} resamples); other intervals: {info['interval_other']}. "
              f"'p perm' / 'floor': permutation null ({info['n_perm']} shuffles of the attribute "
              "across speakers), floor = the gap random groups reach 5% of the time. "
              "Signed per-class differences: per_class.csv (--out)."]
    return lines


def write_outputs(res, out: Path) -> list[Path]:  # noqa: ANN001 (MetricsResult, lazy import)
    """gaps.csv, per_class.csv, table.csv and summary.json under `out`."""
    import json

    from emodebias.fileio import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in (("gaps", res.gaps), ("per_class", res.per_class), ("table", res.table)):
        path = out / f"{name}.csv"
        df.to_csv(path, index=False)
        paths.append(path)
    summary = {"summary": res.summary, "info": res.info, "skipped": res.skipped,
               "not_estimable": res.not_estimable()[["attribute", "metric", "reason"]]
               .to_dict(orient="records")}
    path = out / "summary.json"
    write_text_atomic(path, json.dumps(summary, indent=1, default=str))
    return [*paths, path]
