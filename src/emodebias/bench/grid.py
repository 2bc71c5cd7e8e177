"""Benchmark grids: a YAML file (or a shipped preset) -> a validated list of `RunSpec`s.

A grid names the shared axes once (corpus, encoders, folds, ratios, directions, seeds) and lists
`runs:` entries, each a method (or list of methods) with its group sources and hyperparameters;
an entry may override any shared axis. Every combination becomes one `RunSpec` with a readable
`name` and a content `hash` (sha256 of the canonical spec), which is the run's identity on disk:
the same spec always maps to the same record, so a grid can be resumed or extended safely.

Run-time settings are not part of that identity: the `device` (a grid started on a GPU may be
finished on the CPU; older grids that set it inside encoder or train options are accepted, the
value moved out of the hash and the feature cache key) and reused feature stores (`features:`; a
store is checked against the grid's manifest and encoder before use, so it holds exactly the
numbers the grid would extract).

Grid file reference (every key optional unless marked)::

    name: my-grid
    description: free text
    variables: {data: /path}          # defaults for ${data} placeholders (CLI: --var data=...)
    corpus: synthetic                 # or {name: emo_superb, root: ${data}/..., make_folds: 5}
    encoder: acoustic                 # or a list; or {name: wavlm-base-plus, layers: ...}
    folds: [1, 2, 3, 4, 5]            # required
    ratios: ["1:20"]                  # "1:r", r, or "full" (no imbalance subsampling)
    directions: [natural]             # natural | female-major | male-major | both
    seeds: [0]                        # training seeds
    split_seed: 0                     # seed of the minority-gender sampling (one per fold)
    pseudo_model: path-or-name        # what bare `pseudo` group sources use
    cluster_encoder: resemblyzer      # what bare `cluster:k=K` group sources embed with
    train: {epochs: 50, batch_size: 32, lr: 1.0e-4}
    evaluation: {attributes: [gender, age_group, race], n_boot: 0}
    device: cuda                      # extraction + training device (CLI --device overrides)
    features: {wavlm-base-plus: ${feats}}  # reuse stores made by `emodebias extract` (or a
                                      # path alone: the store of the grid's one encoder)
    extras: [...]                     # like runs; marked block "extras" in each spec/record
    test_corpus: [{name: emodb, root: ${data}/emodb, class_map: {angry: anger}}]
    shared_classes: [anger, sadness]  # cross-corpus evaluation (bench/cross_corpus.py)
    train_class_map: {angry: anger}   # the training corpus's classes -> shared_classes
    selection: {rule: dev_worst_group_f1, groups: truth}  # how searches keep a trial
    runs:                             # required
      - method: erm
      - {method: [rw, gdro], groups: [truth, pseudo, "cluster:k=16"]}
      - {method: adv, groups: truth, hparams: {lambda_adv: [0.1, 1.0]}}   # lists = sweep
      - {method: gdro, groups: truth, search: {trials: 20, seed: 0}}      # a random search
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from emodebias.bench.selection import SelectionConfig, check_selection
from emodebias.data.splits import parse_ratio as parse_split_ratio
from emodebias.errors import UserError
from emodebias.training.search import check_search

DIRECTIONS = ("natural", "female-major", "male-major")
# Methods of DESIGN.md; used to validate names when the method registry is not importable.
KNOWN_METHODS = (
    "erm", "random", "rw", "ds", "gdro", "gadro", "pgdro", "adv", "madv", "lff", "disent",
    "sih", "gr", "mmd", "jtt", "eo_thresh",
)
# Methods that run without any training groups (and reject them).
GROUP_FREE = {"erm", "random", "lff", "disent", "sih", "jtt"}
SHARED_KEYS = {
    "name", "description", "variables", "corpus", "encoder", "folds", "ratios", "directions",
    "seeds", "split_seed", "pseudo_model", "cluster_encoder", "train", "evaluation", "runs",
    "extras", "device", "features", "test_corpus", "shared_classes", "train_class_map",
    "selection",
}
ENTRY_AXES = {"corpus", "encoder", "folds", "ratios", "directions", "seeds", "split_seed", "train",
              "evaluation"}
ENTRY_KEYS = {"method", "groups", "hparams", "search"} | ENTRY_AXES
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
RUNTIME_FIELDS = ("device", "features")


class GridError(UserError):
    """A grid file is malformed; the message names the file, the entry and the key."""


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines one run's numbers; its hash is the run's identity."""

    corpus: str
    corpus_opts: dict = field(default_factory=dict)
    encoder: str = "acoustic"
    encoder_opts: dict = field(default_factory=dict)
    fold: str = "1"
    ratio: float | None = None
    direction: str = "natural"
    split_seed: int = 0
    groups: str = "none"
    method: str = "erm"
    hparams: dict = field(default_factory=dict)
    seed: int = 0
    train: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    # "extras": the grid lists the run under `extras:` (a method from neither paper), so reports
    # can mark it; "main" runs omit the field, so their hashes are unchanged
    block: str = "main"
    # run-time settings (RUNTIME_FIELDS): carried to the workers and into the record, never
    # part of the hash; defaults are omitted like `block`'s
    device: str = "cpu"
    features: dict = field(default_factory=dict)  # encoder name -> FeatureStore dir to reuse
    # cross-corpus evaluation (`bench.cross_corpus.parse_grid`): shared classes, class maps and
    # test corpora; part of the hash (it adds results), omitted when empty like `block`
    cross_corpus: dict = field(default_factory=dict)
    # a hyperparameter search's trial: {trials, seed, trial, space (the searched names)}, plus
    # best: true for a rerun of the chosen trial (`bench --best`); omitted when empty like
    # `block`, so runs outside searches keep their hashes
    search: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = copy.deepcopy(asdict(self))
        for key, default in (("block", "main"), ("device", "cpu"), ("features", {}),
                             ("cross_corpus", {}), ("search", {})):
            if d[key] == default:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise GridError(f"run spec has unknown field(s) {sorted(unknown)}")
        return cls(**d)

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON spec without its run-time settings (12 hex digits): the
        run's directory name."""
        return content_hash({k: v for k, v in self.to_dict().items()
                             if k not in RUNTIME_FIELDS})

    @property
    def ratio_label(self) -> str:
        return "full" if self.ratio is None else f"1:{self.ratio:g}"

    @property
    def name(self) -> str:
        """Readable identity, e.g. ``synthetic.acoustic.f1.1-20.natural.truth-gender.rw.s0``."""
        space = set(self.search.get("space", []))
        hp = ",".join(f"{k}={v}" for k, v in sorted(self.hparams.items()) if k not in space)
        trial = (f".t{self.search['trial']}{'best' if self.search.get('best') else ''}"
                 if self.search else "")
        parts = [self.corpus, self.encoder, f"f{self.fold}", self.ratio_label.replace(":", "-"),
                 self.direction, self.groups.replace(":", "-"),
                 self.method + (f"[{hp}]" if hp else "") + trial, f"s{self.seed}"]
        return ".".join(parts)

    # Keys of the stages a grid shares: runs with equal keys reuse the same cached object.
    @property
    def corpus_key(self) -> str:
        return content_hash({"corpus": self.corpus, "opts": self.corpus_opts})

    @property
    def split_key(self) -> str:
        return content_hash({"c": self.corpus_key, "fold": self.fold, "ratio": self.ratio,
                             "direction": self.direction, "seed": self.split_seed})

    @property
    def train_key(self) -> str:
        """Runs with equal train keys read one feature store with one training config (but for
        the settings a search varies per run, `shared_train`): their cells (folds, ratios, group
        sources) can train as one `fit_many` call."""
        return content_hash({"c": self.corpus_key, "enc": self.encoder, "eo": self.encoder_opts,
                             "t": self.shared_train, "e": self.evaluation, "d": self.device})

    @property
    def batch_key(self) -> str:
        """Runs with equal batch keys share features, split and groups: trainable together."""
        return content_hash({"s": self.split_key, "enc": self.encoder, "eo": self.encoder_opts,
                             "g": self.groups, "t": self.shared_train, "e": self.evaluation,
                             "d": self.device})

    @property
    def shared_train(self) -> dict:
        """The training settings a cell shares: all but those a search varies per run (lr,
        weight decay, epochs), so the trials of a search share a cell and a task and can train
        in one stack (each run still trains with its own values)."""
        from emodebias.training.search import SEARCHED_TRAIN

        return {k: v for k, v in self.train.items() if k not in SEARCHED_TRAIN}

    @property
    def store_encoders(self) -> list[str]:
        """Encoders whose feature stores this run reads: its own, and its groups' embeddings
        (cluster:<encoder>:k=K, pseudo:probe:<encoder>:<path>)."""
        out = [self.encoder]
        kind, _, rest = self.groups.partition(":")
        if kind == "cluster" or (kind == "pseudo" and rest.startswith("probe:")):
            enc = rest.split(":")[1 if kind == "pseudo" else 0]
            if enc not in out:
                out.append(enc)
        return out


def content_hash(obj: Any, n: int = 12) -> str:
    """Stable short hash of a JSON-able object (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


# ----------------------------------------------------------------------------- parsing helpers
def parse_ratio(value: Any, where: str = "") -> float | None:
    """'1:20' | 20 | 'full' | None -> r (finite float >= 1) or None: the split reader's
    parser (`emodebias.data.splits.parse_ratio`) raising GridError."""
    return parse_split_ratio(value, where, GridError)


def parse_directions(value: Any, where: str = "") -> list[str]:
    out: list[str] = []
    for d in _as_list(value):
        d = str(d).strip().lower()
        if d == "both":
            out += ["female-major", "male-major"]
        elif d in DIRECTIONS:
            out.append(d)
        else:
            raise GridError(f"{where}unknown direction {d!r}; use one of {DIRECTIONS} or 'both'")
    return out


def normalize_groups(value: Any, grid: dict, where: str = "") -> str:
    """Expand short group sources: truth -> truth:gender, pseudo -> pseudo:<pseudo_model>,
    cluster:k=16 -> cluster:<cluster_encoder>:k=16."""
    s = "none" if value is None else str(value).strip()
    kind, _, rest = s.partition(":")
    if kind == "none" and not rest:
        return "none"
    if kind == "truth":
        cols = rest or "gender"
        return f"truth:{cols}"
    if kind == "pseudo":
        model = rest or grid.get("pseudo_model")
        if not model:
            raise GridError(f"{where}groups 'pseudo' needs a model: write pseudo:<model> or set "
                            "pseudo_model at the top of the grid")
        return f"pseudo:{model}"
    if kind == "cluster":
        m = re.fullmatch(r"(?:(?P<enc>[^:]+):)?k=(?P<k>\d+)", rest)
        if not m:
            raise GridError(f"{where}bad cluster source {s!r}; write cluster:k=16 or "
                            "cluster:<encoder>:k=16")
        enc = m.group("enc") or grid.get("cluster_encoder")
        if not enc:
            raise GridError(f"{where}{s!r} needs an encoder: write cluster:<encoder>:k=K or set "
                            "cluster_encoder at the top of the grid")
        k = int(m.group("k"))
        if k < 2:
            raise GridError(f"{where}cluster k must be >= 2, got {k}")
        return f"cluster:{enc}:k={k}"
    raise GridError(f"{where}unknown group source {s!r}; use none, truth[:col+col], "
                    "pseudo[:model] or cluster[:encoder]:k=K")


def group_kind(groups: str) -> str:
    """'truth' | 'pseudo' | 'cluster' | 'none'."""
    return groups.split(":", 1)[0]


def cluster_k(groups: str) -> int | None:
    m = re.search(r"k=(\d+)$", groups)
    return int(m.group(1)) if m and groups.startswith("cluster:") else None


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _named(value: Any, what: str, where: str) -> tuple[str, dict]:
    """'name' or {name: ..., opt: ...} -> (name, opts)."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        opts = {k: v for k, v in value.items() if k != "name"}
        return value["name"], opts
    raise GridError(f"{where}{what} must be a name or a mapping with 'name', got {value!r}")


def _known_methods() -> tuple[set[str], dict[str, str]]:
    """Method names and their supervision, from the registry when it is importable."""
    try:
        from emodebias.training.methods import REGISTRY
    except ImportError:
        return set(KNOWN_METHODS), {m: ("none" if m in GROUP_FREE else "hard")
                                    for m in KNOWN_METHODS}
    sup = {name: getattr(cls, "supervision", "hard") for name, cls in REGISTRY.items()}
    return set(sup), sup


def _substitute(obj: Any, variables: dict, where: str) -> Any:
    if isinstance(obj, dict):
        return {k: _substitute(v, variables, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, variables, where) for v in obj]
    if isinstance(obj, str):
        def repl(m: re.Match) -> str:
            val = variables.get(m.group(1))
            if val is None:
                raise GridError(f"{where}variable ${{{m.group(1)}}} has no value; pass "
                                f"--var {m.group(1)}=... or set it under 'variables:'")
            return str(val)
        return _VAR.sub(repl, obj)
    return obj


# ----------------------------------------------------------------------------- grid -> specs
def expand_grid(grid: dict, source: str = "<grid>", variables: dict | None = None) -> list[RunSpec]:
    """Validate a parsed grid and expand it to RunSpecs (deterministic order, no duplicates)."""
    where = f"{source}: "
    if not isinstance(grid, dict):
        raise GridError(f"{where}a grid must be a mapping, got {type(grid).__name__}")
    unknown = set(grid) - SHARED_KEYS
    if unknown:
        raise GridError(f"{where}unknown top-level key(s) {sorted(map(str, unknown))}; allowed: "
                        f"{sorted(SHARED_KEYS)}")
    for key in ("name", "description", "pseudo_model", "cluster_encoder"):
        if grid.get(key) is not None and not isinstance(grid[key], str):
            raise GridError(f"{where}{key!r} must be text, got {grid[key]!r}")
    varmap = {**_mapping(grid.get("variables"), "variables", where), **(variables or {})}
    grid = _substitute({k: v for k, v in grid.items() if k != "variables"}, varmap, where)
    check_selection(grid.get("selection"), where)
    runs = grid.get("runs")
    if not isinstance(runs, list) or not runs:
        raise GridError(f"{where}'runs' must be a non-empty list of entries like {{method: erm}}")
    extras = grid.get("extras") or []
    if not isinstance(extras, list):
        raise GridError(f"{where}'extras' must be a list of run entries like 'runs'")
    methods, supervision = _known_methods()
    specs: dict[str, tuple[RunSpec, str]] = {}
    for i, entry, block in [(i, e, "main") for i, e in enumerate(runs)] + [
            (i, e, "extras") for i, e in enumerate(extras)]:
        at = f"{where}{'runs' if block == 'main' else 'extras'}[{i}]: "
        if isinstance(entry, str):
            entry = {"method": entry}
        if not isinstance(entry, dict) or "method" not in entry:
            raise GridError(f"{at}each entry needs a 'method', got {entry!r}")
        bad = set(entry) - ENTRY_KEYS
        if bad:
            raise GridError(f"{at}unknown key(s) {sorted(map(str, bad))}; allowed: "
                            f"{sorted(ENTRY_KEYS)}")
        axes = {k: entry.get(k, grid.get(k)) for k in ENTRY_AXES}
        for spec in _expand_entry(entry, axes, grid, at, methods, supervision):
            spec = replace(spec, block=block)
            h = spec.hash
            if h in specs:
                raise GridError(f"{at}run {spec.name} duplicates one from {specs[h][1]}")
            specs[h] = (spec, at.removeprefix(where).rstrip(": "))
    runs = [s for s, _ in specs.values()]
    stores = _feature_stores(grid.get("features"), runs, where)
    from emodebias.bench.cross_corpus import parse_grid

    cross = parse_grid(grid, {s.corpus for s in runs}, where)
    return [replace(s, features={e: stores[e] for e in s.store_encoders if e in stores},
                    cross_corpus=copy.deepcopy(cross)) for s in runs]


def search_trials(spec: RunSpec, search: dict) -> list[RunSpec]:
    """One spec per trial of a `search: {trials, seed}`: the trial's drawn values go into its
    hparams and train settings (the entry's own hparams stay fixed), and its search block names
    them (trial 0 is the defaults)."""
    from emodebias.training.search import draw

    out = []
    for t in range(search["trials"]):
        hp, tr = draw(spec.method, search["seed"], t, spec.train, fixed=spec.hparams)
        out.append(replace(spec, hparams={**spec.hparams, **hp}, train={**spec.train, **tr},
                           search={**search, "trial": t, "space": sorted({*hp, *tr})}))
    return out


def load_selection(name_or_path: str | Path, variables: dict | None = None
                   ) -> SelectionConfig:
    """The grid's `selection:` as a `SelectionConfig` (the default rule when absent)."""
    grid, source = read_grid(name_or_path)
    if not isinstance(grid, dict):
        return check_selection(None)
    grid = _substitute(grid, {**(grid.get("variables") or {}), **(variables or {})},
                       f"{source}: ")
    return check_selection(grid.get("selection"), f"{source}: ")


def _runtime_device(top: Any, encoders: list[tuple[str, dict]], train: dict,
                    at: str) -> tuple[str, list[tuple[str, dict]], dict]:
    """The run device, from `device:` or (older grids) an encoder's or train's `device` option,
    which are removed there so that the device stays out of hashes and cache keys. Whether the
    device exists is checked when the grid runs (`--device` may override it)."""
    from emodebias.features.encoders.base import EncoderError, check_device

    given = {} if top is None else {"device": top}
    given.update({f"encoder {name}": opts["device"] for name, opts in encoders if "device" in opts})
    if "device" in train:
        given["train.device"] = train["device"]
    try:
        found = {k: check_device(v, f"{at}{k}", available=False) for k, v in given.items()}
    except EncoderError as exc:
        raise GridError(str(exc)) from None
    bare = [(name, {k: v for k, v in opts.items() if k != "device"}) for name, opts in encoders]
    if len(set(found.values())) > 1:
        raise GridError(f"{at}conflicting devices {found}; set one `device:` for the grid or "
                        "pass --device")
    device = next(iter(found.values()), "cpu")
    return device, bare, {k: v for k, v in train.items() if k != "device"}


def _feature_stores(value: Any, specs: list[RunSpec], where: str) -> dict[str, str]:
    """`features:` -> {encoder name: absolute store dir}; a bare path names the store of the
    grid's only encoder. Each must be a store folder of an encoder some run reads."""
    if value is None:
        return {}
    used = sorted({e for s in specs for e in s.store_encoders})
    if isinstance(value, str):
        trained = sorted({s.encoder for s in specs})
        if len(trained) != 1:
            raise GridError(f"{where}features: a single path is ambiguous with encoders "
                            f"{trained}; write features: {{encoder: path, ...}}")
        value = {trained[0]: value}
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise GridError(f"{where}features must be a store path or a mapping encoder: path, got "
                        f"{value!r}")
    out = {}
    for enc, path in value.items():
        if enc not in used:
            raise GridError(f"{where}features: no run reads encoder {enc!r}; the grid's "
                            f"encoders are {used}")
        store = Path(path).expanduser().resolve()
        if not (store / "meta.json").is_file():
            raise GridError(f"{where}features: {path} is not a feature store (no meta.json); "
                            "make one with `emodebias extract`")
        out[str(enc)] = str(store)
    return out


def _expand_entry(entry: dict, axes: dict, grid: dict, at: str, methods: set[str],
                  supervision: dict[str, str]) -> list[RunSpec]:
    if axes["corpus"] is None:
        raise GridError(f"{at}no corpus (set 'corpus' at the top of the grid)")
    corpus, corpus_opts = _named(axes["corpus"], "corpus", at)
    if axes["folds"] is None:
        raise GridError(f"{at}no folds (set 'folds: [1, 2, 3, 4, 5]')")
    folds = _names(axes["folds"], "folds", at)
    ratios = [parse_ratio(r, at) for r in _as_list(axes["ratios"] or ["full"])]
    directions = parse_directions(axes["directions"] or ["natural"], at)
    seeds = _ints(axes["seeds"] if axes["seeds"] is not None else [0], "seeds", at)
    if isinstance(axes["split_seed"], (list, tuple, dict)):
        raise GridError(f"{at}split_seed must be one integer, got {axes['split_seed']!r}")
    split_seed = _ints(axes["split_seed"] or 0, "split_seed", at)[0]
    encoders = [_named(e, "encoder", at) for e in _as_list(axes["encoder"] or "acoustic")]
    train = _mapping(axes["train"], "train", at)
    device, encoders, train = _runtime_device(grid.get("device"), encoders, train, at)
    _check_train(train, at)
    evaluation = _mapping(axes["evaluation"], "evaluation", at)
    _check_values(evaluation, EVALUATION_RULES, "evaluation", at, closed=True)
    hp_grid = _mapping(entry.get("hparams"), "hparams", at)
    hp_keys = sorted(map(str, hp_grid))
    if len(set(hp_keys)) != len(hp_keys):  # e.g. 1 and "1": one name once made text
        raise GridError(f"{at}hparams has a repeated name")
    hp_grid = {str(k): v for k, v in hp_grid.items()}
    hp_sets = [dict(zip(hp_keys, combo, strict=True))
               for combo in itertools.product(*(_as_list(hp_grid[k]) for k in hp_keys))]
    search = None if entry.get("search") is None else check_search(entry["search"], at)
    out = []
    for method in _as_list(entry["method"]):
        method = str(method).lower()
        if method not in methods:
            raise GridError(f"{at}unknown method {method!r}; known: {sorted(methods)}")
        _check_hparams(method, hp_grid, at)
        group_list = [normalize_groups(g, grid, at)
                      for g in _as_list(entry.get("groups", "none"))]
        for g in group_list:
            needs = supervision.get(method, "hard")
            if needs == "none" and g != "none":
                raise GridError(f"{at}method {method!r} uses no groups; drop groups {g!r}")
            if needs != "none" and g == "none":
                raise GridError(f"{at}method {method!r} needs training groups; add e.g. "
                                "groups: [truth, pseudo, 'cluster:k=16']")
        for (enc, enc_opts), fold, ratio, direction, g, hp, seed in itertools.product(
            encoders, folds, ratios, directions, group_list, hp_sets, seeds
        ):
            spec = RunSpec(
                corpus=corpus, corpus_opts=corpus_opts, encoder=enc, encoder_opts=enc_opts,
                fold=fold, ratio=ratio, direction=direction, split_seed=split_seed, groups=g,
                method=method, hparams=hp, seed=seed, train=train, evaluation=evaluation,
                device=device,
            )
            out += [spec] if search is None else search_trials(spec, search)
    return out


# ----------------------------------------------------------------------------- value rules
# A rule maps a value to None (fine) or to what was expected; every grid value is checked
# before any run starts, so a bad one fails the grid at load time, not each run later.
Rule = Any  # Callable[[Any], str | None]


def _number(low: float, integer: bool = False, above: bool = False) -> Rule:
    kind = (int,) if integer else (int, float)
    want = f"{'an integer' if integer else 'a number'} {'>' if above else '>='} {low:g}"

    def rule(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, kind):
            hint = " (YAML reads 1e-4 as text: write 1.0e-4)" if isinstance(v, str) else ""
            return want + hint
        ok = math.isfinite(v) and (v > low if above else v >= low)
        return None if ok else want
    return rule


def _choice(*options: str) -> Rule:
    return lambda v: None if v in options else f"one of {list(options)}"


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "text"


def _flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _text_list(v: Any) -> str | None:
    ok = isinstance(v, list) and all(isinstance(a, str) for a in v)
    return None if ok else "a list of column names"


def _combos(v: Any) -> str | None:
    ok = isinstance(v, list) and all(isinstance(c, list) and c and _text_list(c) is None
                                     for c in v)
    return None if ok else "a list of column-name lists, e.g. [[gender, age_group]]"


TRAIN_RULES: dict[str, Rule] = {
    "epochs": _number(1, integer=True), "batch_size": _number(1, integer=True),
    "lr": _number(0, above=True), "weight_decay": _number(0),
    "select": _choice("dev_loss", "last"), "max_stack": _number(1, integer=True),
    "preload_max_gb": _number(0), "eval_chunk": _number(1, integer=True),
}
EVALUATION_RULES: dict[str, Rule] = {
    "attributes": _text_list, "intersections": _combos, "speaker_bootstrap": _flag,
    "threshold": _number(0, above=True), "n_boot": _number(0, integer=True),
    "n_perm": _number(0, integer=True), "seed": _number(0, integer=True),
    "min_support": _number(1, integer=True), "min_speakers": _number(1, integer=True),
    "max_unusable": _number(0), "ci": _number(0, above=True),
}


def _check_values(values: dict, rules: dict[str, Rule], what: str, at: str,
                  closed: bool = False) -> None:
    """Each value must pass its rule; with `closed`, keys without a rule are unknown."""
    for key, value in values.items():
        rule = rules.get(key)
        if rule is None:
            if closed:
                raise GridError(f"{at}unknown {what} setting {key!r}; known: {sorted(rules)}")
            continue
        want = rule(value)
        if want is not None:
            raise GridError(f"{at}{what}.{key} must be {want}, got {value!r}")


def _check_train(train: dict, at: str) -> None:
    """Unknown or out-of-range training settings fail here, not in every run (imports torch
    only if needed)."""
    if not train:
        return
    from dataclasses import fields

    from emodebias.training import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    bad = sorted(map(str, set(train) - known))
    if bad:
        raise GridError(f"{at}unknown train setting(s) {bad}; known: {sorted(known)}")
    _check_values(train, TRAIN_RULES, "train", at)


def _check_hparams(method: str, hp_grid: dict, at: str) -> None:
    """Hyperparameter names the method declares, and values castable to its defaults' type."""
    try:
        from emodebias.training.methods import REGISTRY
    except ImportError:
        return
    cls = REGISTRY.get(method)
    declared = getattr(cls, "HPARAMS", None)
    if not isinstance(declared, dict):
        return
    for name, values in hp_grid.items():
        if name not in declared:
            raise GridError(f"{at}method {method!r} has no hyperparameter {name!r}; it has "
                            f"{sorted(declared)}")
        default = declared[name]
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        for v in _as_list(values):  # the method casts to its default's type: that must work
            try:
                ok = not isinstance(v, (bool, list, dict)) and math.isfinite(type(default)(v))
            except (TypeError, ValueError, OverflowError):
                ok = False
            if not ok:
                raise GridError(f"{at}hparams.{name} must be a finite "
                                f"{type(default).__name__}, got {v!r}")


def _ints(value: Any, what: str, at: str) -> list[int]:
    """Integers (or their decimal text); bools, fractions and empty lists are refused."""
    values = _as_list(value)
    out = []
    for v in values:
        if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise GridError(f"{at}{what} must be integers, got {value!r}")
        out.append(v)
    if not out:
        raise GridError(f"{at}{what} is empty")
    return out


def _names(value: Any, what: str, at: str) -> list[str]:
    """Fold names: text or integers, at least one, no repeats."""
    values = _as_list(value)
    if not values or any(isinstance(v, bool) or not isinstance(v, (str, int)) for v in values):
        raise GridError(f"{at}{what} must be a non-empty list of names or numbers, got {value!r}")
    names = [str(v).strip() for v in values]
    if len(set(names)) != len(names) or "" in names:
        raise GridError(f"{at}{what} repeats a value or has an empty one: {value!r}")
    return names


def _mapping(value: Any, what: str, at: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{at}{what} must be a mapping, got {value!r}")
    return dict(value)


# ----------------------------------------------------------------------------- loading
def preset_names() -> list[str]:
    """Grid presets shipped with the package (bench/presets/*.yaml)."""
    root = resources.files("emodebias.bench") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def read_grid(name_or_path: str | Path) -> tuple[dict, str]:
    """A grid file's parsed YAML and its source label; a bare name picks a shipped preset."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise GridError(f"grid file {path} does not exist")
        text, source = path.read_text(), str(path)
    else:
        res = resources.files("emodebias.bench") / "presets" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise GridError(f"{name_or_path!r} is neither a grid file nor a preset; presets: "
                            f"{preset_names()}")
        text, source = res.read_text(), f"preset:{name_or_path}"
    try:
        return yaml.safe_load(text), source
    except yaml.YAMLError as exc:
        raise GridError(f"{source}: not valid YAML: {exc}") from None


def load_grid(name_or_path: str | Path, variables: dict | None = None) -> list[RunSpec]:
    """Grid file or preset name -> validated RunSpecs."""
    grid, source = read_grid(name_or_path)
    return expand_grid(grid, source, variables)
