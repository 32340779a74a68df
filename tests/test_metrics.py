"""Metrics against small cases computed by hand, and against scikit-learn's metrics."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import top_k_accuracy_score

from zeroshot_plus.evaluation.metrics import (classification_summary, confusion_matrix,
                                   expected_calibration_error, per_class_accuracy, recall_at_k,
                                   top_k_accuracy)

SCORES = np.array([
    [0.1, 0.5, 0.3, 0.1],   # ranking 1, 2, then 0/3 tied (0 first)
    [0.7, 0.1, 0.1, 0.1],   # 0, then 1/2/3 tied
    [0.2, 0.2, 0.2, 0.4],   # 3, then 0, 1, 2
    [0.0, 0.1, 0.2, 0.3],   # 3, 2, 1, 0
])
Y = np.array([2, 0, 1, 0])


def test_top_k_accuracy_by_hand():
    assert top_k_accuracy(Y, SCORES, 1) == 0.25        # only row 1
    assert top_k_accuracy(Y, SCORES, 2) == 0.5         # + row 0
    assert top_k_accuracy(Y, SCORES, 3) == 0.75        # + row 2 (tie broken by column order)
    assert top_k_accuracy(Y, SCORES, 4) == 1.0
    assert top_k_accuracy(Y, SCORES, 10) == 1.0        # k larger than C


def test_top_k_ties_are_broken_by_column_order():
    scores = np.array([[0.5, 0.5, 0.5]])
    assert top_k_accuracy(np.array([0]), scores, 1) == 1.0
    assert top_k_accuracy(np.array([2]), scores, 2) == 0.0
    assert top_k_accuracy(np.array([1]), scores, 2) == 1.0


def test_confusion_matrix_by_hand():
    y_true = np.array([0, 0, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 2, 0, 2])
    expected = np.array([[1, 1, 0, 0],
                         [0, 1, 0, 0],
                         [1, 0, 2, 0],
                         [0, 0, 0, 0]])
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, 4), expected)


def test_per_class_accuracy_with_an_empty_class_is_nan():
    y_true = np.array([0, 0, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 2, 0, 2])
    accuracy = per_class_accuracy(y_true, y_pred, 4)
    np.testing.assert_allclose(accuracy[:3], [0.5, 1.0, 2 / 3])
    assert math.isnan(accuracy[3])


def test_ece_by_hand_with_two_bins():
    probabilities = np.array([
        [0.40, 0.30, 0.30],   # conf .40 -> bin (0, .5], correct (y=0)
        [0.45, 0.35, 0.20],   # conf .45 -> bin (0, .5], wrong (y=2)
        [0.90, 0.05, 0.05],   # conf .90 -> bin (.5, 1], correct
        [0.10, 0.80, 0.10],   # conf .80 -> bin (.5, 1], wrong (y=0)
        [0.00, 0.30, 0.70],   # conf .70 -> bin (.5, 1], correct
    ])
    y = np.array([0, 2, 0, 0, 2])
    # bin 1: acc 1/2, mean conf .425 -> 2/5 * .075 = .03
    # bin 2: acc 2/3, mean conf .80  -> 3/5 * (.8 - 2/3) = .08
    assert expected_calibration_error(probabilities, y, n_bins=2) == pytest.approx(0.11, abs=1e-12)


def test_ece_simple_cases():
    # one wrong prediction at confidence .6: |0 - .6|
    assert expected_calibration_error(np.array([[0.6, 0.4]]), np.array([1])) == pytest.approx(0.6)
    # perfectly confident and right
    assert expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0)
    # a confidence on a bin edge belongs to the lower bin (bins are (a, b]):
    # .5 (right) in (.25, .5] and .75 (wrong) in (.5, .75] -> (|1 - .5| + |0 - .75|) / 2;
    # in one bin it would be |.5 - .625| = .125
    probabilities = np.array([[0.5, 0.5], [0.75, 0.25]])
    assert expected_calibration_error(probabilities, np.array([0, 1]), n_bins=4) == pytest.approx(0.625)


def test_classification_summary_by_hand():
    scores = SCORES
    probabilities = scores / scores.sum(axis=1, keepdims=True)
    summary = classification_summary(Y, scores, probabilities, np.array(["a", "b", "c", "d"]))
    json.dumps(summary)  # JSON-ready
    assert summary["n_images"] == 4
    assert summary["top1"] == 0.25 and summary["top5"] == 1.0
    # predictions 1, 0, 3, 3 for truths 2, 0, 1, 0
    assert summary["per_class_accuracy"] == {"a": 0.5, "b": 0.0, "c": 0.0, "d": None}
    assert summary["mean_per_class_accuracy"] == pytest.approx(0.5 / 3)
    assert summary["confusion_matrix"] == [[1, 0, 0, 1], [0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]]
    # confidences .5 (wrong), .7 (right), .4 (wrong), .5 (wrong); with 15 bins the .7 is alone
    # in its bin (gap .3) and every other bin holds only wrong predictions (gap = their confidence)
    assert summary["ece"] == pytest.approx((0.5 + 0.3 + 0.4 + 0.5) / 4)


# ---------------------------------------------------------------------- against scikit-learn


def _random_case(n=500, n_classes=7, seed=0):
    """Continuous scores (no ties) and labels; the last class never occurs in y."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, n_classes))
    y = rng.integers(0, n_classes - 1, size=n)
    return y, scores


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_accuracy_and_recall_equal_scikit_learns_without_ties(k):
    # scikit-learn breaks ties towards the later column, this library towards the earlier
    # one (tested by hand above); without ties both are the same count
    y, scores = _random_case()
    expected = top_k_accuracy_score(y, scores, k=k, labels=np.arange(scores.shape[1]))
    assert top_k_accuracy(y, scores, k) == pytest.approx(expected, abs=1e-15)
    assert recall_at_k(scores, y, k) == pytest.approx(expected, abs=1e-15)


def test_confusion_and_per_class_accuracy_equal_scikit_learns():
    y, scores = _random_case()
    y_pred = scores.argmax(axis=1)
    n_classes = scores.shape[1]
    np.testing.assert_array_equal(confusion_matrix(y, y_pred, n_classes),
                                  sk_confusion_matrix(y, y_pred, labels=np.arange(n_classes)))
    per_class = per_class_accuracy(y, y_pred, n_classes)
    assert np.isnan(per_class[-1])  # the class that never occurs
    # balanced accuracy is the mean recall over the classes present in y_true
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        balanced = balanced_accuracy_score(y, y_pred)
    assert np.nanmean(per_class) == pytest.approx(balanced, abs=1e-15)
    summary = classification_summary(y, scores, softmax(scores, axis=1), np.arange(n_classes))
    assert summary["mean_per_class_accuracy"] == pytest.approx(balanced, abs=1e-15)
    assert summary["top1"] == pytest.approx(accuracy_score(y, y_pred), abs=1e-15)


def test_retrieval_recall_of_matching_pairs():
    from zeroshot_plus import retrieval_recall

    # images a, a, b with captions x, y, z: a matches x and y, b matches z
    scores = np.array([[0.1, 0.9, 0.5],    # a: y first (right)
                       [0.8, 0.1, 0.3]])   # b: x first (wrong), z second
    recall = retrieval_recall(scores, ["a", "a", "b"], ["x", "y", "z"], ks=(1, 2))
    assert recall["image_to_text"] == {1: 0.5, 2: 1.0}
    # x: b first (wrong); y: a first (right); z: a first (wrong), b second
    assert recall["text_to_image"] == pytest.approx({1: 1 / 3, 2: 1.0})


def test_one_class_summary_raises_no_library_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = classification_summary(np.zeros(3, int), np.ones((3, 1)), np.ones((3, 1)),
                                         np.array(["cat"]))
    assert summary["confusion_matrix"] == [[3]] and summary["top1"] == 1.0
