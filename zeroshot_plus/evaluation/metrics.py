"""Classification metrics: top-k accuracy, per-class accuracy, confusion matrix, ECE;
retrieval recall@k."""

from __future__ import annotations

import numpy as np


def top_k_accuracy(y_true: np.ndarray, scores: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose true class index is among the k highest scores.

    y_true: (N,) class indices; scores: (N, C). Ties are broken by column order.
    """
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(y_true)[:, None]).any(axis=1).mean())


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 1) -> float:
    """Retrieval recall@k: the fraction of queries with a relevant candidate among their k
    highest scores (ties broken by column order).

    scores: (Q, C) query-candidate scores; relevant: (Q,) the index of each query's one
    relevant candidate, or a (Q, C) boolean matrix (several relevant candidates per query).
    """
    scores = np.asarray(scores)
    relevant = np.asarray(relevant)
    if relevant.ndim == 1:
        relevant = np.arange(scores.shape[1])[None, :] == relevant[:, None]
    if scores.ndim != 2 or relevant.shape != scores.shape or k < 1:
        from ..errors import InputError
        raise InputError(f"recall@k needs (Q, C) scores, relevance of the same shape (or (Q,) "
                         f"indices) and k >= 1; got {scores.shape}, {relevant.shape}, k={k}.")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.take_along_axis(relevant.astype(bool), top, axis=1).any(axis=1).mean())


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts; row = true class index, column = predicted class index (one class is
    a (1, 1) matrix, without scikit-learn's "single label" warning)."""
    cells = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(cells, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) accuracy within each true class; NaN for classes with no samples."""
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / support, np.nan)


def expected_calibration_error(probabilities: np.ndarray, y_true: np.ndarray,
                               n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins on (0, 1]: sum_b |B|/N * |acc(B) - conf(B)|."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y_true)
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, confidence, n_bins))
    return float(gap.sum() / len(confidence)) if counts.sum() else float("nan")


def classification_summary(y_true: np.ndarray, scores: np.ndarray, probabilities: np.ndarray,
                           classes: np.ndarray) -> dict:
    """Everything `evaluate` reports, as JSON-ready values."""
    y_pred = scores.argmax(axis=1)
    per_class = per_class_accuracy(y_true, y_pred, len(classes))
    return {
        "n_images": int(len(y_true)),
        "top1": top_k_accuracy(y_true, scores, 1),
        "top5": top_k_accuracy(y_true, scores, 5),
        "ece": expected_calibration_error(probabilities, y_true),
        "mean_per_class_accuracy": float(np.nanmean(per_class)),
        "per_class_accuracy": {str(c): (None if np.isnan(a) else float(a))
                               for c, a in zip(classes, per_class)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, len(classes)).tolist(),
    }
