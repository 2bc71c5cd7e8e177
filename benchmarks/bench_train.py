"""Training-speed benchmark: a plain PyTorch loop vs ``emodebias.training.fit_many``.

Everything is printed as ratios against the plain loop measured in the same invocation, because
absolute times on a shared CPU are noisy. Data: a CREMA-D-sized synthetic feature store
(7,442 × 13 × 768 float16) with the real CREMA-D labels and folds (see ``_data.py``).

Sections:
1. Plain-loop baseline: one run at a time, s3prl head (softmax layer weights -> Linear(768->256)
   -> Linear(256->6)), class-balanced soft-target CE, Adam lr 1e-4, batch 32, dev loss after each
   epoch, keep the best. Per-run time on a 1:20 train set (1 and 2 torch threads; the faster is
   the baseline) and on a full fold.
2. Equality: ``fit(erm)`` vs the plain loop for the same seed (max |Δ| of dev losses / probs,
   selected epoch).
3. IDI Table-1 grid (17 rows × 5 folds): ONE ``fit_many`` call in 1 and ``--workers`` processes
   vs the same runs one by one with the plain loop (baseline measured on ``--baseline-folds``
   folds and scaled to 5, labelled as such).
4. EMO-Debias grid (14 methods × 5 ratios × 2 directions × 5 folds): every cell of
   ``--emo-folds`` (default all five) in one ``fit_many`` call at ``--emo-epochs``, and at 1
   epoch, extrapolated to 50 epochs (labelled as an extrapolation) as fixed + 50 × per-epoch
   time from the two, so epoch-independent costs (processes, banks, JTT's 5-epoch
   identification phase) are counted once.

Run: ``.venv/bin/python benchmarks/bench_train.py [--epochs 50] [--quick] [--profile]``; with
``EMODEBIAS_COMPILE=1`` the head runs through ``torch.compile`` on CPU too (compile time counts
in the grid times; by default only CUDA compiles).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import importlib
import io
import math
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _data  # noqa: E402

K = len(_data.CLASSES)

# IDI Table 1 rows: (row name, method, group source). Random needs no training.
IDI_ROWS: list[tuple[str, str, str]] = [
    ("ERM", "erm", "none"),
    ("Random", "random", "none"),
    ("LfF", "lff", "none"),
    ("DisEnt", "disent", "none"),
    ("PGDRO", "pgdro", "pseudo"),
] + [
    (f"{m.upper()}-{src}", m, src)
    for m in ("rw", "ds", "gdro", "gadro")
    for src in ("truth", "pseudo", "cluster16")
]
# ERM + 13 debiasing methods ([ED]'s exact 13 are partly UNKNOWN, PAPERS.md §3; these are the
# registered ones that train a head).
EMO_METHODS = ["erm", "rw", "ds", "gdro", "gadro", "adv", "madv", "lff", "disent", "sih", "jtt",
               "gr", "mmd", "eo_thresh"]
EMO_RATIOS = [1.0, 5.0, 10.0, 20.0, 40.0]
EMO_DIRECTIONS = ["natural", "reversed"]


# ------------------------------------------------------------------------------- plain loop


class PlainHead(nn.Module):
    """s3prl head on pooled per-layer features: softmax layer weights -> Linear -> Linear."""

    def __init__(self, n_layers: int, dim: int, k: int, gen: torch.Generator, hidden: int = 256):
        super().__init__()
        self.layer_w = nn.Parameter(torch.zeros(n_layers))
        self.proj = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, k)
        with torch.no_grad():  # nn.Linear's U(-1/sqrt(in), 1/sqrt(in)), drawn in a fixed order
            for lin in (self.proj, self.out):
                bound = 1.0 / math.sqrt(lin.in_features)
                w = (torch.rand(lin.in_features, lin.out_features, generator=gen) * 2 - 1) * bound
                lin.weight.copy_(w.T)
                lin.bias.copy_((torch.rand(lin.out_features, generator=gen) * 2 - 1) * bound)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.layer_w, dim=0)
        return self.proj(torch.einsum("l,bld->bd", w, x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))


def cb_weights(soft: np.ndarray) -> torch.Tensor:
    """Class-balanced weights (Cui et al.) on binarised soft labels, Σ w = K (PAPERS.md §2)."""
    from emodebias.data.labels import binarize, class_balanced_weights

    return torch.as_tensor(class_balanced_weights(binarize(soft)), dtype=torch.float32)


def cb_ce(logits: torch.Tensor, soft: torch.Tensor, cw: torch.Tensor) -> torch.Tensor:
    """Per-sample class-balanced soft-target CE: -(Σ_c w_c y_c) · Σ_c y_c log softmax(z)_c."""
    return -(soft @ cw) * (soft * torch.log_softmax(logits, dim=1)).sum(dim=1)


def run_seeds(seed: int) -> tuple[int, int, int]:
    """(init, data-preparation, batching) seeds from one run seed.

    The same derivation as ``emodebias.training`` (SeedSequence), so that the plain loop and the
    library draw the same initial weights and the same per-epoch ``torch.randperm`` batches.
    """
    return tuple(int(s) for s in np.random.SeedSequence(seed).generate_state(3))  # type: ignore[return-value]


@dataclass
class PlainRun:
    """One run for the plain loop: rows, groups and the method's options."""

    train_idx: np.ndarray
    dev_idx: np.ndarray
    test_idx: np.ndarray | None = None
    method: str = "erm"
    groups: np.ndarray | None = None  # int [N] over the whole store
    group_probs: np.ndarray | None = None  # [N, G]
    n_groups: int = 2
    seed: int = 0


@dataclass
class PlainResult:
    best_epoch: int
    dev_losses: list[float]
    state: dict[str, torch.Tensor]
    dev_probs: np.ndarray
    test_probs: np.ndarray | None = None
    wall: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def _ds_rows(run: PlainRun, majority: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """DS: per class, keep min_g n_{c,g} random rows from each group (once, before training)."""
    rows = run.train_idx
    c, g = majority[rows], run.groups[rows]
    keep = []
    for cls in np.unique(c):
        per = [rows[(c == cls) & (g == gg)] for gg in range(run.n_groups)]
        m = min(len(p) for p in per)
        keep += [rng.choice(p, size=m, replace=False) for p in per if m > 0]
    return np.sort(np.concatenate(keep))


def plain_fit(
    feats: np.ndarray,
    soft_all: np.ndarray,
    majority: np.ndarray,
    run: PlainRun,
    epochs: int,
    batch: int = 32,
    lr: float = 1e-4,
) -> PlainResult:
    """Reference: one run, standard PyTorch idioms (preload rows as float32, randperm batches).

    Methods: erm, rw (w_i = n_c/n_{c,g}), ds, gdro/gadro (Sagawa online q, η 0.01, C 4), pgdro
    (soft groups), lff (two heads, GCE q 0.7, EMA 0.7). Others fall back to erm cost-wise.
    """
    t0 = time.perf_counter()
    init_seed, prep_seed, loop_seed = run_seeds(run.seed)
    gen = torch.Generator().manual_seed(loop_seed)
    rows = run.train_idx
    if run.method == "ds":
        rows = _ds_rows(run, majority, np.random.default_rng(prep_seed))
    x_tr = torch.from_numpy(np.asarray(feats[rows], dtype=np.float32))
    y_tr = torch.from_numpy(soft_all[rows].astype(np.float32))
    x_dv = torch.from_numpy(np.asarray(feats[run.dev_idx], dtype=np.float32))
    y_dv = torch.from_numpy(soft_all[run.dev_idx].astype(np.float32))
    cw = cb_weights(soft_all[rows])
    n_layers, dim = x_tr.shape[1:]
    init_gen = torch.Generator().manual_seed(init_seed)
    head = PlainHead(n_layers, dim, K, init_gen)
    params = list(head.parameters())
    extra: dict[str, Any] = {}
    g_tr = torch.from_numpy(run.groups[rows]) if run.groups is not None else None
    if run.method == "rw":
        c, g = majority[rows], run.groups[rows]
        counts = np.zeros((K, run.n_groups))
        np.add.at(counts, (c, g), 1)
        w = counts.sum(axis=1)[c] / counts[c, g]
        extra["w"] = torch.from_numpy(w.astype(np.float32))
    if run.method in ("gdro", "gadro", "pgdro"):
        extra["q"] = torch.full((run.n_groups,), 1.0 / run.n_groups)
        if run.method == "pgdro":
            extra["pi"] = torch.from_numpy(run.group_probs[rows].astype(np.float32))
        n_g = torch.bincount(g_tr, minlength=run.n_groups).float() if g_tr is not None else None
        extra["adj"] = 4.0 / n_g.clamp(min=1).sqrt() if run.method == "gadro" else None
    if run.method in ("lff", "disent"):
        bias_head = PlainHead(n_layers, dim, K, init_gen)
        params += list(bias_head.parameters())
        extra.update(b=bias_head, ema_b=torch.zeros(len(rows)), ema_d=torch.zeros(len(rows)),
                     maj=torch.from_numpy(majority[rows]))
    opt = torch.optim.Adam(params, lr=lr)
    best, best_epoch, best_state, dev_losses = math.inf, 0, None, []
    n = len(rows)
    for epoch in range(1, epochs + 1):
        head.train()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            xb, yb = x_tr[idx], y_tr[idx]
            loss = _plain_loss(run, head, xb, yb, cw, idx, g_tr, extra)
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            dev = cb_ce(head(x_dv), y_dv, cw).mean().item()
        dev_losses.append(dev)
        if dev < best:
            best, best_epoch = dev, epoch
            best_state = copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    with torch.no_grad():
        dev_probs = torch.softmax(head(x_dv), dim=1).numpy()
        test_probs = None
        if run.test_idx is not None:
            x_te = torch.from_numpy(np.asarray(feats[run.test_idx], dtype=np.float32))
            test_probs = torch.softmax(head(x_te), dim=1).numpy()
    return PlainResult(best_epoch, dev_losses, best_state, dev_probs, test_probs,
                       time.perf_counter() - t0)


def _plain_loss(
    run: PlainRun,
    head: PlainHead,
    xb: torch.Tensor,
    yb: torch.Tensor,
    cw: torch.Tensor,
    idx: torch.Tensor,
    g_tr: torch.Tensor | None,
    extra: dict[str, Any],
) -> torch.Tensor:
    """The per-batch loss of one method in the plain loop."""
    m = run.method
    if m in ("lff", "disent"):
        b = extra["b"]
        zd, zb = head(xb), b(xb)
        ce_d, ce_b = cb_ce(zd, yb, cw), cb_ce(zb, yb, cw)
        with torch.no_grad():
            for key, ce in (("ema_b", ce_b), ("ema_d", ce_d)):
                extra[key][idx] = 0.7 * extra[key][idx] + 0.3 * ce
            maj = extra["maj"][idx]
            nb, nd = extra["ema_b"][idx].clone(), extra["ema_d"][idx].clone()
            for c in maj.unique():
                sel = maj == c
                nb[sel] /= extra["ema_b"][extra["maj"] == c].max().clamp(min=1e-8)
                nd[sel] /= extra["ema_d"][extra["maj"] == c].max().clamp(min=1e-8)
            w = nb / (nb + nd + 1e-8)
            p_y = (yb * torch.softmax(zb, dim=1)).sum(dim=1)
        gce = ce_b * p_y.pow(0.7) * 0.7
        return gce.mean() + (w * ce_d).mean()
    loss = cb_ce(head(xb), yb, cw)
    if m == "rw":
        return (extra["w"][idx] * loss).mean()
    if m in ("gdro", "gadro", "pgdro"):
        if m == "pgdro":
            pi = extra["pi"][idx]
        else:
            pi = torch.nn.functional.one_hot(g_tr[idx], run.n_groups).float()
        n_g = pi.sum(dim=0)
        lg = (pi * loss[:, None]).sum(dim=0) / n_g.clamp(min=1e-8)
        with torch.no_grad():
            adj = lg + extra["adj"] if extra["adj"] is not None else lg
            extra["q"] = extra["q"] * torch.exp(0.01 * adj)
            extra["q"] = extra["q"] / extra["q"].sum()
        return (extra["q"] * lg).sum()
    return loss.mean()


# ------------------------------------------------------------------------------- helpers


def _line(name: str, value: str) -> None:
    print(f"  {name:<58} {value}", flush=True)


def try_import_train() -> Any | None:
    """``emodebias.training`` if it imports and offers ``fit``/``fit_many``, else None."""
    try:
        mod = importlib.import_module("emodebias.training")
    except Exception as exc:  # noqa: BLE001 - report any import failure
        print(f"  [emodebias.training unavailable: {type(exc).__name__}: {exc}]")
        return None
    if not all(hasattr(mod, a) for a in ("fit", "fit_many", "TrainData")):
        print("  [emodebias.training lacks fit / fit_many / TrainData]")
        return None
    return mod


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """(fn(*args, **kwargs), wall seconds)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------------------- sections


@dataclass
class Bench:
    """Shared state of one benchmark invocation."""

    store: _data.BenchStore
    labels: _data.CremaLabels
    majority: np.ndarray
    epochs: int
    quick: bool
    workers: int = 2
    plain_threads: int = 1
    device: str = "cpu"  # also time the grids' fit_many here (e.g. cuda), 1 process
    results: dict[str, float] = field(default_factory=dict)


def section_baseline(b: Bench, thread_options: list[int]) -> None:
    """Per-run time of the plain loop on a 1:20 train set and a full fold (fold 1, ERM), with
    each torch thread count in `thread_options`; the fastest becomes the grid baseline's."""
    print(f"\n[1] plain PyTorch loop, one run at a time, ERM, {b.epochs} epochs, batch 32")
    tr20, dv20, _ = _data.imbalance_idx(b.labels, 1, 20)
    trf, dvf, _ = b.labels.fold_idx(1)
    warm = PlainRun(tr20[:64], dv20[:64])
    plain_fit(b.store.features, b.labels.soft, b.majority, warm, 1)  # warm-up
    walls = {}
    for threads in thread_options:
        torch.set_num_threads(threads)
        r20 = plain_fit(b.store.features, b.labels.soft, b.majority, PlainRun(tr20, dv20),
                        b.epochs)
        walls[threads] = r20.wall
        _line(f"1:20 fold-1 train ({len(tr20)} train / {len(dv20)} dev), {threads} thread(s)",
              f"{r20.wall:6.2f} s/run (best epoch {r20.best_epoch}); "
              f"{r20.wall / b.epochs * 50:.1f} s at 50 epochs")
    b.plain_threads = min(walls, key=walls.get)
    torch.set_num_threads(b.plain_threads)
    rfull = plain_fit(b.store.features, b.labels.soft, b.majority, PlainRun(trf, dvf), b.epochs)
    b.results.update(plain_1to20=walls[b.plain_threads], plain_full=rfull.wall)
    _line(f"full fold 1 ({len(trf)} train / {len(dvf)} dev), {b.plain_threads} thread(s)",
          f"{rfull.wall:6.2f} s/run = {rfull.wall / walls[b.plain_threads]:.2f}x the 1:20 run")
    _line("plain-loop baseline below uses", f"{b.plain_threads} thread(s) (the faster)")


def _groups(b: Bench, source: str) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """(ids, probs, n_groups) for a group source: none | truth | pseudo | cluster16."""
    if source == "pseudo":
        ids, probs = _data.pseudo_groups(b.labels)
        return ids, probs, 2
    if source == "cluster16":
        return _data.cluster_groups(b.labels, 16), None, 16
    return _data.gender_ids(b.labels), None, 2


def idi_cells(b: Bench, folds: list[int]) -> list[tuple[int, str, list[tuple[str, str]]]]:
    """The IDI grid as (fold, group source, [(row, method)]) cells, one TrainData each.

    A TrainData holds one train/dev/test split and one group source, so the 17 rows of a fold
    use 3: truth-gender rows (+ the group-free rows), pseudo, clusters; ``fit_many`` takes all
    cells' (TrainData, runs) pairs at once.
    """
    cells = []
    for fold in folds:
        for src in ("truth", "pseudo", "cluster16"):
            rows = [(name, m) for name, m, s in IDI_ROWS
                    if s == src or (src == "truth" and s == "none")]
            cells.append((fold, src, rows))
    return cells


def train_data(b: Bench, tmod: Any, idx: tuple[np.ndarray, ...], source: str) -> Any:
    ids, probs, n_groups = _groups(b, source)
    tr, dv, te = idx
    return tmod.TrainData(b.store.features, b.labels.soft, tr, dv, te, ids, probs, n_groups,
                          b.majority)


def section_equality(b: Bench, tmod: Any) -> None:
    """fit(erm) vs the plain loop with the same seed on the 1:20 fold-1 set."""
    epochs = min(b.epochs, 10 if b.quick else b.epochs)
    print(f"\n[2] numerical equality: emodebias.training.fit(erm) vs the plain loop "
          f"({epochs} epochs)")
    idx = _data.imbalance_idx(b.labels, 1, 20)
    data = train_data(b, tmod, idx, "truth")
    for seed in (0, 1):
        lib, t_lib = timed(tmod.fit, data, "erm", seed=seed,
                           config=tmod.TrainConfig(epochs=epochs))
        ref = plain_fit(b.store.features, b.labels.soft, b.majority,
                        PlainRun(idx[0], idx[1], idx[2], seed=seed), epochs)
        d_dev = np.abs(np.array([h["dev_loss"] for h in lib.history]) - ref.dev_losses).max()
        d_test = np.abs(lib.test_probs - ref.test_probs).max()
        same = "same" if lib.best_epoch == ref.best_epoch else "DIFFERENT"
        _line(f"seed {seed}: max|Δ dev loss| / max|Δ test prob|", f"{d_dev:.1e} / {d_test:.1e}; "
              f"selected epoch {lib.best_epoch} vs {ref.best_epoch} ({same})")
        _line(f"seed {seed}: fit() time / plain-loop time (R = 1)", f"{t_lib / ref.wall:.2f}x")
        b.results[f"eq_dev_{seed}"], b.results[f"eq_test_{seed}"] = float(d_dev), float(d_test)


def section_idi(b: Bench, tmod: Any | None, folds: list[int], baseline_folds: list[int]) -> None:
    """IDI Table-1 grid: fit_many (one call for the whole grid) vs plain loop one by one."""
    cells = idi_cells(b, folds)
    n_runs = sum(len(r) for _, _, r in cells)
    print(f"\n[3] IDI Table-1 grid: {len(IDI_ROWS)} rows x {len(folds)} folds = {n_runs} runs, "
          f"r = 1:20, {b.epochs} epochs")
    # plain loop, one run at a time, on the baseline folds
    torch.set_num_threads(b.plain_threads)
    plain_t = 0.0
    for fold, src, rows in cells:
        if fold not in baseline_folds:
            continue
        ids, probs, n_groups = _groups(b, src)
        tr, dv, te = _data.imbalance_idx(b.labels, fold, 20)
        for _, method in rows:
            if method == "random":
                continue
            run = PlainRun(tr, dv, te, method, ids, probs, n_groups)
            plain_t += plain_fit(b.store.features, b.labels.soft, b.majority, run, b.epochs).wall
    if baseline_folds:
        scale = len(folds) / len(baseline_folds)
        plain_total = plain_t * scale
        label = "measured" if scale == 1 else f"measured on folds {baseline_folds}, x{scale:g}"
        _line(f"plain loop, one by one ({label})", f"{plain_total:7.1f} s "
              f"({plain_total / n_runs:.2f} s/run)")
    else:  # no baseline folds: only fit_many is timed (no speedup printed)
        plain_total = math.nan
    b.results["idi_plain_s"] = plain_total
    if tmod is None:
        return
    # every run of the grid in ONE fit_many call: (TrainData, runs) per fold x group source;
    # runs of one method stack across folds and group sources
    def pairs(device: str) -> list:
        config = tmod.TrainConfig(epochs=b.epochs, device=device)
        return [(train_data(b, tmod, _data.imbalance_idx(b.labels, fold, 20), src),
                 [tmod.RunConfig(m, seed=0, config=config) for _, m in rows])
                for fold, src, rows in cells]

    cpu_pairs = pairs("cpu")
    torch.set_num_threads(1)
    for workers in sorted({1, b.workers}):
        res, t_many = timed(tmod.fit_many, cpu_pairs, workers=workers)
        stack_sizes = sorted({r.info.get("stack_size", 1) for r in res})
        b.results[f"idi_fit_many_w{workers}_s"] = t_many
        _line(f"emodebias fit_many (one call, all runs), {workers} process(es)",
              f"{t_many:7.1f} s ({t_many / n_runs:.2f} s/run); stack sizes {stack_sizes}")
        _line(f"SPEEDUP vs plain loop (same runs), {workers} process(es)",
              f"{plain_total / t_many:6.2f}x")
        if b.epochs != 50:
            _line("  projected at 50 epochs (x 50/epochs)", f"{t_many * 50 / b.epochs:7.1f} s")
    if b.device != "cpu":
        t_dev = section_device(b, tmod, pairs(b.device), t_many, "idi")
        _line(f"SPEEDUP vs plain loop (same runs), {b.device}", f"{plain_total / t_dev:6.2f}x")


def section_stacking(b: Bench, tmod: Any, sizes: list[int]) -> None:
    """Per-run cost of fit_many when runs DO stack (same method + data, different seeds)."""
    epochs = max(1, b.epochs // 5)
    print(f"\n[3b] stacking efficiency: R ERM runs (seeds 0..R-1) in one fit_many call, "
          f"1:20 fold 1, {epochs} epochs")
    data = train_data(b, tmod, _data.imbalance_idx(b.labels, 1, 20), "truth")
    base = None
    for r in sizes:
        runs = [tmod.RunConfig("erm", seed=s, config=tmod.TrainConfig(epochs=epochs))
                for s in range(r)]
        _, t = timed(tmod.fit_many, data, runs)
        per = t / r
        base = base or per
        _line(f"R = {r:3d}", f"{per:6.3f} s/run = {base / per:5.2f}x faster per run than R = 1")
        b.results[f"stack_R{r}_per_run"] = per


def section_emo(b: Bench, tmod: Any, folds: list[int], epochs: int) -> None:
    """EMO-Debias grid: every cell of `folds` in ONE fit_many call (b.workers processes) at
    1 and `epochs` epochs, extrapolated to 5 folds x 50 epochs (labelled as such)."""
    total_cells = 5 * len(EMO_RATIOS) * len(EMO_DIRECTIONS)
    print(f"\n[4] EMO-Debias grid: {len(EMO_METHODS)} methods x {len(EMO_RATIOS)} ratios x "
          f"{len(EMO_DIRECTIONS)} directions x 5 folds = {len(EMO_METHODS) * total_cells} runs")

    def pairs(device: str, n_epochs: int = epochs) -> list:
        config = tmod.TrainConfig(epochs=n_epochs, device=device)
        return [(train_data(b, tmod, _data.imbalance_idx(b.labels, fold, ratio, direction),
                            "truth"), [tmod.RunConfig(m, seed=0, config=config)
                                       for m in EMO_METHODS])
                for fold in folds for ratio in EMO_RATIOS for direction in EMO_DIRECTIONS]

    cpu_pairs = pairs("cpu")
    n_runs = sum(len(r) for _, r in cpu_pairs)
    sizes = [len(d.train_idx) for d, _ in cpu_pairs]
    torch.set_num_threads(1)
    t_one = None
    if epochs > 1:  # the epoch-independent part (processes, banks, JTT's ERM) from 1 epoch
        _, t_one = timed(tmod.fit_many, pairs("cpu", 1), workers=b.workers)
        _line(f"folds {folds}: 1 epoch, {b.workers} process(es)", f"{t_one:6.1f} s")
    res, t = timed(tmod.fit_many, cpu_pairs, workers=b.workers)
    trained = sum(1 / (1 + r.info.get("twins", 0)) for r in res)  # twins train once
    _line(f"folds {folds}: {n_runs} runs ({round(trained)} trainings; {min(sizes)}-{max(sizes)} "
          f"train rows), {epochs} epochs, {b.workers} process(es)",
          f"{t:6.1f} s ({t / n_runs:.2f} s/run)")
    fixed, per_epoch = _fixed_and_per_epoch(t_one, t, epochs)
    t50 = (fixed + 50 * per_epoch) * 5 / len(folds)
    b.results["emo_measured_s"], b.results["emo_extrapolated_s"] = t, t50
    _line(f"EXTRAPOLATED to 5 folds x 50 epochs (fixed {fixed:.1f} s + 50 x {per_epoch:.1f} s, "
          f"x {5 / len(folds):g})", f"{t50 / 60:6.1f} min")
    if b.device != "cpu":
        t_dev = section_device(b, tmod, pairs(b.device), t, "emo")
        _line(f"EXTRAPOLATED on {b.device} (x {50 / epochs:g} x {5 / len(folds):g})",
              f"{t_dev * 50 / epochs * 5 / len(folds) / 60:6.1f} min")


def _fixed_and_per_epoch(t_one: float | None, t: float, epochs: int) -> tuple[float, float]:
    """(epoch-independent seconds, seconds per epoch) of a grid timed at 1 and `epochs` epochs
    (t = fixed + epochs x per_epoch); without the 1-epoch time, all of t is per epoch."""
    if t_one is None:
        return 0.0, t / epochs
    per_epoch = max(t - t_one, 0.0) / (epochs - 1)
    return max(t_one - per_epoch, 0.0), per_epoch


def section_device(b: Bench, tmod: Any, pairs: list, t_cpu: float, name: str) -> float:
    """Time the same grid's `fit_many` on `b.device` (one process) against its CPU time
    `t_cpu` from the same invocation; a short warm-up call first (CUDA context, kernels)."""
    data, runs = pairs[0]
    warm = tmod.TrainConfig(epochs=1, device=b.device)
    tmod.fit_many(data, [tmod.RunConfig(runs[0].method, seed=0, config=warm)])
    _, t = timed(tmod.fit_many, pairs, workers=1)
    b.results[f"{name}_{b.device}_s"] = t
    _line(f"emodebias fit_many on {b.device} (one call, 1 process)", f"{t:7.1f} s")
    _line(f"{b.device} SPEEDUP over the CPU ({b.workers} process(es), same run)",
          f"{t_cpu / t:6.2f}x")
    return t


def section_profile(b: Bench, tmod: Any) -> None:
    """cProfile of a short fit_many (R = 8 ERM seeds) and the same under torch.profiler."""
    print("\n[5] where fit_many spends its time (8 stacked ERM runs, 2 epochs, 1:20 fold 1)")
    data = train_data(b, tmod, _data.imbalance_idx(b.labels, 1, 20), "truth")
    runs = [tmod.RunConfig("erm", seed=s, config=tmod.TrainConfig(epochs=2)) for s in range(8)]
    prof = cProfile.Profile()
    prof.enable()
    tmod.fit_many(data, runs)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    print("\n".join(ln for ln in buf.getvalue().splitlines() if ln.strip())[:3000])
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as tp:
        tmod.fit_many(data, runs)
    print(tp.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total",
                                                           row_limit=15, max_name_column_width=28,
                                                           max_shapes_column_width=60))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--quick", action="store_true",
                    help="3 epochs, folds 1-2, baseline on fold 1, 1 EMO cell (~1-2 min)")
    ap.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--baseline-folds", type=int, nargs="*", default=[1],
                    help="folds on which the plain-loop grid baseline is measured (then scaled)")
    ap.add_argument("--workers", type=int, default=2,
                    help="fit_many processes (the grids' target is 2 CPU cores)")
    ap.add_argument("--plain-threads", type=int, nargs="+", default=[1, 2],
                    help="torch threads tried for the plain loop; the faster is the baseline")
    ap.add_argument("--emo-folds", type=int, nargs="*", default=[1, 2, 3, 4, 5],
                    help="EMO grid folds timed in one fit_many call (none = skip); all five "
                         "stack as the real grid does (fewer folds: smaller stacks)")
    ap.add_argument("--emo-epochs", type=int, default=5)
    ap.add_argument("--stack-sizes", type=int, nargs="*", default=[1, 4, 16, 64])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["baseline", "equality", "idi",
                                                              "stacking", "emo"])
    ap.add_argument("--profile", action="store_true", help="also profile fit_many")
    ap.add_argument("--device", default="cpu",
                    help="also time the IDI and EMO grids' fit_many on this device (cuda)")
    args = ap.parse_args()
    if args.quick:
        args.epochs = 3 if args.epochs == 50 else args.epochs
        args.folds, args.baseline_folds, args.emo_folds, args.emo_epochs = [1, 2], [1], [1], 2
        args.stack_sizes = [1, 16]
    if args.threads:
        torch.set_num_threads(args.threads)
    store, labels = _data.crema_store()
    b = Bench(store, labels, labels.majority(), args.epochs, args.quick, args.workers,
              (args.threads or 1), args.device)
    print(f"store {store.features.shape} {store.features.dtype} at {store.path}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    if "baseline" not in args.skip:
        section_baseline(b, args.plain_threads)
    tmod = try_import_train()
    if tmod is not None and "equality" not in args.skip:
        section_equality(b, tmod)
    if "idi" not in args.skip:
        section_idi(b, tmod, args.folds, [f for f in args.baseline_folds if f in args.folds])
    if tmod is not None and "stacking" not in args.skip and args.stack_sizes:
        section_stacking(b, tmod, args.stack_sizes)
    if tmod is not None and "emo" not in args.skip and args.emo_folds:
        section_emo(b, tmod, args.emo_folds, args.emo_epochs)
    if tmod is not None and args.profile:
        section_profile(b, tmod)
    print(f"\ntotal benchmark wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
