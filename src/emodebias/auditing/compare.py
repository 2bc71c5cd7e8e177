"""Models side by side on the same utterances, with paired tests.

Every folder must hold one run (an audit or a trained run) scored on exactly the same
utterances; the first is the baseline. Each metric (macro-F1, Hamming accuracy, every gap and
worst-group score per attribute) is computed for every model as `evaluate` computes it, and each
model is tested against the baseline by a paired speaker-swap permutation test: under "the two
models are exchangeable" swapping the two models' predictions for all utterances of a random
half of the speakers leaves the distribution of the difference unchanged, so
p = (1 + #{|Δ*| >= |Δ|}) / (1 + n_perm). The test keeps speakers' utterances together (they are
not independent) and pairs the models on each utterance. Holm's adjustment runs over the
metrics of one pair (`emodebias.metrics.holm`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from emodebias.errors import UserError

if TYPE_CHECKING:
    from emodebias.data.manifest import Manifest

SCORES = ("macro_f1", "hamming_acc")
PER_ATTRIBUTE = ("tpr_gap", "fpr_gap", "f1_gap", "dp_maxdev_gap", "dp_sumdev_gap",
                 "macro_f1_gap", "worst_group_f1", "worst_group_acc")


class CompareError(UserError):
    """Runs that cannot be compared (different utterances or classes, no manifest)."""


@dataclass
class Comparison:
    """`table`: one row per metric x model (value, Δ vs the baseline, p, Holm p)."""

    table: pd.DataFrame
    names: list[str]
    n_utterances: int
    n_speakers: int
    n_perm: int

    def lines(self) -> list[str]:
        """The side-by-side table as printed by `audit --compare`."""
        wide = self.table.pivot(index="metric", columns="model", values="value")
        wide = wide.reindex(index=list(dict.fromkeys(self.table["metric"])),
                            columns=self.names)
        width = max(12, *(len(n) + 2 for n in self.names))
        out = [f"{self.n_utterances} utterances, {self.n_speakers} speakers; baseline "
               f"{self.names[0]}; p: paired speaker-swap permutation ({self.n_perm}), "
               "Holm over the metrics of each pair", ""]
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
                 seed: int = 0, show_progress: bool = True) -> Comparison:
    """Compare the runs in `paths` (first = baseline) on their common test utterances."""
    from emodebias import api
    from emodebias.metrics import evaluate, holm
    from emodebias.metrics.predictions import DEFAULT_ATTRIBUTES, align_classes
    from emodebias.progress import Bar

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
    spk_codes = pd.factorize(frame["speaker"])[0]
    keys = list(SCORES) + [f"{a}.{m}" for a in attrs for m in PER_ATTRIBUTE]

    def scores(p: np.ndarray) -> np.ndarray:
        s = evaluate(targets, p, frame[attrs], speakers=spk_codes, classes=classes).summary
        return np.array([s.get(k, np.nan) for k in keys])

    values = [scores(p) for p in probs]
    rng = np.random.default_rng(seed)
    records = [{"metric": k, "model": names[0], "value": v, "diff": np.nan, "p": np.nan,
                "p_holm": np.nan} for k, v in zip(keys, values[0], strict=True)]
    n_spk = int(spk_codes.max()) + 1
    shown = None if show_progress else False  # None: the CLI's -q decides
    with Bar(n_perm * (len(probs) - 1), "paired tests", enabled=shown) as bar:
        for j in range(1, len(probs)):
            a, b = probs[j], probs[0]
            diff = values[j] - values[0]
            hits = np.zeros(len(keys))
            for _ in range(n_perm):
                swap = (rng.random(n_spk) < 0.5)[spk_codes][:, None]
                d = scores(np.where(swap, b, a)) - scores(np.where(swap, a, b))
                hits += np.abs(d) >= np.abs(diff) - 1e-12
                bar.advance()
            p = (1 + hits) / (1 + n_perm)
            p = np.where(np.isfinite(diff), p, np.nan)
            finite = np.isfinite(p)
            adjusted = np.full(len(keys), np.nan)
            if finite.any():
                adjusted[finite] = holm(p[finite])
            records += [{"metric": k, "model": names[j], "value": values[j][i], "diff": diff[i],
                         "p": p[i], "p_holm": adjusted[i]} for i, k in enumerate(keys)]
    table = pd.DataFrame(records)
    table = table[table.groupby("metric")["value"].transform(lambda v: v.notna().any())]
    return Comparison(table.reset_index(drop=True), names, len(base_ids), n_spk, n_perm)


def _unique(names: list[str]) -> list[str]:
    """Display names, numbered where two runs share one."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n}#{seen[n]}")
    return out
