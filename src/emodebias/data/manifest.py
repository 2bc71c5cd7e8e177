"""The Manifest: a validated table of utterances, the one input every later stage reads.

Columns (DESIGN.md "Manifest"): ``utt_id`` (unique str), ``path`` (audio file), ``speaker`` (str),
``split_<fold>`` columns holding ``train`` / ``dev`` / ``test`` (one column per fold; NA = not in
that fold), ``votes_<class>`` (annotator counts, where known) and ``soft_<class>`` (distributional
label, sums to 1), and demographic columns (``gender`` as ``F``/``M``, ``age``, ``age_group``,
``race``, ...; missing = NA). The class list and its order travel in the Parquet metadata.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from emodebias.errors import UserError
from emodebias.fileio import replacing

REQUIRED_COLUMNS = ("utt_id", "path", "speaker")
SPLIT_PREFIX = "split_"
SPLIT_VALUES = frozenset({"train", "dev", "test"})
_META_KEY = b"emodebias"


class ManifestError(UserError):
    """A manifest (or the corpus files behind it) is malformed; the message names the bad rows."""


def _rows(df: pd.DataFrame, mask: np.ndarray, limit: int = 5) -> str:
    ids = df.loc[mask, "utt_id"].astype(str).tolist() if "utt_id" in df else []
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


@dataclass
class Manifest:
    """A corpus as one table plus its class order; `validate()` runs on construction."""

    df: pd.DataFrame
    classes: list[str]
    corpus: str = "unknown"
    info: dict = field(default_factory=dict)
    check_files: bool = False

    def __post_init__(self) -> None:
        self.df = self.df.reset_index(drop=True)
        self.classes = list(self.classes)
        self.validate(check_files=self.check_files)

    # ----------------------------------------------------------------- validation
    def validate(self, check_files: bool = False, atol: float = 1e-4) -> None:
        """Raise ManifestError naming the offending rows; never silently drop anything."""
        df = self.df
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise ManifestError(f"manifest lacks required column(s) {missing}")
        if not self.classes:
            raise ManifestError("manifest has an empty class list")
        if len(set(self.classes)) != len(self.classes):
            raise ManifestError(f"duplicate class names in {self.classes}")
        dup = df["utt_id"].duplicated(keep=False).to_numpy()
        if dup.any():
            raise ManifestError(f"duplicate utt_id in rows: {_rows(df, dup)}")
        known = {f"soft_{c}" for c in self.classes} | {f"votes_{c}" for c in self.classes}
        stray = [c for c in df.columns if c.startswith(("soft_", "votes_")) and c not in known]
        if stray:
            raise ManifestError(f"label columns {stray} name classes not in {self.classes}")
        if self.has_soft:
            soft = self.soft_labels()
            bad = ~np.isfinite(soft).all(1) | (np.abs(soft.sum(1) - 1.0) > atol) | (soft < 0).any(1)
            if bad.any():
                raise ManifestError(f"soft labels do not sum to 1 in rows: {_rows(df, bad)}")
        for col in self.split_columns:
            vals = set(df[col].dropna().unique()) - SPLIT_VALUES
            if vals:
                raise ManifestError(
                    f"{col} has values {sorted(vals)}; allowed {sorted(SPLIT_VALUES)}"
                )
        if "gender" in df.columns:
            vals = set(df["gender"].dropna().unique()) - {"F", "M"}
            if vals:
                raise ManifestError(f"gender must be 'F', 'M' or NA; found {sorted(vals)}")
        if check_files:
            gone = ~df["path"].map(lambda p: Path(p).is_file()).to_numpy(bool)
            if gone.any():
                raise ManifestError(
                    f"{int(gone.sum())} audio file(s) missing, e.g. rows: {_rows(df, gone)} "
                    f"(first path: {df.loc[gone, 'path'].iloc[0]})"
                )

    # ----------------------------------------------------------------- accessors
    def __len__(self) -> int:
        return len(self.df)

    @property
    def utt_ids(self) -> list[str]:
        return self.df["utt_id"].astype(str).tolist()

    @property
    def has_soft(self) -> bool:
        return all(f"soft_{c}" in self.df.columns for c in self.classes)

    @property
    def has_votes(self) -> bool:
        return all(f"votes_{c}" in self.df.columns for c in self.classes)

    @property
    def split_columns(self) -> list[str]:
        return [c for c in self.df.columns if c.startswith(SPLIT_PREFIX)]

    @property
    def folds(self) -> list[str]:
        """Fold names, e.g. ['1', '2', ...] from columns split_1, split_2, ..."""
        return [c[len(SPLIT_PREFIX) :] for c in self.split_columns]

    def soft_labels(self) -> np.ndarray:
        """[N, K] float64 distributional labels in class order."""
        return self.df[[f"soft_{c}" for c in self.classes]].to_numpy(np.float64)

    def votes(self) -> np.ndarray:
        return self.df[[f"votes_{c}" for c in self.classes]].to_numpy(np.float64)

    def split_ids(self, fold: str | int, part: str) -> list[str]:
        col = f"{SPLIT_PREFIX}{fold}"
        if col not in self.df.columns:
            raise ManifestError(f"fold {fold!r} not in manifest; folds: {self.folds}")
        return self.df.loc[self.df[col] == part, "utt_id"].astype(str).tolist()

    def index_of(self, utt_ids: list[str] | np.ndarray) -> np.ndarray:
        """Row positions of `utt_ids`; unknown ids raise with their names."""
        pos = pd.Index(self.df["utt_id"].astype(str)).get_indexer(pd.Index(utt_ids).astype(str))
        if (pos < 0).any():
            bad = [u for u, p in zip(utt_ids, pos, strict=True) if p < 0][:5]
            raise ManifestError(f"{int((pos < 0).sum())} utt_id(s) not in the manifest, e.g. {bad}")
        return pos

    def content_hash(self) -> str:
        """Stable hash of ids, paths and labels: the cache key of everything derived from it."""
        h = hashlib.sha256(json.dumps(self.classes).encode())
        cols = ["utt_id", "path"] + [f"soft_{c}" for c in self.classes  # in class order
                                     if f"soft_{c}" in self.df.columns]  # (none: unlabelled)
        h.update(pd.util.hash_pandas_object(self.df[cols], index=False).to_numpy().tobytes())
        return h.hexdigest()[:16]

    def require_made_from(self, recorded: str | None, what: str, remedy: str, *,
                          name: str | Path | None = None,
                          error: type[UserError] | None = None) -> None:
        """Refuse an output made from another manifest: `recorded` is the content hash it
        saved (None: made before hashes were recorded, not compared)."""
        if recorded and recorded != self.content_hash():
            raise (error or ManifestError)(
                f"{what} made from another manifest (hash {recorded}) than "
                f"{name or 'the given manifest'} (hash {self.content_hash()}); {remedy}")

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.df, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[_META_KEY] = json.dumps(
            {"classes": self.classes, "corpus": self.corpus, "info": self.info}
        ).encode()
        with replacing(path) as tmp:
            pq.write_table(table.replace_schema_metadata(meta), tmp)
        return path

    @classmethod
    def load(cls, path: str | Path, check_files: bool = False) -> Manifest:
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.parquet"
        if not path.is_file():
            raise ManifestError(f"no manifest at {path}; create one with `emodebias prepare`")
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(f"{path} is not a readable Parquet manifest ({exc}); create one "
                                "with `emodebias prepare`") from exc
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise ManifestError(f"{path} is a Parquet file without emodebias metadata")
        meta = json.loads(raw)
        return cls(table.to_pandas(), meta["classes"], meta.get("corpus", "unknown"),
                   meta.get("info", {}), check_files=check_files)
