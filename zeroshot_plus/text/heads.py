"""Per-class prompt lists -> class weight matrix (C, D)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from ..encoders.backbone import Backbone


_UNIT_TOLERANCE = 4 * np.finfo(np.float32).eps


def unit_rows(X: np.ndarray, owner: str = "embeddings") -> np.ndarray:
    """Rows (N, D) scaled to unit L2 norm, dtype kept; rows already unit (to float32 rounding)
    come back as they are, without a copy. An all-zero row is an InputError naming ``owner``."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    if not (np.isfinite(norms).all() and norms.min(initial=1) >= np.sqrt(np.finfo(X.dtype).tiny)):
        # the squares overflow or fall below the normal range
        return _unit_rows_scaled(X, owner)
    if np.abs(norms - 1).max(initial=0) <= _UNIT_TOLERANCE:
        return X
    return X / norms[:, None].astype(X.dtype)


def _unit_rows_scaled(X: np.ndarray, owner: str) -> np.ndarray:
    """``unit_rows`` for rows whose squared norm overflows (norm ~1.8e19 and above in float32)
    or underflows: each row is first divided by its largest magnitude, so its direction is
    kept."""
    peaks = np.abs(X).max(axis=1)
    if not peaks.all():
        raise InputError(f"{owner}: embedding row {int(np.argmin(peaks))} is all zeros.")
    scaled = X / peaks[:, None]
    return scaled / np.sqrt(np.einsum("ij,ij->i", scaled, scaled))[:, None]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    return unit_rows(np.asarray(x, dtype=np.float32))


def segment_mean(rows: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Mean of consecutive row segments: rows (sum(counts), D), counts (C,) -> (C, D)."""
    counts = np.asarray(counts)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.add.reduceat(rows, offsets, axis=0) / counts[:, None]


def class_weights(backbone: Backbone, prompts: Sequence[Sequence[str]], *,
                  cache: str | os.PathLike | None = None) -> np.ndarray:
    """Ensemble text head: mean of each class's normalised prompt embeddings, renormalised.

    prompts: per class, a non-empty list of prompt strings. Returns (C, D) float32.
    All prompts of all classes are encoded in one batched pass.
    """
    counts = [len(p) for p in prompts]
    if 0 in counts:
        raise InputError(f"class {counts.index(0)} has no prompts.")
    embeddings = backbone.encode_texts([p for group in prompts for p in group], cache=cache)
    return l2_normalise(segment_mean(embeddings, counts))
