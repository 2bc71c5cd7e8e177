"""ERM and the Random baseline (PAPERS §3.0)."""

from __future__ import annotations

import numpy as np
import torch

from emodebias.training.methods.base import Method, register


@register("erm")
class ERM(Method):
    """Empirical risk minimisation: mean class-balanced soft-target CE (the base class's loss)."""

    family = "baseline"
    supervision = "none"
    HPARAMS = {}


@register("random")
class RandomBaseline(Method):
    """Uniform random predictions: an independent Bernoulli(p) draw per utterance and class.

    [IDI] reports Hamming accuracy .509 / F1 .360 for "Random", which matches Bernoulli(0.5)
    per class (PAPERS §3.0). Nothing is trained. The scores are not a distribution: a drawn
    positive gets (1 + 1/K)/2 and a negative (1/K)/2, so binarising at 1/K returns the draw.
    """

    family = "baseline"
    supervision = "none"
    HPARAMS = {"p": 0.5}
    trains = False

    @classmethod
    def untrained_probs(
        cls, n: int, n_classes: int, hp: dict, gen: torch.Generator
    ) -> np.ndarray:
        draw = torch.rand(n, n_classes, generator=gen, dtype=torch.float64) < hp["p"]
        inv_k = 1.0 / n_classes
        return torch.where(draw, (1 + inv_k) / 2, inv_k / 2).numpy()
