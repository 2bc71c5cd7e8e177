"""CLI: `emodebias train` (one head + method on cached features) and `emodebias methods`."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from emodebias.cli import app


def parse_hparams(pairs: list[str] | None) -> dict:
    """['k=v', ...] -> {k: v} with YAML scalars (1e-3, 5, true, text)."""
    import yaml

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"--hp {pair!r}: expected NAME=VALUE")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def show_epochs(train_log: logging.Logger) -> None:
    """A single run's epoch lines are worth seeing unless the user asked for quiet (`-q`)."""
    if logging.getLogger().getEffectiveLevel() <= logging.INFO:
        train_log.setLevel(logging.DEBUG)


OVERALL = ("macro_f1", "hamming_acc")
PER_ATTRIBUTE = ("tpr_gap", "fpr_gap", "f1_gap", "dp_maxdev_gap", "macro_f1_gap",
                 "worst_group_f1", "min_speakers")


def metrics_lines(summary: dict[str, float | None]) -> list[str]:
    """The test summary as text: overall metrics (with CIs when computed), then one row per
    attribute of its gaps; a gap the design cannot estimate (too few speakers) is marked †."""

    def num(v: float | None) -> str:
        return "nan" if v is None else f"{v:.3f}"

    lines = []
    for m in OVERALL:
        if m in summary:
            ci = ""
            if f"{m}.ci_low" in summary:
                ci = f" [{num(summary[f'{m}.ci_low'])}, {num(summary[f'{m}.ci_high'])}]"
            lines.append(f"  {m:<12} {num(summary[m])}{ci}")
    attrs = list(dict.fromkeys(k.split(".")[0] for k in summary if "." in k
                               and not k.endswith((".ci_low", ".ci_high"))))
    cols = [m for m in PER_ATTRIBUTE if any(f"{a}.{m}" in summary for a in attrs)]
    if attrs and cols:
        width = max(len(a) for a in attrs)
        lines.append("  " + " " * width + "".join(f"{c:>15}" for c in cols))
        flagged = False
        for a in attrs:
            cells = []
            for c in cols:
                text = num(summary.get(f"{a}.{c}"))
                if summary.get(f"{a}.{c}_estimable") == 0:
                    text, flagged = text + "†", True
                cells.append(f"{text:>15}")
            lines.append(f"  {a:<{width}}" + "".join(cells))
        if flagged:
            lines.append("  † not estimable: too few test speakers per group for this gap")
    return lines


@app.command()
def train(
    features: Path = typer.Option(..., "--features", "-f",
                                  help="feature store (the folder `extract --out` was given)"),
    manifest: Path = typer.Option(..., "--manifest", "-m",
                                  help="manifest Parquet file or the folder `prepare --out` "
                                       "was given"),
    split: str = typer.Option(..., help="saved split (split.json or the folder `split --out` "
                                        "was given) or a fold name of the manifest"),
    method: str = typer.Option("erm", help="method name (see `emodebias methods`)"),
    groups: Path | None = typer.Option(
        None, help="training groups: an assignment folder, or the folder `groups --out` was "
                   "given when it holds exactly one"),
    hp: list[str] | None = typer.Option(None, help="hyperparameter override NAME=VALUE (repeat)"),
    epochs: int = typer.Option(50, min=1, help="training epochs (the dev-best one is kept)"),
    batch_size: int = typer.Option(32, min=1, help="utterances per training step"),
    lr: float = typer.Option(1e-4, min=0.0, help="Adam learning rate"),
    seed: int = typer.Option(0, help="seed of initialisation, sampling and batch order"),
    n_boot: int = typer.Option(0, min=0, help="speaker-bootstrap resamples for 95% CIs of the "
                                              "test metrics"),
    device: str = typer.Option("cpu", "--device", "-d",
                               help="cpu, cuda or cuda:N (not part of the run's identity)"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder to write (an earlier run "
                                                      "folder there is replaced)"),
) -> None:
    """Train one SER head with a debiasing method; write a run folder (record.json with test
    metrics, predictions.npz, model/) that collect, report, predict and evaluate read."""
    from emodebias import locate, provenance
    from emodebias.bench.results import commit_run
    from emodebias.data.manifest import Manifest
    from emodebias.features.store import FeatureStore
    from emodebias.groups.assignment import GroupAssignment
    from emodebias.runs import RunRequest, open_split, train_runs
    from emodebias.training import TrainConfig

    man_path = locate.resolve(manifest, locate.MANIFEST)
    man = Manifest.load(man_path)
    store = FeatureStore.open(locate.resolve(features, locate.FEATURES))
    split_obj = open_split(man, split)
    group_path = locate.resolve(groups, locate.GROUPS) if groups else None
    assignment = GroupAssignment.load(group_path) if group_path else None
    sources = {"manifest": man_path, "features": store.path, "split": split,
               "groups": group_path}
    show_epochs(logging.getLogger("emodebias.training"))
    result = train_runs(store, man, split_obj, [RunRequest(method, parse_hparams(hp), seed)],
                        groups=assignment,
                        config=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr,
                                           device=device),
                        evaluation={"n_boot": n_boot} if n_boot else None,
                        sources=sources, provenance=provenance.collect())[0]
    if assignment is not None and result.spec.groups == "none":
        typer.echo(f"note: {method} uses no groups; --groups was not used", err=True)
    path = commit_run(out, result, replace=True)
    dev = result.info.get("fit", {}).get("best_dev_loss")
    typer.echo(f"{result.spec.name}: best epoch {result.best_epoch}"
               + (f" (dev loss {dev:.4f})" if dev is not None else "")
               + f"; test metrics on {len(result.test_ids)} utterances:")
    typer.echo("\n".join(metrics_lines(result.summary)))
    typer.echo(f"wrote {path} (record.json, predictions.npz"
               + (", model/)" if result.save_model else ")"))


FAMILY_ORDER = ("baseline", "pre-processing", "dro", "adversarial", "biased-learner",
                "regularisation", "post-processing")


@app.command()
def methods() -> None:
    """List every registered debiasing method: family, group supervision, hyperparameters and
    their search space."""
    from rich.console import Console
    from rich.table import Table

    from emodebias.training.methods import REGISTRY
    from emodebias.training.search import SHARED, method_space

    table = Table(title="emodebias methods")
    for col in ("name", "family", "supervision", "hyperparameters (defaults)", "searched"):
        table.add_column(col)
    for name, cls in sorted(REGISTRY.items(), key=lambda kv: FAMILY_ORDER.index(kv[1].family)):
        hps = ", ".join(f"{k}={v}" for k, v in cls.HPARAMS.items()) or "-"
        mark = " *" if cls.reading_dependent else ""
        searched = ", ".join(f"{k} {v}" for k, v in method_space(cls).describe().items())
        table.add_row(name + mark, cls.family, cls.supervision, hps, searched or "-")
    console = Console(width=140)
    console.print(table)
    console.print("every method also searches " + ", ".join(
        f"{k} {v}" for k, v in SHARED.describe().items()) + " (grid entries with search:)",
                  markup=False)
    console.print("* reading-dependent: the paper's formula admits more than one reading; "
                  "docs/decisions.md says which one this is.", markup=False)
