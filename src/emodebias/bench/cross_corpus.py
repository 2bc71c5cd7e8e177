"""Cross-corpus evaluation: a grid's runs train on one corpus and are also scored on others.

A grid with ``test_corpus:`` (one corpus or a list) and ``shared_classes:`` trains every run as
usual; then each run's selected model predicts every test corpus's utterances (the test corpus's
manifest, encoded by the run's encoder with the same options into its own cached feature store,
a grid stage like the training corpus's). Model outputs (the training corpus's classes) and the
test corpus's labels are both projected onto the shared classes with `emodebias.data.classmap`
(probabilities: mass summed per shared class, unmapped mass dropped, renormalised; labels: vote
shares summed and smoothed again). The run's in-corpus test predictions are projected and
scored on the shared classes too, so in- and cross-corpus rows compare like with like; the
usual all-class in-corpus scores stay as they are.

Decisions: the scored part of a test corpus is the whole corpus, or the test part of the fold
named by the entry's ``fold:``; a test corpus's speakers and attributes (gender, age_group, ...)
are its own; utterances with no label mass on a shared class (e.g. EmoDB's boredom) or whose
prediction has no mass on one are left out and counted; a shared class that one side cannot
reach is an error (it is not shared). A test corpus of the same name as a training corpus is
refused (its in-corpus test part is scored already), and no test speaker may appear in the
training corpus (ids compared as ``<corpus>:<speaker>``). Cross-corpus probabilities come from
the model before any post-processing (`emodebias.training.predict_probs`).

Each run's record gains ``evaluations`` (one per scoring: corpus, role, counts, summary, table)
and its folder ``predictions.<role>.<corpus>.npz``; `results.collect` puts them in the tidy table
with ``eval_corpus`` and ``eval_classes`` columns (parts ``shared_summary``/``shared_table``).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from emodebias.bench.grid import GridError, RunSpec, _as_list, _named
from emodebias.data.classmap import ClassMap, ClassMapError
from emodebias.errors import UserError

IN, CROSS = "in-corpus", "cross-corpus"
log = logging.getLogger(__name__)


class CrossCorpusError(UserError):
    """A cross-corpus evaluation that cannot be right (speakers on both sides of the split)."""


# ----------------------------------------------------------------------------- grid keys
def parse_grid(grid: dict, training: set[str], where: str) -> dict:
    """The grid's ``test_corpus`` / ``shared_classes`` / ``train_class_map`` keys -> the specs'
    `cross_corpus` dict ({} without test corpora). Class maps given as files are read here, so a
    run's hash covers their content."""
    tests, shared = grid.get("test_corpus"), grid.get("shared_classes")
    train_map = grid.get("train_class_map")
    if tests is None:
        if shared is not None or train_map is not None:
            raise GridError(f"{where}shared_classes and train_class_map need test_corpus (the "
                            "corpora to score on)")
        return {}
    if shared is None:
        raise GridError(f"{where}test_corpus needs shared_classes: the classes both corpora are "
                        "scored on, e.g. [anger, happiness, neutral, sadness]")
    if (not isinstance(shared, list) or not all(isinstance(c, str) and c for c in shared)
            or len(set(shared)) != len(shared) or len(shared) < 2):
        raise GridError(f"{where}shared_classes must list at least 2 distinct class names, got "
                        f"{shared!r}")
    out: dict[str, Any] = {"shared_classes": list(shared),
                           "train_map": _map(train_map, shared, f"{where}train_class_map: "),
                           "tests": []}
    for i, entry in enumerate(_as_list(tests)):
        at = f"{where}test_corpus[{i}]: "
        name, opts = _named(entry, "test corpus", at)
        if name in training:
            raise GridError(f"{at}{name!r} is a training corpus of this grid; its in-corpus test "
                            "part is scored already (cross-corpus needs another corpus)")
        if any(t["name"] == name for t in out["tests"]):
            raise GridError(f"{at}test corpus {name!r} is listed twice")
        class_map = _map(opts.pop("class_map", None), shared, f"{at}class_map: ")
        fold = opts.pop("fold", None)
        if fold is not None and (isinstance(fold, bool) or not isinstance(fold, (str, int))):
            raise GridError(f"{at}fold must be one fold name or number, got {fold!r}")
        out["tests"].append({"name": name, "opts": opts, "class_map": class_map,
                             "fold": None if fold is None else str(fold)})
    if not out["tests"]:
        raise GridError(f"{where}test_corpus is empty")
    return out


def _map(value: Any, shared: list[str], at: str) -> dict | None:
    """A class map (mapping, file or ``a=b,...``) as a dict; None keeps same-name classes."""
    if value is None:
        return None
    if not isinstance(value, (dict, str)):
        raise GridError(f"{at}a class map is a mapping {{class: shared class}}, a file or "
                        f"'class=shared,...', got {value!r}")
    try:
        return dict(ClassMap.parse(value, targets=shared).mapping)
    except ClassMapError as exc:
        raise GridError(f"{at}{exc}") from None


def class_map(given: dict | None, classes: list[str], shared: list[str], what: str) -> ClassMap:
    """The map of one corpus's `classes` onto the shared ones (None: classes of the same name),
    checked: names it maps must exist, and every shared class must be reached."""
    cmap = ClassMap(given if given is not None else {c: c for c in classes if c in shared},
                    tuple(shared))
    cmap.check(classes, what=what)
    missing = cmap.missing_targets(classes)
    if missing:
        raise ClassMapError(f"shared classes {missing} have no {what} class mapped to them; map "
                            f"one of {classes} to each, or drop them from shared_classes")
    return cmap


# ----------------------------------------------------------------------------- stages
def test_spec(spec: RunSpec, test: dict) -> RunSpec:
    """The spec whose corpus stage and feature store are a test corpus's (the run's encoder and
    options; no groups, no reused store): its keys cache them like any grid stage."""
    return replace(spec, corpus=test["name"], corpus_opts=copy.deepcopy(test["opts"]),
                   groups="none", features={}, cross_corpus={})


def test_specs(specs: list[RunSpec]) -> list[RunSpec]:
    """One stage spec per test corpus and encoder of the grid (for `prepare_stages`)."""
    out: dict[tuple, RunSpec] = {}
    for s in specs:
        for t in s.cross_corpus.get("tests", []):
            ts = test_spec(s, t)
            out.setdefault((ts.corpus_key, ts.encoder, repr(ts.encoder_opts)), ts)
    return list(out.values())


_OPENED: dict[tuple, tuple] = {}  # this process's opened test stages (every run reads them)


def _test_stages(spec: RunSpec, test: dict, cache):
    """(test manifest, its feature store, the utterances scored), opened once per process."""
    from emodebias.bench.pipeline import spec_features, stage_manifest
    from emodebias.progress import suppressed

    ts = test_spec(spec, test)
    key = (str(cache), ts.corpus_key, ts.encoder, repr(ts.encoder_opts), test["fold"])
    if key in _OPENED:
        return _OPENED[key]
    with suppressed():
        manifest = stage_manifest(ts, cache)
        store = spec_features(ts, manifest, cache)
    ids = manifest.utt_ids if test["fold"] is None else manifest.split_ids(test["fold"], "test")
    failed = set(store.failures)
    if len(_OPENED) >= 4:
        _OPENED.clear()
    _OPENED[key] = manifest, store, [u for u in ids if u not in failed]
    return _OPENED[key]


def check_speakers(train, test, test_ids: list[str]) -> None:
    """Refuse a test utterance whose speaker (``<corpus>:<speaker>``) is in the training
    corpus: speaker identities never cross the train/test boundary."""
    seen = {f"{train.corpus}:{s}" for s in train.df["speaker"].astype(str)}
    df = test.df.iloc[test.index_of(test_ids)]
    both = sorted({f"{test.corpus}:{s}" for s in df["speaker"].astype(str)} & seen)
    if both:
        raise CrossCorpusError(f"{len(both)} speaker(s) of test corpus {test.corpus!r} are in the "
                               f"training corpus (e.g. {both[:3]}); cross-corpus scores need "
                               "disjoint speakers")


def check_stages(specs: list[RunSpec], cache) -> None:
    """Before any run: every test corpus's class maps fit both corpora and no test speaker is in
    the training corpus (stages are cached by then, so this only reads them)."""
    from emodebias.bench.pipeline import stage_manifest

    seen: set[tuple] = set()
    for s in specs:
        cross = s.cross_corpus
        for t in cross.get("tests", []):
            key = (s.corpus_key, test_spec(s, t).corpus_key, s.encoder, repr(s.encoder_opts))
            if key in seen:
                continue
            seen.add(key)
            try:
                train = stage_manifest(s, cache)
                test, _, ids = _test_stages(s, t, cache)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 (a broken stage: the runs record it)
                log.warning("test corpus %s not checked (%s: %s)", t["name"],
                            type(exc).__name__, exc)
                continue
            model_map(s, train)
            label_map(s, t, test)
            check_speakers(train, test, ids)


def model_map(spec: RunSpec, train) -> ClassMap:
    """The map of the training corpus's classes (the model's outputs) onto the shared ones."""
    cross = spec.cross_corpus
    return class_map(cross["train_map"], train.classes, cross["shared_classes"],
                     f"training corpus {spec.corpus!r}")


def label_map(spec: RunSpec, test: dict, manifest) -> ClassMap:
    """The map of a test corpus's classes (its labels) onto the shared ones."""
    return class_map(test["class_map"], manifest.classes, spec.cross_corpus["shared_classes"],
                     f"test corpus {test['name']!r}")


# ----------------------------------------------------------------------------- scoring
@dataclass
class Evaluation:
    """One run scored on the shared classes, on its own test part or a test corpus's."""

    corpus: str
    role: str  # IN | CROSS
    utt_ids: list[str]
    probs: np.ndarray  # the model's probabilities over the training classes (kept rows)
    model_classes: list[str]
    shared_probs: np.ndarray
    targets: np.ndarray  # smoothed labels over the shared classes
    classes: list[str]  # shared classes
    summary: dict
    table: list[dict]
    info: dict = field(default_factory=dict)

    @property
    def file(self) -> str:
        return f"predictions.{'in' if self.role == IN else 'cross'}.{self.corpus}.npz"

    def record(self) -> dict:
        return {"corpus": self.corpus, "role": self.role, "classes": self.classes,
                "summary": self.summary, "table": self.table, "predictions": self.file,
                **self.info}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"utt_ids": np.asarray(self.utt_ids, dtype=str),
                "probs": np.asarray(self.probs, dtype=np.float32),
                "model_classes": np.asarray(self.model_classes, dtype=str),
                "shared_probs": np.asarray(self.shared_probs, dtype=np.float32),
                "targets": np.asarray(self.targets, dtype=np.float32),
                "classes": np.asarray(self.classes, dtype=str)}


def shared_manifest(manifest, utt_ids: list[str], targets: np.ndarray, classes: list[str]):
    """`manifest`'s rows `utt_ids` with their labels replaced by `targets` over `classes`
    (speakers and attributes kept): what the metrics score against."""
    from emodebias.data.manifest import Manifest

    df = manifest.df.iloc[manifest.index_of(utt_ids)]
    df = df[[c for c in df.columns if not c.startswith(("soft_", "votes_"))]].copy()
    t = np.asarray(targets, dtype=np.float64)
    t = t / t.sum(1, keepdims=True)
    for j, c in enumerate(classes):
        df[f"soft_{c}"] = t[:, j]
    return Manifest(df, classes, corpus=manifest.corpus)


def score_shared(spec: RunSpec, role: str, corpus: str, manifest, utt_ids: list[str],
                 probs: np.ndarray, model_classes: list[str], probs_map: ClassMap,
                 labels_map: ClassMap) -> Evaluation:
    """Project the model's `probs` and `manifest`'s labels onto the shared classes and score
    them as every run is scored (`pipeline.score_table`); left-out rows are counted."""
    from emodebias.bench.pipeline import score_table

    shared_probs, p_ok = probs_map.project_probs(probs, model_classes)
    soft = manifest.soft_labels()[manifest.index_of(utt_ids)]
    targets, t_ok = labels_map.project_soft(soft, manifest.classes)
    keep = p_ok & t_ok
    ids = [u for u, k in zip(utt_ids, keep, strict=True) if k]
    if not ids:
        raise CrossCorpusError(f"no utterance of {manifest.corpus!r} keeps a label and a "
                               "prediction on the shared classes; check the class maps")
    shared = shared_manifest(manifest, ids, targets[keep], list(probs_map.targets))
    metrics, _, table = score_table(spec, shared, ids, shared_probs[keep])
    summary = dict(metrics.summary)
    summary["n_utterances"] = float(len(ids))
    summary["n_speakers"] = float(shared.df["speaker"].nunique())
    info = {"n_utterances": len(ids), "n_speakers": int(shared.df["speaker"].nunique()),
            "left_out": {"no_shared_label": int((~t_ok).sum()),
                         "no_shared_prediction": int((t_ok & ~p_ok).sum())},
            "class_maps": {"model": dict(probs_map.mapping), "labels": dict(labels_map.mapping)},
            "skipped_metrics": metrics.skipped}
    return Evaluation(corpus, role, ids, np.asarray(probs)[keep], list(model_classes),
                      shared_probs[keep], targets[keep], list(probs_map.targets), summary,
                      table, info)


def predict(fit, features, rows: np.ndarray, device: str) -> np.ndarray:
    """The run's selected model on other features (the one place that names the trainer)."""
    from emodebias.training import predict_probs

    return predict_probs(fit, features, rows, device=device)


def evaluate_run(spec: RunSpec, fit, manifest, test_ids: list[str], cache,
                 info: dict | None = None) -> list[Evaluation]:
    """A trained run scored on the shared classes: its own test part, then each test corpus.
    A method that trains no model (the Random baseline: its scores are draws, not
    probabilities to project) is not scored; `info` (the run's) says so."""
    from emodebias.training.methods import get_method

    if not getattr(get_method(spec.method), "trains", True):
        if info is not None:
            info["cross_corpus"] = f"not scored: method {spec.method!r} trains no model"
        return []
    to_shared = model_map(spec, manifest)
    out = [score_shared(spec, IN, spec.corpus, manifest, test_ids, np.asarray(fit.test_probs),
                        manifest.classes, to_shared, to_shared)]
    out[0].info["test_part"] = f"fold {spec.fold} test"
    for t in spec.cross_corpus["tests"]:
        test, store, ids = _test_stages(spec, t, cache)
        check_speakers(manifest, test, ids)
        probs = predict(fit, store.features, np.asarray(store.rows(ids)), spec.device)
        ev = score_shared(spec, CROSS, t["name"], test, ids, probs, manifest.classes, to_shared,
                          label_map(spec, t, test))
        ev.info["test_part"] = "whole corpus" if t["fold"] is None else f"fold {t['fold']} test"
        out.append(ev)
    return out
