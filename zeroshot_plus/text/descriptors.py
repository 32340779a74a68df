"""Descriptor and sentence files -> per-class prompt lists (classification by description).

File format (the released DCLIP descriptors and the CuPL sentence files alike): a JSON object
``{class name: [descriptor or sentence, ...]}``. Its key order is the class order when no class
list is given.

Prompt styles, for class name k ('_' read as a space), descriptor d and a ``suffix``:

- ``"menon"``: the rule of Menon & Vondrick's code (METHODS.md §2.1), quirks included,
  ``k + ", " + m(d) + suffix`` with m(d) =
  "which is d" if d starts with the letter 'a' (so "antlers" gives "which is antlers"),
  "which d" if d starts with 'has', 'often', 'typically', 'may' or 'can' (so "canopy" gives
  "which canopy"), "which is d" if d starts with 'used', and "which has d" otherwise; the
  tests are case-sensitive prefix tests, and d = "" gives "k, which has ".
- ``"corrected"``: the same rule on the first *word* of d, case-insensitively ("a"/"an"/"used"
  -> "which is", "has"/"often"/"typically"/"may"/"can" -> "which"), so "antlers" gives
  "which has antlers".
- ``"plain"``: ``k + ", " + d + suffix``.
- ``"sentences"``: d itself is the whole prompt (CuPL sentences already name the class).

Where the class name goes (the reference's ``category_name_inclusion``), with ``prefix``
(its ``before_text``), ``between`` (``between_text``) and ``suffix`` (``after_text``):

- ``"prepend"`` (the reference's default): ``prefix + k + between + m(d) + suffix``;
- ``"append"``: ``m(d) + between + k``; the reference adds neither prefix nor suffix here;
- ``"none"``: ``m(d)`` alone.

where m(d) is the rule's clause ("menon", "corrected") or d itself ("plain"); "sentences"
ignores all four settings.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from ..data.files import read_json
from ..errors import InputError
from .classnames import closest_name, display_name, match_key

PROMPT_STYLES = ("menon", "corrected", "plain", "sentences")
NAME_POSITIONS = ("prepend", "append", "none")
AGGREGATIONS = ("mean", "max", "sum")   # DescriptionClassifier(aggregation=...)
EMPTY_DESCRIPTORS = ("name", "blank")   # DescriptionClassifier(empty_descriptors=...)
_BARE_PREFIXES = ("has", "often", "typically", "may", "can")
_SHOWN = 10  # names listed in an error message


def descriptor_phrase(descriptor: str, rule: str = "menon") -> str:
    """m(d): the descriptor turned into a relative clause ("which is/has ..."), see above."""
    if rule == "menon":
        if descriptor.startswith("a"):
            return f"which is {descriptor}"
        if descriptor.startswith(_BARE_PREFIXES):
            return f"which {descriptor}"
        if descriptor.startswith("used"):
            return f"which is {descriptor}"
        return f"which has {descriptor}"
    if rule == "corrected":
        first = descriptor.split(maxsplit=1)[0].lower() if descriptor.strip() else ""
        if first in ("a", "an", "used"):
            return f"which is {descriptor}"
        if first in _BARE_PREFIXES:
            return f"which {descriptor}"
        return f"which has {descriptor}"
    raise InputError(f"unknown descriptor rule '{rule}'; use 'menon' or 'corrected'.")


def descriptor_prompts(classname: str, descriptors: Sequence[str], style: str = "menon",
                       suffix: str = "", *, prefix: str = "", between: str = ", ",
                       position: str = "prepend") -> list[str]:
    """The prompts of one class, one per descriptor, in the given prompt style and name
    position (see the module docstring)."""
    check_prompt_style(style)
    if position not in NAME_POSITIONS:
        raise InputError(f"unknown name position '{position}'; use one of "
                         f"{', '.join(NAME_POSITIONS)}.")
    if style == "sentences":
        return list(descriptors)
    name = display_name(classname)
    clauses = list(descriptors) if style == "plain" else [
        descriptor_phrase(d, style) for d in descriptors]
    if position == "prepend":
        return [f"{prefix}{name}{between}{m}{suffix}" for m in clauses]
    if position == "append":
        return [f"{m}{between}{name}" for m in clauses]
    return clauses


def check_prompt_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise InputError(f"unknown prompt style '{style}'; use one of {', '.join(PROMPT_STYLES)}.")


def load_descriptor_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read ``{class: [descriptor, ...]}`` from a JSON file (descriptors or CuPL sentences)."""
    return validate_descriptors(read_json(path, "descriptor file"), f"descriptor file '{path}'")


def validate_descriptors(data, source: str = "descriptor map") -> dict[str, list[str]]:
    """Check a ``{class: [str, ...]}`` mapping and return a copy with stripped strings.

    A blank class name or descriptor is an InputError; an empty list is allowed (the class is
    then classified by its name).
    """
    if not isinstance(data, Mapping):
        raise InputError(f"the {source} must be a JSON object {{class: [descriptor, ...]}}, "
                         f"not a {type(data).__name__}.")
    if not data:
        raise InputError(f"the {source} names no classes.")
    checked = {}
    for name, items in data.items():
        if not str(name).strip():
            raise InputError(f"the {source} has a blank class name ({json.dumps(name)}).")
        if not isinstance(items, list) or not all(isinstance(d, str) for d in items):
            raise InputError(f"the {source} must map each class to a list of strings; class "
                             f"'{name}' maps to {json.dumps(items)[:60]}.")
        if not all(d.strip() for d in items):
            blank = next(i for i, d in enumerate(items, 1) if not d.strip())
            raise InputError(f"the {source} gives class '{name}' a blank descriptor (item "
                             f"{blank}).")
        checked[str(name)] = [d.strip() for d in items]
    return checked


@dataclass
class DescriptorMatch:
    """Descriptor lists matched to a class list, and a report of what matched.

    ``descriptors[i]`` belongs to ``classnames[i]``; an empty list means the class has none
    (it is then classified by its name). ``renamed`` maps a class name to the differently
    spelt key that matched it (case, '_' or spacing), ``unused`` lists file keys no class
    asked for, ``missing`` the classes absent from the file (only with allow_missing).
    """

    source: str
    classnames: list[str]
    descriptors: list[list[str]]
    renamed: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def report(self) -> dict:
        """A JSON-serialisable summary: which classes have descriptors, counts, mismatches."""
        counts = [len(d) for d in self.descriptors]
        return {
            "source": self.source,
            "n_classes": len(self.classnames),
            "n_with_descriptors": sum(c > 0 for c in counts),
            "without_descriptors": [n for n, c in zip(self.classnames, counts) if c == 0],
            "missing": list(self.missing),
            "renamed": dict(self.renamed),
            "unused": list(self.unused),
            "descriptors_per_class": {"min": min(counts), "mean": sum(counts) / len(counts),
                                      "max": max(counts)},
        }


def match_descriptors(descriptors: str | os.PathLike | Mapping[str, Sequence[str]],
                      classnames: Sequence[str] | None = None, *,
                      allow_missing: bool = False) -> DescriptorMatch:
    """Descriptor lists for ``classnames`` (default: the file's keys, in file order).

    A class matches the key with its exact name, else the key equal to it up to case, '_'
    for ' ' and spacing. A class with no key is an error naming it (with the closest keys as
    suggestions), unless ``allow_missing``, when it gets no descriptors.
    """
    if isinstance(descriptors, (str, os.PathLike)):
        source = f"descriptor file '{descriptors}'"
        table = load_descriptor_file(descriptors)
    else:
        source = "descriptor map"
        table = validate_descriptors(descriptors, source)
    if classnames is None:
        return DescriptorMatch(source, list(table), list(table.values()))
    by_key: dict[str, str] = {}
    for key in table:
        by_key.setdefault(match_key(key), key)
    keys, renamed, missing = [], {}, []
    for name in classnames:
        key = name if name in table else by_key.get(match_key(name))
        if key is None:
            missing.append(name)
        elif key != name:
            renamed[name] = key
        keys.append(key)
    if missing and not allow_missing:
        hints = [_with_hint(name, table) for name in missing[:_SHOWN]]
        more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise InputError(f"the {source} has no entry for {len(missing)} of the "
                         f"{len(classnames)} classes: {', '.join(hints)}{more}.")
    used = set(keys)
    return DescriptorMatch(source, list(classnames),
                           [list(table[k]) if k is not None else [] for k in keys],
                           renamed, [k for k in table if k not in used], missing)


def _with_hint(name: str, keys: Iterable[str]) -> str:
    close = closest_name(name, keys)
    return f"'{name}' (did you mean '{close}'?)" if close else f"'{name}'"
