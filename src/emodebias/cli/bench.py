"""CLI: bench | collect | report | demo | predict | evaluate (heavy imports inside commands)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from emodebias.cli import app
from emodebias.errors import UserError

log = logging.getLogger(__name__)
MAX_BATCH = 256  # = emodebias.bench.runner.MAX_BATCH (not imported: the CLI starts light)


def _vars(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--var takes NAME=VALUE, got {p!r}")
        out[key.strip()] = value
    return out


def _load_specs(grid: str, variables: dict, device: str | None = None) -> list:
    """The grid's RunSpecs (a bad grid raises its GridError: one line); `device` replaces the
    grid's run device (never part of a run's hash)."""
    from dataclasses import replace

    from emodebias.bench.grid import load_grid

    specs = load_grid(grid, variables)
    return specs if device is None else [replace(s, device=device) for s in specs]


def _run_grid(grid: str, out: Path, variables: dict, workers: int, backend: str,
              address: str | None, max_batch: int, device: str | None = None,
              best_seeds: int | None = None):
    """Check the options, build the shared stages here (progress bars), then run the grid;
    with searches, mark each search's chosen trial, and with `best_seeds` rerun it with that
    many seeds."""
    from emodebias.cli import writable_dir
    from emodebias.features.encoders.base import check_device

    if backend not in ("local", "ray"):
        raise UserError(f"--backend must be local or ray, got {backend!r}")
    for option, value in (("--workers", workers), ("--max-batch", max_batch)):
        if value < 1:
            raise UserError(f"{option} must be >= 1, got {value}")
    if best_seeds is not None and best_seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {best_seeds}")
    writable_dir(out)
    specs = _load_specs(grid, variables, device)
    searched = any(s.search for s in specs)
    if best_seeds is not None and not searched:
        raise UserError(f"{grid}: --best reruns the trials that searches chose, and no entry "
                        "has a search: add search: {trials: 20, seed: 0} to an entry")
    if searched:
        from emodebias.bench.selection import rerun_specs_present

        specs += rerun_specs_present(out, specs)
    for d in sorted({s.device for s in specs}):
        check_device(d, "--device" if device else "the grid's device")
    log.info("%s: %d runs -> %s", grid, len(specs), out)
    summary = _execute(specs, grid, out, workers, backend, address, max_batch)
    if not searched:
        return summary
    from emodebias.bench.grid import load_selection
    from emodebias.bench.runner import grid_lock
    from emodebias.bench.selection import apply, best_specs

    config = load_selection(grid, variables)
    with grid_lock(out):  # records are rewritten: no other `bench` may write meanwhile
        apply(out, config)
    if best_seeds is None:
        return summary
    known = {s.hash for s in specs}
    reruns = [s for s in best_specs(out, specs, best_seeds) if s.hash not in known]
    if reruns:
        log.info("rerunning %d chosen configuration(s) with %d seed(s)",
                 len({s.name.rsplit('.', 1)[0] for s in reruns}), best_seeds)
        again = _execute(specs + reruns, grid, out, workers, backend, address, max_batch)
        with grid_lock(out):
            apply(out, config)
        summary.completed += again.completed
        summary.failed += again.failed
        summary.total = again.total
        summary.wall_time += again.wall_time
    return summary


def _execute(specs: list, grid: str, out: Path, workers: int, backend: str,
             address: str | None, max_batch: int):
    """Build the shared stages of the runs not done, then run every spec not done."""
    from emodebias import progress
    from emodebias.bench.pipeline import prepare_stages
    from emodebias.bench.results import is_done

    prepare_stages([s for s in specs if not is_done(out, s)], out)
    show = progress.is_enabled()
    if backend == "ray":
        from emodebias.bench.ray_runner import run_ray

        return run_ray(specs, out, address=address, progress=show, max_batch=max_batch,
                       grid=grid)
    from emodebias.bench.runner import run_local

    return run_local(specs, out, workers=workers, progress=show, max_batch=max_batch,
                     grid=grid)


def _print_failures(summary) -> None:  # noqa: ANN001 (GridSummary, lazy import)
    """The grid's tally (hidden by -q), then its failed runs (errors printed verbatim)."""
    log.info("runs: %d total, %d already done, %d completed now, %d failed (%.1f s)",
             summary.total, summary.skipped, summary.completed, len(summary.failed),
             summary.wall_time)
    for f in summary.failed[:10]:
        log.warning("failed %s: %s", f.get("name", f["hash"]), f.get("error"))
    if len(summary.failed) > 10:
        log.warning("... and %d more (see failures/*.json)", len(summary.failed) - 10)


DEVICE_HELP = ("cpu, cuda, cuda:N or mps: where features are extracted and heads trained "
               "(default: the grid's `device:`, else cpu); not part of run hashes or cache keys")


@app.command()
def bench(
    grid: str = typer.Argument(..., help="grid YAML file or preset name (idi-table1, "
                               "idi-table2, idi-k-sweep, emo-debias, demo, demo-quick)"),
    out: Path = typer.Option(Path("bench-out"), "--out", "-o",
                             help="output folder (records, cache, results)"),
    var: list[str] = typer.Option(None, "--var", help="grid variable NAME=VALUE (repeatable), "
                                  "e.g. a feature store to reuse: features: ${feats} in the grid"),
    device: str | None = typer.Option(None, "--device", "-d", help=DEVICE_HELP),
    workers: int = typer.Option(1, "--workers", "-w", help="local worker processes (>= 1)"),
    backend: str = typer.Option("local", help="local | ray"),
    address: str = typer.Option(None, help="Ray cluster address (backend ray)"),
    max_batch: int = typer.Option(MAX_BATCH, help="most runs in one task (one fit_many call)"),
    dry_run: bool = typer.Option(False, help="only list the runs the grid expands to"),
    best: bool = typer.Option(False, "--best", help="after the searches (entries with "
                              "`search:`), rerun each search's chosen configuration with "
                              "--seeds seeds; the report then shows those reruns"),
    seeds: int | None = typer.Option(None, "--seeds", help="seeds of the --best reruns "
                                     "(0..N-1; default 5)"),
) -> None:
    """Run a benchmark grid (resumable: rerun the same command to finish what is missing).

    Shared stages (corpus, feature extraction, groups) are built first, with progress bars;
    then the runs train on the worker processes."""
    if dry_run:
        from emodebias.bench.results import is_done

        for s in _load_specs(grid, _vars(var), device):
            typer.echo(f"{s.hash}  {'done' if is_done(out, s) else 'todo'}  {s.name}")
        return
    if seeds is not None and not best:
        raise UserError("--seeds sets the seeds of the --best reruns; add --best")
    summary = _run_grid(grid, out, _vars(var), workers, backend, address, max_batch, device,
                        (5 if seeds is None else seeds) if best else None)
    from emodebias.bench.results import collect as collect_records

    df = collect_records(out)
    _print_failures(summary)
    n = df["hash"].nunique()
    typer.echo(f"results: {out / 'results.parquet'} ({n} run{'' if n == 1 else 's'})")
    if not summary.ok:
        raise typer.Exit(1)


RUNS_HELP = ("a run folder (`train --out`), a folder of them, or a grid output folder "
             "(`bench --out`)")


def _no_runs(path: Path) -> UserError:
    return UserError(f"{path}: no run records (record.json) here or in its sub-folders; make runs "
                     "with `emodebias train` or `emodebias bench`")


@app.command()
def collect(
    out: Path = typer.Argument(..., help=RUNS_HELP),
    path: Path = typer.Option(None, "--path", "-o",
                              help="Parquet file to write (default OUT/results.parquet)"),
) -> None:
    """Gather every run record under OUT into one tidy Parquet table."""
    from emodebias.bench.results import collect as collect_records
    from emodebias.bench.results import find_run_dirs

    if not find_run_dirs(out):
        raise _no_runs(out)
    df = collect_records(out, path)
    kinds = df.drop_duplicates("hash")["kind"].value_counts().to_dict()
    n = df["hash"].nunique()
    typer.echo(f"{n} run{'' if n == 1 else 's'} "
               f"({', '.join(f'{c} {k}' for k, c in kinds.items())}), {len(df)} rows")
    typer.echo(f"wrote {path or out / 'results.parquet'}")


def _report(out: Path, report_dir: Path | None, title: str):
    """Collect the runs under `out` (writing OUT/results.parquet), render the report, and add
    its provenance (this invocation's and the runs') as provenance.json and a closing section."""
    from emodebias import provenance
    from emodebias.bench.results import collect as collect_records
    from emodebias.bench.results import final_runs, iter_runs
    from emodebias.report.html import find_tsne, write_report

    tidy = collect_records(out)
    if tidy.empty:
        raise _no_runs(out)
    records = [rec for _, rec in iter_runs(out)]
    prov = {"report": provenance.collect(),
            "runs": provenance.summarize(rec.get("provenance") for rec in records)}
    kept = set(final_runs(tidy)["hash"])  # of each search, its chosen trial or reruns
    rep = write_report(tidy[tidy["hash"].isin(kept)], report_dir or out / "report", title,
                       find_tsne(out), closing=_search_blocks(records, kept)
                       + _provenance_blocks(prov, [r for r in records if r["hash"] in kept]))
    (rep.html.parent / "provenance.json").write_text(json.dumps(prov, indent=1))
    return rep


def _search_blocks(records: list[dict], kept: set[str]) -> list[tuple]:
    """The report's "Hyperparameter search" section: each search's chosen trial (rule, values,
    selected epoch, dev score), then per method the reported runs' mean and 95% t interval over
    seeds and folds."""
    from emodebias.metrics import fold_interval

    searches = sorted((r for r in records if r["spec"].get("search")
                       and r["selection"].get("chosen") and not r["selection"]["best_rerun"]),
                      key=lambda r: (r["spec"]["method"], r["spec"]["groups"],
                                     str(r["spec"]["fold"]), r["spec"]["seed"]))
    if not searches:
        return []
    rows = []
    for r in searches:
        sel, spec = r["selection"], r["spec"]
        hp = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in sorted(sel["hparams"].items()))
        note = f" ({sel['fallback']})" if sel.get("fallback") else ""
        rows.append([spec["method"], spec["groups"], str(spec["fold"]), str(spec["seed"]),
                     sel.get("rule", "-") + note, f"{sel['trial']} of {sel['trials']}", hp,
                     str(sel["epoch"]), "-" if sel.get("score") is None
                     else f"{sel['score']:.4f}"])
    blocks: list[tuple] = [
        ("h", 2, "Hyperparameter search"),
        ("table", ["method", "groups", "fold", "seed", "trial rule", "chosen trial",
                   "hyperparameters", "selected epoch", "dev score"], rows)]
    stats: dict[str, dict[str, list[float]]] = {}
    for r in records:
        if r["hash"] in kept and r["spec"].get("search"):
            s = r["metrics"]["summary"]
            for m in ("macro_f1", "gender.tpr_gap"):
                stats.setdefault(r["spec"]["method"], {}).setdefault(m, []).append(
                    s.get(m, float("nan")))
    body = []
    for method, values in sorted(stats.items()):
        cells = []
        for m in ("macro_f1", "gender.tpr_gap"):
            iv = fold_interval(values.get(m, []))
            cells.append("-" if not iv["n"] else f"{iv['mean']:.4f} [{iv['ci_low']:.4f}, "
                         f"{iv['ci_high']:.4f}]")
        body.append([method, str(len(values["macro_f1"])), *cells])
    blocks += [("h", 3, "Selected configurations over seeds and folds"),
               ("table", ["method", "runs (seeds x folds)", "macro-F1 mean [95% CI]",
                          "gender TPR gap mean [95% CI]"], body)]
    return blocks


SELECTION_RULES = {"dev_loss": "the epoch with the lowest dev loss (the papers' rule)",
                   "last": "the last epoch"}


def _provenance_blocks(prov: dict, records: list[dict]) -> list[tuple]:
    """The report's closing "Provenance" section: this invocation's and the runs' provenance,
    then each method's resolved hyperparameters, training settings and selection rule."""
    from emodebias.provenance import rows

    body = [[k, v] for k, v in rows(prov["report"])]
    for i, group in enumerate(prov["runs"], 1):
        body += [[f"runs ({group['n_runs']}) #{i} {k}", v] for k, v in rows(group)]
    settings: dict[tuple, int] = {}
    for rec in (r for r in records if r.get("kind") != "audit"):  # audits trained nothing
        cfg = dict(rec.get("train_config") or {})
        key = (rec["spec"]["method"], json.dumps(rec.get("hparams") or {}, sort_keys=True),
               json.dumps({k: cfg[k] for k in ("epochs", "batch_size", "lr", "weight_decay")
                           if k in cfg}), SELECTION_RULES.get(cfg.get("select"),
                                                             str(cfg.get("select", "-"))))
        settings[key] = settings.get(key, 0) + 1
    table = [[method, hp, train, rule, str(n)]
             for (method, hp, train, rule), n in sorted(settings.items())]
    blocks = [("h", 2, "Provenance"), ("table", ["field", "value"], body)]
    if table:
        blocks += [("h", 3, "Training settings and model selection"),
                   ("table", ["method", "hyperparameters (resolved)", "training",
                              "selected epoch", "runs"], table)]
    from emodebias.auditing.core import audited_models

    head, audited = audited_models(records)
    return blocks + ([("h", 3, "Audited models"), ("table", head, audited)] if audited else [])


@app.command()
def report(
    out: Path = typer.Argument(..., help=RUNS_HELP),
    report_dir: Path = typer.Option(None, "--report-dir", "-o",
                                    help="where to write (default OUT/report)"),
    title: str = typer.Option("emodebias report", help="report title"),
) -> None:
    """Write report.md and a self-contained report.html (tables, figures, tests vs ERM)."""
    rep = _report(out, report_dir, title)
    typer.echo(rep.headline)
    typer.echo(f"\nwrote {rep.html}\n      {rep.markdown}\n      {out / 'results.parquet'}")


@app.command()
def demo(
    out: Path = typer.Option(Path("emodebias-demo"), "--out", "-o", help="output folder"),
    quick: bool = typer.Option(False, help="smaller grid (CI): 2 folds, fewer methods, 20 epochs"),
    device: str | None = typer.Option(None, "--device", "-d", help=DEVICE_HELP),
    workers: int = typer.Option(2, "--workers", "-w", help="local worker processes (>= 1)"),
) -> None:
    """The whole pipeline on the built-in synthetic corpus, ending in a report."""
    grid = "demo-quick" if quick else "demo"
    summary = _run_grid(grid, out, {}, workers, "local", None, MAX_BATCH, device)
    _print_failures(summary)
    if not quick:
        _demo_tsne(grid, out, device)
    rep = _report(out, None, f"emodebias demo ({grid})")
    typer.echo(rep.headline)
    typer.echo(f"\nreport: {rep.html}\n        {rep.markdown}")
    if not summary.ok:
        raise typer.Exit(1)


def _demo_tsne(grid: str, out: Path, device: str | None) -> Path | None:
    """t-SNE of the first cluster-group source's embeddings, coloured by cluster (IDI Fig. 1)."""
    from emodebias import progress
    from emodebias.bench import pipeline
    from emodebias.groups.embeddings import load_embeddings
    from emodebias.groups.tsne import tsne_figure

    spec = next((s for s in _load_specs(grid, {}, device) if s.groups.startswith("cluster:")),
                None)
    path = out / "figures" / "tsne_clusters.png"
    if spec is None or path.is_file():
        return None
    cache = out / "cache"
    manifest = pipeline.stage_manifest(spec, cache)
    split = pipeline.stage_split(spec, manifest, cache)
    groups = pipeline.stage_groups(spec, manifest, split, cache)
    store = pipeline.spec_features(spec, manifest, cache, spec.groups.split(":")[1])
    x, _, _ = load_embeddings(store, "mean", groups.utt_ids)
    genders = manifest.df.set_index("utt_id").loc[groups.utt_ids, "gender"].to_numpy()
    with progress.Bar(None, f"t-SNE figure of {groups.source}"):
        return tsne_figure(x, groups, path, genders=genders, title=f"{groups.source} (fold "
                           f"{spec.fold} fit)")


@app.command()
def predict(
    audio: list[Path] = typer.Argument(..., help="audio files"),
    model: Path = typer.Option(..., "--model", help="a run folder with a saved model (`train "
                               "--out`, or a grid's OUT/runs/<hash>), or a folder holding one"),
    device: str = typer.Option("cpu", "--device", "-d", help="cpu, cuda or cuda:N"),
    as_json: bool = typer.Option(False, "--json", help="print JSON (one object per file)"),
    as_csv: bool = typer.Option(False, "--csv", help="print CSV: path, prob_<class>..., "
                                "positive, error"),
) -> None:
    """Each file's emotion distribution and positive classes (> 1/K) from a trained run.

    A file that cannot be used (unreadable, too short, non-finite output) is reported as a
    failure; the exit code is non-zero when every file failed."""
    from emodebias.runs import load_run

    if as_json and as_csv:
        raise typer.BadParameter("--json and --csv exclude each other")
    run = load_run(model)
    classes = run.classes
    results = run.predict_files(audio, device=device)

    def positive(probs) -> list[str]:  # noqa: ANN001 (a probability row)
        return [c for c, p in zip(classes, probs, strict=True) if p > 1.0 / len(classes)]

    if as_json:
        typer.echo(json.dumps([
            {"path": r.path, "error": r.error,
             "probs": None if r.probs is None else dict(zip(classes, map(float, r.probs),
                                                            strict=True)),
             "positive": None if r.probs is None else positive(r.probs)}
            for r in results], indent=1))
    elif as_csv:
        import csv
        import sys

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", *[f"prob_{c}" for c in classes], "positive", "error"])
        for r in results:
            probs = [""] * len(classes) if r.probs is None else [f"{p:.6f}" for p in r.probs]
            pos = "" if r.probs is None else ";".join(positive(r.probs))
            writer.writerow([r.path, *probs, pos, r.error or ""])
    else:
        for r in results:
            if r.probs is None:
                continue
            dist = "  ".join(f"{c} {p:.3f}" for c, p in zip(classes, r.probs, strict=True))
            typer.echo(f"{r.path}\n  {dist}\n  positive: {', '.join(positive(r.probs)) or '-'}"
                       f"  (argmax {classes[int(r.probs.argmax())]})")
    failed = [r for r in results if r.probs is None]
    if not as_json and not as_csv:
        for r in failed:
            typer.echo(f"failed {_failure(r)}", err=True)
    if failed and len(failed) == len(results):
        raise UserError(f"none of the {len(results)} file(s) could be predicted "
                        f"(first: {_failure(failed[0])})")


def _failure(r) -> str:  # noqa: ANN001 (runs.FilePrediction, lazy import)
    """'<path>: <why>', naming the path once (audio errors already start with it)."""
    return r.error if str(r.error).startswith(r.path) else f"{r.path}: {r.error}"
