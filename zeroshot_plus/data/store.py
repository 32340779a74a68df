"""On-disk embedding store, keyed by backbone fingerprint and content hash.

Layout: ``ROOT/<fingerprint>/<kind>/<shard>.npz``. Every encoded batch becomes one shard,
written by ``atomic_output``, so a shard is either whole or absent: a run killed half-way
loses at most the batch in flight, and two processes can share a store (each writes its own
shards; a key written twice is harmless). Shards are zip files whose members carry a CRC-32,
so a damaged shard fails to load; it is then set aside (renamed ``*.damaged``) and its
entries are recomputed; so is a shard whose embeddings have another dimension than the
store's.

The store is a cache and never fails a run: when a shard cannot be written (no space,
read-only, permission denied, ...) one warning is logged and that store writes nothing more;
when the store cannot be created, ``open_store`` warns and the caller runs without one.
Opening a store removes the temporary files of shard writes killed half-way
(``files.remove_stale_partials``). A long run that encodes many times into one store (the
benchmark harness) passes a ``StoreRoot`` wherever a store folder is asked for: each store
under it is then opened and indexed once, and only new shards are read afterwards.
"""

from __future__ import annotations

import logging
import os
import uuid
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import InputError
from .files import atomic_output, os_error_cause, remove_stale_partials

log = logging.getLogger(__name__)

_NORM_TOLERANCE = 1e-3
_NO_CACHING = "the run goes on without caching embeddings"


def set_aside(shard: Path, reason: str, cache: str = "embedding cache") -> None:
    """Log and rename (to ``.damaged``) a cache shard that cannot be served; its entries
    will be recomputed."""
    log.warning("%s: shard %s is damaged (%s); its entries will be recomputed",
                cache, shard.name, reason)
    try:
        shard.rename(shard.with_suffix(".damaged"))
    except OSError:
        pass


class StoreRoot(os.PathLike):
    """A store folder that a run holds open: ``open_store`` on it returns the store it opened
    the first time, after indexing only the shards written since (``EmbeddingStore.refresh``),
    instead of opening and indexing the store again. It is a path (``os.fspath``) everywhere
    else; a copy (``clone``, pickling) starts with no store open."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._stores: dict[tuple[str, str, bool], EmbeddingStore | None] = {}

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    def __repr__(self) -> str:
        return f"StoreRoot('{self.root}')"

    def __getstate__(self) -> dict:
        return {"root": self.root, "_stores": {}}

    def open(self, fingerprint: str, kind: str, scan: bool) -> EmbeddingStore | None:
        key = (fingerprint, kind, scan)
        if key not in self._stores:
            self._stores[key] = open_store(self.root, fingerprint, kind, scan=scan)
        elif self._stores[key] is not None and scan:
            self._stores[key].refresh()
        return self._stores[key]


def open_store(root: str | os.PathLike, fingerprint: str, kind: str, *,
               scan: bool = True) -> EmbeddingStore | None:
    """The store under ``root``, or None (after one warning) when it cannot be created; for a
    ``StoreRoot``, the one it holds open."""
    if isinstance(root, StoreRoot):
        return root.open(fingerprint, kind, scan)
    try:
        return EmbeddingStore(root, fingerprint, kind, scan=scan)
    except InputError as exc:
        log.warning("%s; %s", str(exc).rstrip("."), _NO_CACHING)
        return None


class EmbeddingStore:
    """Embeddings of one kind ("images" or "texts") for one backbone fingerprint.

    Parameters
    ----------
    root : directory of the store (created when missing).
    fingerprint : the Backbone's fingerprint.
    kind : "images" or "texts".
    scan : index the shards already written; False for a process that only writes (a worker
        of the Ray engine), which then serves only what it wrote.
    """

    def __init__(self, root: str | os.PathLike, fingerprint: str, kind: str, *,
                 scan: bool = True):
        self.root = root
        self.directory = Path(root) / fingerprint / kind
        self.writable = True  # False once a write failed: the rest of the run is not cached
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the embedding cache '{root}': "
                             f"{os_error_cause(exc)}.") from None
        self.dim: int | None = None  # of the embeddings served: most rows, or the model's
        self._index: dict[str, tuple[Path, int]] = {}
        self._dims: dict[Path, int] = {}
        self._scanned: set[Path] = set()
        remove_stale_partials(self.directory)
        if scan:
            self.refresh()

    def refresh(self) -> None:
        """Index shards written since the last scan (by this or another process).

        Until ``expect`` gives the model's dimension, that of most stored rows is served and
        shards of another are left unindexed.
        """
        loaded = []
        for shard in sorted(self.directory.glob("*.npz")):
            if shard in self._scanned:
                continue
            self._scanned.add(shard)
            arrays = self._load(shard)
            if arrays is not None:
                self._dims[shard] = arrays[1].shape[1]
                loaded.append((shard, *arrays))
        if self.dim is None and loaded:
            rows = Counter()
            for _, keys, embeddings in loaded:
                rows[embeddings.shape[1]] += len(keys)
            self.dim = rows.most_common(1)[0][0]
        for shard, keys, embeddings in loaded:
            if embeddings.shape[1] == self.dim:
                self._add(shard, keys, embeddings)

    def _add(self, shard: Path, keys: np.ndarray, embeddings: np.ndarray) -> None:
        """Index the rows of a loaded shard that are finite unit vectors."""
        valid = np.isfinite(embeddings).all(axis=1) & (
            np.abs(np.linalg.norm(embeddings, axis=1) - 1.0) < _NORM_TOLERANCE)
        if not valid.all():
            log.warning("embedding cache: %d damaged entries in %s will be recomputed",
                        int((~valid).sum()), shard.name)
        for row in np.flatnonzero(valid):
            self._index[str(keys[row])] = (shard, int(row))

    def _load(self, shard: Path) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(shard, allow_pickle=False) as data:
                keys, embeddings = data["keys"], data["embeddings"]
            if keys.ndim != 1 or embeddings.ndim != 2 or len(keys) != len(embeddings):
                raise ValueError("inconsistent shapes")
            if shard in self._dims and embeddings.shape[1] != self._dims[shard]:
                raise ValueError("its dimension changed after it was indexed")
            return keys, embeddings
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            set_aside(shard, str(exc))
            return None


    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> frozenset[str]:
        return frozenset(self._index)

    def get(self, keys: list[str]) -> np.ndarray:
        """Stored embeddings for ``keys`` as a (len(keys), D) float32 array; InputError when a
        shard indexed by this store was removed meanwhile (by a person or another process)."""
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, key in enumerate(keys):
            shard, row = self._index[key]
            by_shard.setdefault(shard, []).append((i, row))
        out: np.ndarray | None = None
        for shard, pairs in by_shard.items():
            arrays = self._load(shard)
            if arrays is None:
                raise InputError(f"embedding cache: shard '{shard}' was removed or damaged "
                                 f"while this run read the cache; run again to recompute it.")
            embeddings = arrays[1]
            if out is None:
                out = np.empty((len(keys), embeddings.shape[1]), dtype=np.float32)
            positions, rows = map(list, zip(*pairs))
            out[positions] = embeddings[rows]
        return out if out is not None else np.empty((0, 0), dtype=np.float32)

    def expect(self, dim: int) -> bool:
        """Serve only embeddings of ``dim`` dimensions (the model's); shards of another are
        set aside. True when the served entries changed."""
        changed = dim != self.dim
        if changed:
            self.dim, self._index = dim, {}
            for shard in [s for s, d in self._dims.items() if d == dim]:
                arrays = self._load(shard)
                if arrays is not None:
                    self._add(shard, *arrays)
        for shard in [s for s, d in self._dims.items() if d != dim]:
            set_aside(shard, f"{self._dims.pop(shard)} dimensions, the model's are {dim}")
        return changed

    def put(self, keys: list[str], embeddings: np.ndarray) -> None:
        """Write one shard atomically and index it; a write that fails turns writing off."""
        if not keys or not self.writable:
            return
        final = self.directory / f"{uuid.uuid4().hex}.npz"
        try:
            with atomic_output(final, binary=True) as handle:
                np.savez(handle, keys=np.asarray(keys), embeddings=embeddings.astype(np.float32))
        except InputError as exc:
            self.writable = False
            log.warning("embedding cache: %s; %s", str(exc).rstrip("."), _NO_CACHING)
            return
        self._scanned.add(final)
        self._dims[final] = embeddings.shape[1]
        self.dim = self.dim or embeddings.shape[1]
        for row, key in enumerate(keys):
            self._index[key] = (final, row)
