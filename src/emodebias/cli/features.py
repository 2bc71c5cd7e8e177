"""CLI: `emodebias extract` — encode a manifest once into a FeatureStore."""

from __future__ import annotations

from pathlib import Path

import typer

from emodebias.cli import app
from emodebias.data.audio import DEFAULT_MAX_SECONDS


@app.command()
def extract(
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Manifest Parquet (or its dir)."),
    encoder: str = typer.Option(
        "acoustic", "--encoder", "-e",
        help="acoustic | resemblyzer | egemaps | an SSL preset (wavlm-base-plus, xls-r-300m, "
             "xls-r-1b, hubert-base, ...) | a local transformers checkpoint directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Store directory (created; resumable)."),
    device: str = typer.Option("cpu", "--device", "-d",
                               help="cpu, cuda, cuda:N or mps (never part of the store key)."),
    batch_seconds: float = typer.Option(60.0, help="Padded audio seconds per batch (> 0)."),
    max_seconds: float = typer.Option(DEFAULT_MAX_SECONDS, min=0.0,
                                      help="Keep the first N seconds (0 = whole file)."),
    layers: str = typer.Option("all", help="SSL hidden states to keep: all | i,j,... (0 = CNN)."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16 (autocast)."),
    workers: int = typer.Option(2, "--workers", "-w", min=1,
                                help="Threads reading and resampling audio ahead."),
    overwrite: bool = typer.Option(False, help="Start the store over (its group caches too)."),
    fail_on_bad: bool = typer.Option(False, help="Stop at the first unusable audio file."),
    progress: bool = typer.Option(True, help="Show a progress bar (off with -q)."),
    retry_failed: bool = typer.Option(
        False, help="Encode the failed rows of a finished store again (e.g. files now readable)."),
    checkpoint_seconds: float = typer.Option(
        10.0, min=0.0, help="Save progress at least this often (seconds; 0 = after every batch)."),
) -> None:
    """Encode every utterance once: pooled per-layer features -> OUT/features.npy + meta.json.

    The encoder sets its own CPU thread count (one thread for Resemblyzer, acoustic and
    openSMILE features), so reading and encoding never oversubscribe the cores."""
    from emodebias import progress as bars
    from emodebias.cli import writable_dir
    from emodebias.data.manifest import Manifest
    from emodebias.errors import UserError
    from emodebias.features.encoders import get_encoder
    from emodebias.features.encoders.base import check_device
    from emodebias.features.store import extract as run_extract

    if not batch_seconds > 0:
        raise UserError(f"--batch-seconds must be > 0, got {batch_seconds:g}")
    device = check_device(device)
    writable_dir(out)
    man = Manifest.load(manifest)
    cfg: dict = {}
    if layers != "all":
        cfg["layers"] = layers
    if dtype != "float32":
        cfg["dtype"] = dtype
    try:
        enc = get_encoder(encoder, **cfg)
    except TypeError as exc:
        raise UserError(f"--layers/--dtype apply to SSL checkpoints only, not {encoder!r} "
                        f"({exc})") from exc
    store = run_extract(man, enc, out, batch_seconds=batch_seconds,
                        max_seconds=max_seconds or None, device=device,
                        progress=progress and bars.is_enabled(), skip_bad=not fail_on_bad,
                        overwrite=overwrite, num_workers=workers, retry_failed=retry_failed,
                        checkpoint_seconds=checkpoint_seconds)
    n, n_layers, dim = store.features.shape
    typer.echo(f"wrote {store.path}: {n} utterances x {n_layers} layers x {dim} dims "
               f"({store.meta['encoder']}), {len(store.failures)} failed")
    for utt, reason in list(store.failures.items())[:10]:
        typer.echo(f"  failed {utt}: {reason}", err=True)
    if len(store.failures) > 10:
        typer.echo(f"  ... and {len(store.failures) - 10} more (see {store.path}/meta.json)",
                   err=True)
