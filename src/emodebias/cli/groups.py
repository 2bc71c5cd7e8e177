"""CLI: `emodebias groups` (make + diagnose group assignments) and `emodebias train-probe`."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from emodebias.cli import app
from emodebias.errors import UserError

SOURCES = ("truth", "pseudo", "cluster")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _label_map(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    pairs = [p.split("=", 1) for p in _csv(text)]
    if any(len(p) != 2 for p in pairs):
        raise typer.BadParameter(f"--label-map {text!r}: expected LABEL=F,LABEL=M")
    return {a.strip(): b.strip() for a, b in pairs}


def _slug(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", source.replace("k=", "k")).strip("_")


def _open_store(features: Path | None, source: str, manifest):  # noqa: ANN001 (Manifest)
    """The --features store, refused when it was extracted from another manifest."""
    if features is None:
        raise typer.BadParameter(f"--source {source} needs --features (a FeatureStore directory)")
    from emodebias import locate
    from emodebias.features.store import FeatureStore

    return FeatureStore.open(locate.resolve(features, locate.FEATURES), manifest=manifest)


def _print_table(table, warnings: list[str]) -> None:
    """Diagnostics as a table (cells are plain text, never Rich markup) and the warnings."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=max(Console().width, 140))
    view = Table(title="group diagnostics")
    for col in table.columns:
        view.add_column(str(col), justify="left" if col in ("source", "attribute") else "right")
    for row in table.itertuples(index=False):
        view.add_row(*[Text(f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row])
    console.print(view)
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)


@app.command()
def groups(
    manifest: Path = typer.Option(..., "--manifest", "-m", help="manifest.parquet (or its dir)"),
    source: str = typer.Option(..., "--source", "-s", help="truth | pseudo | cluster"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for assignments + diagnostics"),
    features: Path | None = typer.Option(None, "--features", "-f",
                                         help="FeatureStore dir (cluster, probe)"),
    column: str = typer.Option("gender", "--column", help="truth: column(s), comma = intersection"),
    k: str = typer.Option("2,4,8,16,32", "--k", help="cluster: comma-separated k values"),
    model: str | None = typer.Option(None, "--model",
                                     help="pseudo: f0 | f0:<Hz> | f0:fit | probe.npz | HF model"),
    split: str | None = typer.Option(None, "--split",
                                     help="fold name or split.json: fit on its train+dev"),
    algorithm: str = typer.Option("minibatch", "--algorithm", help="cluster: minibatch | kmeans"),
    seed: int = typer.Option(42, "--seed"),
    layer: str = typer.Option("mean", "--layer", help="store layer index, or mean over layers"),
    label_map: str | None = typer.Option(None, "--label-map", help="HF labels, e.g. 'LABEL_0=F,"
                                         "LABEL_1=M'"),
    attributes: str = typer.Option("gender,age_group,race", "--attributes"),
    min_size: int = typer.Option(2, "--min-size", help="warn when a group has fewer (train) rows"),
    tsne: bool = typer.Option(False, "--tsne", help="cluster: also save the t-SNE figure (PNG)"),
    device: str = typer.Option("cpu", "--device", "-d", help="cpu, cuda or cuda:N (pseudo: "
                               "the gender model)"),
) -> None:
    """Make group assignments (truth, pseudo-label, k-means clusters) and diagnose them."""
    import pandas as pd

    from emodebias import api, locate
    from emodebias.data.manifest import Manifest
    from emodebias.groups.cluster import parse_ks
    from emodebias.groups.diagnostics import diagnose, group_sizes
    from emodebias.runs import open_split

    if source not in SOURCES:
        raise typer.BadParameter(f"--source {source!r} not in {SOURCES}")
    ks = parse_ks(k) if source == "cluster" else []
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder (one sub-folder per assignment)")
    man = Manifest.load(locate.resolve(manifest, locate.MANIFEST))
    fold = None if split is None else open_split(man, split)
    if fold is not None:
        fold.check(man, source=f"--split {split}")
    train_ids = None if fold is None else list(fold.train)
    if source == "truth":
        made = [api.truth_groups(man, columns=_csv(column))]
    elif source == "pseudo":
        if not model:
            raise typer.BadParameter("--source pseudo needs --model: f0 | f0:<Hz> | f0:fit | "
                                     "<probe.npz> | <HF checkpoint dir or hub id>")
        made = [api.pseudo_groups(man, model, store=features, split=fold, layer=layer,
                                  label_map=_label_map(label_map), device=device, progress=True)]
    else:
        store = _open_store(features, "cluster", man)
        made = [api.cluster_groups(store, kk, manifest=man, split=fold, algorithm=algorithm,
                                   seed=seed, layer=layer) for kk in ks]
    tables, warnings, written = [], [], []
    for assignment in made:
        target = assignment.save(out / _slug(assignment.source), manifest=man)
        written.append((target, assignment))
        group_sizes(assignment, train_ids).to_csv(target / "sizes.csv", index=False)
        table = diagnose(assignment, man, _csv(attributes), train_ids=train_ids,
                         min_size=min_size)
        tables.append(table)
        warnings += [f"{assignment.source}: {w}" for w in table.attrs["warnings"]]
        if "accuracy" in assignment.info and assignment.info["accuracy"] is not None:
            typer.echo(f"{assignment.source}: accuracy vs gender "
                       f"{assignment.info['accuracy']:.3f} on {assignment.info['n_scored']} rows")
        if assignment.info.get("n_failed"):
            warnings.append(f"{assignment.source}: {assignment.info['n_failed']} utterance(s) "
                            f"unusable, e.g. {list(assignment.info['failures'].items())[:2]}")
    table = pd.concat(tables, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "diagnostics.csv", index=False)
    _print_table(table, warnings)
    if tsne and source == "cluster":
        _tsne(man, features, made, layer, out)
    for target, assignment in written:
        typer.echo(f"wrote {target} ({assignment.source}, {assignment.n_groups} groups)")
    typer.echo(f"wrote {out / 'diagnostics.csv'}")
    if len(written) > 1:
        typer.echo(f"train with one of them, e.g. `emodebias train --groups {written[0][0]}`")


def _tsne(man, features: Path | None, made: list, layer: str, out: Path) -> None:
    from emodebias.groups.embeddings import load_embeddings
    from emodebias.groups.tsne import tsne_coords, tsne_figure

    x, ids, ok = load_embeddings(_open_store(features, "cluster", man), layer)
    coords = tsne_coords(x[ok])
    gender = man.df["gender"].to_numpy(dtype=object)[man.index_of(ids)] \
        if "gender" in man.df.columns else None
    for assignment in made:
        sub = assignment.align([u for u, good in zip(ids, ok, strict=True) if good])
        path = tsne_figure(x[ok], sub, out / f"tsne_{_slug(assignment.source)}.png",
                           None if gender is None else gender[ok], coords=coords)
        typer.echo(f"t-SNE figure: {path}")


@app.command("train-probe")
def train_probe_cmd(
    features: Path = typer.Option(..., "--features", "-f", help="FeatureStore dir (embeddings)"),
    manifest: Path = typer.Option(..., "--manifest", "-m", help="manifest with a gender column"),
    out: Path = typer.Option(..., "--out", "-o", help="probe file (.npz; a .json goes beside)"),
    layer: str = typer.Option("mean", "--layer"),
    c: float = typer.Option(1.0, "--c", help="inverse L2 strength of the logistic regression"),
) -> None:
    """Train the built-in gender probe (pseudo-labels for `groups --source pseudo --model`)."""
    from emodebias import locate
    from emodebias.data.manifest import Manifest
    from emodebias.features.store import FeatureStore
    from emodebias.groups.probe import train_probe_on

    probe = train_probe_on(FeatureStore.open(locate.resolve(features, locate.FEATURES)),
                           Manifest.load(locate.resolve(manifest, locate.MANIFEST)), layer, c)
    path = probe.save(out)
    cv = probe.info.get("cv_accuracy")
    typer.echo(f"probe on {probe.info['n_train']} utterances ({probe.encoder}); "
               f"leave-speakers-out accuracy {cv:.3f}; saved {path}")
