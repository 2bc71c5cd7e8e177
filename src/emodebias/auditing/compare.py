"""Models side by side on the same utterances, with paired tests.

Every folder must hold one run (an audit or a trained run) scored on exactly the same
utterances; the first is the baseline. Each metric (macro-F1, Hamming accuracy, every gap and
worst-group score per attribute) is computed for every model as `evaluate` computes it, and each
model is tested against the baseline by a paired speaker-swap permutation test: under "the two
models are exchangeable within each speaker" swapping the two models' predictions for all
utterances of a random subset of the speakers leaves the joint distribution unchanged, so
p = (1 + #{|Δ*| >= |Δ|}) / (1 + n_perm), the observed assignment counted once. With few speakers
all 2^n assignments are enumerated instead (exact p). The test keeps speakers' utterances
together (they are not independent: swapping single utterances rejected a true null far too
often in `benchmarks/bench_compare.py`) and pairs the models on each utterance. Holm's
adjustment runs over the tested metrics of one pair (`emodebias.metrics.holm`).

Where the design cannot reach p <= α (2^n assignments give p >= 2/2^n, `min_sign_flip_p`) the
metric is marked "not testable" and no p is printed. Scoring a swap needs only confusion counts,
so swaps are scored in batches from per-speaker count sums (`evaluate.HeadlineScorer`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from emodebias.errors import UserError

if TYPE_CHECKING:
    from emodebias.data.manifest import Manifest
    from emodebias.metrics.evaluate import HeadlineScorer

SCORES = ("macro_f1", "hamming_acc")
PER_ATTRIBUTE = ("tpr_gap", "fpr_gap", "f1_gap", "dp_maxdev_gap", "dp_sumdev_gap",
                 "macro_f1_gap", "worst_group_f1", "worst_group_acc")
ALPHA = 0.05
CHUNK = 500  # swaps scored per batch
TESTED, UNDEFINED, NOT_TESTABLE = "tested", "undefined", "not testable"


class CompareError(UserError):
    """Runs that cannot be compared (different utterances or classes, no manifest)."""


@dataclass
class Comparison:
    """`table`: one row per metric x model (value, Δ vs the baseline, p, Holm p, status);
    `notes`: what the design cannot support (too few speakers or swaps), said in words."""

    table: pd.DataFrame
    names: list[str]
    n_utterances: int
    n_speakers: int
    n_perm: int
    exact: bool = False
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The side-by-side table as printed by `audit --compare`."""
        wide = self.table.pivot(index="metric", columns="model", values="value")
        wide = wide.reindex(index=list(dict.fromkeys(self.table["metric"])),
                            columns=self.names)
        width = max(12, *(len(n) + 2 for n in self.names))
        how = (f"exact, all {self.n_perm} swaps" if self.exact
               else f"{self.n_perm} random swaps")
        out = [f"{self.n_utterances} utterances, {self.n_speakers} speakers; baseline "
               f"{self.names[0]}; p: paired speaker-swap permutation ({how}), "
               "Holm over the tested metrics of each pair", *self.notes, ""]
        head = f"{'metric':<26}" + "".join(f"{n:>{width}}" for n in self.names)
        others = self.names[1:]
        head += "".join(f"{'Δ ' + n[:10]:>14}{'p':>8}{'p Holm':>8}" for n in others)
        out.append(head)
        for metric, row in wide.iterrows():
            line = f"{metric:<26}" + "".join(f"{_fmt(row[n]):>{width}}" for n in self.names)
            for n in others:
                r = self.table[(self.table["metric"] == metric) & (self.table["model"] == n)]
                r = r.iloc[0]
                line += f"{_fmt(r['diff']):>14}{_fmt(r['p'], 3):>8}{_fmt(r['p_holm'], 3):>8}"
            out.append(line)
        return out


def _fmt(x: object, digits: int = 4) -> str:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "—"
    return "—" if v != v else f"{v:.{digits}f}"


def _load(path: Path) -> tuple[str, dict, dict]:
    from emodebias.runs import load_run

    run = load_run(path)
    if not run.predictions:
        raise CompareError(f"{path}: the run has no saved predictions")
    return run.name, run.record, run.predictions


def compare_runs(paths: Sequence[str | Path], *, manifest: Manifest | str | Path | None = None,
                 attributes: Iterable[str] | None = None, n_perm: int = 1000,
                 seed: int = 0, show_progress: bool = True, alpha: float = ALPHA) -> Comparison:
    """Compare the runs in `paths` (first = baseline) on their common test utterances."""
    from emodebias import api
    from emodebias.metrics.predictions import DEFAULT_ATTRIBUTES, align_classes

    if len(paths) < 2:
        raise CompareError("--compare needs at least two audit or run folders")
    if n_perm < 1:
        raise CompareError(f"--n-perm must be at least 1 for a comparison, got {n_perm}")
    loaded = [_load(Path(p)) for p in paths]
    names = _unique([n for n, _, _ in loaded])
    base_ids = [str(u) for u in loaded[0][2]["utt_ids"]]
    for (_, _, pred), path in zip(loaded[1:], paths[1:], strict=True):
        ids = {str(u) for u in pred["utt_ids"]}
        if ids != set(base_ids):
            shared = len(ids & set(base_ids))
            raise CompareError(
                f"{paths[0]} ({len(base_ids)} utterances) and {path} ({len(ids)}) were not "
                f"scored on the same utterances ({shared} shared); audit both on the same "
                "manifest and split")
    if manifest is None:
        found = loaded[0][1].get("sources", {}).get("manifest")
        if not found:
            raise CompareError(f"{paths[0]}'s record names no manifest; pass --manifest")
        manifest = found
    man = api.open_manifest(manifest)
    classes = list(man.classes)
    probs = []
    for (_, _, pred), path in zip(loaded, paths, strict=True):
        order = {str(u): i for i, u in enumerate(pred["utt_ids"])}
        p = np.asarray(pred["probs"], float)[[order[u] for u in base_ids]]
        cols = align_classes([str(c) for c in pred["classes"]] if "classes" in pred else None,
                             classes, str(path))
        probs.append(p if cols is None else p[:, cols])
    rows = man.index_of(base_ids)
    targets = man.soft_labels()[rows]
    frame = man.df.iloc[rows].reset_index(drop=True)
    attrs = (list(attributes) if attributes is not None
             else [a for a in DEFAULT_ATTRIBUTES if a in frame.columns])
    absent = [a for a in attrs if a not in frame.columns]
    if absent:
        raise CompareError(f"attribute(s) {absent} not in the manifest")
    if "speaker" not in frame.columns:
        raise CompareError("the manifest has no speaker column (the paired test swaps speakers)")
    return paired_comparison(targets, probs, frame[attrs], frame["speaker"], names=names,
                             classes=classes, n_perm=n_perm, seed=seed, alpha=alpha,
                             show_progress=show_progress)


def paired_comparison(targets: np.ndarray, probs: Sequence[np.ndarray],
                      attributes: Mapping[str, object] | pd.DataFrame | None,
                      speakers: Iterable, *, names: Sequence[str] | None = None,
                      classes: list[str] | None = None, n_perm: int = 1000, seed: int = 0,
                      alpha: float = ALPHA, show_progress: bool = False) -> Comparison:
    """The paired speaker-swap test of `probs[1:]` against `probs[0]` on one test set (arrays).

    `compare_runs` calls this after loading run folders; simulations call it directly.
    """
    from emodebias.metrics import holm, min_sign_flip_p
    from emodebias.metrics.evaluate import headline_scorer
    from emodebias.progress import Bar

    if len(probs) < 2:
        raise CompareError("a comparison needs at least two sets of predictions")
    if n_perm < 1:
        raise CompareError(f"n_perm must be at least 1 for a comparison, got {n_perm}")
    if not 0 < alpha < 1:
        raise CompareError(f"alpha must lie in (0, 1), got {alpha}")
    names = _unique(list(names) if names is not None else [f"model{i}" for i in
                                                            range(len(probs))])
    spk = pd.Series(list(speakers))
    if len(spk) != len(targets) or spk.isna().any():
        raise CompareError(f"speakers must give a speaker for each of the {len(targets)} "
                           "utterances")
    codes = pd.factorize(spk.astype(str))[0]
    n_spk = int(codes.max()) + 1
    scorer = headline_scorer(targets, attributes, classes=classes)
    keys = list(SCORES) + [f"{a.name}.{m}" for a in scorer.attrs for m in PER_ATTRIBUTE]
    # per-speaker count sums of each model: a swap re-assembles them by one matrix product
    per_spk = [_speaker_sums(scorer.design(np.asarray(p, float)), codes, n_spk) for p in probs]
    values = [_stack(scorer.scores(s.sum(0)), keys) for s in per_spk]
    n_units = _speakers_per_key(scorer, codes, keys, n_spk)
    min_p = np.array([min_sign_flip_p(n) for n in n_units])
    exact = 2 ** n_spk <= n_perm
    swaps = 2 ** n_spk if exact else n_perm
    rng = np.random.default_rng(seed)
    records = [{"metric": k, "model": names[0], "value": v, "diff": np.nan, "p": np.nan,
                "p_holm": np.nan, "status": ""} for k, v in zip(keys, values[0], strict=True)]
    shown = None if show_progress else False  # None: the CLI's -q decides
    with Bar(swaps * (len(probs) - 1), "paired tests", enabled=shown) as bar:
        for j in range(1, len(probs)):
            diff = values[j] - values[0]
            hits = np.zeros(len(keys))
            valid = np.zeros(len(keys))
            delta = per_spk[0] - per_spk[j]  # what a swapped speaker adds to model j
            tot_j, tot_0 = per_spk[j].sum(0), per_spk[0].sum(0)
            for start in range(0, swaps, CHUNK):
                size = min(CHUNK, swaps - start)
                if exact:
                    w = ((np.arange(start, start + size)[:, None] >> np.arange(n_spk)) & 1)
                else:
                    w = rng.random((size, n_spk)) < 0.5
                moved = w.astype(float) @ delta
                d = (_stack(scorer.scores(tot_j + moved), keys)
                     - _stack(scorer.scores(tot_0 - moved), keys))
                ok = np.isfinite(d)
                tol = 1e-12 * np.maximum(1.0, np.abs(diff))
                hits += (ok & (np.abs(d) >= np.abs(diff) - tol)).sum(0)
                valid += ok.sum(0)
                bar.advance(size)
            # exact: the identity is among the enumerated swaps; random: counted once on top
            p = hits / valid if exact else (1 + hits) / (1 + valid)
            status = np.where(~np.isfinite(diff), UNDEFINED,
                              np.where(min_p > alpha, NOT_TESTABLE, TESTED))
            p = np.where(status == TESTED, p, np.nan)
            tested = status == TESTED
            adjusted = np.full(len(keys), np.nan)
            if tested.any():
                adjusted[tested] = holm(p[tested])
            records += [{"metric": k, "model": names[j], "value": values[j][i], "diff": diff[i],
                         "p": p[i], "p_holm": adjusted[i], "status": str(status[i])}
                        for i, k in enumerate(keys)]
    table = pd.DataFrame(records)
    table = table[table.groupby("metric")["value"].transform(lambda v: v.notna().any())]
    table = table.reset_index(drop=True)
    notes = _notes(table, names, keys, n_units, min_p, exact, swaps, alpha)
    return Comparison(table, names, len(targets), n_spk, swaps, exact, notes)


def _speaker_sums(design: np.ndarray, codes: np.ndarray, n_spk: int) -> np.ndarray:
    """Sums of the design rows per speaker ``[S, W]``."""
    out = np.zeros((n_spk, design.shape[1]))
    np.add.at(out, codes, design)
    return out


def _stack(scores: Mapping[str, np.ndarray], keys: list[str]) -> np.ndarray:
    """Scores ``key -> [...]`` as one array ``[..., len(keys)]``."""
    return np.stack([np.asarray(scores[k], float) for k in keys], axis=-1)


def _speakers_per_key(scorer: HeadlineScorer, codes: np.ndarray, keys: list[str],
                      n_spk: int) -> np.ndarray:
    """Speakers whose swap can move each metric: all for the overall scores, those with an
    utterance in a compared group of the attribute for its metrics."""
    per_attr: dict[str, int] = {}
    for a in scorer.attrs:
        pl = scorer.plans.get(a.name)
        if pl is None:
            per_attr[a.name] = 0
            continue
        rows = (a.codes >= 0) & pl.groups[np.maximum(a.codes, 0)]
        per_attr[a.name] = len(np.unique(codes[rows]))
    return np.array([n_spk if k in SCORES else per_attr[k.split(".", 1)[0]] for k in keys])


def _notes(table: pd.DataFrame, names: list[str], keys: list[str], n_units: np.ndarray,
           min_p: np.ndarray, exact: bool, swaps: int, alpha: float) -> list[str]:
    """Plain-language limits of this design: metrics it cannot test, Holm it cannot pass."""
    from emodebias.metrics import pairs_needed

    notes = []
    shown = set(table["metric"])
    blocked = sorted({(int(n), float(m)) for k, n, m in zip(keys, n_units, min_p, strict=True)
                      if k in shown and m > alpha})
    for n, m in blocked:
        which = [k for k, u in zip(keys, n_units, strict=True) if u == n and k in shown]
        notes.append(f"not testable: only {n} speakers for {', '.join(which)}: 2^{n} swaps "
                     f"give a smallest p of {m:.3g} > α = {alpha:g}; p withheld (needs "
                     f"≥ {pairs_needed(alpha)} speakers)")
    floor = 0.0 if exact else 1.0 / (1 + swaps)
    if floor > alpha:
        notes.append(f"{swaps} random swaps give a smallest p of {floor:.3g} > α = "
                     f"{alpha:g}: raise --n-perm to at least {int(np.ceil(1 / alpha)) - 1}")
    for name in names[1:]:
        rows = table[(table["model"] == name) & (table["status"] == TESTED)]
        m = len(rows)
        if not m:
            continue
        smallest = max(floor, float(min_p[[keys.index(k) for k in rows["metric"]]].min()))
        if smallest > alpha / m:
            fix = (f"needs ≥ {pairs_needed(alpha, m)} speakers"
                   if floor <= alpha / m else f"needs --n-perm ≥ {int(np.ceil(m / alpha)) - 1}")
            notes.append(f"{name}: Holm over {m} metrics cannot reject at α = {alpha:g} (its "
                         f"first threshold α/{m} = {alpha / m:.3g} < smallest p {smallest:.3g}; "
                         f"{fix})")
    return notes


def simulated_comparisons(reps: int, *, seed: int, unit: str = "speaker", n_perm: int = 99,
                          **sim: float) -> Iterator[tuple[Comparison, pd.DataFrame]]:
    """The calibration check's data: `paired_comparison` of `reps` model pairs drawn by
    `metrics.simulate.simulate_model_pair(**sim)`, with each comparison and model B's rows by
    metric. `unit="utterance"` swaps single utterances, the design the speaker swap is
    checked against."""
    from emodebias.metrics.simulate import simulate_model_pair

    rng = np.random.default_rng(seed)
    for r in range(reps):
        d = simulate_model_pair(rng, **sim)
        spk = np.arange(len(d.speakers)) if unit == "utterance" else d.speakers
        c = paired_comparison(d.targets, [d.probs_a, d.probs_b], {"gender": d.gender}, spk,
                              n_perm=n_perm, seed=r)
        yield c, c.table[c.table["model"] == c.names[1]].set_index("metric")


def _unique(names: list[str]) -> list[str]:
    """Display names, numbered where two runs share one."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n}#{seen[n]}")
    return out
