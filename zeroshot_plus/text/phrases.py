"""Phrase counting with the FTS5 path's semantics (``frequency``), without an index.

``frequency.CaptionIndex`` answers phrase queries from an SQLite FTS5 index on one machine;
this module counts the same phrases by scanning captions, so that many workers can each
count a shard and the counts add up (``distributed``):

- Tokens are those of FTS5's ``unicode61`` tokenizer on the normalised text
  (``frequency.normalise``): maximal runs of token characters, each case-folded and with its
  diacritics removed, a removed combining mark joining the characters on either side.
  Which characters are token characters, and what each folds to, is read from the SQLite
  library itself (one query per character not seen before), so the tables are those of the
  same SQLite that builds the index: Unicode 6.1 categories, where characters assigned since
  then (newer emoji, say) are token characters, and its fold and diacritic tables.
- A phrase matches a caption when its tokens occur there as adjacent tokens, in order.
"""

from __future__ import annotations

import sqlite3
import string
from typing import Iterable, Sequence

import numpy as np

from .frequency import normalise, phrase_query

_FOLDED: dict[str, str | None] = {c: c.lower() for c in string.ascii_letters + string.digits}


def _fold_unknown(characters: set[str]) -> None:
    """Record how FTS5's unicode61 treats each character: its folded form ('' when it is a
    diacritic that is dropped), or None when it separates tokens."""
    with sqlite3.connect(":memory:") as db:
        db.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='unicode61')")
        db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        todo = sorted(characters)
        # between two 'q's: one token 'q?q' (folded), 'qq' (dropped) or two tokens 'q', 'q'
        db.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)",
                       ((row, f"q{c}q") for row, c in enumerate(todo, 1)))
        tokens: dict[int, list[str]] = {}
        for term, row in db.execute("SELECT term, doc FROM v ORDER BY doc, offset"):
            tokens.setdefault(row, []).append(term)
    db.close()
    for row, c in enumerate(todo, 1):
        found = tokens.get(row, [])
        _FOLDED[c] = found[0][1:-1] if len(found) == 1 else None


def tokens(text: str) -> list[str]:
    """The FTS5 tokens of a caption or synonym, after ``normalise``."""
    text = normalise(text)
    unknown = set(text) - _FOLDED.keys()
    if unknown:
        _fold_unknown(unknown)
    out, current = [], []
    for c in text:
        folded = _FOLDED[c]
        if folded is None:
            if current:
                out.append("".join(current))
                current = []
        else:
            current.append(folded)
    if current:
        out.append("".join(current))
    return [t for t in out if t]


class PhraseCounter:
    """Counts, over captions, the matches of phrases and of groups of phrases.

    Parameters
    ----------
    groups : (G,) lists of phrases; a group matches a caption when any of its phrases does.
    require : a phrase every counted caption must also contain, or None.

    ``phrases_`` (P,) the distinct phrases, in first-seen order; ``count`` returns their
    counts (P,) and the groups' (G,), each caption counted at most once per phrase or group.
    """

    def __init__(self, groups: Sequence[Sequence[str]], require: str | None = None):
        self.phrases_ = list(dict.fromkeys(p for group in groups for p in group))
        position = {p: i for i, p in enumerate(self.phrases_)}
        self.groups = [sorted({position[p] for p in group}) for group in groups]
        self.require = require
        keys = [self._key(p) for p in self.phrases_]
        self._require = self._key(require) if require else None
        # first token -> [(phrase index, its tokens)]
        self._starts: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        for i, key in enumerate(keys):
            if key:  # a phrase without tokens matches nothing
                self._starts.setdefault(key[0], []).append((i, key))
        self._group_of: list[list[int]] = [[] for _ in self.phrases_]
        for g, members in enumerate(self.groups):
            for i in members:
                self._group_of[i].append(g)

    @staticmethod
    def _key(phrase: str) -> tuple[str, ...]:
        phrase_query(phrase)  # one sentence for a phrase with nothing to search for
        return tuple(tokens(phrase))

    def matches(self, caption: str) -> set[int]:
        """Indices of the phrases the caption contains (empty without ``require``'s)."""
        words = tokens(caption)
        if self._require is not None and not _contains(words, self._require):
            return set()
        found = set()
        for start, word in enumerate(words):
            for i, key in self._starts.get(word, ()):
                if i not in found and tuple(words[start:start + len(key)]) == key:
                    found.add(i)
        return found

    def count(self, captions: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """(phrase counts (P,), group counts (G,)) over the captions, int64."""
        phrase_counts = np.zeros(len(self.phrases_), dtype=np.int64)
        group_counts = np.zeros(len(self.groups), dtype=np.int64)
        for caption in captions:
            found = self.matches(caption)
            if found:
                phrase_counts[list(found)] += 1
                group_counts[list({g for i in found for g in self._group_of[i]})] += 1
        return phrase_counts, group_counts


def _contains(words: list[str], key: tuple[str, ...]) -> bool:
    n = len(key)
    return bool(n) and any(tuple(words[s:s + n]) == key for s in range(len(words) - n + 1))


class PhraseCounts:
    """Counts made by a ``PhraseCounter``, answering ``CaptionIndex.count``'s questions for
    its phrases and groups, so that ``frequency.mine_frequencies`` writes the metrics."""

    def __init__(self, counter: PhraseCounter, phrase_counts: np.ndarray,
                 group_counts: np.ndarray, n_captions: int):
        self._phrases = dict(zip(counter.phrases_, phrase_counts.tolist()))
        self._position = {p: i for i, p in enumerate(counter.phrases_)}
        self._groups = {tuple(members): int(n) for members, n in zip(counter.groups, group_counts)}
        self._require, self._n = counter.require, n_captions

    def __len__(self) -> int:
        return self._n

    def count(self, synonyms: str | Sequence[str], require: str | None = None) -> int:
        if require != self._require:
            raise ValueError(f"these counts were made with require={self._require!r}.")
        if isinstance(synonyms, str):
            return self._phrases[synonyms]
        return self._groups[tuple(sorted({self._position[s] for s in synonyms}))]
