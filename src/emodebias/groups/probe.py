"""Built-in gender probe: logistic regression on speaker embeddings (a pseudo-label source).

Trained on any manifest with gender (for instance another corpus than the one being debiased),
on embeddings standardised with the training mean/scale. Saved as plain arrays (``.npz``, no
pickle) plus JSON metadata with a format version and the encoder id, so a probe is never applied
to embeddings of another encoder or dimension.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emodebias.groups.assignment import GroupAssignment
from emodebias.groups.pseudo import NAMES, PseudoLabelError, make_assignment

if TYPE_CHECKING:
    from emodebias.data.manifest import Manifest

FORMAT = "emodebias-gender-probe"
VERSION = 1


@dataclass
class GenderProbe:
    """P(female) = sigmoid(((x - mean) / scale) @ coef + intercept)."""

    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    encoder: str = "embeddings"
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return len(self.coef)

    def p_female(self, embeddings: np.ndarray) -> np.ndarray:
        """P(F) per row of [N, D] embeddings."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise PseudoLabelError(f"probe expects [N, {self.dim}] embeddings, got {x.shape}")
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: str | Path) -> Path:
        """Write ``<path>`` (.npz arrays) and ``<path>.json`` (format, version, encoder, info)."""
        path = Path(path).with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, coef=self.coef, intercept=np.array([self.intercept]), mean=self.mean,
                 scale=self.scale)
        meta = {"format": FORMAT, "version": VERSION, "encoder": self.encoder, "dim": self.dim,
                "classes": NAMES, "info": self.info}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> GenderProbe:
        """Reload a saved probe; a missing file, other format or newer version raises."""
        path = Path(path).with_suffix(".npz")
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise PseudoLabelError(f"no gender probe at {path} (+ .json); train one with "
                                   "`emodebias train-probe`")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or int(meta.get("version", -1)) > VERSION:
            raise PseudoLabelError(f"{meta_path}: format {meta.get('format')!r} version "
                                   f"{meta.get('version')!r}; this emodebias reads {FORMAT} "
                                   f"version <= {VERSION}")
        z = np.load(path)
        return cls(z["coef"], float(z["intercept"][0]), z["mean"], z["scale"],
                   meta.get("encoder", "embeddings"), meta.get("info", {}))


def _genders(genders: np.ndarray | list) -> np.ndarray:
    g = np.asarray(genders, dtype=object)
    bad = [v for v in set(g.tolist()) if v not in NAMES]
    if bad:
        raise PseudoLabelError(f"probe training needs gender 'F'/'M' for every row; found {bad}")
    return (g == "F").astype(np.int64)


def _pipeline(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    logreg = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    return make_pipeline(StandardScaler(), logreg)


def grouped_cv_accuracy(embeddings: np.ndarray, genders: np.ndarray | list,
                        speakers: np.ndarray | list, n_splits: int = 5, c: float = 1.0,
                        seed: int = 0) -> float:
    """Leave-speakers-out accuracy (GroupKFold by speaker): no speaker in train and test."""
    from sklearn.model_selection import GroupKFold, cross_val_predict

    y = _genders(genders)
    speakers = np.asarray(speakers, dtype=object).astype(str)
    n_splits = min(n_splits, len(np.unique(speakers)))
    if n_splits < 2:
        raise PseudoLabelError("grouped cross-validation needs at least 2 speakers")
    pred = cross_val_predict(_pipeline(c, seed), np.asarray(embeddings, np.float64), y,
                             groups=speakers, cv=GroupKFold(n_splits))
    return float(np.mean(pred == y))


def train_probe(embeddings: np.ndarray, genders: np.ndarray | list,
                speakers: np.ndarray | list | None = None, c: float = 1.0,
                encoder: str = "embeddings", cv_folds: int = 5, seed: int = 0,
                info: dict | None = None) -> GenderProbe:
    """Fit on all rows; with `speakers`, also record the leave-speakers-out CV accuracy."""
    x = np.asarray(embeddings, dtype=np.float64)
    y = _genders(genders)
    if len(np.unique(y)) < 2:
        raise PseudoLabelError("probe training needs both F and M utterances")
    pipe = _pipeline(c, seed).fit(x, y)
    scaler, logreg = pipe[0], pipe[-1]
    meta = {"n_train": int(len(y)), "n_female": int(y.sum()), "c": c, **(info or {})}
    if speakers is not None:
        meta["cv_accuracy"] = grouped_cv_accuracy(x, genders, speakers, cv_folds, c, seed)
        meta["n_speakers"] = int(len(np.unique(np.asarray(speakers, dtype=object).astype(str))))
    return GenderProbe(logreg.coef_[0].astype(np.float64), float(logreg.intercept_[0]),
                       scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64),
                       encoder, meta)


def train_probe_on(store, manifest: Manifest, layer: int | str = "mean", c: float = 1.0,
                   cv_folds: int = 5) -> GenderProbe:
    """Train on a FeatureStore + manifest: every row with known gender and a usable embedding."""
    from emodebias.groups.embeddings import encoder_name, load_embeddings

    x, ids, ok = load_embeddings(store, layer)
    rows = manifest.index_of(ids)
    gender = manifest.df["gender"].to_numpy(dtype=object)[rows] if "gender" in manifest.df else None
    if gender is None:
        raise PseudoLabelError(f"manifest of corpus {manifest.corpus!r} has no gender column")
    use = ok & np.array([g in NAMES for g in gender])
    speakers = manifest.df["speaker"].astype(str).to_numpy()[rows][use]
    info = {"corpus": manifest.corpus, "manifest_hash": manifest.content_hash(), "layer": layer,
            "n_skipped": int((~use).sum())}
    return train_probe(x[use], gender[use], speakers, c, encoder_name(store), cv_folds, info=info)


def probe_groups(probe: GenderProbe, embeddings: np.ndarray, utt_ids: list[str],
                 manifest: Manifest | None = None, valid: np.ndarray | None = None,
                 encoder: str | None = None) -> GroupAssignment:
    """Pseudo-gender groups from a trained probe; `encoder` (the store's) must match the probe's."""
    if encoder is not None and probe.encoder not in ("embeddings", encoder):
        raise PseudoLabelError(f"probe was trained on {probe.encoder!r} embeddings, "
                               f"these are {encoder!r}")
    x = np.asarray(embeddings, dtype=np.float64)
    ok = np.isfinite(x).all(1) if valid is None else np.asarray(valid, bool) & np.isfinite(x).all(1)
    p = np.full(len(x), np.nan)
    if ok.any():
        p[ok] = probe.p_female(x[ok])
    info = {"kind": "probe", "encoder": probe.encoder, "probe": probe.info}
    return make_assignment(utt_ids, p, ok, f"pseudo:probe:{probe.encoder}", info, manifest)
