"""Memory benchmark: train on an MSP-Podcast-sized store with bounded peak RSS.

Writes a 150,000 × 13 × 768 float16 store (~3 GB) into a temporary directory (deleted at the
end unless ``--keep``), then trains in a *fresh child process* (so the peak is the trainer's,
not the writer's) for 1 epoch with ``emodebias.training.fit`` and then ``fit_many`` (R runs).

Reported: peak RSS (VmHWM), and the peaks of its two parts sampled every 20 ms —
anonymous memory (real copies: tensors, numpy arrays) and file-backed pages (the memory-mapped
store; the kernel can drop those under pressure). When anonymous memory jumps by more than
``--jump-mb`` the sampler records the main thread's Python stack, which names the file:function
that made the copy. Target: peak RSS < 4 GB.

Labels are CREMA-D soft labels drawn with replacement (K = 6), genders random, speakers in
blocks; the store's values are synthetic (see ``_data.write_store``).

Run: ``.venv/bin/python benchmarks/bench_memory.py [--n 150000] [--runs 4] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _data  # noqa: E402

GB = 1024**3


def _status_kb(fields: tuple[str, ...]) -> dict[str, int]:
    """Selected ``/proc/self/status`` fields in kB (Linux)."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in fields:
                out[key] = int(rest.split()[0])
    return out


class RssSampler:
    """Background sampler of RssAnon / RssFile peaks; records stacks at anonymous-memory jumps."""

    def __init__(self, jump_mb: float = 400.0, period: float = 0.02) -> None:
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.jumps: list[dict[str, Any]] = []
        self.jump_kb = jump_mb * 1024
        self.period = period
        self.main = threading.main_thread().ident
        self._stop = threading.Event()
        self._mark = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = _status_kb(("RssAnon", "RssFile"))
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            anon = now.get("RssAnon", 0)
            if anon - self._mark > self.jump_kb:  # crossed another `jump_mb` step: who did it?
                frame = sys._current_frames().get(self.main)
                stack = traceback.format_stack(frame)[-8:] if frame is not None else []
                self.jumps.append({"anon_mb": anon / 1024, "from_mb": self._mark / 1024,
                                   "stack": [s.strip().splitlines()[0] for s in stack]})
                self._mark = anon
            elif anon < self._mark:
                self._mark = anon
            time.sleep(self.period)

    def __enter__(self) -> RssSampler:
        self._mark = _status_kb(("RssAnon",)).get("RssAnon", 0)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_store(path: Path, n: int, seed: int = 0) -> tuple[_data.BenchStore, dict[str, np.ndarray]]:
    """An n-row store with CREMA-D-like labels; returns it and the label arrays (also saved)."""
    labels = _data.load_crema_labels()
    rng = np.random.default_rng(seed)
    pick = rng.integers(labels.n, size=n)
    soft = labels.soft[pick]
    gender = np.where(rng.random(n) < 0.5, "F", "M")
    speaker = np.arange(n) // 100
    part = np.array(["train", "dev", "test"])[np.searchsorted([0.7, 0.85], rng.random(n))]
    # speaker-independent: a whole speaker block goes to one part
    part = part[speaker * 100 % n]
    ids = [f"utt{i:06d}" for i in range(n)]
    store = _data.write_store(path, ids, soft, gender, seed=seed, progress=True)
    arrays = {"soft": soft, "gender": gender, "part": part, "speaker": speaker}
    np.savez(path / "labels.npz", **arrays)
    return store, arrays


def child(
    store_dir: Path, runs: int, epochs: int, jump_mb: float, preload_gb: float | None
) -> dict[str, Any]:
    """Train in this (fresh) process and report memory; called via ``--child``."""
    import torch

    from emodebias import training as T

    base = _status_kb(("VmRSS", "RssAnon", "RssFile"))
    feats = np.load(store_dir / "features.npy", mmap_mode="r")
    lab = np.load(store_dir / "labels.npz")
    soft, part = lab["soft"].astype(np.float32), lab["part"]
    gender = (lab["gender"] == "M").astype(np.int64)
    from emodebias.data.labels import strict_majority

    data = T.TrainData(
        features=feats, soft=soft,
        train_idx=np.flatnonzero(part == "train"), dev_idx=np.flatnonzero(part == "dev"),
        test_idx=np.flatnonzero(part == "test"), groups=gender, group_probs=None, n_groups=2,
        majority=strict_majority(soft),
    )
    report: dict[str, Any] = {
        "store_gb": feats.nbytes / GB, "n_train": len(data.train_idx), "n_dev": len(data.dev_idx),
        "n_test": len(data.test_idx), "baseline_mb": {k: v / 1024 for k, v in base.items()},
        "torch_threads": torch.get_num_threads(),
    }
    extra = {} if preload_gb is None else {"preload_max_gb": preload_gb}
    cfg = T.TrainConfig(epochs=epochs, **extra)
    report["train_config"] = repr(cfg)
    steps: list[tuple[str, Any]] = [("fit(erm)", lambda: T.fit(data, "erm", seed=0, config=cfg))]
    if runs > 0:
        cfgs = [T.RunConfig(method=m, seed=s, config=cfg)
                for s, m in zip(range(runs), ["erm", "rw", "gdro", "erm"] * runs, strict=False)]
        steps.append((f"fit_many({runs} runs)", lambda: T.fit_many(data, cfgs)))
    for name, fn in steps:
        t0 = time.perf_counter()
        with RssSampler(jump_mb) as smp:
            try:
                fn()
                err = None
            except Exception as exc:  # noqa: BLE001 - report, keep measuring the rest
                err = f"{type(exc).__name__}: {exc}"
        report[name] = {
            "wall_s": time.perf_counter() - t0, "error": err,
            "peak_anon_mb": smp.peak["RssAnon"] / 1024, "peak_file_mb": smp.peak["RssFile"] / 1024,
            "jumps": smp.jumps,
        }
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=150_000, help="utterances in the store")
    ap.add_argument("--runs", type=int, default=4, help="runs for the fit_many step (0 = skip)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--jump-mb", type=float, default=400.0)
    ap.add_argument("--preload-gb", type=float, default=None,
                    help="TrainConfig.preload_max_gb (default: the library's default)")
    ap.add_argument("--keep", type=Path, default=None, help="write/reuse the store here, keep it")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print("REPORT " + json.dumps(child(args.child, args.runs, args.epochs, args.jump_mb,
                                            args.preload_gb)))
        return

    tmp = None
    if args.keep is not None:
        path = args.keep
    else:
        tmp = tempfile.mkdtemp(prefix="emodebias-mem-", dir=_data.cache_dir())
        path = Path(tmp) / "store"
    try:
        if not (path / "labels.npz").exists():
            t0 = time.perf_counter()
            store, _ = make_store(path, args.n)
            print(f"wrote {store.features.shape} float16 store ({store.nbytes / GB:.2f} GB) in "
                  f"{time.perf_counter() - t0:.0f} s: {path}", flush=True)
        cmd = [sys.executable, __file__, "--child", str(path), "--runs", str(args.runs),
               "--epochs", str(args.epochs), "--jump-mb", str(args.jump_mb)]
        if args.preload_gb is not None:
            cmd += ["--preload-gb", str(args.preload_gb)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        rep_line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
        if proc.returncode != 0 or not rep_line:
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
            raise SystemExit(f"child failed with exit code {proc.returncode}")
        rep = json.loads(rep_line[0][7:])
        print_report(rep)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def print_report(rep: dict[str, Any]) -> None:
    """Human-readable summary of the child's report."""
    print(rep["train_config"])
    print(f"store {rep['store_gb']:.2f} GB; train/dev/test = {rep['n_train']}/{rep['n_dev']}/"
          f"{rep['n_test']}; torch threads {rep['torch_threads']}")
    b = rep["baseline_mb"]
    print(f"after imports: RSS {b['VmRSS']:.0f} MB "
          f"(anon {b['RssAnon']:.0f}, file {b['RssFile']:.0f})")
    for name, r in rep.items():
        if not isinstance(r, dict) or "wall_s" not in r:
            continue
        status = "ok" if r["error"] is None else f"FAILED: {r['error']}"
        print(f"{name:<22} {r['wall_s']:7.1f} s  peak anon {r['peak_anon_mb']:7.0f} MB  "
              f"peak file-backed {r['peak_file_mb']:7.0f} MB  {status}")
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for j in r["jumps"]:  # identical stacks reported once, with the whole growth range
            groups.setdefault(tuple(j["stack"]), []).append(j)
        for stack, js in groups.items():
            print(f"    anon grew {js[0]['from_mb']:.0f} -> {js[-1]['anon_mb']:.0f} MB "
                  f"({len(js)} x {js[0]['anon_mb'] - js[0]['from_mb']:.0f} MB steps) in:")
            for line in stack[-4:]:
                print(f"      {line}")
    peak = rep["peak_rss_mb"]
    verdict = "PASS" if peak < 4096 else "FAIL"
    print(f"peak RSS (VmHWM, whole child) {peak:.0f} MB = {peak / 1024:.2f} GB "
          f"-> target < 4 GB: {verdict}")


if __name__ == "__main__":
    main()
