"""Class names: reading and checking a class list, the form people read, the form lookups
compare, and the closest name offered when a lookup fails.

A class name is kept exactly as given in a sequence, a JSON list or a folder's name, spaces at
its ends included (the labels of a folder named " a " are " a "). A comma list and the lines
of a text file are stripped of the spaces around each name; a name that begins or ends with
whitespace is written there with escapes (``\\x20a``, ``data.names.name_text``).

Template prompts use a class name exactly as given (``text.templates``), as open_clip and
CLIP_benchmark do. Two other forms of a name are derived here and nowhere else:

- ``display_name``: the name as a person reads it, '_' read as a space ("great_white_shark"
  -> "great white shark"); nothing else changes. Descriptor prompts and LLM questions use it.
- ``match_key``: the form in which a name matches a file's key, '_' read as a space, runs of
  whitespace made one space, ends stripped, case folded ("Great_White  shark" ->
  "great white shark").
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..data.files import read_json, read_text
from ..data.names import label_text, text_name
from ..errors import InputError


def parse_classnames(spec: str | os.PathLike | Sequence[str], *, repeats: bool = False
                     ) -> list[str]:
    """Class names from a file (one per line, or a JSON list), a comma list, or a sequence.

    repeats : allow a name more than once (standard lists do: open_clip's ImageNet list names
        "missile" twice; the classifiers then label classes by position).
    """
    if isinstance(spec, (str, os.PathLike)) and Path(spec).is_file():
        path = Path(spec)
        if path.suffix.lower() == ".json":
            names = read_json(path, "class file")
            if not isinstance(names, list):
                raise InputError(f"class file '{path}' must hold a JSON list of class names.")
            for i, name in enumerate(names, 1):
                if not isinstance(name, str):
                    raise InputError(f"class file '{path}': item {i} is "
                                     f"{json.dumps(name)[:40]}, not a class name (a string).")
        else:
            names = [line.strip() for line in read_text(path, "class file").splitlines()]
            names = [text_name(n) for n in names if n and not n.startswith("#")]
        source = f"class file '{path}'"
    elif isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text.strip() and Path(text).is_dir():
            raise InputError(f"class file '{text}' is a folder, not a file.")
        if not isinstance(spec, str) or os.sep in spec or spec.endswith((".txt", ".json")):
            raise InputError(f"class file '{text}' does not exist.")
        names, source = [text_name(n.strip()) for n in spec.split(",")], "class list"
    else:
        names, source = [str(n) for n in spec], "class list"
    return validate_classnames(names, source, repeats=repeats)


def validate_classnames(names: Sequence[str], source: str = "class list", *,
                        repeats: bool = False) -> list[str]:
    """The names as given, bytes that are not UTF-8 (from a command line or a file name)
    written as ``\\xNN`` (``names.label_text``); an empty list, an empty or blank name or
    (unless ``repeats``) a repeated name is an InputError."""
    try:
        names = [label_text(str(n)) for n in names]
    except UnicodeEncodeError:
        raise InputError(f"the {source} has a class name that is not text (a lone "
                         f"surrogate).") from None
    blank = [not n.strip() for n in names]
    if all(blank):
        raise InputError(f"the {source} is empty.")
    if any(blank):
        raise InputError(f"the {source} has an empty class name at position "
                         f"{blank.index(True) + 1}.")
    seen: set[str] = set()
    for name in [] if repeats else names:
        if name in seen:
            raise InputError(f"the {source} names class '{name}' more than once.")
        seen.add(name)
    return names


def display_name(name: str) -> str:
    """A class name as a person reads it: '_' read as a space."""
    return name.replace("_", " ")


def match_key(name: str) -> str:
    """The lookup form of a name: '_' read as a space, whitespace collapsed, case folded."""
    return " ".join(display_name(name).split()).casefold()


def closest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate whose match key is closest to ``name``'s (difflib ratio >= 0.6), or None.

    Among candidates with the same match key the first one is returned.
    """
    by_key: dict[str, str] = {}
    for candidate in candidates:
        by_key.setdefault(match_key(candidate), candidate)
    close = difflib.get_close_matches(match_key(name), list(by_key), n=1, cutoff=0.6)
    return by_key[close[0]] if close else None
