"""The debiasing method zoo: one registry (name -> class), filled by importing each family.

Adding a method = one decorated class in one of these modules (or a new module listed here).
"""

from emodebias.training.methods import (
    adversarial,
    biased,
    dro,
    erm,
    postprocess,
    regularizers,
    sampling,
)
from emodebias.training.methods.base import (
    REGISTRY,
    Batch,
    GroupSupervisionError,
    Method,
    MethodContext,
    Prepared,
    get_method,
    register,
)

__all__ = [
    "REGISTRY", "Batch", "GroupSupervisionError", "Method", "MethodContext", "Prepared",
    "get_method", "register", "adversarial", "biased", "dro", "erm", "postprocess",
    "regularizers", "sampling",
]
