"""File names and class names as text: the one lossless way they are written to, and read
from, our tables (CSV, JSONL) and files.

On Linux a file name is any bytes; Python decodes the bytes that are not UTF-8 as lone
surrogates (``os.fsdecode``, surrogateescape), which no UTF-8 file can hold. Every output
(predict and match CSV/JSONL, evaluate and sce JSON, the paths of an embeddings file) writes a
path as ``path_text(path)``: the name as UTF-8, each byte that is not valid UTF-8 as ``\\xNN``
(two lower-case hex digits) and each backslash doubled (``\\\\``). Table readers strip the
spaces around a cell, so whitespace at either end of a name is written as an escape too:
``\\xNN`` for an ASCII whitespace character (``" a.jpg"`` -> ``\\x20a.jpg``), ``\\uNNNN``
for another (U+00A0, U+3000, ...). Names without backslashes, undecodable bytes or whitespace
at their ends are written unchanged. Commas, quotes, tabs and newlines inside a name need
nothing here: the CSV writer quotes them and JSON escapes them. Every reader of paths
(manifests, ``--prompts``, pairs, embeddings files) maps the text back with ``text_path``;
any other backslash (``\\n``, ``\\x41``: never written by ``path_text``) is kept as it is.

A class name in a table cell (a manifest's ``label``, the labels ``predict`` writes) is
written by ``name_text``: whitespace at its ends escaped as above, and a backslash that would
begin such an escape (or ``\\x5c``) written as ``\\x5c``; nothing else changes, so every
other name, ``\\xNN`` from bytes that are not UTF-8 included (``label_text``), is written as
itself. ``text_name`` reads it back.
"""

from __future__ import annotations

import os
import re

# every character str.strip() removes (all are below U+3001), and its escape
_SPACES = {chr(c): f"\\x{c:02x}" if c < 0x80 else f"\\u{c:04x}"
           for c in range(0x3001) if chr(c).isspace()}
_UNSPACE = {escape: char for char, escape in _SPACES.items()}
_SPACE_ESCAPES = "|".join(re.escape(e[1:]) for e in _UNSPACE)
_PATH_ESCAPE = re.compile(rf"\\(\\|x[89a-fA-F][0-9a-fA-F]|{_SPACE_ESCAPES})")
_NAME_ESCAPE = re.compile(rf"\\(x5c|{_SPACE_ESCAPES})")


def path_text(path: str | os.PathLike) -> str:
    """The written form of a path: UTF-8 text, undecodable bytes as ``\\xNN``, ``\\`` doubled,
    whitespace at either end escaped."""
    return _escape_ends(label_text(os.fspath(path).replace("\\", "\\\\")))


def text_path(text: str) -> str:
    """The path a written form names (the inverse of ``path_text``)."""
    return _PATH_ESCAPE.sub(_unescape_path, text)


def name_text(name: str) -> str:
    """The written form of a class name in a table cell: whitespace at either end escaped, a
    backslash that would begin an escape written as ``\\x5c``; otherwise the name itself."""
    return _escape_ends(_NAME_ESCAPE.sub(lambda m: "\\x5c" + m[1], name))


def text_name(text: str) -> str:
    """The class name a table cell names (the inverse of ``name_text``)."""
    return _NAME_ESCAPE.sub(lambda m: "\\" if m[1] == "x5c" else _UNSPACE[m[0]], text)


def label_text(name: str) -> str:
    """Text decoded from bytes (``os.fsdecode``: a file name, a command-line argument) as
    UTF-8 text, each byte that is not UTF-8 as ``\\xNN``: the form of class names taken from
    folder names or given on a command line that is not UTF-8."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _escape_ends(text: str) -> str:
    body = text.strip()
    if body == text:
        return text
    if not body:
        return "".join(_SPACES[c] for c in text)
    start, end = len(text) - len(text.lstrip()), len(text.rstrip())
    return ("".join(_SPACES[c] for c in text[:start]) + text[start:end]
            + "".join(_SPACES[c] for c in text[end:]))


def _unescape_path(match: re.Match) -> str:
    escape = match[1]
    if escape == "\\":
        return "\\"
    if escape[0] == "x" and int(escape[1:], 16) >= 0x80:
        return chr(0xDC00 + int(escape[1:], 16))
    return _UNSPACE[match[0]]
