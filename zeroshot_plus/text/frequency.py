"""Concept frequency in a caption corpus: phrase counts with SQLite FTS5 (METHODS.md §3.1).

Matching rules (those of the REAL paper's LAION parser):

- A caption is normalised by deleting ``"`` and ``'`` and reading ``-`` and ``_`` as spaces,
  then split by FTS5's ``unicode61`` tokenizer: a token is a maximal run of letters and
  digits, case-folded, with diacritics removed; every other character separates tokens.
- A synonym is normalised the same way and matches a caption when its tokens occur there
  as adjacent tokens in the same order (an FTS5 phrase): whole tokens only, no stemming, so
  "jay" matches "Blue-Jay!" but not "jays" and "blue jay" matches "a BLUE  jay.".
- A synonym's count is the number of captions it matches; a class's ``actual_freq`` is the
  number of captions matching any of its synonyms (each caption counted once).

The index is one SQLite file holding a contentless FTS5 table (tokens and positions, not the
text) and the list of caption files it was built from (path, size, modification time). A
later run on the same files reuses it; new files are added to it; a changed or dropped file
makes it rebuild. Each file is inserted in one transaction, in batches, so memory stays flat
and an interrupted build resumes at the first file not yet indexed.

SQLite's transaction, not ``atomic_output``, is the atomic unit of the index: a failed or
killed insert is rolled back (its journal undone on the next open), the files already indexed
stay, and a build resumes where it stopped; a temporary copy renamed into place would restart
a long build from nothing and copy the whole index to extend it.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import re
import sqlite3
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..data.files import write_error
from ..errors import InputError
from .synonyms import SynonymTable

log = logging.getLogger(__name__)

CAPTION_COLUMN = "caption"
STRATEGIES = ("relaxed", "max")
_BATCH = 20_000
_SCHEMA = "zeroshot_plus.captions/1"
_SQLITE_CAUSES = (("SQLITE_FULL", "no space left on device"),
                  ("SQLITE_READONLY", "read-only file system"),
                  ("SQLITE_IOERR", "the disk refused a write (full, or a file size limit)"))
_NORMALISE = str.maketrans({'"': None, "'": None, "-": " ", "_": " "})


def normalise(text: str) -> str:
    """Delete quotes, read '-' and '_' as spaces (applied to captions and synonyms alike)."""
    return text.translate(_NORMALISE)


def phrase_query(synonym: str) -> str:
    """The FTS5 query of a synonym: one quoted phrase of its tokens."""
    text = " ".join(normalise(synonym).split())
    if not re.search(r"\w", text):
        raise InputError(f"synonym '{synonym}' has no letters or digits to search for.")
    return f'"{text}"'


class CaptionIndex:
    """An FTS5 index of captions, in an SQLite file (``path``) or in memory (``path=None``).

    Captions are numbered 0, 1, ... in insertion order.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else Path(path)
        self._unsourced = 0  # captions added without a source file (in-memory indexes)
        if self.path is not None and self.path.is_dir():
            raise write_error(self.path, IsADirectoryError(errno.EISDIR, "is a directory"))
        if self.path is not None and not self.path.parent.is_dir():
            raise InputError(f"cannot create the caption index '{self.path}': its folder does "
                             f"not exist or is not a folder; choose another path (--index).")
        try:
            self._db = sqlite3.connect(":memory:" if path is None else str(self.path))
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            schema = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise InputError(f"'{self.path}' is not a caption index ({exc}).") from None
        if schema is None:
            self._create()
        elif schema[0] != _SCHEMA:
            raise InputError(f"'{self.path}' is a caption index of another version; delete it.")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction; a failed write (disk full, read-only) as one sentence."""
        try:
            with self._db:
                yield
        except sqlite3.OperationalError as exc:
            name = getattr(exc, "sqlite_errorname", "")
            cause = next((c for prefix, c in _SQLITE_CAUSES if name.startswith(prefix)), str(exc))
            raise InputError(f"cannot write the caption index '{self.path}': {cause}; the "
                             f"files indexed before stay in it.") from None

    def _create(self) -> None:
        with self._writing():
            self._db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS captions USING "
                             "fts5(text, content='', tokenize='unicode61')")
            self._db.execute("CREATE TABLE IF NOT EXISTS sources (path TEXT PRIMARY KEY, "
                             "size INTEGER, mtime INTEGER, rows INTEGER)")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (_SCHEMA,))

    def __enter__(self) -> "CaptionIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT coalesce(sum(rows), 0) FROM sources").fetchone()[0]
                   + self._unsourced)

    def add(self, captions: Iterable[str], source: tuple[str, int, int] | None = None, *,
            bar: tqdm | None = None) -> int:
        """Insert captions (normalised) in batches, in one transaction; returns their number.

        ``source`` (path, size, mtime) records them as one caption file, in the same
        transaction.
        """
        start, rows, iterator = len(self) + 1, 0, iter(captions)
        with self._writing():
            while batch := list(islice(iterator, _BATCH)):
                self._db.executemany("INSERT INTO captions(rowid, text) VALUES (?, ?)",
                                     zip(range(start + rows, start + rows + len(batch)),
                                         map(normalise, batch)))
                rows += len(batch)
                if bar is not None:
                    bar.update(len(batch))
            if source is None:
                self._unsourced += rows
            else:
                self._db.execute("INSERT INTO sources VALUES (?, ?, ?, ?)", (*source, rows))
        return rows

    def sources(self) -> dict[str, tuple[int, int]]:
        """Indexed caption files: path -> (size, mtime)."""
        return {p: (s, m) for p, s, m in self._db.execute("SELECT path, size, mtime FROM sources")}

    def clear(self) -> None:
        with self._writing():
            self._db.execute("DROP TABLE IF EXISTS captions")
            self._db.execute("DROP TABLE IF EXISTS sources")
        with self._writing():
            self._db.execute("VACUUM")
        self._unsourced = 0
        self._create()

    def _query(self, synonyms: Sequence[str], require: str | None) -> str:
        query = " OR ".join(phrase_query(s) for s in synonyms)
        if require:
            query = f"({query}) AND {phrase_query(require)}"
        return query

    def count(self, synonyms: str | Sequence[str], require: str | None = None) -> int:
        """Number of captions matching the synonym (or any of the synonyms), each counted once;
        with ``require``, only captions that also contain that phrase."""
        synonyms = [synonyms] if isinstance(synonyms, str) else list(synonyms)
        sql = "SELECT count(*) FROM captions WHERE captions MATCH ?"
        return int(self._db.execute(sql, (self._query(synonyms, require),)).fetchone()[0])

    def match(self, synonyms: str | Sequence[str], require: str | None = None) -> np.ndarray:
        """Sorted positions (0-based) of the captions matching any of the synonyms."""
        synonyms = [synonyms] if isinstance(synonyms, str) else list(synonyms)
        sql = "SELECT rowid FROM captions WHERE captions MATCH ? ORDER BY rowid"
        rows = self._db.execute(sql, (self._query(synonyms, require),)).fetchall()
        return np.fromiter((r[0] - 1 for r in rows), dtype=np.int64, count=len(rows))


# ---------------------------------------------------------------------- caption files


def read_captions(path: str | os.PathLike, column: str = CAPTION_COLUMN) -> Iterator[str]:
    """Stream the captions of one file: .txt (one per line), .csv/.tsv (a ``column``),
    .parquet (a ``column``; needs pyarrow), .jsonl (a ``column`` field of each line's object).
    Empty captions are kept as ''."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"caption file '{path}' does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _csv_captions(path, column, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _parquet_captions(path, column)
    if suffix == ".jsonl":
        return _jsonl_captions(path, column)
    return _text_captions(path)


def _text_captions(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for line in handle:
            yield line.rstrip("\r\n")


def _csv_captions(path: Path, column: str, delimiter: str) -> Iterator[str]:
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None or column not in header:
            raise InputError(f"caption file '{path}' has no '{column}' column"
                             + (f" (columns: {', '.join(header)})" if header else "")
                             + "; name the caption column with --column.")
        position = header.index(column)
        for row in reader:
            yield row[position] if position < len(row) else ""


def _jsonl_captions(path: Path, column: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or column not in record:
                raise InputError(f"caption file '{path}' line {number} is not a JSON object "
                                 f"with a '{column}' field; name the caption field with "
                                 f"--column.")
            yield "" if record[column] is None else str(record[column])


def _parquet_captions(path: Path, column: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"reading the Parquet file '{path}' needs pyarrow "
                         f"(pip install pyarrow); or convert it to CSV or text.") from None
    parquet = pq.ParquetFile(path)
    if column not in parquet.schema_arrow.names:
        raise InputError(f"caption file '{path}' has no '{column}' column (columns: "
                         f"{', '.join(parquet.schema_arrow.names)}); name it with --column.")
    for batch in parquet.iter_batches(batch_size=_BATCH, columns=[column]):
        yield from ("" if c is None else c for c in batch.column(0).to_pylist())


def build_index(files: Sequence[str | os.PathLike], index: str | os.PathLike | None = None, *,
                column: str = CAPTION_COLUMN, progress: bool = True) -> CaptionIndex:
    """The FTS5 index of the caption files: reused when ``index`` already holds them, extended
    by files it lacks, rebuilt when one it holds has changed or is not among ``files``."""
    if not files:
        raise InputError("no caption files given.")
    stats = {}
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise InputError(f"caption file '{path}' does not exist.")
        st = path.stat()
        stats[str(path.resolve())] = (st.st_size, st.st_mtime_ns)
    captions = CaptionIndex(index)
    recorded = captions.sources()
    if any(stats.get(p) != state for p, state in recorded.items()):
        log.info("caption files changed since the index '%s' was built: rebuilding it", index)
        captions.clear()
        recorded = {}
    todo = [p for p in stats if p not in recorded]
    if recorded:
        log.info("reusing the caption index '%s' (%d files)", index, len(recorded))
    with tqdm(desc="indexing captions", unit="caption", disable=not progress or not todo) as bar:
        for path in todo:
            captions.add(read_captions(path, column), (path, *stats[path]), bar=bar)
    if len(captions) == 0:
        raise InputError(f"the caption files ({', '.join(str(f) for f in files[:3])}"
                         f"{' ...' if len(files) > 3 else ''}) hold no captions.")
    return captions


# ---------------------------------------------------------------------- frequencies


def _tokens(name: str) -> set[str]:
    return set(re.sub(r"[^\w\s]", "", normalise(name).lower()).split())


def most_common_name(name: str, counts: dict[str, int], strategy: str = "relaxed") -> str:
    """The synonym to prompt with: the most frequent, the class name winning ties.

    "relaxed" (the paper's rule) passes over a synonym whose words are a proper subset of the
    class name's ("Honda" for "Honda Accord"): it is more frequent only by being less
    specific. (The reference code also lets such a rejected synonym raise the bar for the
    others; here the most frequent admissible synonym wins.) "max": the plain arg-max.
    """
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy '{strategy}'; use one of {', '.join(STRATEGIES)}.")
    official = _tokens(name)
    best = name
    for synonym, count in counts.items():
        narrower = strategy == "relaxed" and _tokens(synonym) < official
        if count > counts.get(best, 0) and not narrower:
            best = synonym
    return best


def mine_frequencies(table: SynonymTable, captions: CaptionIndex, *, require: str | None = None,
                     strategy: str = "relaxed", progress: bool = True) -> dict[str, dict]:
    """Caption counts of every candidate synonym -> a REAL metrics object keyed by class id.

    Per class: ``name``, ``alternates`` {synonym: count} (the class name first),
    ``most_common_name`` (``most_common_name``) and ``actual_freq`` (captions matching any
    synonym). ``require``: a phrase every counted caption must also contain (e.g. "satellite").
    """
    metrics = {}
    for c in tqdm(range(len(table.classes)), desc="counting synonyms", unit="class",
                  disable=not progress):
        name = table.classes[c]
        synonyms = list(dict.fromkeys([name, *table.alternates[c]]))
        counts = {s: captions.count(s, require) for s in synonyms}
        metrics[str(c)] = {"name": name, "alternates": counts,
                           "most_common_name": most_common_name(name, counts, strategy),
                           "actual_freq": captions.count(synonyms, require)}
    return metrics
