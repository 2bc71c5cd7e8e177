"""The real executor: RunSpecs -> cached split, features, groups -> fit -> predictions -> metrics.

Every expensive stage is cached under ``<out>/cache`` by content key and built once, under a
file lock, so parallel workers (local processes or Ray tasks on a shared filesystem) that need the
same stage wait for one builder instead of racing::

    cache/corpora/<corpus key>/          generated corpora (synthetic)
    cache/manifests/<corpus key>.parquet the corpus Manifest (with folds)
    cache/splits/<split key>.json        the Split (fold, ratio, direction, seed)
    cache/features/<manifest>-<enc>/     the FeatureStore (memmap; opened by path, never copied)
    cache/features/<manifest>-<enc>.reuse  or the grid's own store (`features:`), once checked
    cache/groups/<groups key>/           the GroupAssignment and its diagnostics.csv
    cache/locks/*.lock

Specs that share a batch key (a cell) share all of these; every cell of a task trains in one
`emodebias.training.fit_stream` call, which stacks runs across cells. Grid conventions that
the papers leave open are decided here: an empty-string corpus option (an unset preset variable)
is dropped; `make_folds: k` adds k speaker-independent folds to corpora without official ones;
cluster groups are fitted on the fold's train + dev embeddings (PAPERS.md §6.7, mean over layers)
and assign every utterance.

The device (`RunSpec.device`) is where features are extracted and heads trained; it is in no
cache key, so a store made on a GPU serves a CPU rerun. `prepare_stages` builds the shared
stages in the calling process first (with progress bars), so workers only train.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from emodebias import progress
from emodebias.bench.grid import GridError, RunSpec, cluster_k, content_hash
from emodebias.bench.results import RunResult
from emodebias.bench.runner import RunFailure
from emodebias.data.audio import DEFAULT_MAX_SECONDS as MAX_SECONDS  # grid stores' crop

DEFAULT_ATTRIBUTES = ("gender", "age_group", "race")
log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(cache: Path, key: str) -> Iterator[None]:
    """Exclusive lock on one cached stage, shared by every process that sees `cache` (an OS
    file lock through `filelock`, as `fileio.folder_lock`: a killed holder releases it)."""
    from filelock import FileLock

    path = cache / "locks" / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


# ----------------------------------------------------------------------------- stages
def stage_manifest(spec: RunSpec, cache: Path):
    """The corpus manifest (loaded or generated once, with folds)."""
    from emodebias.data.corpora import load_corpus
    from emodebias.data.manifest import Manifest

    path = cache / "manifests" / f"{spec.corpus_key}.parquet"
    with file_lock(cache, f"manifest-{spec.corpus_key}"):
        if path.is_file():
            return Manifest.load(path)
        opts = {k: v for k, v in spec.corpus_opts.items() if v != ""}
        n_folds = opts.pop("make_folds", None)
        root = opts.pop("root", None)
        if root is None:
            if spec.corpus != "synthetic":
                raise GridError(f"corpus {spec.corpus!r} needs a 'root' option in the grid")
            root = cache / "corpora" / spec.corpus_key
        manifest = load_corpus(spec.corpus, root, **opts)
        if n_folds and not manifest.folds:
            from emodebias.data.splits import make_folds

            manifest = make_folds(manifest, k=int(n_folds), seed=0)
        manifest.save(path)
        return manifest


def stage_split(spec: RunSpec, manifest, cache: Path):
    from emodebias.data.splits import Split, make_split

    path = cache / "splits" / f"{spec.split_key}.json"
    with file_lock(cache, f"split-{spec.split_key}"):
        if path.is_file():
            return Split.load(path)
        split = make_split(manifest, spec.fold, ratio=spec.ratio, direction=spec.direction,
                           seed=spec.split_seed)
        split.save(path)
        return split


def stage_features(manifest, encoder: str, encoder_opts: dict, cache: Path, *,
                   device: str = "cpu", reuse: str | None = None, progress: bool = False):
    """The FeatureStore of (manifest, encoder); extracted once on `device`, opened by path
    afterwards. The key leaves the device out: the same numbers, wherever they were computed.
    `reuse` names an existing store to use instead, once it is checked to hold exactly these
    features (same manifest content, encoder config and `MAX_SECONDS`)."""
    from emodebias.features.store import FeatureStore, extract, store_state

    key = f"{manifest.content_hash()}-{content_hash({'e': encoder, 'o': encoder_opts})}"
    if reuse is not None:
        return _reused_store(manifest, encoder, encoder_opts, Path(reuse), cache, key)
    path = cache / "features" / key
    done = cache / "features" / f"{key}.done"
    with file_lock(cache, f"features-{key}"):
        state, why = store_state(path)
        if state != "complete":  # never built, interrupted, or deleted/damaged since
            from emodebias.features.encoders import get_encoder

            if done.is_file():
                log.warning("feature store %s was marked done but is %s (%s); extracting it "
                            "again", path, state, why)
            extract(manifest, get_encoder(encoder, **encoder_opts), path, progress=progress,
                    overwrite=state == "damaged", max_seconds=MAX_SECONDS, device=device)
            done.write_text(encoder)
    return FeatureStore.open(path)


def _reused_store(manifest, encoder: str, encoder_opts: dict, path: Path, cache: Path,
                  key: str):
    """A user's store, checked once against the manifest and the encoder (building the encoder
    reads its weights' fingerprint); the check is remembered in ``features/<key>.reuse``."""
    from emodebias.features.store import FeatureStore, StoreError

    marker = cache / "features" / f"{key}.reuse"
    with file_lock(cache, f"features-{key}"):
        try:
            store = FeatureStore.open(path, manifest=manifest)
            if marker.is_file() and marker.read_text() == f"{path}\n{store.key}":
                return store
            if store.meta.get("max_seconds") != MAX_SECONDS:  # keyed, but say what to change
                raise StoreError(f"{path} keeps the first {store.meta.get('max_seconds')} s of "
                                 f"each file, the grid {MAX_SECONDS:g} s; extract it with "
                                 f"--max-seconds {MAX_SECONDS:g}")
            from emodebias.features.encoders import get_encoder

            store.check(encoder=get_encoder(encoder, **encoder_opts), max_seconds=MAX_SECONDS)
        except StoreError as exc:
            raise StoreError(f"grid features for {encoder!r}: {exc}") from None
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{path}\n{store.key}")
        return store


def spec_features(spec: RunSpec, manifest, cache: Path, encoder: str | None = None,
                  progress: bool = False):
    """The store a spec reads for `encoder` (default its own; else a groups encoder, with
    default options), on the spec's device, reusing the grid's `features:` store if named."""
    name = encoder or spec.encoder
    opts = spec.encoder_opts if name == spec.encoder else {}
    return stage_features(manifest, name, opts, cache, device=spec.device,
                          reuse=spec.features.get(name), progress=progress)


def stage_groups(spec: RunSpec, manifest, split, cache: Path):
    """Training groups of a spec: None, truth columns, pseudo-labels or k-means clusters.

    Their diagnostics against the known attributes (`emodebias.groups.diagnostics.diagnose`:
    purity, NMI, ..., group sizes over all utterances) are cached beside them as
    ``diagnostics.csv`` and attached as ``assignment.info["diagnostics"]`` (a list of rows), so
    every run that trains on the groups records how good they were."""
    from emodebias.groups import GroupAssignment

    kind, _, rest = spec.groups.partition(":")
    if kind == "none":
        return None
    key = content_hash({"m": manifest.content_hash(), "g": spec.groups,
                        "fit": spec.split_key if kind == "cluster" else None})
    path = cache / "groups" / key
    with file_lock(cache, f"groups-{key}"):
        if (path / "groups.json").is_file():
            assignment = GroupAssignment.load(path)
        else:
            if kind == "truth":
                from emodebias.groups.truth import truth_groups

                assignment = truth_groups(manifest, rest.split("+"))
            elif kind == "cluster":
                assignment = _cluster(spec, manifest, split, cache)
            elif kind == "pseudo":
                assignment = _pseudo(spec, rest, manifest, cache)
            else:
                raise ValueError(f"unknown group source {spec.groups!r}")
            assignment.save(path, manifest=manifest)
        assignment.info["diagnostics"] = _diagnostics(assignment, manifest, path)
        return assignment


def _diagnostics(assignment, manifest, path: Path) -> list[dict]:
    """`diagnose` of the groups at `path` (read from its diagnostics.csv, written on first use;
    groups cached before diagnostics existed get theirs now), as JSON-ready rows."""
    import pandas as pd

    from emodebias.groups.diagnostics import diagnose

    csv = path / "diagnostics.csv"
    if csv.is_file():
        df = pd.read_csv(csv)
    else:
        df = diagnose(assignment, manifest, DEFAULT_ATTRIBUTES)
        tmp = csv.with_suffix(".tmp")
        df.to_csv(tmp, index=False)
        tmp.replace(csv)
    df = df.astype(object).where(df.notna(), None)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in df.to_dict(orient="records")]


def _cluster(spec: RunSpec, manifest, split, cache: Path):
    from emodebias.groups.cluster import cluster_groups
    from emodebias.groups.embeddings import load_embeddings

    encoder = spec.groups.split(":")[1]
    store = spec_features(spec, manifest, cache, encoder)
    x, ids, ok = load_embeddings(store, "mean", manifest.utt_ids)
    fit_ids = set(split.train) | set(split.dev)
    fit_mask = np.array([u in fit_ids for u in ids], dtype=bool)
    return cluster_groups(x, ids, cluster_k(spec.groups), fit_mask=fit_mask, name=encoder,
                          valid=ok)


def _pseudo(spec: RunSpec, model: str, manifest, cache: Path):
    """pseudo:f0 (median-F0 threshold), pseudo:probe:<encoder>:<probe path> (a saved
    GenderProbe on that encoder's embeddings) or pseudo:<checkpoint> (audio classifier)."""
    from emodebias import groups

    if model == "f0":
        return groups.f0_groups(manifest)
    if model.startswith("probe:"):
        from emodebias.groups.embeddings import load_embeddings

        encoder, _, path = model[len("probe:"):].partition(":")
        store = spec_features(spec, manifest, cache, encoder)
        x, ids, ok = load_embeddings(store, "mean", manifest.utt_ids)
        return groups.probe_groups(groups.GenderProbe.load(path), x, ids, manifest, ok, encoder)
    return groups.hf_gender_groups(manifest, model, device=spec.device)


def prepare_stages(specs: list[RunSpec], out: Path, show: bool | None = None) -> None:
    """Build the grid's shared stages (corpora, feature stores, groups) in this process before
    the runs start, one after another with progress bars, so that workers find them cached.

    A user mistake (a missing corpus root, a reused store that does not fit) raises here, before
    any run; any other failure is logged and left to the runs, which record it.
    """
    from emodebias.bench.cross_corpus import check_stages, test_specs
    from emodebias.errors import UserError

    cache = Path(out) / "cache"
    steps: dict[tuple, tuple] = {}
    for s in [*specs, *test_specs(specs)]:  # the test corpora's manifests and stores too
        steps.setdefault(("manifest", s.corpus_key), ("corpus " + s.corpus, s, None))
        for enc in s.store_encoders:
            opts = s.encoder_opts if enc == s.encoder else {}
            steps.setdefault(("features", s.corpus_key, enc, content_hash(opts)),
                             ("features " + enc, s, enc))
        if s.groups.startswith(("cluster:", "pseudo:")):
            steps.setdefault(("groups", s.corpus_key, s.groups, s.split_key),
                             ("groups " + s.groups, s, None))
    if not steps:
        return
    with progress.Bar(len(steps), "grid stages", enabled=show) as bar:
        for (kind, *_), (label, spec, enc) in steps.items():
            bar.advance(0, label)
            try:
                manifest = stage_manifest(spec, cache)
                if kind == "features":
                    spec_features(spec, manifest, cache, enc, progress=bar.active)
                elif kind == "groups":
                    stage_groups(spec, manifest, stage_split(spec, manifest, cache), cache)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 (the runs record it with its traceback)
                log.warning("%s failed (%s: %s); its runs will be recorded as failed", label,
                            type(exc).__name__, exc)
            bar.advance(1)
        bar.advance(0, "")
    check_stages(specs, cache)  # class maps and the speaker guard, before any run


# ----------------------------------------------------------------------------- training
def _score(spec: RunSpec, manifest, test_ids: list[str], probs: np.ndarray):
    from emodebias.metrics import from_predictions

    ev = dict(spec.evaluation)
    attrs = [a for a in ev.pop("attributes", DEFAULT_ATTRIBUTES) if a in manifest.df.columns]
    targets = manifest.soft_labels()[manifest.index_of(test_ids)]
    pred = {"utt_ids": np.asarray(test_ids), "probs": probs, "targets": targets}
    return from_predictions(pred, manifest, attributes=attrs, **ev), targets


def execute(specs: list[RunSpec], out: Path) -> Iterator[RunResult | RunFailure]:
    """The default executor: yields one RunResult (or RunFailure) per spec.

    Each cell's stages (batch key) load once; then every run of every cell trains in ONE
    `fit_stream` call, which stacks runs of a method across cells, and each run is scored and
    yielded as soon as its stack finishes (so the runner commits it before the rest finish).
    """
    from emodebias.data.splits import group_support_warnings
    from emodebias.training import RunConfig, TrainConfig, TrainData, fit_stream

    said: set[str] = set()  # support warnings logged so far (a split is shared by its cells)

    cache = Path(out) / "cache"
    cells: dict[str, list[RunSpec]] = {}
    for s in specs:
        cells.setdefault(s.batch_key, []).append(s)
    pairs, order, context, datas = [], [], [], []
    for cell in cells.values():
        try:
            first = cell[0]
            with progress.suppressed():  # the runner's bar is live; stages draw none here
                manifest = stage_manifest(first, cache)
                split = stage_split(first, manifest, cache)
                store = spec_features(first, manifest, cache)
                groups = stage_groups(first, manifest, split, cache)
            data = TrainData.from_objects(store, manifest, split, groups)
            warnings = group_support_warnings(manifest, split)
            for w in warnings:
                if w not in said:  # once per split, not once per cell
                    said.add(w)
                    log.warning("%s", w)
        except Exception as exc:  # a shared stage failed: every run of the cell fails with it
            yield from (RunFailure(s, exc) for s in cell)
            continue
        pairs.append((data, [RunConfig(s.method, dict(s.hparams), s.seed,
                                       TrainConfig(**s.train, device=s.device))
                              for s in cell]))
        order += cell
        # score the test rows that have features; the failed ones go into the record
        scored = [store.utt_ids[i] for i in data.test_idx]
        diag = groups.info.get("diagnostics") if groups is not None else None
        context += [(manifest, scored, warnings, _failed_ids(store, split), diag)] * len(cell)
        datas += [data] * len(cell)
    done: set[int] = set()
    try:
        for pos, fit in fit_stream(pairs):
            done.add(pos)
            spec, (manifest, test_ids, warnings, failed, diag) = order[pos], context[pos]
            if isinstance(fit, BaseException):  # the run could not train or selected nothing
                yield RunFailure(spec, fit)
                continue
            try:
                result = score_run(spec, manifest, test_ids, np.asarray(fit.test_probs), fit)
                result.info["warnings"] = warnings
                result.info["failed_features"] = failed
                if diag:  # how good the training groups were (purity, NMI, sizes)
                    result.info["groups_diagnostics"] = diag
                if spec.cross_corpus:  # in- and cross-corpus scores on the shared classes
                    from emodebias.bench.cross_corpus import evaluate_run

                    result.evaluations = evaluate_run(spec, fit, manifest, test_ids, cache,
                                                      result.info)
                from emodebias.bench.selection import run_block, trial_block

                # a search trial keeps its dev scores for trial selection; every run its epoch
                result.selection = (trial_block(spec, fit, datas[pos], manifest) if spec.search
                                    else run_block(spec, fit))
                yield result
            except Exception as exc:
                yield RunFailure(spec, exc)
    except Exception as exc:  # training broke: the runs not yet finished fail with it
        yield from (RunFailure(s, exc) for i, s in enumerate(order) if i not in done)


def _failed_ids(store, split) -> dict[str, list[str]]:
    """Per split part, the utterances whose feature extraction failed (left out of the run)."""
    failed = store.failures
    return {part: [u for u in getattr(split, part) if u in failed]
            for part in ("train", "dev", "test")}


# FitResult.info entries copied into the run record (convergence flag, GDRO's q trajectory, ...)
RECORD_INFO = ("convergence", "q_trajectory", "q_groups", "prepare")


def speaker_rows(manifest, test_ids: list[str], attributes: list[str]) -> list[dict]:
    """Speakers per group of every scored attribute in the test set, as metric-table rows
    (metric "speakers", value = count). Every group present is counted, also those too small
    to enter a gap (the gaps' own ``speakers`` column covers the compared groups only); group
    names are printed as the metrics print them (``str``), so the rows join the rate rows."""
    if "speaker" not in manifest.df.columns:
        return []
    df = manifest.df.iloc[manifest.index_of(test_ids)]
    rows = [{"metric": "speakers", "attribute": "all", "group": "all", "cls": "all",
             "value": float(df["speaker"].nunique()), "support": None}]
    for attr in attributes:
        known = df[df[attr].notna()]
        counts = known.groupby(known[attr].map(str))["speaker"].nunique()
        rows += [{"metric": "speakers", "attribute": attr, "group": str(group), "cls": "all",
                  "value": float(n), "support": None} for group, n in counts.items()]
    return rows


def layer_weights(state: dict) -> tuple[str, list[float]] | None:
    """The selected epoch's softmax-normalised layer weights of the head's layer mix (the
    s3prl featurizer; the emotion head's own, else the first encoder's in name order), with
    the state key they come from; None for single-layer features or heads without a mix."""
    import torch

    keys = sorted(k for k in state if k.endswith("mix.weight"))
    if not keys:
        return None
    key = "head.encoder.mix.weight" if "head.encoder.mix.weight" in keys else keys[0]
    w = torch.as_tensor(state[key]).detach().float().reshape(-1, state[key].shape[-1])[0]
    if w.numel() < 2:
        return None
    return key, [float(v) for v in torch.softmax(w.double(), -1)]


def score_table(spec: RunSpec, manifest, test_ids: list[str], probs: np.ndarray):
    """(metrics, targets, per-group table with speaker counts) of predictions on `manifest`'s
    utterances `test_ids`, with the spec's evaluation settings."""
    metrics, targets = _score(spec, manifest, test_ids, probs)
    table = metrics.to_dict()["table"]
    scored = sorted(({r["attribute"] for r in table} - {"all"}) & set(manifest.df.columns))
    return metrics, targets, table + speaker_rows(manifest, test_ids, scored)


def score_run(spec: RunSpec, manifest, test_ids: list[str], probs: np.ndarray, fit) -> RunResult:
    """A trained run's test predictions scored as every run is (grid or `train`): the summary,
    the per-group table and what the record keeps of the fit."""
    metrics, targets, table = score_table(spec, manifest, test_ids, probs)
    result = RunResult(
        spec=spec, summary=dict(metrics.summary), table=table,
        best_epoch=int(fit.best_epoch), hparams=dict(fit.hparams),
        wall_time=float(fit.wall_time),
        test_ids=test_ids, test_probs=probs, test_targets=targets,
        classes=list(manifest.classes),
        info={"skipped_metrics": metrics.skipped, "n_test": len(test_ids),
              **{k: fit.info[k] for k in RECORD_INFO if k in fit.info}},
        save_model=fit.save if fit.state else None,
    )
    mix = layer_weights(fit.state) if fit.state else None
    if mix is not None:
        result.info["layer_weights"], result.info["layer_weights_param"] = mix[1], mix[0]
    return result
