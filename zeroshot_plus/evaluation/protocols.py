"""Evaluation protocols built on the metrics."""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

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
