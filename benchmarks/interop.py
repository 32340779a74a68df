"""Re-run the interoperability list of issue 13 on a classifier that is 100 % right on its data,
and print each number beside the value it must have.

The data: three separable clusters in D = 8 around unit centroids that share one direction
(pairwise cosine 0.92, as CLIP's text embeddings do); the classifier is
ZeroShotClassifier with ``text_weights`` = the centroids, named in non-sorted order
("cat", "dog", "bird"). Every image is nearest its own centroid, so every ranking metric is
1.0, and log loss is the mean of -log softmax(100 · cos) at the true class, computed here
from the cosines, not from the classifier.

    python benchmarks/interop.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.special import log_softmax
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, top_k_accuracy_score
from sklearn.model_selection import (GridSearchCV, StratifiedKFold, cross_val_predict,
                                     cross_val_score)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zeroshot_plus import GDAClassifier, ZeroShotClassifier  # noqa: E402

NAMES = ["cat", "dog", "bird"]  # not sorted: classes_ must still be


def separable(n_per_class: int = 30, dim: int = 8, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X (3n, D) unit rows, y (3n,) names, centroids (3, D) unit rows in NAMES order)."""
    rng = np.random.default_rng(seed)
    centroids = np.eye(dim)[-1] + 0.3 * np.eye(dim)[:3]  # a shared direction, as CLIP's
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)  # text embeddings have
    labels = np.repeat(np.arange(3), n_per_class)
    X = centroids[labels] + 0.03 * rng.standard_normal((len(labels), dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), np.array(NAMES)[labels], centroids


def rows() -> list[tuple[str, float, float]]:
    """(what, value, the value it must have)."""
    X, y, centroids = separable()
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    zero_shot = ZeroShotClassifier(text_weights=centroids, classnames=NAMES)
    proba = zero_shot.fit().predict_proba(X)
    true_column = np.array([NAMES.index(label) for label in y])
    expected_loss = -log_softmax(100.0 * X @ centroids.T, axis=1)[np.arange(len(y)), true_column]
    binary = np.isin(y, ["dog", "cat"])
    Xb, yb = X[binary], y[binary]
    named_pair = ZeroShotClassifier(text_weights=centroids[[1, 0]], classnames=["dog", "cat"])
    yb01 = (yb == "dog").astype(int)  # scoring="average_precision" takes pos_label=1
    pair = ZeroShotClassifier(text_weights=centroids[:2])  # classes 0 (cat), 1 (dog)
    gda = GDAClassifier(text_weights=centroids, classnames=NAMES)
    cv_proba = cross_val_predict(gda, X, y, cv=folds, method="predict_proba")
    calibrated = CalibratedClassifierCV(zero_shot, cv=folds).fit(X, y)
    search = GridSearchCV(gda, {"alpha": [0.1, 1.0]}, scoring="roc_auc_ovr", cv=folds).fit(X, y)
    copy = clone(zero_shot)
    return [
        ("roc_auc_score(multi_class='ovr')", roc_auc_score(y, proba, multi_class="ovr"), 1.0),
        ("log_loss", log_loss(y, proba), float(expected_loss.mean())),
        ("top_k_accuracy_score(k=1)", top_k_accuracy_score(y, proba, k=1), 1.0),
        ("top_k_accuracy_score(k=2)", top_k_accuracy_score(y, proba, k=2), 1.0),
        ("cross_val_score(scoring='roc_auc_ovr'), min",
         cross_val_score(zero_shot, X, y, cv=folds, scoring="roc_auc_ovr").min(), 1.0),
        ("binary cross_val_score(scoring='roc_auc'), names dog, cat: min",
         cross_val_score(named_pair, Xb, yb, cv=3, scoring="roc_auc").min(), 1.0),
        ("binary cross_val_score(scoring='average_precision'), min",
         cross_val_score(pair, Xb, yb01, cv=3, scoring="average_precision").min(), 1.0),
        ("binary average_precision_score(decision_function (N,))",
         average_precision_score(yb == "dog", named_pair.fit().decision_function(Xb)), 1.0),
        ("cross_val_predict(GDA + text side, 'predict_proba'): ROC AUC",
         roc_auc_score(y, cv_proba, multi_class="ovr"), 1.0),
        ("CalibratedClassifierCV: ROC AUC",
         roc_auc_score(y, calibrated.predict_proba(X), multi_class="ovr"), 1.0),
        ("CalibratedClassifierCV: accuracy", calibrated.score(X, y), 1.0),
        ("GridSearchCV(GDA, scoring='roc_auc_ovr').best_score_", search.best_score_, 1.0),
        ("clone: same parameters, not fitted",
         float(repr(copy.get_params()) == repr(zero_shot.get_params())
               and not hasattr(copy, "classes_")), 1.0),
    ]


def main() -> int:
    print("| call | value | must be | right |")
    print("|---|---|---|---|")
    wrong = 0
    for what, value, expected in rows():
        right = bool(np.isclose(value, expected, rtol=1e-6, atol=1e-9))
        wrong += not right
        print(f"| {what} | {value:.6g} | {expected:.6g} | {'yes' if right else 'NO'} |")
    return int(wrong > 0)


if __name__ == "__main__":
    sys.exit(main())
