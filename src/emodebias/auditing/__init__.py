"""Audit any emotion model for bias: run it over a prepared corpus and score its predictions
like a trained run (`core.audit`), with model kinds in `models`, resumable batched inference in
`inference` and a paired side-by-side comparison of audited models in `compare`."""

from emodebias.auditing.core import AuditResult, audit, resolve_class_map
from emodebias.auditing.models import AuditModel, AuditModelError, CallableModel, HFClassifier

__all__ = ["AuditModel", "AuditModelError", "AuditResult", "CallableModel", "HFClassifier",
           "audit", "resolve_class_map"]
