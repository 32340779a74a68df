"""The embeddings file: image embeddings with their paths, labels and model fingerprint.

One ``.npz`` archive (no pickle) holding ``embeddings`` (N, D) float32, ``paths`` (N,) str
(as ``names.path_text`` writes them), ``fingerprint`` () str (``Backbone.fingerprint``) and,
for labelled images, ``labels`` (N,).
``zeroshot-plus embed`` and ``edit`` write it; ``edit --embeddings`` reads it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from ..errors import InputError
from .files import atomic_output
from .names import path_text, text_path

if TYPE_CHECKING:
    from ..encoders.backbone import Backbone


class Embeddings(NamedTuple):
    """The content of an embeddings file."""

    embeddings: np.ndarray      # (N, D) float32
    paths: list[str]            # (N,)
    fingerprint: str
    labels: np.ndarray | None   # (N,) or None


def save_embeddings(path: str | os.PathLike, embeddings: np.ndarray, paths: Sequence[str],
                    fingerprint: str, labels: Sequence | None = None) -> None:
    """Write an embeddings file; it appears at ``path`` only once complete."""
    arrays = {"embeddings": np.asarray(embeddings),
              "paths": np.array([path_text(p) for p in paths]),
              "fingerprint": np.array(fingerprint)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    counts = {name: len(value) for name, value in arrays.items() if name != "fingerprint"}
    if len(set(counts.values())) > 1:
        raise InputError(f"cannot save '{path}': the numbers of "
                         f"{', '.join(f'{n} ({c})' for n, c in counts.items())} differ.")
    with atomic_output(path, binary=True) as handle:
        np.savez(handle, **arrays)


def load_embeddings(path: str | os.PathLike, backbone: Backbone | None = None) -> Embeddings:
    """Read an embeddings file; with ``backbone``, refuse one made by another model."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"embeddings file '{path}' does not exist.")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a single .npy array
            raise ValueError("not an .npz archive")
        with data:
            loaded = Embeddings(data["embeddings"], [text_path(str(p)) for p in data["paths"]],
                                str(data["fingerprint"]),
                                data["labels"] if "labels" in data.files else None)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"'{path}' is not an embeddings file written by `zeroshot-plus embed` "
                         f"or save_embeddings ({exc}).") from None
    if backbone is not None and loaded.fingerprint != backbone.fingerprint:
        raise InputError(f"embeddings file '{path}' was made with another model than "
                         f"{backbone!r}; load it with the backbone that made it.")
    return loaded
