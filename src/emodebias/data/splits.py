"""Speaker-independent folds and controlled gender-imbalance subsampling (IDI appendix rule).

A `Split` is the saved, reloadable result: which utterances train, select and test one run.

The imbalance rule (PAPERS.md §1.6, reproduces IDI Tables A2/A3 within 0-2 utterances):
1. an utterance's emotion is its strict-majority class (vote share > 0.5), else it is dropped
   from train and dev;
2. each emotion has one majority gender, fixed across folds: the gender with more
   strict-majority utterances over the whole manifest (``natural``), or forced
   (``female-major`` / ``male-major``); a tie counts as female-major;
3. per emotion, all majority-gender utterances are kept and floor(n_major / r) minority-gender
   ones are sampled (capped by what exists, so 1:1 keeps every minority utterance);
4. train and dev are subsampled independently; test is the full, untouched test split.

Sampling is a seeded permutation per (seed, fold, part, emotion) whose first n_min entries are
taken, so for one seed the minority subsets are nested across ratios (1:40 within 1:20 within
1:10 ...) and differ between seeds.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from emodebias.data.labels import strict_majority
from emodebias.errors import UserError
from emodebias.fileio import write_text_atomic

if TYPE_CHECKING:
    from emodebias.data.manifest import Manifest

DIRECTIONS = ("natural", "female-major", "male-major")
PARTS = ("train", "dev", "test")
GENDERS = ("F", "M")


class SplitError(UserError):
    """A split cannot be made as asked (unknown fold, bad ratio, no gender column, ...)."""


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
    manifest_hash: str | None = None  # content hash of the manifest it was made from

    @property
    def name(self) -> str:
        r = "full" if self.ratio is None else f"1-{self.ratio:g}"
        return f"fold{self.fold}_{r}_{self.direction}_s{self.seed}"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".json":
            path = path / "split.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(path, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """A saved split, validated: any malformed file is a one-line SplitError naming it."""
        path = Path(path)
        if path.is_dir():
            path = path / "split.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise SplitError(f"no split file at {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SplitError(f"{path}: not a readable JSON split ({exc})") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: object, source: str = "<split>") -> Split:
        """Validate a parsed split (see `load`): known keys, id lists, disjoint parts."""
        where = f"{source}: "
        if not isinstance(raw, dict):
            raise SplitError(f"{where}a split must be a JSON object, got {type(raw).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(map(str, set(raw) - set(known)))
        if unknown:
            raise SplitError(f"{where}unknown key(s) {unknown}; allowed: {known}")
        missing = [k for k in ("fold", "train", "test") if k not in raw]
        if missing:
            raise SplitError(f"{where}missing key(s) {missing}")
        d = dict(raw)
        if not isinstance(d["fold"], (str, int)) or isinstance(d["fold"], bool):
            raise SplitError(f"{where}'fold' must be a name or number, got {d['fold']!r}")
        d["fold"] = str(d["fold"])
        for part in PARTS:
            d[part] = _id_list(d.get(part, []), part, where)
        d["ratio"] = parse_ratio(d.get("ratio"), where)
        if d.get("direction", "natural") not in DIRECTIONS:
            raise SplitError(f"{where}'direction' {d['direction']!r} not in {DIRECTIONS}")
        seed = d.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise SplitError(f"{where}'seed' must be an integer, got {seed!r}")
        for key in ("majority_gender", "info"):
            if not isinstance(d.get(key, {}), dict):
                raise SplitError(f"{where}{key!r} must be an object, got {d[key]!r}")
        if not isinstance(d.get("manifest_hash"), (str, type(None))):
            raise SplitError(f"{where}'manifest_hash' must be a string, got "
                             f"{d['manifest_hash']!r}")
        split = cls(**d)
        split.validate(source)
        return split

    def validate(self, source: str = "<split>") -> None:
        """Raise SplitError on an empty train or test part or an utterance in two parts."""
        for part in ("train", "test"):
            if not getattr(self, part):
                raise SplitError(f"{source}: the {part} part is empty")
        for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
            both = set(getattr(self, a)) & set(getattr(self, b))
            if both:
                raise SplitError(f"{source}: {len(both)} utterance(s) are in both {a} and {b}, "
                                 f"e.g. {sorted(both)[:3]}")

    def check(self, manifest: Manifest, source: str | Path | None = None,
              manifest_name: str | Path | None = None) -> None:
        """Refuse a split made from another manifest (recorded hash) or naming unknown ids."""
        where = source or f"split {self.name}"
        name = manifest_name or "the given manifest"
        manifest.require_made_from(self.manifest_hash, f"{where} was",
                                   "make the split again from this manifest",
                                   name=manifest_name, error=SplitError)
        known = set(manifest.utt_ids)
        for part in PARTS:
            unknown = [u for u in getattr(self, part) if u not in known]
            if unknown:
                raise SplitError(f"{where}: {len(unknown)} {part} utterance(s) are not in {name}, "
                                 f"e.g. {unknown[:3]}; was the split made from another manifest?")


def _id_list(value: object, part: str, where: str) -> list[str]:
    """A part's utterance ids: a list of strings (integers are taken as their text), no repeats."""
    if not isinstance(value, list):
        raise SplitError(f"{where}{part!r} must be a list of utterance ids, got "
                         f"{type(value).__name__}")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (str, int))]
    if bad:
        raise SplitError(f"{where}{part!r} holds non-id value(s), e.g. {bad[0]!r}")
    ids = [str(v) for v in value]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(u for u in ids if u in seen or seen.add(u))
        raise SplitError(f"{where}{part!r} lists utterance {dup!r} more than once")
    return ids


# --------------------------------------------------------------------------- helpers
def parse_ratio(value: object, where: str = "",
                error: type[UserError] = SplitError) -> float | None:
    """'1:20', '1/20', '20' or 20 -> 20.0; None, 'none', 'full' -> None (no subsampling).

    The one reader of an imbalance ratio (make_split, split files, grids), so each refuses a
    bad one in the same words; `error` is the caller's UserError class, `where` its prefix."""
    if value is None:
        return None
    bad = error(f"{where}bad ratio {value!r}; write 1:r (e.g. '1:20'), r or 'full'")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise bad
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"", "none", "full"}:
            return None
        m = re.fullmatch(r"(?:([0-9.]+)\s*[:/-]\s*)?([0-9.]+)", text)
        try:
            a = float(m.group(1)) if m and m.group(1) else 1.0
            r = float(m.group(2)) / a if m and a else float("nan")
        except ValueError:
            raise bad from None
        if not m:
            raise bad
    else:
        r = float(value)
    if not math.isfinite(r) or r < 1:
        raise error(f"{where}ratio {value!r} must be 1:r with a finite r >= 1")
    return r


def majority_classes(manifest: Manifest) -> np.ndarray:
    """Strict-majority class per utterance (-1 = none), from soft labels or else votes."""
    if manifest.has_soft:
        return strict_majority(manifest.soft_labels())
    if manifest.has_votes:
        return strict_majority(manifest.votes(), smoothed=False)
    raise SplitError("manifest has neither soft_<class> nor votes_<class> columns")


def _genders(manifest: Manifest) -> np.ndarray:
    if "gender" not in manifest.df.columns:
        raise SplitError("gender-imbalance splits need a 'gender' column in the manifest")
    return manifest.df["gender"].astype(object).where(manifest.df["gender"].notna(), "").to_numpy()


def majority_counts(manifest: Manifest, utt_ids: list[str] | None = None) -> pd.DataFrame:
    """Strict-majority emotion x gender counts (rows: classes + 'none'; columns F, M, NA)."""
    maj = majority_classes(manifest)
    gen = _genders(manifest) if "gender" in manifest.df.columns else np.full(len(maj), "")
    if utt_ids is not None:
        idx = manifest.index_of(list(utt_ids))
        maj, gen = maj[idx], gen[idx]
    names = np.array([*manifest.classes, "none"], dtype=object)[maj]
    tab = pd.crosstab(pd.Categorical(names, [*manifest.classes, "none"]),
                      pd.Categorical(np.where(gen == "", "NA", gen), ["F", "M", "NA"]),
                      dropna=False)
    tab.index.name, tab.columns.name = "emotion", "gender"
    return tab


def majority_gender(manifest: Manifest, direction: str = "natural") -> dict[str, str]:
    """Majority gender per emotion: dataset-wide trend over all rows, or forced by direction."""
    if direction not in DIRECTIONS:
        raise SplitError(f"direction {direction!r} not in {DIRECTIONS}")
    if direction != "natural":
        g = "F" if direction == "female-major" else "M"
        return {c: g for c in manifest.classes}
    tab = majority_counts(manifest)
    return {c: ("M" if tab.loc[c, "M"] > tab.loc[c, "F"] else "F") for c in manifest.classes}


def _seed_for(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), *(zlib.crc32(k.encode()) for k in keys)])


def _subsample(eligible: np.ndarray, ids: np.ndarray, maj: np.ndarray, gen: np.ndarray,
               classes: list[str], major: dict[str, str], r: float, seed: int, fold: str,
               part: str) -> tuple[np.ndarray, dict]:
    """Boolean row mask of the kept utterances among `eligible` rows, and counts per emotion."""
    keep = np.zeros(len(ids), dtype=bool)
    counts: dict[str, dict[str, int]] = {}
    for k, c in enumerate(classes):
        g_maj = major[c]
        g_min = "F" if g_maj == "M" else "M"
        in_c = eligible & (maj == k)
        majority = np.flatnonzero(in_c & (gen == g_maj))
        minority = np.flatnonzero(in_c & (gen == g_min))
        minority = minority[np.argsort(ids[minority], kind="stable")]  # row-order independent
        n_min = min(math.floor(len(majority) / r + 1e-9), len(minority))
        order = _seed_for(seed, str(fold), part, c).permutation(len(minority))
        keep[majority] = True
        keep[minority[order[:n_min]]] = True
        counts[c] = {g_maj: len(majority), g_min: n_min}
    return keep, counts


def _count(maj: np.ndarray, gen: np.ndarray, classes: list[str]) -> dict:
    return {c: {g: int(((maj == k) & (gen == g)).sum()) for g in GENDERS}
            for k, c in enumerate(classes)}


# --------------------------------------------------------------------------- public API
def make_split(manifest: Manifest, fold: str | int, ratio: str | float | None = None,
               direction: str = "natural", seed: int = 0) -> Split:
    """Train/dev/test ids of one fold; with `ratio` 1:r, the IDI gender-imbalance subsample.

    ``ratio=None`` keeps the full train and dev parts (no majority filter). Split.info holds the
    strict-majority counts per part x emotion x gender, gender totals, and what was dropped.
    """
    fold = str(fold)
    r = parse_ratio(ratio)
    if direction not in DIRECTIONS:
        raise SplitError(f"direction {direction!r} not in {DIRECTIONS}")
    col = f"split_{fold}"
    if col not in manifest.df.columns:
        raise SplitError(f"fold {fold!r} not in manifest; folds: {manifest.folds}")
    ids = manifest.df["utt_id"].astype(str).to_numpy()
    part_of = manifest.df[col].to_numpy(object)
    maj = majority_classes(manifest)
    if r is not None or "gender" in manifest.df.columns:
        gen = _genders(manifest)  # raises when a ratio is asked for without a gender column
    else:
        gen = np.full(len(ids), "", dtype=object)
    major = majority_gender(manifest, direction) if r is not None else {}
    parts: dict[str, list[str]] = {}
    info: dict = {"counts": {}, "selected": {}, "dropped": {}, "gender_totals": {}}
    for part in PARTS:
        m = part_of == part
        if r is None or part == "test":
            sel = m
        else:
            ok = m & (maj >= 0) & ((gen == "F") | (gen == "M"))
            info["dropped"][part] = {"no_strict_majority": int((m & (maj < 0)).sum()),
                                     "no_gender": int((m & (maj >= 0) & ~ok).sum())}
            sel, info["selected"][part] = _subsample(
                ok, ids, maj, gen, manifest.classes, major, r, seed, fold, part)
        parts[part] = ids[sel].tolist()
        info["counts"][part] = _count(maj[sel], gen[sel], manifest.classes)
        info["gender_totals"][part] = {g: int((sel & (gen == g)).sum()) for g in GENDERS}
        info["gender_totals"][part]["all"] = int(sel.sum())
    split = Split(fold=fold, train=parts["train"], dev=parts["dev"], test=parts["test"],
                 ratio=r, direction=direction, seed=int(seed), majority_gender=major, info=info,
                 manifest_hash=manifest.content_hash())
    split.validate(f"fold {fold}")
    return split


def block_folds(speakers: pd.Series | np.ndarray, blocks: list[list[str]]) -> pd.DataFrame:
    """Fold i: test = block i, dev = block i+1 (cyclic), train = the rest (EMO-SUPERB scheme).

    Returns a DataFrame of ``split_1..split_k`` columns aligned with `speakers`; speakers in no
    block get NA in every fold.
    """
    k = len(blocks)
    if k < 3:
        raise SplitError(f"need at least 3 speaker blocks for train/dev/test, got {k}")
    block_of: dict[str, int] = {}
    for b, spk in enumerate(blocks):
        for s in spk:
            if str(s) in block_of:
                raise SplitError(f"speaker {s!r} is in blocks {block_of[str(s)]} and {b}")
            block_of[str(s)] = b
    blk = pd.Series(np.asarray(speakers, dtype=object)).astype(str).map(block_of)
    out = {}
    for i in range(k):
        col = pd.Series(pd.NA, index=blk.index, dtype=object)
        col[blk.notna()] = "train"
        col[blk == i] = "test"
        col[blk == (i + 1) % k] = "dev"
        out[f"split_{i + 1}"] = col
    return pd.DataFrame(out)


def make_folds(manifest: Manifest, k: int = 5, seed: int = 0, overwrite: bool = False) -> Manifest:
    """Add k speaker-independent folds (``split_1..split_k``), speakers dealt by gender.

    Speakers of each gender (a speaker's most frequent gender; NA last) are shuffled with `seed`
    and dealt round-robin into k blocks, the deal continuing across genders, so every block gets
    about the same number of female and of male speakers. Then `block_folds`.
    """
    from emodebias.data.manifest import Manifest

    if manifest.split_columns and not overwrite:
        raise SplitError(f"manifest already has folds {manifest.folds}; pass overwrite=True")
    df = manifest.df.drop(columns=manifest.split_columns)
    gender = df["gender"] if "gender" in df.columns else pd.Series(pd.NA, index=df.index)
    spk = df["speaker"].astype(str)
    per_spk = gender.groupby(spk).agg(lambda g: g.mode().iloc[0] if g.notna().any() else "NA")
    if per_spk.size < k:
        raise SplitError(f"{per_spk.size} speaker(s) cannot fill {k} speaker-independent folds")
    rng = np.random.default_rng(seed)
    blocks: list[list[str]] = [[] for _ in range(k)]
    pos = 0
    for g in sorted(per_spk.unique(), key=lambda v: (v == "NA", v)):
        members = sorted(per_spk.index[per_spk == g])
        for s in rng.permutation(np.array(members, dtype=object)):
            blocks[pos % k].append(str(s))
            pos += 1
    df = pd.concat([df, block_folds(spk, blocks).set_index(df.index)], axis=1)
    info = {**manifest.info, "folds": {"method": "make_folds", "k": k, "seed": seed,
                                       "blocks": blocks}}
    return Manifest(df, manifest.classes, manifest.corpus, info)


# --------------------------------------------------------------------------- support warnings
MIN_GROUP_UTTERANCES = 10  # fewer train/dev utterances of a group than this: warn
MIN_GROUP_SPEAKERS = 2  # fewer train/dev speakers of a group than this: warn


def group_support_warnings(manifest: Manifest, split: Split, attribute: str = "gender",
                           min_utterances: int = MIN_GROUP_UTTERANCES,
                           min_speakers: int = MIN_GROUP_SPEAKERS,
                           per_emotion: bool = True) -> list[str]:
    """One line per (train or dev part, group of `attribute`) with too little support.

    Why: at strong imbalance the minority group can nearly vanish from a part (at 1:20 on a small
    corpus, often from dev), so training or dev-loss model selection never sees it; nothing
    fails, the numbers just stop meaning what they seem to. Groups are the attribute's values
    over the whole manifest, so a group absent from a part is reported with 0. With
    `per_emotion`, a strict-majority emotion of a part that has utterances of some groups but
    none of another (its minority vanished at this ratio) is reported too.
    """
    if attribute not in manifest.df.columns:
        return []
    values = manifest.df[attribute]
    groups = sorted(str(v) for v in values.dropna().unique())
    maj = majority_classes(manifest) if per_emotion else None
    out = []
    for part in ("train", "dev"):
        ids = getattr(split, part)
        pos = manifest.index_of(list(ids)) if ids else np.zeros(0, dtype=np.int64)
        rows = manifest.df.iloc[pos]
        if maj is not None and len(groups) > 1:
            attr = rows[attribute].astype(object).where(rows[attribute].notna(), "").astype(str)
            for c, emotion in enumerate(manifest.classes):
                in_c = maj[pos] == c
                counts = {g: int((in_c & (attr == g).to_numpy()).sum()) for g in groups}
                empty = [g for g, n in counts.items() if n == 0]
                if empty and any(counts.values()):
                    have = ", ".join(f"{attribute}={g}: {n}" for g, n in counts.items() if n)
                    out.append(f"{split.name}: the {part} part has no {attribute}="
                               f"{'/'.join(empty)} utterance of {emotion} ({have})")
        for g in groups:
            sel = rows[rows[attribute].astype(object).astype(str) == g]
            n_utt, n_spk = len(sel), int(sel["speaker"].nunique())
            if n_utt < min_utterances or n_spk < min_speakers:
                stage = "training" if part == "train" else "model selection"
                out.append(
                    f"{split.name}: the {part} part has {n_utt} {attribute}={g} utterance(s) "
                    f"from {n_spk} speaker(s) (fewer than {min_utterances} utterances or "
                    f"{min_speakers} speakers): {stage} barely sees that group; use a milder "
                    "ratio, a larger corpus or other folds")
    return out
