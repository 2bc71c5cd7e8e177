"""Dev evaluation and model selection: each run keeps the epoch with the lowest
class-balanced CE on its own dev list (weights from its training set), or its last epoch."""

from __future__ import annotations

import logging

import numpy as np
import torch

from emodebias.training.data import TrainConfig, TrainingError
from emodebias.training.feature_bank import FeatureBank, RunGroups
from emodebias.training.losses import class_balanced_ce
from emodebias.training.methods import Method
from emodebias.training.plan import Plan, pad

log = logging.getLogger(__name__)

# a run whose selected epoch falls in the last LATE_SHARE of its epochs is flagged: the dev loss
# was still falling, so more epochs or a larger learning rate may change its numbers
LATE_SHARE = 0.1


class EvalSet:
    """Per-run evaluation rows (dev or test): shared rows when every run has the same list,
    else a padded [R, m] table read in one padded pass."""

    def __init__(self, bank: FeatureBank, idx: list[np.ndarray], soft: list[np.ndarray],
                 device: torch.device) -> None:
        self.sizes = [len(i) for i in idx]
        self.shared = all(np.array_equal(i, idx[0]) for i in idx)
        fill = next((int(i[0]) for i in idx if len(i)), 0)  # any row of the bank
        padded = idx[0] if self.shared else pad(idx, fill)
        self.rows = bank.compact(padded)
        # runs whose lists are equal read each chunk once
        self.groups = None if self.shared else RunGroups.of(padded, np.array(self.sizes), device)
        self.soft = torch.as_tensor(pad(soft, 0.0), device=device)  # [R, m, K]
        mask = pad([np.ones(n, dtype=np.float32) for n in self.sizes], 0.0)
        self.count = torch.as_tensor(np.maximum(self.sizes, 1), dtype=torch.float32,
                                     device=device)
        # an empty list has no loss (NaN), never a mean of 0 that would look like a selection
        self.empty = torch.as_tensor(np.array(self.sizes) == 0, device=device)
        self.mask = torch.as_tensor(mask, device=device)

    @torch.no_grad()
    def logits(self, method: Method, bank: FeatureBank, chunk: int) -> torch.Tensor:
        """Logits [R, m, K] of every run on its own rows, in chunks."""
        if self.shared:
            parts = [method.logits(bank.features(self.rows[s : s + chunk]))
                     for s in range(0, len(self.rows), chunk)]
        else:
            step = max(1, chunk // self.rows.shape[0])
            parts = [method.logits(bank.batch(self.rows[:, s : s + step], self.groups))
                     for s in range(0, self.rows.shape[1], step)]
        if not parts:
            return torch.zeros(*self.soft.shape, device=self.soft.device)
        return torch.cat(parts, dim=1)

    def loss(self, logits: torch.Tensor, class_w: torch.Tensor) -> torch.Tensor:
        """Per-run mean class-balanced CE [R] over each run's own rows."""
        per = class_balanced_ce(logits, self.soft, class_w)
        mean = per.mean(-1) if self.shared else (per * self.mask).sum(-1) / self.count
        return torch.where(self.empty, float("nan"), mean)

    def probs(self, logits: torch.Tensor) -> list[np.ndarray]:
        p = torch.softmax(logits, -1).cpu().numpy()
        return [p[r, :n] for r, n in enumerate(self.sizes)]


class Selection:
    """Per-run best dev loss, epoch and state of a stack. A run is selectable only while its
    own epochs last (`alive`): a finished run's selection and state stay as they were."""

    def __init__(self, method: Method, select: str) -> None:
        n_runs = method.n_runs
        device = method.class_w.device
        self.select = select
        self.loss = torch.full((n_runs,), float("inf"), device=device)
        self.epoch = [0] * n_runs
        self.state = {k: v.clone() for k, v in method.state_dict().items()}

    def update(self, method: Method, epoch: int, dev_loss: torch.Tensor,
               alive: torch.Tensor) -> None:
        if self.select == "last":
            better = alive.clone()
        else:
            better = alive & torch.isfinite(dev_loss) & (dev_loss < self.loss)
        self.loss = torch.where(better, dev_loss, self.loss)
        for r in torch.nonzero(better).flatten().tolist():
            self.epoch[r] = epoch
        for k, v in method.state_dict().items():
            keep = better.view(-1, *([1] * (v.dim() - 1)))
            self.state[k] = torch.where(keep, v, self.state[k])


def no_selection(p: Plan, history: list[dict], best: float) -> TrainingError | None:
    """The error of a run whose training selected nothing finite (None when it did).

    With select="last" an empty dev part is no failure: there is nothing to select on, and
    the last epoch is kept as long as training itself stayed finite."""
    if np.isfinite(best):
        return None
    cfg = p.run.config
    what = f"run {p.cls.name} (seed {p.run.seed})"
    n_dev = len(p.data.dev_idx)
    trained = bool(history) and np.isfinite(history[-1]["train_loss"])
    if cfg.select == "last" and n_dev == 0 and trained:
        return None
    if n_dev == 0:
        why = ("its dev part is empty; make a split with dev utterances, or keep the last "
               "epoch (select \"last\")")
    elif cfg.epochs < 1:
        why = f"epochs is {cfg.epochs}; train at least one epoch"
    elif history and not np.isfinite(history[-1]["train_loss"]):
        why = (f"training diverged (train loss {history[-1]['train_loss']}); lower the "
               f"learning rate (lr {cfg.lr:g})")
    else:
        why = ("the dev loss was never finite; check the dev labels and features, or lower "
               f"the learning rate (lr {cfg.lr:g})")
    return TrainingError(f"{what}: no epoch of {cfg.epochs} had a finite dev loss "
                         f"({n_dev} dev utterances): {why}")


def convergence(selected: int, cfg: TrainConfig, run: str = "run") -> dict:
    """Whether the dev-selected epoch is in the last LATE_SHARE of training (then the dev loss
    was still falling when training stopped: the run may be under-trained)."""
    last = max(1, int(np.ceil(LATE_SHARE * cfg.epochs)))
    late = cfg.select == "dev_loss" and selected > cfg.epochs - last
    if late:
        log.warning("%s: selected epoch %d of %d is in the last %d%% of training: it may not "
                    "have converged (more epochs or a larger lr)", run, selected, cfg.epochs,
                    round(100 * LATE_SHARE))
    return {"selected_epoch": int(selected), "epochs": int(cfg.epochs), "late": bool(late),
            "late_share": LATE_SHARE}
