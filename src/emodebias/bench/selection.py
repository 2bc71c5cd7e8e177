"""Trial selection: which trial of a hyperparameter search a grid keeps, from dev data only.

Epoch selection stays inside each run (the trainer keeps the lowest-dev-loss epoch). The rules
here act one level up, among the trials of one search (one method, cell and fixed settings):
each trial is scored on its selected epoch's dev predictions, with the dev groups its run may
see, and the rule picks one trial. A run's dev scores are computed when it trains (`dev_scores`,
stored in its record's ``selection`` block); `apply` then marks the chosen trial of every search
in a grid folder. Nothing here reads test predictions, labels or groups.

Which dev groups a run may use: a group-supervised method uses its own training group source
(truth, pseudo-labels or clusters); a method without groups uses the grid's
``selection: {groups: ...}`` (e.g. ``truth``: the SubpopBench setting where attributes are known
on validation data only) or, without it, cannot use a group rule: it falls back to the dev loss
and its record says so.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emodebias.errors import UserError

log = logging.getLogger(__name__)
ATTRIBUTES = ("gender", "age_group", "race")  # truth columns scored on dev when present
DEFAULT_EPSILON = 0.02


class SelectionError(UserError):
    """The grid's `selection:` is malformed."""


@dataclass(frozen=True)
class Rule:
    """A trial-selection rule: `score` maps a trial's (seed-averaged) dev scores and the dev
    group source it may use to a number to maximise (NaN: cannot score)."""

    name: str
    needs_groups: bool
    doc: str


RULES: dict[str, Rule] = {r.name: r for r in (
    Rule("dev_loss", False, "lowest dev loss (the papers' rule; the default)"),
    Rule("dev_macro_f1", False, "highest dev macro-F1"),
    Rule("dev_worst_group_f1", True, "highest dev worst-group macro-F1 (SubpopBench's "
         "worst-group validation)"),
    Rule("dev_f1_within_gap", True, "highest dev macro-F1 among trials whose dev TPR gap is "
         "within epsilon of the smallest"),
)}


@dataclass(frozen=True)
class SelectionConfig:
    """The grid's `selection:`; `groups` is the dev group source of methods without groups."""

    rule: str = "dev_loss"
    epsilon: float = DEFAULT_EPSILON
    groups: str = "none"

    def to_dict(self) -> dict:
        return {"rule": self.rule, "epsilon": self.epsilon, "groups": self.groups}


def check_selection(value: Any, at: str = "") -> SelectionConfig:
    """`selection: {rule, epsilon, groups}` -> SelectionConfig (one-line errors)."""
    if value is None:
        return SelectionConfig()
    if isinstance(value, str):
        value = {"rule": value}
    if not isinstance(value, dict):
        raise SelectionError(f"{at}selection must be a mapping like {{rule: dev_loss}}, got "
                             f"{value!r}")
    bad = set(value) - {"rule", "epsilon", "groups"}
    if bad:
        raise SelectionError(f"{at}unknown selection key(s) {sorted(map(str, bad))}; allowed: "
                             "['epsilon', 'groups', 'rule']")
    rule = value.get("rule", "dev_loss")
    if rule not in RULES:
        raise SelectionError(f"{at}selection.rule must be one of {sorted(RULES)}, got {rule!r}")
    eps = value.get("epsilon", DEFAULT_EPSILON)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
            math.isfinite(eps) and eps >= 0):
        raise SelectionError(f"{at}selection.epsilon must be a number >= 0, got {eps!r}")
    groups = str(value.get("groups", "none")).strip()
    if groups == "truth":
        groups = "truth:gender"
    if groups != "none" and not (groups.startswith("truth:") and "+" not in groups
                                 and groups[6:] in ATTRIBUTES):
        raise SelectionError(f"{at}selection.groups must be none or truth[:<attribute>] with "
                             f"an attribute of {list(ATTRIBUTES)}, got {groups!r}")
    return SelectionConfig(rule, float(eps), groups)


# ----------------------------------------------------------------------------- dev scores
def dev_scores(probs: np.ndarray, targets: np.ndarray, groups: dict[str, Iterable],
               dev_loss: float, threshold: float | None = None) -> dict:
    """A trial's dev scores with `emodebias.metrics.evaluate`: loss, macro-F1, and per dev
    group source its worst-group macro-F1 and TPR gap (NaN where not estimable)."""
    from emodebias.metrics import evaluate

    attrs = {f"g{i}": np.asarray(list(v), dtype=object) for i, v in enumerate(groups.values())}
    res = evaluate(targets, probs, attrs, threshold=threshold)
    s = res.summary
    nan = float("nan")
    return {"loss": float(dev_loss), "macro_f1": float(s.get("macro_f1", nan)),
            "groups": {name: {"worst_group_f1": float(s.get(f"g{i}.worst_group_f1", nan)),
                              "tpr_gap": float(s.get(f"g{i}.tpr_gap", nan))}
                       for i, name in enumerate(groups)}}


def run_dev_groups(data: Any, manifest: Any, spec_groups: str) -> dict[str, np.ndarray]:
    """The dev group columns a run's record keeps scores for: its own training groups (when it
    has any) and each truth attribute of the corpus (used only by runs allowed to)."""
    dev = np.asarray(data.dev_idx)
    out: dict[str, np.ndarray] = {}
    if spec_groups != "none":
        ids = np.asarray(data.groups)[dev]
        out[spec_groups] = np.where(ids >= 0, ids.astype(object), None)
    utt = [str(data.utt_ids[i]) for i in dev]
    df = manifest.df.iloc[manifest.index_of(utt)]
    for attr in ATTRIBUTES:
        if attr in df.columns and f"truth:{attr}" not in out:
            col = df[attr]
            out[f"truth:{attr}"] = np.where(col.notna(), col.astype(str), None)
    return out


def run_block(spec: Any, fit: Any) -> dict:
    """The ``selection`` block of a run outside searches: no trial to choose, only its epoch
    (kept by the trainer's `select` rule)."""
    return {"trial": None, "epoch": int(fit.best_epoch),
            "epoch_rule": spec.train.get("select", "dev_loss"), "chosen": True}


def trial_block(spec: Any, fit: Any, data: Any, manifest: Any) -> dict:
    """The ``selection`` block a search run's record starts with (chosen: unknown until every
    trial has run; `apply` fills it in)."""
    dev = np.asarray(data.dev_idx)
    loss = fit.info.get("best_dev_loss")
    if loss is None:  # a trainer that does not report it: the selected epoch's history row
        loss = next((h.get("dev_loss") for h in fit.history if h.get("epoch") == fit.best_epoch),
                    float("nan"))
    scores = dev_scores(np.asarray(fit.dev_probs), np.asarray(data.soft)[dev],
                        run_dev_groups(data, manifest, spec.groups), float(loss),
                        spec.evaluation.get("threshold"))
    search = spec.search
    searched = {k: v for k, v in {**spec.hparams, **spec.train}.items()
                if k in search.get("space", [])}
    return {"trial": search["trial"], "trials": search["trials"], "search_seed": search["seed"],
            "best_rerun": bool(search.get("best")), "hparams": searched,
            "epoch": int(fit.best_epoch), "epoch_rule": spec.train.get("select", "dev_loss"),
            "dev": scores, "chosen": None}


# ----------------------------------------------------------------------------- selection
def group_key(spec: dict) -> str:
    """The search a run belongs to: its spec without the seed, the trial and the searched
    values (so the trials of one method, cell and fixed settings share it)."""
    from emodebias.bench.grid import RUNTIME_FIELDS, content_hash

    search = dict(spec.get("search") or {})
    space = set(search.pop("space", []))
    search.pop("trial", None)
    search.pop("best", None)
    rest = {k: v for k, v in spec.items() if k not in ("seed", "search", *RUNTIME_FIELDS)}
    rest["hparams"] = {k: v for k, v in spec.get("hparams", {}).items() if k not in space}
    rest["train"] = {k: v for k, v in spec.get("train", {}).items() if k not in space}
    return content_hash({"spec": rest, "search": search, "space": sorted(space)})


def dev_group_source(method_groups: str, config: SelectionConfig) -> str | None:
    """The dev groups a run may select on: its own training groups, else the grid's
    `selection.groups`, else none."""
    if method_groups != "none":
        return method_groups
    return None if config.groups == "none" else config.groups


def _score(rule: str, dev: dict, source: str | None) -> float:
    """What the rule maximises for one trial's (mean) dev scores; NaN: cannot score."""
    nan = float("nan")
    if rule == "dev_loss":
        return -dev["loss"]
    if rule == "dev_macro_f1":
        return dev["macro_f1"]
    g = dev["groups"].get(source) if source else None
    if g is None:
        return nan
    if rule == "dev_worst_group_f1":
        return g["worst_group_f1"]
    return dev["macro_f1"]  # dev_f1_within_gap: among the trials within the gap, see `choose`


def _mean(values: list[float]) -> float:
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def mean_dev(devs: list[dict]) -> dict:
    """Dev scores averaged over a trial's seeds (NaN-free values only)."""
    sources = set().union(*(d["groups"] for d in devs)) if devs else set()
    return {"loss": _mean([d["loss"] for d in devs]),
            "macro_f1": _mean([d["macro_f1"] for d in devs]),
            "groups": {s: {m: _mean([d["groups"].get(s, {}).get(m, float("nan")) for d in devs])
                           for m in ("worst_group_f1", "tpr_gap")} for s in sources}}


def choose(trials: dict[int, dict], rule: str, epsilon: float = DEFAULT_EPSILON,
           source: str | None = None) -> tuple[int, dict[int, float], str | None]:
    """(chosen trial, each trial's score, fallback note) among trials' mean dev scores.

    Ties go to the lowest trial number (trial 0, the defaults, wins a tie). A group rule without
    a dev group source, or with no scorable trial, falls back to the dev loss and says why."""
    note = None
    if RULES[rule].needs_groups and source is None:
        note = f"{rule} needs dev groups and this method has none: selected on dev loss"
        rule = "dev_loss"
    eligible = sorted(trials)
    if rule == "dev_f1_within_gap":
        gaps = {t: trials[t]["groups"].get(source, {}).get("tpr_gap", float("nan"))
                for t in trials}
        finite = [g for g in gaps.values() if math.isfinite(g)]
        if finite:
            eligible = [t for t in eligible if math.isfinite(gaps[t])
                        and gaps[t] <= min(finite) + epsilon]
        else:
            note = f"no trial's dev TPR gap on {source} is estimable: best dev macro-F1"
    scores = {t: _score(rule, trials[t], source) for t in trials}
    ok = [t for t in eligible if math.isfinite(scores[t])]
    if not ok:
        if rule == "dev_loss":
            return min(trials), scores, "no trial has a finite dev loss: kept trial 0"
        t, scores, _ = choose(trials, "dev_loss")
        return t, scores, f"{rule}: no trial could be scored on dev groups {source}: " \
                          "selected on dev loss"
    best = max(scores[t] for t in ok)
    return min(t for t in ok if scores[t] == best), scores, note


def apply(out: Path, config: SelectionConfig) -> list[dict]:
    """Mark the chosen trial of every search under the grid folder `out`: each search run's
    record gets the rule, its score and whether it was chosen; reruns of the chosen
    configuration (``--best``) are marked as chosen. Returns one summary per search."""
    from emodebias.bench.results import RECORD, read_record
    from emodebias.fileio import write_text_atomic

    searches: dict[str, list[tuple[Path, dict]]] = {}
    for d in sorted((Path(out) / "runs").glob("*")):
        if ".tmp-" in d.name or ".old-" in d.name or not (d / RECORD).is_file():
            continue
        rec = read_record(d)
        if rec["spec"].get("search") and rec.get("selection"):
            searches.setdefault(group_key(rec["spec"]), []).append((d, rec))
    summaries = []
    for runs in searches.values():
        spec0 = runs[0][1]["spec"]
        source = dev_group_source(spec0["groups"], config)
        by_trial: dict[int, list[dict]] = {}
        for _, rec in runs:
            if not rec["selection"].get("best_rerun"):
                by_trial.setdefault(rec["selection"]["trial"], []).append(rec["selection"]["dev"])
        if not by_trial:
            continue
        means = {t: mean_dev(v) for t, v in by_trial.items()}
        chosen, scores, note = choose(means, config.rule, config.epsilon, source)
        rule_block = {"rule": config.rule, "epsilon": config.epsilon, "dev_groups": source,
                      "fallback": note, "chosen_trial": chosen,
                      "trials_done": len(by_trial)}
        for d, rec in runs:
            sel = dict(rec["selection"])
            t = sel["trial"]
            new = {**sel, **rule_block, "score": None if t not in scores or not math.isfinite(
                scores[t]) else scores[t], "chosen": t == chosen}
            if new != rec["selection"]:
                rec["selection"] = new
                write_text_atomic(d / RECORD, json.dumps(rec, indent=1, sort_keys=True))
        pick = next(rec for _, rec in runs if rec["selection"]["trial"] == chosen)
        summaries.append({"method": spec0["method"], "groups": spec0["groups"],
                          "fold": spec0["fold"], "key": group_key(spec0), "trial": chosen,
                          "hparams": pick["selection"]["hparams"], **rule_block})
        if note:
            log.warning("%s (%s, fold %s): %s", spec0["method"], spec0["groups"], spec0["fold"],
                        note)
    return summaries


def best_specs(out: Path, specs: list, seeds: int) -> list:
    """The reruns of each search's chosen trial with seeds 0..seeds-1 (marked ``best`` in their
    search block, so they never take part in selection); searches not yet selected have none."""
    from dataclasses import replace

    from emodebias.bench.results import RECORD, read_record

    chosen: dict[str, int] = {}
    for d in sorted((Path(out) / "runs").glob("*")):
        if not (d / RECORD).is_file() or ".tmp-" in d.name:
            continue
        rec = read_record(d)
        sel = rec.get("selection") or {}
        if rec["spec"].get("search") and sel.get("chosen") and not sel.get("best_rerun"):
            chosen[group_key(rec["spec"])] = sel["trial"]
    out_specs, seen = [], set()
    for s in specs:
        if not s.search or s.search.get("best"):
            continue
        key = group_key(s.to_dict())
        if chosen.get(key) != s.search["trial"] or key in seen:
            continue
        seen.add(key)
        out_specs += [replace(s, seed=seed, search={**s.search, "best": True})
                      for seed in range(seeds)]
    return out_specs


def rerun_specs_present(out: Path, specs: list) -> list:
    """Reruns (``--best``) already in `out` whose search is one of this grid's: they belong to
    the grid, so a later plain `bench` keeps them instead of refusing the folder."""
    from emodebias.bench.grid import RunSpec
    from emodebias.bench.results import RECORD

    keys = {group_key(s.to_dict()) for s in specs if s.search}
    mine = {s.hash for s in specs}
    found = []
    for path in sorted((Path(out) / "runs").glob(f"*/{RECORD}")):
        if path.parent.name in mine:
            continue
        try:
            spec = json.loads(path.read_text())["spec"]
        except (OSError, ValueError, KeyError):
            continue
        if (spec.get("search") or {}).get("best") and group_key(spec) in keys:
            found.append(RunSpec.from_dict(spec))
    return found
