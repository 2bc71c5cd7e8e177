"""Group sources (truth, pseudo-label, cluster) -> GroupAssignment, and their diagnostics."""

from emodebias.groups.assignment import GroupAssignment

__all__ = ["GroupAssignment"]
