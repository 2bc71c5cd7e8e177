"""Group sources (truth, pseudo-label, cluster) -> GroupAssignment, and their diagnostics."""

from emodebias.groups.assignment import GroupAssignment
from emodebias.groups.cluster import DEFAULT_KS, cached_cluster_groups, cluster_groups, cluster_many
from emodebias.groups.diagnostics import composition, diagnose, group_sizes, size_warnings
from emodebias.groups.f0 import F0Threshold, f0_groups
from emodebias.groups.probe import GenderProbe, probe_groups, train_probe, train_probe_on
from emodebias.groups.pseudo import PseudoLabelError, gender_accuracy, hf_gender_groups
from emodebias.groups.truth import truth_groups

__all__ = [
    "DEFAULT_KS", "F0Threshold", "GenderProbe", "GroupAssignment", "PseudoLabelError",
    "cached_cluster_groups", "cluster_groups", "cluster_many", "composition", "diagnose",
    "f0_groups", "gender_accuracy", "group_sizes", "hf_gender_groups", "probe_groups",
    "size_warnings", "train_probe", "train_probe_on", "truth_groups",
]
