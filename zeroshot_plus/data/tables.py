"""Tables whose first column is an image path: CSV (a header row is optional) or JSONL.

One reader serves image manifests (``path[,label]``), prompt files (``path,prompt``) and
image-caption pairs (``image,caption``). A CSV header is recognised by its first cell,
``path`` or ``image``; the columns after it may come in any order, and others are ignored.
Without a header, the columns come in the order the caller names them. A JSONL line is an object keyed by the column names (the
path under ``path`` or ``image``). Relative paths are taken relative to the table's folder.
A path is read back from its written form (``names.text_path``), so the outputs of
``predict`` and ``match`` are tables too; a ``label`` cell is a class name, read back from its
written form (``names.text_name``). Cells are stripped of the whitespace around them: a name
that begins or ends with whitespace is written with escapes (``names``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from ..errors import InputError
from .files import read_text
from .names import text_name, text_path

PATH_COLUMNS = ("path", "image")
NAME_COLUMNS = ("label",)  # cells holding class names (``names.name_text``)


class Row(NamedTuple):
    """One data row: the image path and the value of each further column (None when empty)."""

    path: Path                       # a relative path is joined to the table's folder
    values: tuple[str | None, ...]


def read_table(path: str | os.PathLike, columns: Sequence[str], *, what: str,
               required: Sequence[str] = ()) -> list[Row]:
    """Read the rows of a CSV or JSONL table whose first column is an image path.

    columns : the names of the columns after the path, in their header-less CSV order.
    what : how errors name the table, e.g. "manifest" or "--prompts".
    required : columns every row must fill; the others may be empty (None).

    Raises InputError, one sentence naming the file (and the row), when the file cannot be
    read, a header lacks a required column, a row lacks a value, or no row is left.
    """
    path = Path(path)
    text = read_text(path, what)  # bytes decoded as they are: "\r" in a cell is kept
    rows = []
    for where, cells in (_jsonl_rows(text, path, columns, what)
                         if path.suffix.lower() == ".jsonl"
                         else _csv_rows(text, path, columns, what, required)):
        image = text_path((cells[0] or "").strip())
        values = tuple(None if not (v or "").strip() else
                       text_name(v.strip()) if column in NAME_COLUMNS else v.strip()
                       for column, v in zip(columns, cells[1:]))
        missing = [c for c, v in zip(columns, values) if c in required and v is None]
        if not image or missing:
            needs = " and a ".join(["an image path", *missing])
            raise InputError(f"{what} '{path}' {where} needs {needs}.")
        rows.append(Row(Path(image) if os.path.isabs(image) else path.parent / image, values))
    if not rows:
        raise InputError(f"{what} '{path}' lists no images.")
    return rows


def _csv_rows(text: str, path: Path, columns: Sequence[str], what: str,
              required: Sequence[str]) -> Iterator[tuple[str, list[str | None]]]:
    table = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    positions: list[int | None] = list(range(len(columns) + 1))
    if table and table[0][0].strip().lower() in PATH_COLUMNS:
        header = [c.strip().lower() for c in table.pop(0)]
        for column in required:
            if column not in header:
                raise InputError(f"{what} '{path}' has a header without a '{column}' column.")
        positions = [0] + [header.index(c) if c in header else None for c in columns]
    for number, row in enumerate(table, 1):
        yield f"data row {number}", [row[p] if p is not None and p < len(row) else None
                                     for p in positions]


def _jsonl_rows(text: str, path: Path, columns: Sequence[str], what: str
                ) -> Iterator[tuple[str, list[str | None]]]:
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            image = next(record[k] for k in PATH_COLUMNS if k in record)
        except (json.JSONDecodeError, StopIteration, TypeError, RecursionError):
            raise InputError(f"{what} '{path}' line {number} is not a JSON object with a "
                             f"\"path\" field.") from None
        cells = [image] + [record.get(c) for c in columns]
        for column, value in zip(("path", *columns), cells):  # a label may be a number
            if not (isinstance(value, str) or column != "path" and (
                    value is None or isinstance(value, int) and not isinstance(value, bool))):
                raise InputError(f"{what} '{path}' line {number}: \"{column}\" is "
                                 f"{json.dumps(value)[:40]}, not a string.")
        yield f"line {number}", [None if v is None else str(v) for v in cells]


def image_prompts(table: str | os.PathLike, images: Sequence[str | os.PathLike], *,
                  what: str = "prompts file") -> list[str]:
    """The prompt of each image, from a ``path,prompt`` table (paths compared resolved).

    Raises InputError naming the table and the first image it gives no prompt.
    """
    prompts: dict[Path, str] = {}
    for path, (prompt,) in read_table(table, ("prompt",), what=what, required=("prompt",)):
        if prompts.setdefault(path.resolve(), prompt) != prompt:
            raise InputError(f"{what} '{table}' gives image '{os.fspath(path)}' two different "
                             f"prompts.")
    missing = [image for image in images if Path(image).resolve() not in prompts]
    if missing:
        raise InputError(f"{len(missing)} image(s) have no prompt in {what} '{table}', "
                         f"e.g. '{os.fspath(missing[0])}'.")
    return [prompts[Path(image).resolve()] for image in images]


def read_pairs(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """A table of ``image,caption`` rows (CSV with an optional header, or JSONL; relative
    image paths are relative to the table) -> (image paths, captions)."""
    rows = read_table(path, ("caption",), what="pairs file", required=("caption",))
    return [str(row.path) for row in rows], [caption for _, (caption,) in rows]
