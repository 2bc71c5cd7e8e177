"""Feature-extraction speed: encoder throughput and pipeline overhead, as ratios from one run.

    .venv/bin/python benchmarks/bench_extract.py                     # CPU, quick defaults
    .venv/bin/python benchmarks/bench_extract.py --device cuda --dtype bfloat16 --size base \
        --n-files 400 --seconds 6 --encoders wavlm                   # the GPU target

1. Throughput of each encoder in audio-seconds per wall-second (x real time) on the same
   synthetic utterances (already in memory: the encoder alone).
2. Pipeline vs bare forward, for the SSL model: `emodebias.features.store.extract` from WAV files at
   22.05 kHz (read, resample, batch, pad, forward, pool, float16 write, checkpoints) against a bare
   loop of `model(x, attention_mask, output_hidden_states=True)` over the same batches already
   padded in memory. Target: pipeline / bare <= 1.5; >= 3000x real time for a
   WavLM-Base-Plus-sized model on one H100 with bf16.
Random weights: the speed of a WavLM does not depend on its weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from emodebias.data.audio import load_audio
from emodebias.data.manifest import Manifest
from emodebias.features.encoders import get_encoder
from emodebias.features.encoders.base import pad_batch
from emodebias.features.store import extract, plan_batches

SIZES = {  # WavLM architectures: tiny (tests), base (= WavLM Base Plus), large
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 conv_dim=(64,) * 7),
    "base": dict(),  # transformers' WavLMConfig defaults are the base architecture
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True),
}


def make_model(root: Path, size: str) -> Path:
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    path = root / f"wavlm-{size}"
    WavLMModel(WavLMConfig(**SIZES[size])).save_pretrained(path)
    return path


def make_audio(root: Path, n: int, seconds: float, sr: int = 22_050) -> Manifest:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        dur = seconds * rng.uniform(0.5, 1.5)
        t = np.arange(int(dur * sr)) / sr
        f0 = rng.uniform(90, 300)
        wav = 0.2 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(len(t))
        path = root / f"utt{i:05d}.wav"
        sf.write(path, wav.astype(np.float32), sr)
        rows.append((f"utt{i:05d}", str(path)))
    df = pd.DataFrame(rows, columns=["utt_id", "path"]).assign(speaker="s")
    return Manifest(df, classes=["a", "b"])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(enc, waves: list[np.ndarray], batches: list[list[int]], device: str) -> float:
    enc.encode([waves[batches[0][0]]])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for b in batches:
        enc.encode([waves[i] for i in b])
    sync(device)
    return sum(len(w) for w in waves) / 16_000 / (time.perf_counter() - t0)


def bare_forward(enc, waves: list[np.ndarray], batches: list[list[int]], device: str) -> float:
    """Seconds for model forwards only, inputs padded and on the device beforehand."""
    inputs = []
    for b in batches:
        x, lengths = pad_batch([waves[i] for i in b])
        mask = (torch.arange(x.shape[1])[None] < lengths[:, None]).long()
        enc._cnn.set_lengths(lengths)
        inputs.append((x.to(device), mask.to(device), lengths))
    from emodebias.features.encoders.ssl import autocast_context

    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast_context(device, enc.dtype):
        for x, mask, lengths in inputs:
            enc._cnn.set_lengths(lengths)
            enc.model(x, attention_mask=mask, output_hidden_states=True)
    sync(device)
    enc._cnn.set_lengths(None)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoders", default="acoustic,resemblyzer,wavlm")
    ap.add_argument("--size", default="tiny", choices=sorted(SIZES))
    ap.add_argument("--n-files", type=int, default=48)
    ap.add_argument("--seconds", type=float, default=2.0, help="mean utterance length")
    ap.add_argument("--batch-seconds", type=float, default=60.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    root = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    (root / "wav").mkdir(parents=True)
    manifest = make_audio(root / "wav", args.n_files, args.seconds)
    waves = [load_audio(p, max_seconds=10) for p in manifest.df["path"]]
    batches = plan_batches(np.array([len(w) / 16_000 for w in waves]), args.batch_seconds)
    audio_s = sum(len(w) for w in waves) / 16_000
    print(f"{len(waves)} utterances, {audio_s:.0f} s of audio, {len(batches)} batches; "
          f"device {args.device}, dtype {args.dtype}, WavLM size {args.size}, "
          f"torch threads {torch.get_num_threads()}")

    print("\n1. encoder throughput (audio s / wall s, encoder only)")
    results = {}
    for name in args.encoders.split(","):
        if name == "wavlm":
            enc = get_encoder(make_model(root, args.size), dtype=args.dtype).to(args.device)
            name = f"wavlm-{args.size}"
        else:
            try:
                enc = get_encoder(name)
            except Exception as exc:  # optional extras
                print(f"  {name:<14} skipped: {exc}")
                continue
        results[name] = (enc, throughput(enc, waves, batches, args.device))
    base = results.get("acoustic", next(iter(results.values())))[1]
    for name, (_, speed) in results.items():
        print(f"  {name:<14} {speed:10.1f} x real time   ({speed / base:.3g} x acoustic)")

    ssl = [(n, e) for n, (e, _) in results.items() if n.startswith("wavlm")]
    if ssl:
        name, enc = ssl[0]
        print(f"\n2. pipeline vs bare forward ({name})")
        bare = bare_forward(enc, waves, batches, args.device)
        t0 = time.perf_counter()
        extract(manifest, enc, root / "store", batch_seconds=args.batch_seconds,
                progress=False, num_workers=args.workers)
        sync(args.device)
        pipe = time.perf_counter() - t0
        print(f"  bare forward  {bare:8.2f} s  ({audio_s / bare:9.1f} x real time)")
        print(f"  pipeline      {pipe:8.2f} s  ({audio_s / pipe:9.1f} x real time)")
        print(f"  pipeline / bare forward = {pipe / bare:.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
