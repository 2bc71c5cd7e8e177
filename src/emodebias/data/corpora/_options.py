"""Adapter options, read from each adapter's own `load` signature so help and errors cannot drift.

An adapter module declares its options once, as the keyword parameters of ``load`` (with type
hints and defaults) plus ``OPTION_HELP`` (one line per option). An adapter whose ``load`` takes
``**options`` also defines ``keyword_options()`` returning the `inspect.Parameter`s behind them.
`adapter_options` turns that into `AdapterOption`s, which `prepare --help`, the unknown-option
error and `coerce` (text from the CLI or YAML -> the hinted type) all read.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

# Options every corpus takes (handled by `load_corpus`, not by the adapter).
COMMON_OPTIONS = {
    "make_folds": (int | None, None,
                   "Add K speaker-independent, gender-balanced folds (CLI: --make-folds K); "
                   "replaces an adapter's own default folds, refused where a corpus has "
                   "official ones."),
    "fold_seed": (int | None, None, "Seed of the speaker deal into folds (CLI: --seed)."),
}
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_NONE = {"none", "null"}


class _Mismatch(Exception):
    """A value that does not fit a type hint (turned into a CorpusError by `coerce`)."""


@dataclass(frozen=True)
class AdapterOption:
    """One keyword option of a corpus adapter: its type hint, default and one-line help."""

    name: str
    hint: object
    default: object = inspect.Parameter.empty
    help: str = ""
    common: bool = False  # taken by every corpus (handled by `load_corpus`)

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    @property
    def kind(self) -> str:
        """What the value looks like, for help and errors ('INT', 'PATH', 'A,B,...')."""
        return _kind(self.hint)

    def usage(self) -> str:
        """``name=KIND`` with its default, e.g. ``folds=INT (default 5)``."""
        if self.required:
            return f"{self.name}={self.kind} (required)"
        return f"{self.name}={self.kind} (default {_show(self.default)})"


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def _members(hint: object) -> tuple[object, ...]:
    """The types of a union without NoneType; a plain type is its own single member."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(hint) if a is not type(None))
    return (hint,)


def _kind(hint: object) -> str:
    words = []
    for t in _members(hint):
        origin, args = typing.get_origin(t), typing.get_args(t)
        if t is bool:
            words.append("BOOL")
        elif t is int:
            words.append("INT")
        elif t is float:
            words.append("NUM")
        elif t is Path:
            words.append("PATH")
        elif t is str:
            words.append("TEXT")
        elif origin is tuple and args and args[-1] is not Ellipsis:
            words.append(",".join(_kind(a) for a in args))
        elif origin in (list, tuple):
            words.append(f"{_kind(args[0]) if args else 'TEXT'},...")
        elif origin is dict:
            words.append("KEY:VALUE,...")
        else:
            words.append("VALUE")
    if "TEXT" in words and "PATH" in words:
        words.remove("TEXT")  # `str | Path` is a path given as text
    if "TEXT" in words and "TEXT,..." in words:
        words.remove("TEXT")  # a list may be given as one comma-separated text
    return "|".join(dict.fromkeys(words))


def _convert(value: object, hint: object) -> object:
    """`value` as `hint`; text is parsed (CLI / YAML), Python values are checked."""
    members = _members(hint)
    if len(members) > 1 or type(None) in typing.get_args(hint):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            if type(None) in typing.get_args(hint):
                return None
            raise _Mismatch
        for t in members:
            try:
                return _convert(value, t)
            except _Mismatch:
                continue
        raise _Mismatch
    t = members[0]
    origin, args = typing.get_origin(t), typing.get_args(t)
    text = value.strip() if isinstance(value, str) else None
    if t is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise _Mismatch
    if t in (int, float):
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, (int, float)) and (t is float or float(value).is_integer()):
            return t(value)
        if text is None:
            raise _Mismatch
        try:
            return t(text)
        except ValueError:
            raise _Mismatch from None
    if t is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a YAML number used as a name
        raise _Mismatch
    if t is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _Mismatch
    if origin in (list, tuple):
        if text is not None:
            items: list = [v.strip() for v in text.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise _Mismatch
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise _Mismatch
            return tuple(_convert(v, a) for v, a in zip(items, args, strict=True))
        inner = args[0] if args else str
        converted = [_convert(v, inner) for v in items]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        if text is None:
            raise _Mismatch
        pairs = [p.partition(":") for p in text.split(",") if p.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise _Mismatch
        return {k.strip(): v.strip() for k, _, v in pairs}
    return value


def adapter_module(name: str) -> ModuleType:
    """Import the adapter module `emodebias.data.corpora.<name>`."""
    return importlib.import_module(f"emodebias.data.corpora.{name}")


def adapter_options(name: str) -> list[AdapterOption]:
    """The keyword options of corpus `name` (without `root`), in signature order, then the
    options every corpus takes (`COMMON_OPTIONS`)."""
    module = adapter_module(name)
    loader = module.load
    hints = typing.get_type_hints(loader)
    params = list(inspect.signature(loader).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        params += list(module.keyword_options())
    helps: dict[str, str] = getattr(module, "OPTION_HELP", {})
    out = [AdapterOption(p.name, hints.get(p.name, p.annotation), p.default,
                         helps.get(p.name, ""))
           for p in params if p.name != "root" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    taken = {o.name for o in out}
    out += [AdapterOption(n, hint, default, text, common=True)
            for n, (hint, default, text) in COMMON_OPTIONS.items() if n not in taken]
    return out


def options_line(name: str, options: list[AdapterOption] | None = None) -> str:
    """One line naming every option of corpus `name`, for error messages."""
    options = adapter_options(name) if options is None else options
    return (f"corpus {name!r} takes: {', '.join(o.usage() for o in options)} "
            "(see `emodebias prepare --help`)")


def coerce(corpus: str, options: list[AdapterOption], given: dict[str, object]) -> dict:
    """Check option names and convert values to their hinted types; one-line CorpusError else."""
    from emodebias.data.corpora._base import CorpusError

    by_name = {o.name: o for o in options}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        hint = ("; folds come from make_folds=K (CLI: --make-folds K)"
                if {"folds", "k", "n_folds"} & set(unknown) else "")
        raise CorpusError(f"unknown option(s) {', '.join(unknown)} for "
                          f"{options_line(corpus, options)}{hint}")
    missing = [o.name for o in options if o.required and o.name not in given]
    if missing:
        raise CorpusError(f"missing required option(s) {', '.join(missing)}; "
                          f"{options_line(corpus, options)}")
    out = {}
    for key, value in given.items():
        opt = by_name[key]
        try:
            out[key] = _convert(value, opt.hint)
        except _Mismatch:
            raise CorpusError(
                f"option {key}={_show(value)!s} of corpus {corpus!r} must be {opt.kind} "
                f"({opt.usage()})"
            ) from None
    return out
