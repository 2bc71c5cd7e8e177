"""Speaker-independent folds and controlled gender-imbalance subsampling (IDI appendix rule).

A `Split` is the saved, reloadable result: which utterances train, select and test one run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Split:
    """Train/dev/test utterance ids of one fold at one imbalance setting (ratio 1:r)."""

    fold: str
    train: list[str]
    dev: list[str]
    test: list[str]
    ratio: float | None = None  # r in 1:r; None = no imbalance subsampling
    direction: str = "natural"  # natural | female-major | male-major
    seed: int = 0
    majority_gender: dict[str, str] = field(default_factory=dict)  # emotion -> "F" / "M"
    info: dict = field(default_factory=dict)  # counts, skipped rows, ...

    @property
    def name(self) -> str:
        r = "full" if self.ratio is None else f"1-{self.ratio:g}"
        return f"fold{self.fold}_{r}_{self.direction}_s{self.seed}"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".json":
            path = path / "split.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Split:
        path = Path(path)
        if path.is_dir():
            path = path / "split.json"
        return cls(**json.loads(path.read_text()))
