"""Evaluation protocols built on the metrics."""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from ..errors import InputError
from .metrics import recall_at_k


def retrieval_recall(scores: np.ndarray, images: Sequence[Hashable], captions: Sequence[Hashable],
                     ks: Sequence[int] = (1, 5)) -> dict[str, dict[int, float]]:
    """Image-to-text and text-to-image recall@k of matching image-caption pairs.

    scores : (I, T) scores of the distinct images against the distinct captions, both in
        order of first appearance in the pairs (``distinct(images)``, ``distinct(captions)``).
    images, captions : (P,) the pairs; each pair makes its caption relevant to its image.
    Returns ``{"image_to_text": {k: recall}, "text_to_image": {k: recall}}``.
    """
    rows, columns = distinct(images), distinct(captions)
    relevant = np.zeros((len(rows), len(columns)), bool)
    relevant[[rows[i] for i in images], [columns[c] for c in captions]] = True
    scores = np.asarray(scores)
    return {"image_to_text": {k: recall_at_k(scores, relevant, k) for k in ks},
            "text_to_image": {k: recall_at_k(scores.T, relevant.T, k) for k in ks}}


def distinct(items: Sequence[Hashable]) -> dict[Hashable, int]:
    """Each distinct item -> its position among them, in order of first appearance."""
    return {item: position for position, item in enumerate(dict.fromkeys(items))}


def top_candidates(scores: np.ndarray, top: int) -> np.ndarray:
    """(T, min(top, I)) each caption's ``top`` best images under the scores (I, T), best
    first; ties go to the lower image index."""
    return np.argsort(-np.asarray(scores).T, axis=1, kind="stable")[:, :top]


def rerank_recall(scores: np.ndarray, rescores: np.ndarray, images: Sequence[Hashable],
                  captions: Sequence[Hashable], *, top: int = 10,
                  ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Text-to-image recall@k when a second scorer re-ranks each caption's ``top`` best
    images under a first one: ComCLIP's Flickr30K protocol (CLIP ranks, ComCLIP re-ranks
    CLIP's top 10).

    scores : (I, T) first-stage scores (e.g. CLIP) of the distinct images against the distinct
        captions, ordered as in ``retrieval_recall``.
    rescores : (I, T) second-stage scores (e.g. ComCLIP); only each caption's candidates
        (``top_candidates(scores, top)``) are read, the other entries may be NaN.
    images, captions : (P,) the pairs; each pair makes its image relevant to its caption.
    Returns ``{k: recall}``: the fraction of all T captions with a relevant image among the k
    best candidates by ``rescores`` (ties: the first stage's order). A caption whose
    relevant images are all outside its candidates misses at every k, and still counts.
    """
    scores, rescores = np.asarray(scores, dtype=np.float64), np.asarray(rescores, dtype=np.float64)
    if scores.ndim != 2 or rescores.shape != scores.shape:
        raise InputError(f"rerank_recall needs first- and second-stage scores of one shape "
                         f"(I, T), got {scores.shape} and {rescores.shape}.")
    if not isinstance(top, (int, np.integer)) or top < 1 or any(k < 1 for k in ks):
        raise InputError(f"rerank_recall needs top >= 1 and every k >= 1, got top={top!r}, "
                         f"ks={tuple(ks)}.")
    rows, columns = distinct(images), distinct(captions)
    relevant = np.zeros(scores.shape, bool)
    relevant[[rows[i] for i in images], [columns[c] for c in captions]] = True
    candidates = top_candidates(scores, top)                                   # (T, K)
    second = np.take_along_axis(rescores.T, candidates, axis=1)               # (T, K)
    if not np.isfinite(second).all():
        raise InputError("rerank_recall: the second-stage scores of some candidates are "
                         "missing (NaN) or not finite.")
    order = np.take_along_axis(candidates, np.argsort(-second, axis=1, kind="stable"), axis=1)
    hits = np.take_along_axis(relevant.T, order, axis=1)                      # (T, K)
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}
