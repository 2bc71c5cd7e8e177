"""CLI: `emodebias train` (one head + method on cached features) and `emodebias methods`."""

from __future__ import annotations

import json
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


def _load_split(manifest, split: str):
    """A saved Split (json file or directory) or a fold name of the manifest."""
    from emodebias.splits import Split

    path = Path(split)
    if path.suffix == ".json" or path.is_dir():
        return Split.load(path)
    return Split(str(split), manifest.split_ids(split, "train"), manifest.split_ids(split, "dev"),
                 manifest.split_ids(split, "test"))


@app.command()
def train(
    features: Path = typer.Option(..., help="FeatureStore directory"),
    manifest: Path = typer.Option(..., help="manifest Parquet file"),
    split: str = typer.Option(..., help="saved Split (json/dir) or a fold name of the manifest"),
    method: str = typer.Option("erm", help="method name (see `emodebias methods`)"),
    groups: Path | None = typer.Option(None, help="GroupAssignment directory (training groups)"),
    hp: list[str] | None = typer.Option(None, help="hyperparameter override NAME=VALUE (repeat)"),
    epochs: int = typer.Option(50),
    batch_size: int = typer.Option(32),
    lr: float = typer.Option(1e-4),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    out: Path = typer.Option(..., help="run directory to write"),
) -> None:
    """Train one SER head with a debiasing method; save head, config and test predictions."""
    import logging

    import numpy as np

    from emodebias.groups.assignment import GroupAssignment
    from emodebias.manifest import Manifest
    from emodebias.store import FeatureStore
    from emodebias.train import TrainConfig, TrainData, fit

    man = Manifest.load(manifest)
    data = TrainData.from_objects(
        FeatureStore.open(features), man, _load_split(man, split),
        GroupAssignment.load(groups) if groups else None,
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, device=device)
    try:
        result = fit(data, method, parse_hparams(hp), seed, config)
    except (KeyError, ValueError) as exc:
        raise typer.BadParameter(str(exc.args[0] if exc.args else exc)) from exc
    result.save(out)
    test_ids = [data.utt_ids[i] for i in data.test_idx]
    np.savez(out / "predictions.npz", utt_ids=np.asarray(test_ids, dtype=str),
             probs=result.test_probs, targets=data.soft[data.test_idx],
             classes=np.asarray(data.classes, dtype=str))
    spec = {"features": str(features), "manifest": str(manifest), "split": split,
            "method": method, "groups": str(groups) if groups else None,
            "hparams": result.hparams, "seed": seed, "train_config": result.config}
    (out / "config.json").write_text(json.dumps(spec, indent=1))
    typer.echo(f"{method}: best epoch {result.best_epoch}, dev loss "
               f"{result.info.get('best_dev_loss', float('nan')):.4f}, wrote {out}")


FAMILY_ORDER = ("baseline", "pre-processing", "dro", "adversarial", "biased-learner",
                "regularisation", "post-processing")


@app.command()
def methods() -> None:
    """List every registered debiasing method: family, group supervision, hyperparameters."""
    from rich.console import Console
    from rich.table import Table

    from emodebias.methods import REGISTRY

    table = Table(title="emodebias methods")
    for col in ("name", "family", "supervision", "hyperparameters (defaults)"):
        table.add_column(col)
    for name, cls in sorted(REGISTRY.items(), key=lambda kv: FAMILY_ORDER.index(kv[1].family)):
        hps = ", ".join(f"{k}={v}" for k, v in cls.HPARAMS.items()) or "-"
        table.add_row(name, cls.family, cls.supervision, hps)
    Console(width=140).print(table)
