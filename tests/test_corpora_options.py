"""Adapter options: declared once in each adapter, the same in help, errors, typing and docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from emodebias.data.corpora import CORPORA, adapter_options
from emodebias.data.corpora._base import CorpusError
from emodebias.data.corpora._options import AdapterOption, adapter_module, coerce

DOCS = Path(__file__).resolve().parents[1] / "docs" / "corpora.md"


@pytest.mark.parametrize("name", CORPORA)
def test_every_option_has_help_and_no_stale_help(name: str) -> None:
    options = adapter_options(name)
    assert all(o.help for o in options), [o.name for o in options if not o.help]
    declared = set(adapter_module(name).OPTION_HELP)
    assert declared == {o.name for o in options if not o.common}


def test_docs_list_each_adapters_options_exactly() -> None:
    """docs/corpora.md shows every option with the kind and default the code declares."""
    text = DOCS.read_text()
    sections = re.split(r"^## `(\w+)`", text, flags=re.M)
    documented = {n: re.findall(r"^- `(\w+=[^`]*)`", body, flags=re.M)
                  for n, body in zip(sections[1::2], sections[2::2], strict=True)}
    assert sorted(documented) == sorted(CORPORA)
    for name in CORPORA:
        assert documented[name] == [o.usage() for o in adapter_options(name) if not o.common]


def test_synthetic_options_come_from_its_config() -> None:
    by_name = {o.name: o for o in adapter_options("synthetic")}
    assert by_name["seconds"].usage() == "seconds=NUM,NUM (default 1.0,2.0)"
    assert by_name["n_speakers_per_gender"].default == 12 and "version" not in by_name
    typed = coerce("synthetic", list(by_name.values()),
                   {"seconds": "1, 2.5", "votes": [3, 5], "trend": "angry:M,sad:F",
                    "minority_share": "0.5", "folds": "none"})
    assert typed == {"seconds": (1.0, 2.5), "votes": (3, 5), "trend": {"angry": "M", "sad": "F"},
                     "minority_share": 0.5, "folds": None}


@pytest.mark.parametrize(("key", "value", "kind"), [
    ("seconds", "1", "NUM,NUM"), ("votes", "a,b", "INT,INT"), ("trend", "angry=M", "KEY:VALUE"),
    ("n_speakers_per_gender", "2.5", "INT"), ("n_speakers_per_gender", True, "INT"),
    ("regenerate", "2", "BOOL"), ("seed", "none", "INT"),
])
def test_wrong_types_name_the_option(key: str, value: object, kind: str) -> None:
    with pytest.raises(CorpusError, match=rf"option {key}=.* of corpus 'synthetic' must be "
                                          rf"{re.escape(kind)}"):
        coerce("synthetic", adapter_options("synthetic"), {key: value})


def test_paths_and_lists() -> None:
    options = adapter_options("table")
    typed = coerce("table", options, {"audio_root": "/a[/x]", "classes": "a, b", "soft": ["x"],
                                      "require_audio": "FALSE", "corpus": 7})
    assert typed == {"audio_root": "/a[/x]", "classes": "a, b", "soft": ["x"],
                     "require_audio": False, "corpus": "7"}
    assert coerce("emodb", adapter_options("emodb"), {"ratings": Path("r.txt")}) == {
        "ratings": Path("r.txt")}


def test_missing_required_option_is_named() -> None:
    options = [AdapterOption("labels", Path), AdapterOption("skip_bad", bool, False)]
    with pytest.raises(CorpusError, match=r"missing required option\(s\) labels; corpus 'x' "
                                          r"takes: labels=PATH \(required\), skip_bad=BOOL"):
        coerce("x", options, {"skip_bad": "true"})
    assert coerce("x", options, {"labels": "l"}) == {"labels": Path("l")}
