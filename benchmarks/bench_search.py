"""Hyperparameter search: what a search costs, and what tuning and selection change.

1. **Cost** (CREMA-D-sized store, 7,442 x 13 x 768, fold 1 at 1:20, truth groups; see
   ``_data.py``): the wall time of an N-trial search of one method (its trials' RunConfigs
   handed to the trainer in one `fit_many` call, as the grid pipeline does) divided by one run's
   time, measured in the same process. Target: <= 4 for 20 trials. Trials whose training
   settings (lr, epochs) differ stack only where the trainer allows per-run settings; the
   "method hyperparameters only" line shows what stacking gives when they do not differ.
2. **Planted shortcut** (the synthetic corpus at 1:5, where gender predicts emotion in the
   training set): per training seed, default (trial 0) vs tuned RW / GDRO / GADRO (selected by
   `dev_f1_within_gap`, on their truth dev groups) and ERM selected by dev loss vs dev
   worst-group macro-F1 (true dev groups), on test; means over seeds (each the mean over folds)
   with 95% t intervals, and the paired differences' intervals.

    .venv/bin/python benchmarks/bench_search.py                     # both, a few minutes
    .venv/bin/python benchmarks/bench_search.py --skip shortcut --trials 20 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _data  # noqa: E402

from emodebias.bench.selection import choose  # noqa: E402
from emodebias.metrics import fold_interval  # noqa: E402
from emodebias.training.search import draw  # noqa: E402


def section_cost(method: str, trials: int, epochs: int) -> dict[str, float]:
    """One run vs an N-trial search of `method`, in one process."""
    from emodebias.training import RunConfig, TrainConfig, TrainData, fit_many

    store, labels = _data.crema_store()
    tr, dv, te = _data.imbalance_idx(labels, 1, 20)
    data = TrainData(store.features, labels.soft, tr, dv, te, _data.gender_ids(labels), None,
                     2, labels.majority())
    base = {"epochs": epochs, "lr": 1e-4}
    print(f"\n[1] cost: {method}, {trials} trials vs 1 run; fold 1 at 1:20 ({len(tr)} train), "
          f"{epochs} epochs, {torch.get_num_threads()} torch thread(s)")
    fit_many(data, [RunConfig(method, {}, 0, TrainConfig(epochs=1))])  # warm-up
    t0 = time.perf_counter()
    fit_many(data, [RunConfig(method, {}, 0, TrainConfig(**base))])
    one = time.perf_counter() - t0
    runs, hp_only = [], []
    for t in range(trials):
        hp, train = draw(method, 0, t, base)
        runs.append(RunConfig(method, hp, 0, TrainConfig(**{**base, **train})))
        hp_only.append(RunConfig(method, hp, 0, TrainConfig(**base)))
    out = {"one_run_s": one}
    for label, configs in (("search (lr, epochs and method hyperparameters)", runs),
                           ("method hyperparameters only (shared lr, epochs)", hp_only)):
        t0 = time.perf_counter()
        res = fit_many(data, configs)
        wall = time.perf_counter() - t0
        sizes = sorted({r.info.get("stack_size") for r in res})
        print(f"  {label:52s} {wall:7.1f} s = {wall / one:5.2f}x one run ({one:.1f} s); "
              f"stack sizes {sizes}")
        out[label] = wall / one
    return out


def shortcut_grid(trials: int, seeds: int, folds: list[int], epochs: int, speakers: int = 8,
                  utterances: int = 6) -> dict:
    return {
        "name": "search-shortcut",
        "corpus": {"name": "synthetic", "folds": 5, "n_speakers_per_gender": speakers,
                   "utterances_per_emotion": utterances, "seconds": [0.6, 1.0]},
        "encoder": "acoustic", "folds": folds, "ratios": ["1:5"], "seeds": list(range(seeds)),
        "train": {"epochs": epochs, "lr": 1.0e-2, "weight_decay": 0.1},
        "runs": [{"method": "erm", "search": {"trials": trials, "seed": 0}},
                 {"method": ["rw", "gdro", "gadro"], "groups": "truth",
                  "search": {"trials": trials, "seed": 0}}],
    }


def _interval(values: list[float]) -> str:
    iv = fold_interval(values)
    return f"{iv['mean']:.4f} [{iv['ci_low']:.4f}, {iv['ci_high']:.4f}] (n={iv['n']})"


def section_shortcut(trials: int, seeds: int, folds: list[int], epochs: int,
                     out: Path, speakers: int = 8, utterances: int = 6) -> dict:
    """Default vs tuned, dev-loss vs worst-group selection, per seed on the planted shortcut."""
    from emodebias.bench.grid import expand_grid
    from emodebias.bench.pipeline import prepare_stages
    from emodebias.bench.runner import run_local

    specs = expand_grid(shortcut_grid(trials, seeds, folds, epochs, speakers, utterances),
                        "bench_search")
    print(f"\n[2] planted shortcut: synthetic ({speakers} speakers per gender, {utterances} "
          f"utterances per emotion) at 1:5, folds {folds}, {seeds} seeds, {trials} "
          f"trials per method ({len(specs)} runs) -> {out}")
    t0 = time.perf_counter()
    prepare_stages(specs, out, show=False)
    summary = run_local(specs, out, progress=False)
    print(f"  trained in {time.perf_counter() - t0:.0f} s; failed {len(summary.failed)}")
    runs: dict[tuple, dict[int, dict]] = {}
    for path in sorted(out.glob("runs/*/record.json")):
        rec = json.loads(path.read_text())
        spec, sel = rec["spec"], rec["selection"]
        runs.setdefault((spec["method"], spec["fold"], spec["seed"]), {})[sel["trial"]] = {
            "dev": _nan(sel["dev"]), "test": rec["metrics"]["summary"]}

    def per_seed(method: str, pick) -> list[float]:  # noqa: ANN001 (trials -> test value)
        vals = []
        for seed in range(seeds):
            folds_v = [pick(runs[(method, str(f), seed)]) for f in folds
                       if (method, str(f), seed) in runs]
            vals.append(float(np.nanmean(folds_v)))
        return vals

    def chosen(rule: str, metric: str, eps: float = 0.02):  # noqa: ANN202
        def pick(trials_: dict[int, dict]) -> float:
            t, _, _ = choose({k: v["dev"] for k, v in trials_.items()}, rule, eps,
                             "truth:gender")
            return trials_[t]["test"].get(metric, float("nan"))
        return pick

    def default(metric: str):  # noqa: ANN202
        return lambda trials_: trials_[0]["test"].get(metric, float("nan"))

    res: dict = {}
    print("  test gender TPR gap, mean over seeds [95% CI] (each seed: mean over folds)")
    for m in ("rw", "gdro", "gadro"):
        d = per_seed(m, default("gender.tpr_gap"))
        t = per_seed(m, chosen("dev_f1_within_gap", "gender.tpr_gap"))
        diff = [b - a for a, b in zip(d, t, strict=True)]
        print(f"    {m:6s} default {_interval(d)}  tuned {_interval(t)}  "
              f"tuned - default {_interval(diff)}")
        res[m] = {"default": d, "tuned": t}
    print("  ERM test worst-group error (1 - gender worst-group macro-F1)")
    loss = [1 - v for v in per_seed("erm", chosen("dev_loss", "gender.worst_group_f1"))]
    wg = [1 - v for v in per_seed("erm", chosen("dev_worst_group_f1", "gender.worst_group_f1"))]
    diff = [b - a for a, b in zip(loss, wg, strict=True)]
    print(f"    dev-loss selection {_interval(loss)}  worst-group selection {_interval(wg)}  "
          f"difference {_interval(diff)}")
    res["erm"] = {"dev_loss": loss, "worst_group": wg}
    return res


def _nan(dev: dict) -> dict:
    """JSON nulls back to NaN."""
    f = (lambda v: float("nan") if v is None else v)  # noqa: E731
    return {"loss": f(dev["loss"]), "macro_f1": f(dev["macro_f1"]),
            "groups": {g: {k: f(v) for k, v in s.items()} for g, s in dev["groups"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip", nargs="*", default=[], choices=["cost", "shortcut"])
    ap.add_argument("--method", default="gdro", help="method of the cost section")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=5, help="epochs of the cost section's runs")
    ap.add_argument("--shortcut-trials", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--shortcut-epochs", type=int, default=30)
    ap.add_argument("--speakers", type=int, default=8, help="synthetic speakers per gender")
    ap.add_argument("--utterances", type=int, default=6, help="utterances per emotion")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="grid folder of the shortcut part "
                    "(default: a temporary one; an existing folder resumes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("emodebias").setLevel(logging.ERROR)  # convergence notes per run
    if "cost" not in args.skip:
        section_cost(args.method, args.trials, args.epochs)
    if "shortcut" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            section_shortcut(args.shortcut_trials, args.seeds, args.folds, args.shortcut_epochs,
                             args.out or Path(tmp) / "grid", args.speakers, args.utterances)


if __name__ == "__main__":
    main()
