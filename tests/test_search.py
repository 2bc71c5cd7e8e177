"""Hyperparameter search and trial selection: spaces beside every method's defaults, draws that
depend only on (seed, method, trial, name), selection rules checked by hand, the grid keys, the
end-to-end `bench --best` path, and the guard that selection never reads test data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from emodebias.bench.grid import expand_grid
from emodebias.bench.selection import (
    SelectionConfig,
    check_selection,
    choose,
    dev_scores,
    mean_dev,
)
from emodebias.cli import app
from emodebias.errors import UserError
from emodebias.training.methods import REGISTRY
from emodebias.training.search import SHARED, SearchSpace, draw, method_space, spaces, stream

TINY_CORPUS = {"name": "synthetic", "folds": 5, "n_speakers_per_gender": 5,
               "utterances_per_emotion": 4, "seconds": [0.5, 0.7]}


def grid(*runs: dict, **top) -> dict:
    return {"corpus": "synthetic", "folds": [1], "runs": list(runs), **top}


# ----------------------------------------------------------------------------- spaces and draws
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_searches_real_hyperparameters_within_bounds(name: str) -> None:
    cls = REGISTRY[name]
    space = method_space(cls)
    assert isinstance(getattr(cls, "SEARCH", SearchSpace()), SearchSpace)
    assert set(space) <= set(cls.HPARAMS), f"{name} searches undeclared hyperparameters"
    assert not set(space) & cls.structural_hparams(), f"{name} searches a structural value"
    train = {"epochs": 20, "lr": 1e-3}
    hp0, tr0 = draw(name, 0, 0, train)
    assert hp0 == {k: cls.HPARAMS[k] for k in space} and tr0 == train  # trial 0: defaults
    for trial in range(1, 15):
        hp, tr = draw(name, 3, trial, train)
        assert (hp, tr) == draw(name, 3, trial, train)  # deterministic
        for k, v in hp.items():
            assert type(v) is type(cls.HPARAMS[k])
            assert space[k].contains(v, cls.HPARAMS[k]), (name, k, v)
        for k, v in tr.items():
            assert SHARED[k].contains(v, train[k]), (name, k, v)
    assert set(spaces()[name]) == set(space) | set(SHARED)


def test_draws_use_a_stable_hash_not_the_process_salted_one() -> None:
    """Pinned values: the same in every process and Python version (no `hash()`)."""
    hp, tr = draw("gdro", 0, 1)
    assert hp["eta_q"] == pytest.approx(0.05566495553599194, rel=1e-12)
    assert tr["lr"] == pytest.approx(1.5400339143046405e-05, rel=1e-12)
    assert stream(0, "gdro", 1, "eta_q").random() != stream(0, "gdro", 2, "eta_q").random()


def trial_values(specs: list, method: str) -> dict[int, tuple]:
    return {s.search["trial"]: (s.hparams, s.train) for s in specs
            if s.method == method and s.search}


def test_a_trial_draws_the_same_whatever_else_is_in_the_grid() -> None:
    alone = expand_grid(grid({"method": "gdro", "groups": "truth",
                              "search": {"trials": 4, "seed": 7}}))
    crowded = expand_grid(grid(
        {"method": ["adv", "gadro"], "groups": "truth", "search": {"trials": 9, "seed": 7}},
        {"method": "erm", "search": {"trials": 3, "seed": 1}},
        {"method": "gdro", "groups": "truth", "search": {"trials": 6, "seed": 7}},
        train={"epochs": 50}))
    a, b = trial_values(alone, "gdro"), trial_values(crowded, "gdro")
    assert len(a) == 4 and all(a[t] == b[t] for t in a)
    assert a[0][0]["eta_q"] == 0.01 and len({v[0]["eta_q"] for v in a.values()}) == 4


def test_trials_share_their_cell_and_task_and_fixed_hparams_stay_fixed() -> None:
    specs = expand_grid(grid({"method": "gadro", "groups": "truth", "hparams": {"adj": 2.0},
                              "search": {"trials": 5, "seed": 0}}))
    assert len(specs) == 5 and len({s.hash for s in specs}) == 5
    assert {s.batch_key for s in specs} == {specs[0].batch_key}
    assert {s.train_key for s in specs} == {specs[0].train_key}
    assert {s.hparams["adj"] for s in specs} == {2.0}
    assert specs[3].search == {"trials": 5, "seed": 0, "trial": 3,
                               "space": ["epochs", "eta_q", "lr"]}
    assert specs[3].name.endswith(".gadro[adj=2.0].t3.s0")
    plain = expand_grid(grid({"method": "gadro", "groups": "truth"}))[0]
    assert "search" not in plain.to_dict()  # runs outside searches keep their hashes


@pytest.mark.parametrize("bad, message", [
    ({"search": {"trials": 0}}, "search.trials must be an integer >= 1"),
    ({"search": {"trials": 3, "sed": 1}}, "unknown search key(s) ['sed']"),
    ({"search": [3]}, "search must be a mapping"),
])
def test_bad_search_settings_fail_with_one_line(bad: dict, message: str) -> None:
    with pytest.raises(UserError, match=r"runs\[0\]: ") as err:
        expand_grid(grid({"method": "erm", **bad}), "g.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("bad, message", [
    ({"rule": "best"}, "selection.rule must be one of"),
    ({"rule": "dev_f1_within_gap", "epsilon": -1}, "selection.epsilon must be a number >= 0"),
    ({"groups": "cluster:k=4"}, "selection.groups must be none or truth"),
    ({"rules": "dev_loss"}, "unknown selection key(s) ['rules']"),
])
def test_bad_selection_settings_fail_with_one_line(bad: dict, message: str) -> None:
    with pytest.raises(UserError, match="g.yaml: ") as err:
        expand_grid(grid({"method": "erm"}, selection=bad), "g.yaml")
    assert message in str(err.value)
    assert check_selection({"rule": "dev_worst_group_f1", "groups": "truth"}) == \
        SelectionConfig("dev_worst_group_f1", 0.02, "truth:gender")


# ----------------------------------------------------------------------------- selection
def test_dev_scores_match_a_hand_computation() -> None:
    """Two classes, groups a (all right) and b (half right): macro-F1 per group by hand."""
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 0], [0, 1], [1, 0], [0, 1]], float)
    probs = targets.copy()
    probs[[4, 5]] = probs[[4, 5]][:, ::-1]  # group b: two of four wrong
    groups = {"truth:gender": ["a"] * 4 + ["b"] * 4}
    s = dev_scores(probs, targets, groups, dev_loss=0.7)
    # group b: each class TP 1, FP 1, FN 1 -> F1 = 0.5; group a: 1.0; overall F1 = 0.75
    assert s["loss"] == 0.7 and s["macro_f1"] == pytest.approx(0.75)
    assert s["groups"]["truth:gender"]["worst_group_f1"] == pytest.approx(0.5)
    assert s["groups"]["truth:gender"]["tpr_gap"] == pytest.approx(0.5)  # TPR 1 vs 0.5


def dev(loss: float, f1: float, worst: float, gap: float) -> dict:
    return {"loss": loss, "macro_f1": f1,
            "groups": {"truth:gender": {"worst_group_f1": worst, "tpr_gap": gap}}}


TRIALS = {0: dev(0.50, 0.60, 0.40, 0.20), 1: dev(0.40, 0.55, 0.50, 0.05),
          2: dev(0.45, 0.70, 0.30, 0.30), 3: dev(0.60, 0.58, 0.45, 0.06)}


@pytest.mark.parametrize("rule, eps, expected", [
    ("dev_loss", 0, 1), ("dev_macro_f1", 0, 2), ("dev_worst_group_f1", 0, 1),
    ("dev_f1_within_gap", 0.02, 3),  # gaps within 0.05 + 0.02: trials 1, 3 -> best F1 is 3
    ("dev_f1_within_gap", 0.0, 1), ("dev_f1_within_gap", 1.0, 2),
])
def test_rules_choose_as_by_hand(rule: str, eps: float, expected: int) -> None:
    chosen, scores, note = choose(TRIALS, rule, eps, "truth:gender")
    assert chosen == expected and note is None
    assert set(scores) == set(TRIALS)


def test_a_group_rule_without_dev_groups_falls_back_to_the_dev_loss_and_says_so() -> None:
    chosen, _, note = choose(TRIALS, "dev_worst_group_f1", 0.0, None)
    assert chosen == 1 and "needs dev groups" in note
    tie = {0: dev(0.5, 0.6, 0.4, 0.2), 1: dev(0.5, 0.6, 0.4, 0.2)}
    assert choose(tie, "dev_loss")[0] == 0  # ties go to the defaults
    means = mean_dev([dev(0.4, 0.5, 0.3, 0.1), dev(0.6, 0.7, float("nan"), 0.3)])
    assert means["loss"] == pytest.approx(0.5) and means["groups"]["truth:gender"][
        "worst_group_f1"] == pytest.approx(0.3)


# ----------------------------------------------------------------------------- end to end
def tiny(tmp_path: Path, **extra) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny-search", "corpus": TINY_CORPUS, "encoder": "acoustic", "folds": [1],
        "train": {"epochs": 3, "lr": 1.0e-2},
        "selection": {"rule": "dev_worst_group_f1", "groups": "truth"},
        "runs": [{"method": "erm", "search": {"trials": 3, "seed": 0}},
                 {"method": "gdro", "groups": "truth", "search": {"trials": 2, "seed": 0}}],
        **extra}))
    return path


def selections(out: Path) -> dict[str, dict]:
    return {r["name"]: r["selection"] for r in
            (json.loads(p.read_text()) for p in sorted(out.glob("runs/*/record.json")))}


def test_bench_search_selects_reruns_the_best_and_reports_it(tmp_path: Path) -> None:
    out, g = tmp_path / "o", tiny(tmp_path)
    res = CliRunner().invoke(app, ["bench", str(g), "-o", str(out), "--best", "--seeds", "2"])
    assert res.exit_code == 0, res.output
    sel = selections(out)
    trials = {n: s for n, s in sel.items() if not s["best_rerun"]}
    reruns = {n: s for n, s in sel.items() if s["best_rerun"]}
    assert len(trials) == 5 and len(reruns) == 4  # 3 + 2 trials; 2 searches x 2 seeds
    for method in ("erm", "gdro"):
        mine = {n: s for n, s in trials.items() if f".{method}.t" in n}
        chosen = [s for s in mine.values() if s["chosen"]]
        assert len(chosen) == 1 and {s["rule"] for s in mine.values()} == {"dev_worst_group_f1"}
        assert {s["dev_groups"] for s in mine.values()} == {"truth:gender"}
        best = max(mine.values(), key=lambda s: (s["dev"]["groups"]["truth:gender"][
            "worst_group_f1"] or -1, -s["trial"]))
        assert chosen[0]["trial"] == best["trial"]
        again = [s for n, s in reruns.items() if f".{method}.t" in n]
        assert {s["trial"] for s in again} == {best["trial"]} and all(s["chosen"] for s in again)
        assert all(s["hparams"] == best["hparams"] for s in again)
    df = pd.read_parquet(out / "results.parquet").drop_duplicates("hash")
    assert {"trial", "selected", "best_rerun", "search_hparams"} <= set(df.columns)
    assert df["selected"].sum() == 2 + 4
    res = CliRunner().invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "report" / "report.md").read_text()
    assert "## Hyperparameter search" in md and "Selected configurations over seeds" in md
    # a plain rerun keeps the reruns (they are the grid's), and --best without a search refuses
    res = CliRunner().invoke(app, ["bench", str(g), "-o", str(out)])
    assert res.exit_code == 0 and "9 already done" in res.output, res.output
    res = CliRunner().invoke(app, ["bench", str(tiny(tmp_path, runs=["erm"])), "-o",
                                   str(tmp_path / "p"), "--best"])
    assert res.exit_code == 2 and "no entry has a search" in res.stderr


def test_selection_never_reads_test_data(tmp_path: Path) -> None:
    """Shuffle the test utterances' labels and groups in the grid's manifest: every trial's
    dev scores and every selection stay the same."""
    from emodebias.data.manifest import Manifest
    from emodebias.data.splits import Split

    g = tiny(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    res = CliRunner().invoke(app, ["bench", str(g), "-o", str(a)])
    assert res.exit_code == 0, res.output
    [mpath] = (a / "cache" / "manifests").glob("*.parquet")
    [spath] = (a / "cache" / "splits").glob("*.json")
    manifest, test = Manifest.load(mpath), set(Split.load(spath).test)
    df = manifest.df.copy()
    rows = np.flatnonzero(df["utt_id"].isin(test).to_numpy())
    cols = [c for c in df.columns if c.startswith(("soft_", "votes_"))] + [
        "gender", "age_group", "race", "intended"]
    perm = np.random.default_rng(0).permutation(rows)
    df.loc[df.index[rows], cols] = df.loc[df.index[perm], cols].to_numpy()
    assert not df[cols].equals(manifest.df[cols])
    (b / "cache" / "manifests").mkdir(parents=True)
    Manifest(df, manifest.classes).save(b / "cache" / "manifests" / mpath.name)
    res = CliRunner().invoke(app, ["bench", str(g), "-o", str(b)])
    assert res.exit_code == 0, res.output
    sa, sb = selections(a), selections(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        for key in ("trial", "chosen", "chosen_trial", "epoch", "hparams", "dev", "score"):
            assert sa[name][key] == sb[name][key], (name, key)
    tests = [json.loads(p.read_text())["metrics"]["summary"]["gender.tpr_gap"]
             for out in (a, b) for p in sorted(out.glob("runs/*/record.json"))]
    assert tests[: len(sa)] != tests[len(sa):]  # the test data did change


def test_seeds_without_best_is_refused(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["bench", str(tiny(tmp_path)), "-o", str(tmp_path / "o"),
                                   "--seeds", "3"])
    assert res.exit_code == 2 and "add --best" in res.stderr
    assert not (tmp_path / "o" / "runs").exists()


def test_reselecting_needs_no_training_and_a_group_free_method_says_it_fell_back(
        tmp_path: Path) -> None:
    from emodebias.bench.selection import apply

    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["bench", str(tiny(tmp_path)), "-o", str(out)])
    assert res.exit_code == 0, res.output
    summaries = {s["method"]: s for s in apply(out, SelectionConfig("dev_worst_group_f1"))}
    assert "needs dev groups" in summaries["erm"]["fallback"]
    assert summaries["gdro"]["fallback"] is None and summaries["gdro"]["dev_groups"] == \
        "truth:gender"
    sel = selections(out)
    erm = {s["trial"]: s for n, s in sel.items() if ".erm." in n}
    best = min(erm.values(), key=lambda s: (s["dev"]["loss"], s["trial"]))
    assert [t for t, s in erm.items() if s["chosen"]] == [best["trial"]]
    assert all(s["rule"] == "dev_worst_group_f1" for s in sel.values())
