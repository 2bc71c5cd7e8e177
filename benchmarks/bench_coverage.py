"""Coverage of the gap intervals and calibration of the permutation null, by simulation.

Every replication draws a test set with a known population TPR gap (`emodebias.metrics.simulate`:
speakers with random effects, 6 classes, 2 or 3 groups, 15–35 clips per speaker) and runs the
library's stratified speaker bootstrap and permutation null on it. Printed per setting:

* coverage of the nominal 95% bias-corrected interval (what `evaluate` reports) and of the plain
  percentile interval of the plug-in gap (what a naive bootstrap reports);
* with no true gap, the share of replications whose interval reaches 0 or whose gap is
  indistinguishable from chance (permutation p > 0.05);
* the permutation test's false-positive rate at α = 0.05 (no true gap) or its power;
* the mean plug-in and bias-corrected estimates against the truth;
* coverage of the signed per-class TPR differences' intervals (two groups).

``--evaluate-reps`` also runs whole `emodebias.metrics.evaluate` calls on utterance-level data
(the path users take) for one setting, to show the array path and the API agree.

    .venv/bin/python benchmarks/bench_coverage.py            # ~1-2 min on one core
    .venv/bin/python benchmarks/bench_coverage.py --quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from emodebias.metrics import evaluate
from emodebias.metrics.simulate import simulate_tpr, tpr_gap_intervals

SETTINGS = [  # (speakers per group, true gap, groups)
    (2, 0.1, 2), (5, 0.1, 2), (10, 0.1, 2), (20, 0.0, 2), (20, 0.1, 2), (20, 0.2, 2),
    (40, 0.0, 2), (40, 0.1, 2), (100, 0.1, 2), (20, 0.0, 3), (20, 0.1, 3),
]


def run_setting(speakers: int, gap: float, groups: int, reps: int, n_boot: int, n_perm: int,
                seed: int) -> dict:
    import warnings

    warnings.filterwarnings("ignore", category=RuntimeWarning)  # NaN resamples of tiny designs
    rng = np.random.default_rng(seed)
    out = {"signed": 0, "signed_n": 0, "covered": 0, "plain": 0, "honest_zero": 0,
           "p_below": 0, "point": 0.0, "estimate": 0.0, "reps": 0}
    chunk = 500
    true = None
    for start in range(0, reps, chunk):
        sim = simulate_tpr(rng, replications=min(chunk, reps - start),
                           speakers_per_group=speakers, gap=gap, groups=groups)
        r = tpr_gap_intervals(sim, rng, n_boot=n_boot, n_perm=n_perm)
        true = sim.true_gap
        out["covered"] += int(((r["low"] <= true + 1e-12) & (true <= r["high"] + 1e-12)).sum())
        out["plain"] += int(((r["pct_low"] <= true) & (true <= r["pct_high"])).sum())
        if "diff_low" in r:
            truth = sim.true_tpr[1] - sim.true_tpr[0]
            out["signed"] += int(((r["diff_low"] <= truth) & (truth <= r["diff_high"])).sum())
            out["signed_n"] += r["diff_low"].size
        out["honest_zero"] += int(((r["low"] == 0) | (r["p_perm"] > 0.05)).sum())
        out["p_below"] += int((r["p_perm"] <= 0.05).sum())
        out["point"] += float(np.nansum(r["point"]))
        out["estimate"] += float(np.nansum(r["estimate"]))
        out["reps"] += len(r["point"])
    n = out["reps"]
    return {"speakers": speakers, "gap": gap, "groups": groups, "true": true, "reps": n,
            "coverage": out["covered"] / n, "plain": out["plain"] / n,
            "honest_zero": out["honest_zero"] / n, "p_below": out["p_below"] / n,
            "mean_point": out["point"] / n, "mean_estimate": out["estimate"] / n,
            "signed": out["signed"] / out["signed_n"] if out["signed_n"] else float("nan")}


def utterances(rng: np.random.Generator, speakers: int, gap: float):
    """One utterance-level test set from the simulator (binary targets and decisions)."""
    sim = simulate_tpr(rng, replications=1, speakers_per_group=speakers, gap=gap)
    ys, ps, spk = [], [], []
    for s in range(len(sim.group)):
        n = int(sim.pos[0, s].max()) + 10
        y = np.zeros((n, 6), bool)
        p = np.zeros((n, 6), bool)
        for c in range(6):
            pos, tp = int(sim.pos[0, s, c]), int(sim.tp[0, s, c])
            y[:pos, c] = True
            p[:tp, c] = True
            p[pos:, c] = rng.random(n - pos) < 0.1  # false positives (not in the TPR gap)
        ys.append(y)
        ps.append(p)
        spk += [s] * n
    spk = np.array(spk)
    return (np.concatenate(ys).astype(float), np.concatenate(ps).astype(float), spk,
            np.where(sim.group[spk] == 0, "a", "b"), sim.true_gap)


def run_evaluate(reps: int, speakers: int, gap: float, n_boot: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    covered = 0
    start = time.perf_counter()
    for _ in range(reps):
        y, p, spk, group, true = utterances(rng, speakers, gap)
        res = evaluate(y, p, {"g": group}, speakers=spk, n_boot=n_boot,
                       seed=int(rng.integers(1 << 31)))
        lo, hi = res.summary["g.tpr_gap_bc.ci_low"], res.summary["g.tpr_gap_bc.ci_high"]
        covered += lo <= true + 1e-12 and true <= hi + 1e-12
    return {"reps": reps, "coverage": covered / reps,
            "seconds_per_call": (time.perf_counter() - start) / reps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--n-perm", type=int, default=499)
    ap.add_argument("--evaluate-reps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="500 replications, 400 resamples")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.n_boot, args.n_perm, args.evaluate_reps = 500, 400, 199, 100
    print(f"{args.reps} replications, {args.n_boot} bootstrap resamples, {args.n_perm} "
          "permutations, nominal 95%")
    print(f"{'spk/grp':>7} {'G':>2} {'gap':>5} {'cover':>6} {'plain':>6} {'0|chance':>8} "
          f"{'p<=.05':>7} {'plug-in':>8} {'bias-c.':>8} {'signed':>7} {'sec':>6}")
    print("(rows with < 5 speakers per group: evaluate() flags these intervals 'not "
          "estimable'; their raw coverage is shown to say why)")
    for i, (speakers, gap, groups) in enumerate(SETTINGS):
        t = time.perf_counter()
        r = run_setting(speakers, gap, groups, args.reps, args.n_boot, args.n_perm,
                        args.seed + i)
        print(f"{speakers:>7} {groups:>2} {r['true']:>5.3f} {r['coverage']:>6.3f} "
              f"{r['plain']:>6.3f} {r['honest_zero']:>8.3f} {r['p_below']:>7.3f} "
              f"{r['mean_point']:>8.3f} {r['mean_estimate']:>8.3f} {r['signed']:>7.3f} "
              f"{time.perf_counter() - t:>6.1f}{'  flagged' if speakers < 5 else ''}")
    if args.evaluate_reps:
        r = run_evaluate(args.evaluate_reps, 20, 0.1, args.n_boot, args.seed + 99)
        print(f"\nevaluate() on utterance-level data, 20 speakers/group, gap 0.1: coverage "
              f"{r['coverage']:.3f} over {r['reps']} calls ({r['seconds_per_call']:.3f} s each)")


if __name__ == "__main__":
    main()
