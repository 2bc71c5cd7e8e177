"""Training-speed benchmark (issue 8): a plain PyTorch loop vs ``emodebias.train.fit_many``.

Everything is printed as ratios against the plain loop measured in the same invocation, because
absolute times on a shared CPU are noisy. Data: a CREMA-D-sized synthetic feature store
(7,442 × 13 × 768 float16) with the real CREMA-D labels and folds (see ``_data.py``).

Sections:
1. Plain-loop baseline: one run at a time, s3prl head (softmax layer weights -> Linear(768->256)
   -> Linear(256->6)), class-balanced soft-target CE, Adam lr 1e-4, batch 32, dev loss after each
   epoch, keep the best. Per-run time on a 1:20 train set and on a full fold.
2. Equality: ``fit(erm)`` vs the plain loop for the same seed (max |Δ| of dev losses / probs,
   selected epoch).
3. IDI Table-1 grid (17 rows × 5 folds): ``fit_many`` vs the same runs one by one with the plain
   loop (baseline measured on ``--baseline-folds`` folds and scaled to 5, labelled as such).
4. EMO-Debias grid (14 methods × 5 ratios × 2 directions × 5 folds): a measured fraction with
   ``fit_many``, extrapolated (labelled as an extrapolation).

Run: ``.venv/bin/python benchmarks/bench_train.py [--epochs 50] [--quick] [--profile]``.
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
EMO_METHODS = ["erm", "rw", "ds", "gdro", "gadro", "pgdro", "adv", "madv", "lff", "disent",
               "sih", "gr", "random", "erm"]  # 14 rows; the 14th stands in for an UNKNOWN method
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
    from emodebias.labels import binarize, class_balanced_weights

    return torch.as_tensor(class_balanced_weights(binarize(soft)), dtype=torch.float32)


def cb_ce(logits: torch.Tensor, soft: torch.Tensor, cw: torch.Tensor) -> torch.Tensor:
    """Per-sample class-balanced soft-target CE: -(Σ_c w_c y_c) · Σ_c y_c log softmax(z)_c."""
    return -(soft @ cw) * (soft * torch.log_softmax(logits, dim=1)).sum(dim=1)


def run_seeds(seed: int) -> tuple[int, int, int]:
    """(init, data-preparation, batching) seeds from one run seed.

    The same derivation as ``emodebias.train`` (SeedSequence), so that the plain loop and the
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
    """``emodebias.train`` if it imports and offers ``fit``/``fit_many``, else None."""
    try:
        mod = importlib.import_module("emodebias.train")
    except Exception as exc:  # noqa: BLE001 - report any import failure
        print(f"  [emodebias.train unavailable: {type(exc).__name__}: {exc}]")
        return None
    if not all(hasattr(mod, a) for a in ("fit", "fit_many", "TrainData")):
        print("  [emodebias.train lacks fit / fit_many / TrainData]")
        return None
    return mod


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
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
    results: dict[str, float] = field(default_factory=dict)


def section_baseline(b: Bench) -> None:
    """Per-run time of the plain loop on a 1:20 train set and on a full fold (fold 1, ERM)."""
    print(f"\n[1] plain PyTorch loop, one run at a time, ERM, {b.epochs} epochs, batch 32")
    tr20, dv20, _ = _data.imbalance_idx(b.labels, 1, 20)
    trf, dvf, _ = b.labels.fold_idx(1)
    plain_fit(b.store.features, b.labels.soft, b.majority, PlainRun(tr20[:64], dv20[:64]), 1)  # warm-up
    r20 = plain_fit(b.store.features, b.labels.soft, b.majority, PlainRun(tr20, dv20), b.epochs)
    rfull = plain_fit(b.store.features, b.labels.soft, b.majority, PlainRun(trf, dvf), b.epochs)
    b.results.update(plain_1to20=r20.wall, plain_full=rfull.wall)
    _line(f"1:20 fold-1 train ({len(tr20)} train / {len(dv20)} dev)", f"{r20.wall:6.2f} s/run "
          f"(best epoch {r20.best_epoch})")
    _line(f"full fold 1 ({len(trf)} train / {len(dvf)} dev)", f"{rfull.wall:6.2f} s/run "
          f"= {rfull.wall / r20.wall:.2f}x the 1:20 run")
    per_epoch = r20.wall / b.epochs
    _line("scaled to 50 epochs (1:20 / full)", f"{per_epoch * 50:6.2f} s / "
          f"{rfull.wall / b.epochs * 50:.2f} s")
