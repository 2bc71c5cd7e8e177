"""Map one set of emotion classes onto another: a model's outputs onto a corpus's classes, or
two corpora onto the classes they share (cross-corpus evaluation).

A `ClassMap` is many-to-one: each source class maps to at most one target class; a source class
it does not name is *unmapped*. The stated rules, used everywhere a map is applied:

- probabilities: a target's probability is the sum of its source classes' probabilities; the
  mass on unmapped source classes is dropped and each row renormalised over the targets (a row
  whose whole mass is unmapped cannot be scored and is reported, not guessed);
- labels: the vote shares behind smoothed labels (`labels.unsmooth`) are summed the same way,
  renormalised, and smoothed again for the target's number of classes (EMO-SUPERB rule), so a
  unanimous vote stays unanimous; a row with no vote share on a mapped class has no label on
  the targets and is left out (counted).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodebias.data.labels import smoothing_alpha, unsmooth
from emodebias.errors import UserError


class ClassMapError(UserError):
    """A class map that cannot be read or applied (unknown or unmapped classes, a bad file)."""


@dataclass(frozen=True)
class ClassMap:
    """`mapping`: source class -> target class; `targets`: the target classes, in order."""

    mapping: Mapping[str, str]
    targets: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.mapping.values()) - set(self.targets))
        if unknown:
            raise ClassMapError(f"class map targets {unknown} are not among {list(self.targets)}")
        if len(set(self.targets)) != len(self.targets):
            raise ClassMapError(f"class map repeats a target class: {list(self.targets)}")

    @classmethod
    def identity(cls, classes: Iterable[str]) -> ClassMap:
        names = tuple(classes)
        return cls({c: c for c in names}, names)

    @classmethod
    def parse(cls, spec: str | Path | Mapping[str, str] | Iterable[str],
              targets: Iterable[str] | None = None) -> ClassMap:
        """A map from a dict, a JSON/YAML file of {source: target}, or `source=target` pairs
        (one string with commas, or a list). Targets default to the mapped values, in first-seen
        order; pass `targets` (e.g. a corpus's classes) to fix their order and check names."""
        if isinstance(spec, Mapping):
            pairs = {str(k): str(v) for k, v in spec.items()}
        elif isinstance(spec, Path) or (isinstance(spec, str) and "=" not in spec):
            pairs = _read_file(Path(spec))
        else:
            items = spec.split(",") if isinstance(spec, str) else list(spec)
            pairs = {}
            for item in (i.strip() for i in items):
                if not item:
                    continue
                if item.count("=") != 1:
                    raise ClassMapError(f"class map entry {item!r} is not source=target")
                src, dst = (s.strip() for s in item.split("="))
                if not src or not dst:
                    raise ClassMapError(f"class map entry {item!r} has an empty side")
                if src in pairs and pairs[src] != dst:
                    raise ClassMapError(f"class {src!r} is mapped twice ({pairs[src]!r}, {dst!r})")
                pairs[src] = dst
        if targets is None:
            targets = dict.fromkeys(pairs.values())
        return cls(pairs, tuple(targets))

    def check(self, source: Iterable[str], *, require_all: bool = False,
              what: str = "source") -> list[str]:
        """The source classes this map leaves unmapped. Names in the map that `source` lacks are
        an error listing both sides; with `require_all`, so is any unmapped source class."""
        source = list(source)
        extra = sorted(set(self.mapping) - set(source))
        if extra:
            raise ClassMapError(f"class map names {extra}, which the {what} classes lack; "
                                f"{what} classes: {source}; targets: {list(self.targets)}")
        unmapped = [c for c in source if c not in self.mapping]
        if require_all and unmapped:
            raise ClassMapError(f"{what} classes {unmapped} are not mapped; map each to one of "
                                f"{list(self.targets)} (e.g. {unmapped[0]}={self.targets[0]})")
        return unmapped

    def missing_targets(self, source: Iterable[str]) -> list[str]:
        """Target classes no source class maps to (always predicted with probability 0)."""
        hit = {self.mapping[c] for c in source if c in self.mapping}
        return [t for t in self.targets if t not in hit]

    def matrix(self, source: Iterable[str]) -> np.ndarray:
        """[len(source), len(targets)] 0/1 matrix: row i marks source class i's target."""
        source = list(source)
        self.check(source)
        col = {t: j for j, t in enumerate(self.targets)}
        m = np.zeros((len(source), len(self.targets)), dtype=np.float64)
        for i, c in enumerate(source):
            if c in self.mapping:
                m[i, col[self.mapping[c]]] = 1.0
        return m

    def project_probs(self, probs: np.ndarray, source: Iterable[str]) -> tuple[np.ndarray,
                                                                                np.ndarray]:
        """(probabilities over the targets, rows that had mass on a mapped class)."""
        mass = np.asarray(probs, dtype=np.float64) @ self.matrix(source)
        total = mass.sum(1, keepdims=True)
        ok = total[:, 0] > 0
        out = np.full_like(mass, np.nan)
        out[ok] = mass[ok] / total[ok]
        return out.astype(np.float32), ok

    def project_soft(self, soft: np.ndarray, source: Iterable[str]) -> tuple[np.ndarray,
                                                                              np.ndarray]:
        """(smoothed labels over the targets, rows that keep a label): see the module rule."""
        shares, ok = self.project_probs(np.clip(unsmooth(soft), 0, None), source)
        k = len(self.targets)
        if k < 2:
            raise ClassMapError(f"a class map needs at least 2 target classes, not {k}")
        a = smoothing_alpha(k)
        out = np.full(shares.shape, np.nan, dtype=np.float32)
        out[ok] = (1 - a) * shares[ok] + a / k
        return out, ok


def _read_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ClassMapError(f"{path}: no such class map file (or give source=target pairs)")
    import yaml

    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ClassMapError(f"{path}: not a readable class map ({exc})") from None
    if not isinstance(data, Mapping) or not all(
            isinstance(v, str) for v in data.values()):
        raise ClassMapError(f"{path}: a class map is a mapping of source class -> target class")
    return {str(k): v for k, v in data.items()}


__all__ = ["ClassMap", "ClassMapError"]
