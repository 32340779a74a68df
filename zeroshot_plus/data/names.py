"""File names as text: the one lossless way paths are written to, and read from, our files.

On Linux a file name is any bytes; Python decodes the bytes that are not UTF-8 as lone
surrogates (``os.fsdecode``, surrogateescape), which no UTF-8 file can hold. Every output
(predict and match CSV/JSONL, evaluate and sce JSON, the paths of an embeddings file) writes a
path as ``path_text(path)``: the name as UTF-8, each byte that is not valid UTF-8 as ``\\xNN``
(two lower-case hex digits) and each backslash doubled (``\\\\``). Names without backslashes or
undecodable bytes are written unchanged. Commas, quotes, tabs and newlines need nothing here:
the CSV writer quotes them and JSON escapes them. Every reader of paths (manifests,
``--prompts``, pairs, embeddings files) maps the text back with ``text_path``; any other
backslash (``\\n``, ``\\x41``: never written by ``path_text``) is kept as it is.
"""

from __future__ import annotations

import os
import re

_ESCAPE = re.compile(r"\\(\\|x[89a-fA-F][0-9a-fA-F])")


def path_text(path: str | os.PathLike) -> str:
    """The written form of a path: UTF-8 text, undecodable bytes as ``\\xNN``, ``\\`` doubled."""
    return label_text(os.fspath(path).replace("\\", "\\\\"))


def text_path(text: str) -> str:
    """The path a written form names (the inverse of ``path_text``)."""
    return _ESCAPE.sub(lambda m: "\\" if m[1] == "\\" else chr(0xDC00 + int(m[1][1:], 16)), text)


def label_text(name: str) -> str:
    """Text decoded from bytes (``os.fsdecode``: a file name, a command-line argument) as
    UTF-8 text, each byte that is not UTF-8 as ``\\xNN``: the form of class names taken from
    folder names or given on a command line that is not UTF-8."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")
