"""Evaluation protocols built on the metrics: retrieval recall, and the classification
protocols of the benchmark (metrics per run, base-to-new, head/tail, class columns)."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np

from ..errors import InputError
from .metrics import per_class_accuracy, recall_at_k, top_k_accuracy


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
# ---------------------------------------------------------------------- classification protocols

PROTOCOLS = ("zeroshot", "fewshot", "base2new", "variants", "headtail")
"""The benchmark's protocols: zero-shot on a test set; few-shot (K shots x seeds); base-to-new
(fit on the base half of the classes, test base and new apart); ImageNet -> variants (fit on
ImageNet, test on -V2/-Sketch/-A/-R); REAL's head/tail (per-class accuracy of the least
frequent classes apart)."""

PROTOCOL_METHODS = {
    "zeroshot": ("zeroshot", "descriptions", "real", "tpt"),
    "fewshot": ("gda",),
    "base2new": ("zeroshot", "gda"),
    "variants": ("zeroshot", "gda", "descriptions", "real", "tpt"),
    "headtail": ("zeroshot", "descriptions", "real", "tpt"),
}
"""The methods each protocol runs (a method a protocol does not list is not planned there)."""

METHODS = ("zeroshot", "gda", "descriptions", "real", "tpt")
FEW_SHOT_METHODS = ("gda",)
TAIL_FRACTION = 0.2


def classification_metrics(y_true: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """CLIP_benchmark's metrics of (N, C) scores against (N,) class indices: ``top1``,
    ``top5`` (only when C >= 5) and ``mean_per_class_recall`` (the mean over the classes
    present in ``y_true`` of their recall, scikit-learn's balanced accuracy)."""
    y_true = np.asarray(y_true)
    n_classes = logits.shape[1]
    metrics = {"top1": top_k_accuracy(y_true, logits, 1)}
    if n_classes >= 5:
        metrics["top5"] = top_k_accuracy(y_true, logits, 5)
    recall = per_class_accuracy(y_true, logits.argmax(axis=1), n_classes)
    metrics["mean_per_class_recall"] = float(np.nanmean(recall))
    return metrics


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b), the base-to-new summary of base and new accuracy (0 when both are 0)."""
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def tail_classes(frequencies: np.ndarray, fraction: float = TAIL_FRACTION) -> np.ndarray:
    """(C,) bool: the ⌊fraction·C⌋ (at least one) classes with the smallest frequency, ties
    going to the lower class index. (REAL's ``tail_hypothesis`` takes one class more.)"""
    frequencies = np.asarray(frequencies)
    n_tail = max(1, int(fraction * len(frequencies)))
    tail = np.zeros(len(frequencies), bool)
    tail[np.argsort(frequencies, kind="stable")[:n_tail]] = True
    return tail


def head_tail_accuracy(y_true: np.ndarray, y_pred: np.ndarray, tail: np.ndarray
                       ) -> dict[str, float]:
    """Mean per-class accuracy over the head (``~tail``) and the tail classes (C,), as REAL
    reports them; classes without test images are left out of the means."""
    accuracy = per_class_accuracy(y_true, y_pred, len(tail))
    return {"head_accuracy": float(np.nanmean(accuracy[~tail])),
            "tail_accuracy": float(np.nanmean(accuracy[tail]))}


def class_frequencies(data: Mapping, n_classes: int, source: str) -> np.ndarray:
    """(C,) concept frequency per class id of a REAL metrics object (keys are class ids; rows
    in ``int(key)`` order, METHODS.md §3.4): ``relevant_total`` (caption counts kept by REAL's
    LLM filter) where every row has it, else ``actual_freq`` (as ``zeroshot-plus frequency``
    writes). InputError when the ids are not 0..C-1 or neither field is there."""
    try:
        rows = {int(key): value for key, value in data.items()}
    except (TypeError, ValueError):
        raise InputError(f"the {source} is not keyed by class id.") from None
    if sorted(rows) != list(range(n_classes)):
        raise InputError(f"the {source} has {len(rows)} class ids; the data set has "
                         f"{n_classes} classes (ids 0..{n_classes - 1}).")
    for field in ("relevant_total", "actual_freq"):
        if all(isinstance(rows[i], Mapping) and isinstance(rows[i].get(field), (int, float))
               for i in range(n_classes)):
            return np.array([rows[i][field] for i in range(n_classes)], dtype=np.float64)
    raise InputError(f"the {source} gives no relevant_total or actual_freq for every class.")


def label_columns(classes: np.ndarray, classnames: Sequence[str]) -> np.ndarray:
    """(C,) the column of a predictor's ``classes_`` that holds each of ``classnames`` (in
    label order): by name, or by position when the names repeat (then ``classes_`` are the
    positions 0..C-1)."""
    if len(set(classnames)) < len(classnames):
        return np.arange(len(classnames))
    column = {name: j for j, name in enumerate(np.asarray(classes).tolist())}
    return np.array([column[name] for name in classnames], dtype=np.int64)
