"""Synonym tables for REAL: per class, the name to prompt with and its candidate synonyms.

Two sources are read:

- a REAL metrics file (``metrics-LAION400M.json`` as released, or written by
  ``zeroshot-plus frequency``): a JSON object keyed by class id *strings* in any order, each
  value with ``name``, ``alternates`` ({synonym: caption count}) and ``most_common_name``.
  Rows are ordered by ``int(key)`` (the ids are the data set's labels; names may repeat, and
  a classifier then labels its classes by id, see methods/base.py), and
  ``most_common_name`` is taken as written, never recomputed from the counts: the released
  files carry manual corrections (METHODS.md §3.4, §3.6).
- a user's synonym map keyed by class name: ``{class: synonym}`` (the name to prompt with), or
  ``{class: [candidate, ...]}`` (candidates only; ``zeroshot-plus frequency`` picks among them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ..data.files import read_json
from ..errors import InputError
from .classnames import closest_name, match_key, parse_classnames, validate_classnames

NAME_TYPES = ("most_common_name", "name", "alternates")  # RealPromptClassifier(name_type=...)
REAL_PROMPT_STYLES = ("templates", "dclip", "cupl")      # RealPromptClassifier(prompt_style=...)


@dataclass
class SynonymTable:
    """Per class c (in label order): ``classes[c]`` the class name, ``chosen[c]`` the name that
    prompts use (None when only candidates are known), ``alternates[c]`` the candidate synonyms
    (a metrics file's ``alternates`` as written; a synonym map's entries after the class
    name), ``counts[c]`` their caption counts (None when unknown)."""

    classes: list[str]
    chosen: list[str | None]
    alternates: list[list[str]]
    counts: list[dict[str, int] | None]
    source: str

    def prompt_names(self) -> list[str]:
        """The chosen name of every class; InputError when a class has candidates only."""
        missing = [c for c, name in zip(self.classes, self.chosen) if name is None]
        if missing:
            raise InputError(f"the {self.source} lists candidate synonyms but no chosen name for "
                             f"{len(missing)} class(es) (e.g. '{missing[0]}'); run `zeroshot-plus "
                             f"frequency` to pick the most frequent one, or map each class to "
                             f"one synonym.")
        return list(self.chosen)

    def names(self, name_type: str = "most_common_name") -> list[list[str]]:
        """Per class, the names its prompts use (REAL's ``name_type``): the class name
        ("name"), the chosen name ("most_common_name", see ``prompt_names``) or every
        candidate synonym ("alternates")."""
        if name_type == "name":
            return [[name] for name in self.classes]
        if name_type == "alternates":
            return [list(synonyms) for synonyms in self.alternates]
        return [[name] for name in self.prompt_names()]


def is_metrics_format(data: Mapping) -> bool:
    """True for a REAL metrics object: every value a dict with a ``name`` field."""
    return bool(data) and all(isinstance(v, Mapping) and "name" in v for v in data.values())


def load_synonyms(spec: str | os.PathLike | Mapping, classnames=None) -> SynonymTable:
    """A metrics file / object or a synonym map, matched to ``classnames``.

    Metrics rows are matched to ``classnames`` by class id (position); without
    ``classnames`` the file's ``name`` fields are the classes. A synonym map is matched by
    class name (exactly, else ignoring case and '_' vs ' '), and then needs ``classnames``
    unless its keys are the classes.
    """
    data, source = _read(spec)
    names = None if classnames is None else parse_classnames(classnames)
    if is_metrics_format(data):
        return _from_metrics(data, names, source)
    rows = [k for k, v in data.items() if isinstance(v, Mapping) and "name" in v]
    if rows:
        other = next(k for k in data if k not in rows)
        raise InputError(f"the {source} mixes REAL metrics rows (objects with a 'name', e.g. "
                         f"'{rows[0]}') with other entries (e.g. '{other}').")
    return _from_map(data, names, source)


def _read(spec) -> tuple[Mapping, str]:
    if isinstance(spec, Mapping):
        return spec, "synonym map"
    if not isinstance(spec, (str, os.PathLike)):
        raise InputError(f"synonyms must be a JSON file or a dict, got {type(spec).__name__}.")
    path = Path(spec)
    data = read_json(path, "synonym file")
    if not isinstance(data, dict) or not data:
        raise InputError(f"synonym file '{path}' must hold a non-empty JSON object.")
    return data, f"synonym file '{path}'"


def _from_metrics(data: Mapping, names: list[str] | None, source: str) -> SynonymTable:
    ids: dict[int, str] = {}
    for key in data:
        try:
            number = int(key)
        except ValueError:
            raise InputError(f"the {source} has class id '{key}', which is not an "
                             f"integer.") from None
        if number in ids:
            raise InputError(f"the {source} has class id {number} twice ('{ids[number]}' and "
                             f"'{key}').")
        ids[number] = key
    if sorted(ids) != list(range(len(ids))):
        missing = sorted(set(range(len(ids))) - set(ids))
        raise InputError(f"the {source} must have class ids 0..{len(ids) - 1}; "
                         f"id {missing[0]} is missing.")
    rows = [data[ids[i]] for i in range(len(ids))]
    for i, row in enumerate(rows):
        if not isinstance(row["name"], str):
            raise InputError(f"class id {i} of the {source} has a name that is not a string "
                             f"({json.dumps(row['name'])[:40]}).")
    if names is None:  # a name may repeat (ImageNet's "crane"): rows are told apart by id
        names = [row["name"].strip() for row in rows]
        if "" in names:
            raise InputError(f"class id {names.index('')} of the {source} has an empty name.")
    elif len(names) != len(rows):
        raise InputError(f"the {source} has {len(rows)} classes but {len(names)} class names "
                         f"were given; its rows are matched to the classes by id.")
    chosen, alternates, counts = [], [], []
    for i, row in enumerate(rows):
        if not isinstance(row.get("most_common_name"), str) or not row["most_common_name"].strip():
            raise InputError(f"class id {i} of the {source} has no most_common_name.")
        found = row.get("alternates") or {}
        if not isinstance(found, Mapping):
            raise InputError(f"class id {i} of the {source}: 'alternates' must be an object "
                             f"{{synonym: count}}.")
        bad = [(k, v) for k, v in found.items()
               if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0)]
        if bad:
            raise InputError(f"class id {i} of the {source}: the caption count of '{bad[0][0]}' "
                             f"is {json.dumps(bad[0][1])}, not a whole number >= 0.")
        chosen.append(row["most_common_name"])
        alternates.append(list(found) or [row["name"]])
        counts.append(dict(found))
    return SynonymTable(names, chosen, alternates, counts, source)


def _from_map(data: Mapping, names: list[str] | None, source: str) -> SynonymTable:
    if names is None:
        names = validate_classnames(list(data), source)
    lookup = _match(data, names, source)
    chosen, alternates = [], []
    for name in names:
        value = data[lookup[name]]
        if isinstance(value, str):
            synonyms, pick = [value], value
        elif isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
            synonyms, pick = list(value), None
        else:
            raise InputError(f"the {source} maps class '{name}' to {type(value).__name__}; use "
                             f"a synonym string or a list of candidate strings.")
        synonyms = [s.strip() for s in synonyms if s.strip()]
        if not synonyms:
            raise InputError(f"the {source} gives class '{name}' no synonym.")
        chosen.append(None if pick is None else pick.strip())
        alternates.append(list(dict.fromkeys([name, *synonyms])))
    return SynonymTable(names, chosen, alternates, [None] * len(names), source)


def _match(data: Mapping, names: list[str], source: str) -> dict[str, str]:
    """class name -> key of ``data``: the exact key, else the one equal up to case and '_'."""
    loose: dict[str, list[str]] = {}
    for key in data:
        loose.setdefault(match_key(str(key)), []).append(key)
    lookup, missing = {}, []
    for name in names:
        if name in data:
            lookup[name] = name
        elif len(loose.get(match_key(name), [])) == 1:
            lookup[name] = loose[match_key(name)][0]
        else:
            missing.append(name)
    if missing:
        unused = [str(k) for k in data if k not in set(lookup.values())]
        hint = closest_name(missing[0], unused)
        raise InputError(
            f"the {source} has no entry for {len(missing)} class(es): "
            f"{', '.join(repr(m) for m in missing[:5])}{' ...' if len(missing) > 5 else ''}"
            + (f" (did you mean '{hint}'?)" if hint else "") + ".")
    return lookup
