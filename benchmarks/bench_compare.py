"""Size and power of `audit --compare`'s paired speaker-swap test, by simulation.

Every replication draws one utterance-level test set scored by two models
(`emodebias.metrics.simulate.simulate_model_pair`: 6 classes, soft multi-label targets, 10–20
utterances per speaker, a speaker effect shared by both models plus a speaker effect and
utterance noise of each model's own) and runs the comparison that `emodebias audit --compare`
runs (`emodebias.auditing.compare.paired_comparison`), on gender. Printed per setting, with a
95% Clopper–Pearson interval over the replications:

* the rejection rate at α = 0.05 of macro-F1 and of the gender TPR gap (the false-positive rate
  when the models are exchangeable within every speaker, the power when model B is planted
  worse for female speakers), and the share of replications where Holm's adjusted p of any
  metric is ≤ 0.05 (the family-wise rate);
* "swap unit = utterance": the same test swapping single utterances instead of speakers
  (speakers passed as utterance ids), which ignores the model's own speaker effect — it shows
  why the test swaps whole speakers ("null strong": that effect's SD raised from 0.4 to 1.0,
  10 speakers per group, the setting of ``tests/test_audit_compare_calibration.py``);
* with 2 speakers per group (4 in all: 16 swap patterns, smallest p 0.125) the share of
  replications where p is withheld ("not testable").

    .venv/bin/python benchmarks/bench_compare.py            # ~5 min on one core
    .venv/bin/python benchmarks/bench_compare.py --quick
"""

from __future__ import annotations

import argparse
import time

from scipy import stats

from emodebias.auditing.compare import NOT_TESTABLE, simulated_comparisons

ALPHA = 0.05
KEYS = ("macro_f1", "gender.tpr_gap")
STRONG = {"speakers_per_group": 10, "utterances": 10, "sd_model_speaker": 1.0}
SETTINGS = [  # (label, simulation options, swap unit, share of --reps)
    ("null", {"speakers_per_group": 20}, "speaker", 1.0),
    ("null", {"speakers_per_group": 40}, "speaker", 0.5),
    ("null", {"speakers_per_group": 3}, "speaker", 1.0),
    ("null", {"speakers_per_group": 20}, "utterance", 0.5),
    ("null strong", STRONG, "speaker", 1.0),
    ("null strong", STRONG, "utterance", 0.5),
    ("power", {"speakers_per_group": 20, "worse_female": 0.3}, "speaker", 0.5),
    ("power", {"speakers_per_group": 20, "worse_female": 0.5}, "speaker", 0.5),
    ("power", {"speakers_per_group": 40, "worse_female": 0.5}, "speaker", 0.5),
    ("few speakers", {"speakers_per_group": 2}, "speaker", 0.25),
]


def interval(hits: int, n: int) -> tuple[float, float]:
    """95% Clopper–Pearson interval of a rejection rate."""
    ci = stats.binomtest(int(hits), int(n)).proportion_ci(0.95, method="exact")
    return float(ci.low), float(ci.high)


def run_setting(sim: dict, unit: str, reps: int, n_perm: int, seed: int) -> dict:
    """Rejections of each key, family-wise Holm rejections and withheld p over `reps` sets."""
    out = {k: 0 for k in KEYS} | {"holm_any": 0, "withheld": 0, "exact": 0, "diff": 0.0}
    for c, t in simulated_comparisons(reps, seed=seed, unit=unit, n_perm=n_perm, **sim):
        for k in KEYS:
            out[k] += int(t.loc[k, "p"] <= ALPHA)
        out["holm_any"] += int((t["p_holm"] <= ALPHA).any())
        out["withheld"] += int((t["status"] == NOT_TESTABLE).all())
        out["exact"] += int(c.exact)
        out["diff"] += float(t.loc["gender.tpr_gap", "diff"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--n-perm", type=int, default=499)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="300 replications, 199 swaps")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.n_perm = 300, 199
    print(f"α = {ALPHA}; {args.n_perm} random swaps (exact enumeration when 2^speakers <= "
          "that); rate [95% Clopper–Pearson interval]")
    print(f"{'setting':<13}{'spk/grp':>8}{'B worse':>8}{'swap':>10}{'reps':>6}"
          f"{'macro-F1 p<=.05':>22}{'TPR gap p<=.05':>22}{'Holm any':>10}{'withheld':>10}"
          f"{'ΔTPR gap':>10}{'sec':>6}")
    for i, (label, sim, unit, factor) in enumerate(SETTINGS):
        reps = max(20, int(args.reps * factor))
        t = time.perf_counter()
        r = run_setting(sim, unit, reps, args.n_perm, args.seed + i)
        speakers, worse = sim["speakers_per_group"], sim.get("worse_female", 0.0)
        cells = []
        for k in KEYS:
            lo, hi = interval(r[k], reps)
            cells.append(f"{r[k] / reps:.3f} [{lo:.3f}, {hi:.3f}]")
        print(f"{label:<13}{speakers:>8}{worse:>8.1f}{unit:>10}{reps:>6}{cells[0]:>22}"
              f"{cells[1]:>22}{r['holm_any'] / reps:>10.3f}{r['withheld'] / reps:>10.3f}"
              f"{r['diff'] / reps:>+10.3f}{time.perf_counter() - t:>6.1f}"
              f"{'  exact' if r['exact'] == reps else ''}")


if __name__ == "__main__":
    main()
