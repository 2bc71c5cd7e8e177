"""The stacked training loop: R runs of one method as one model, a step per batch position.

Parameters carry a leading run dimension R; each step takes an [R, B] batch of bank rows through
per-run index lists, and the summed loss gives every run exactly its own gradient. Uneven train
lengths (ratio <= MAX_LENGTH_RATIO) use per-run step masks: a run without a batch in a sub-step
makes no update (StackedAdam keeps per-run step counts; its per-run buffers and generators are
restored). Runs may differ in epochs, learning rate and weight decay: a run whose epochs are done
is masked for the remaining epochs (no update, no selection, its history stops). Each run owns
three generators derived from its seed (init, data preparation, batching + in-loop randomness),
so a run gives the same numbers alone or stacked.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from emodebias.errors import UserError
from emodebias.training.feature_bank import FeatureBank, RunGroups
from emodebias.training.losses import class_weights_for
from emodebias.training.methods import Batch, Method, MethodContext
from emodebias.training.model import run_slice
from emodebias.training.optim import StackedAdam
from emodebias.training.plan import Plan, make_gen, pad, reads_groups
from emodebias.training.results import FitResult
from emodebias.training.selection import EvalSet, Selection, convergence, no_selection

log = logging.getLogger(__name__)

# per-epoch lines are detail in a grid (a progress bar shows it); `train` raises this logger's
# level to show them for a single run
EPOCH_LOG_LEVEL = logging.DEBUG


@dataclass
class Positions:
    """A stack's training inputs by position in each run's list, [R, n, ...]: `take(perm)`
    puts them in an epoch's order once, so a step takes a column slice of each (no per-step
    gathers or host-to-device copies)."""

    pos: torch.Tensor  # [R, n] positions in the run's training list
    rows: torch.Tensor  # [R, n] bank rows
    soft: torch.Tensor  # [R, n, K]
    majority: torch.Tensor  # [R, n]
    group: torch.Tensor  # [R, n]
    probs: torch.Tensor | None  # [R, n, G]
    weight: torch.Tensor  # [R, n]

    def take(self, cols: torch.Tensor | slice) -> Positions:
        """Every field at columns `cols`: a slice (views), or per-run positions [R, m]."""
        if isinstance(cols, slice):
            index: tuple = (slice(None), cols)
        else:
            index = (torch.arange(len(cols), device=cols.device).unsqueeze(1), cols)
        return Positions(*(None if (t := getattr(self, f.name)) is None else t[index]
                            for f in fields(self)))


Start = int | np.ndarray  # a sub-step's first position: one for every run, or per run [R]


def schedule(lengths: np.ndarray, bs: int) -> list[tuple[int, Start, np.ndarray | None]]:
    """One epoch's sub-steps (batch size, start position, active mask or None = all).

    Run r takes its n_r // bs full batches in order, then its partial batch (if any); runs
    that have no batch of a sub-step's size at that point are masked (they make no update;
    what they read is any of their own positions).
    """
    n_full = lengths // bs
    steps: list[tuple[int, Start, np.ndarray | None]] = []
    for s in range(int(n_full.max())):
        active = n_full > s
        steps.append((bs, s * bs, None if active.all() else active))
    rest = lengths - n_full * bs
    for size in sorted(set(rest[rest > 0].tolist())):
        active = rest == size
        steps.append((size, np.where(active, n_full * bs, 0), None if active.all() else active))
    return steps


def restore_masked(method: Method, saved: dict[str, torch.Tensor], gen_states: dict,
                    gens: list[torch.Generator], active: np.ndarray) -> None:
    """Undo a masked sub-step's side effects on idle runs: per-run buffers and generators."""
    keep = torch.as_tensor(active)
    for mod_name, mod in method.named_modules():
        for name, buf in list(mod._buffers.items()):
            old = saved.get(f"{mod_name}.{name}")
            if old is None or buf is None:
                continue
            view = keep.view((-1,) + (1,) * (buf.dim() - 1)).to(buf.device)
            mod._buffers[name] = torch.where(view, buf, old)
    for r, state in gen_states.items():
        gens[r].set_state(state)


def snapshot(method: Method, gens: list[torch.Generator], active: np.ndarray,
              n_runs: int) -> tuple[dict[str, torch.Tensor], dict]:
    saved = {f"{mn}.{n}": b.clone() for mn, m in method.named_modules()
             for n, b in m._buffers.items()
             if b is not None and b.dim() >= 1 and b.shape[0] == n_runs}
    return saved, {r: gens[r].get_state() for r in np.flatnonzero(~active).tolist()}


def position_dims(cls: type[Method], hp: dict[str, Any], ctx: MethodContext) -> dict[str, int]:
    """State keys whose size follows the train length (per-position state) -> that dim."""
    shapes = []
    for n in (1, 2):
        zeros = np.zeros((1, n), dtype=np.int64)
        c = replace(ctx, init_gens=[make_gen(0)], loop_gens=[make_gen(0)], train_majority=zeros,
                    train_groups=zeros, train_group_probs=None)
        shapes.append({k: v.shape for k, v in cls([hp], c).state_dict().items()})
    return {k: next(i for i, (a, b) in enumerate(zip(s, shapes[1][k], strict=True)) if a != b)
            for k, s in shapes[0].items() if s != shapes[1][k]}


def _per_run(plans: list[Plan], name: str, device: torch.device) -> torch.Tensor:
    """A per-run TrainConfig field as an [R] float32 tensor."""
    return torch.tensor([float(getattr(p.run.config, name)) for p in plans], device=device)


def train_stack(plans: list[Plan], bank: FeatureBank) -> list[tuple[int, FitResult | UserError]]:
    """Train one stack of runs (same method and settings; own rows, groups, lengths, epochs,
    lr and weight decay) -> (position, result) of each run and of its twins (same head, own
    per-run hooks)."""
    t0 = time.perf_counter()
    cls, cfg = plans[0].cls, plans[0].run.config
    d0 = plans[0].data
    device = bank.device
    n_runs = len(plans)
    idx = [p.prep.idx for p in plans]
    lengths = np.array([len(i) for i in idx])
    epochs = np.array([p.run.config.epochs for p in plans])
    host_rows = bank.lookup[pad(idx, idx[0][0])]  # [R, n_max] bank rows
    maj = pad([p.data.majority[i] for p, i in zip(plans, idx, strict=True)], -1)
    grp = pad([p.data.groups[i] for p, i in zip(plans, idx, strict=True)], -1)
    read_probs = d0.group_probs is not None and cls.supervision == "soft" and reads_groups(cls)
    probs = None if not read_probs else pad(
        [p.data.group_probs[i] for p, i in zip(plans, idx, strict=True)], 0.0)
    n_max, bs = int(lengths.max()), cfg.batch_size
    table = Positions(
        torch.arange(n_max, device=device).expand(n_runs, n_max),
        torch.as_tensor(host_rows, device=device),
        torch.as_tensor(pad([p.data.soft[i] for p, i in zip(plans, idx, strict=True)], 0.0),
                        device=device),
        torch.as_tensor(maj, device=device), torch.as_tensor(grp, device=device),
        None if probs is None else torch.as_tensor(probs, device=device),
        torch.as_tensor(pad([np.ones(len(p.prep.idx)) if p.prep.weight is None
                             else np.asarray(p.prep.weight) for p in plans], 0.0),
                        dtype=torch.float32, device=device),
    )
    loop_gens = [make_gen(p.seeds[2]) for p in plans]
    ctx = MethodContext(
        bank.n_layers, bank.dim, d0.n_classes, max(p.data.n_groups for p in plans),
        init_gens=[make_gen(p.seeds[0]) for p in plans], loop_gens=loop_gens,
        train_majority=maj, train_groups=grp, train_group_probs=probs,
    )
    method = cls([p.hp for p in plans], ctx).to(device)
    class_w = np.stack([class_weights_for(p.data.soft[p.prep.idx]) for p in plans])
    method.class_w.copy_(torch.as_tensor(class_w, dtype=torch.float32))
    opt = StackedAdam(method.param_groups(_per_run(plans, "lr", device)), n_runs,
                      _per_run(plans, "weight_decay", device))

    def eval_set(part: str) -> EvalSet:
        ids = [getattr(p.data, part) for p in plans]
        return EvalSet(bank, ids, [p.data.soft[i] for p, i in zip(plans, ids, strict=True)],
                       device)

    dev, test = eval_set("dev_idx"), eval_set("test_idx")
    selection = Selection(method, cfg.select)
    history: list[list[dict]] = [[] for _ in plans]
    steps = schedule(lengths, bs)
    draw = [None if p.prep.sample is None else torch.as_tensor(p.prep.sample, dtype=torch.float64)
            for p in plans]
    n_batches = torch.as_tensor(-(-lengths // bs), dtype=torch.float32, device=device)
    for epoch in range(1, int(epochs.max(initial=0)) + 1):
        method.epoch = epoch
        alive = epochs >= epoch  # runs still within their own epochs
        perm = torch.zeros(n_runs, n_max, dtype=torch.long)
        for r in np.flatnonzero(alive).tolist():
            g, n_r = loop_gens[r], int(lengths[r])
            if draw[r] is None:
                perm[r, :n_r] = torch.randperm(n_r, generator=g)
            else:  # group-balanced sampler: n_r draws with replacement
                perm[r, :n_r] = torch.multinomial(draw[r], n_r, replacement=True, generator=g)
        order = table.take(perm.to(device))
        shared = RunGroups.of(  # runs that read the same rows
            np.take_along_axis(host_rows, perm.numpy(), 1), lengths, device)
        total = torch.zeros(n_runs, device=device)
        for size, start, active in steps:
            if not alive.all():
                active = alive if active is None else active & alive
                if not active.any():  # only finished runs have this sub-step
                    continue
            if isinstance(start, int):
                step = order.take(slice(start, start + size))
            else:
                cols = torch.as_tensor(start[:, None] + np.arange(size), device=device)
                step = order.take(cols.clamp_max(n_max - 1))
            batch = Batch(bank.batch(step.rows, shared), step.soft, step.majority, step.group,
                          step.probs, step.pos, step.weight)
            saved = None if active is None else snapshot(method, loop_gens, active, n_runs)
            loss = method.loss(batch)
            opt.zero_grad()
            loss.sum().backward()
            opt.step(active)
            method.step += 1
            if saved is None:
                total += loss.detach()
            else:
                restore_masked(method, *saved, loop_gens, active)
                total += torch.where(torch.as_tensor(active, device=device), loss.detach(), 0.0)
        dev_loss = dev.loss(dev.logits(method, bank, cfg.eval_chunk), method.class_w)
        selection.update(method, epoch, dev_loss, torch.as_tensor(alive, device=device))
        extra = method.epoch_log()
        train_loss = (total / n_batches).tolist()
        dev_list = dev_loss.tolist()
        for r in np.flatnonzero(alive).tolist():
            row = {"epoch": epoch, "train_loss": train_loss[r], "dev_loss": dev_list[r]}
            history[r].append(row | {k: v[r] for k, v in extra.items()})
        log.log(EPOCH_LOG_LEVEL, "epoch %d/%d dev loss %s", epoch, int(epochs.max()),
                " ".join(f"{v:.3f}" for v, a in zip(dev_list, alive, strict=True) if a))

    method.load_state_dict(selection.state)
    dev_probs = dev.probs(dev.logits(method, bank, cfg.eval_chunk))
    test_probs = test.probs(test.logits(method, bank, cfg.eval_chunk))
    wall = (time.perf_counter() - t0) / sum(1 + len(p.twins) for p in plans)
    final_state = method.state_dict()
    per_position = position_dims(cls, plans[0].hp, ctx) if lengths.min() < n_max else {}
    results: list[tuple[int, FitResult | UserError]] = []
    for r, rep in enumerate(plans):
        best = float(selection.loss[r])
        failure = no_selection(rep, history[r], best)
        for p in (rep, *rep.twins):
            if failure is not None:
                results.append((p.pos, failure))
                continue
            d = p.data
            state = run_slice(final_state, r)
            for k, dim in per_position.items():  # drop the padding of per-position state
                state[k] = state[k].narrow(dim, 0, int(lengths[r])).clone()
            dev_r, test_r, post = p.cls.postprocess(p.hp, dev_probs[r], test_probs[r], d)
            info = {"dims": {"n_layers": bank.n_layers, "dim": bank.dim,
                             "n_classes": d.n_classes, "n_groups": d.n_groups},
                    "n_train": len(p.prep.idx), "prepare": p.prep.info, "stack_size": n_runs,
                    "twins": len(rep.twins), "best_dev_loss": best,
                    "convergence": convergence(selection.epoch[r], p.run.config,
                                               f"{p.cls.name} seed {p.run.seed}"),
                    **p.cls.run_info(p.hp, history[r], d), **post}
            results.append((p.pos, FitResult(
                np.asarray(test_r, dtype=np.float32), np.asarray(dev_r, dtype=np.float32),
                selection.epoch[r], [dict(h) for h in history[r]], state, p.hp, wall,
                p.cls.name, p.run.seed, asdict(p.run.config), info,
            )))
    return results
