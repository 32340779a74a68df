"""On-disk embedding store, keyed by backbone fingerprint and content hash.

Layout: ``ROOT/<fingerprint>/<kind>/<shard>.npz``. Every encoded batch becomes one shard,
written to a temporary name and renamed into place, so a shard is either whole or absent:
a run killed half-way loses at most the batch in flight, and two processes can share a store
(each writes its own shards; a key written twice is harmless). Shards are zip files whose
members carry a CRC-32, so a damaged shard fails to load; it is then set aside and its
entries are recomputed.
"""

from __future__ import annotations

import logging
import os
import uuid
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

_NORM_TOLERANCE = 1e-3


class EmbeddingStore:
    """Embeddings of one kind ("images" or "texts") for one backbone fingerprint.

    Parameters
    ----------
    root : directory of the store (created when missing).
    fingerprint : the Backbone's fingerprint.
    kind : "images" or "texts".
    """

    def __init__(self, root: str | os.PathLike, fingerprint: str, kind: str):
        self.directory = Path(root) / fingerprint / kind
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the embedding cache '{root}': {exc.strerror}.") from None
        self._index: dict[str, tuple[Path, int]] = {}
        self._scanned: set[Path] = set()
        self.refresh()

    def refresh(self) -> None:
        """Index shards written since the last scan (by this or another process)."""
        for shard in sorted(self.directory.glob("*.npz")):
            if shard in self._scanned:
                continue
            self._scanned.add(shard)
            arrays = self._load(shard)
            if arrays is None:
                continue
            keys, embeddings = arrays
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
            return keys, embeddings
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            log.warning("embedding cache: shard %s is damaged (%s); its entries will be "
                        "recomputed", shard.name, exc)
            try:
                shard.rename(shard.with_suffix(".damaged"))
            except OSError:
                pass
            return None

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> frozenset[str]:
        return frozenset(self._index)

    def get(self, keys: list[str]) -> np.ndarray:
        """Stored embeddings for ``keys`` as a (len(keys), D) float32 array."""
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, key in enumerate(keys):
            shard, row = self._index[key]
            by_shard.setdefault(shard, []).append((i, row))
        out: np.ndarray | None = None
        for shard, pairs in by_shard.items():
            arrays = self._load(shard)
            if arrays is None:
                raise KeyError(f"shard {shard.name} disappeared or was damaged after indexing")
            embeddings = arrays[1]
            if out is None:
                out = np.empty((len(keys), embeddings.shape[1]), dtype=np.float32)
            positions, rows = map(list, zip(*pairs))
            out[positions] = embeddings[rows]
        return out if out is not None else np.empty((0, 0), dtype=np.float32)

    def put(self, keys: list[str], embeddings: np.ndarray) -> None:
        """Write one shard atomically and index it."""
        if not keys:
            return
        name = f"{uuid.uuid4().hex}.npz"
        temporary = self.directory / f".{name}.tmp"
        final = self.directory / name
        with open(temporary, "wb") as handle:
            np.savez(handle, keys=np.asarray(keys), embeddings=embeddings.astype(np.float32))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        self._scanned.add(final)
        for row, key in enumerate(keys):
            self._index[key] = (final, row)
