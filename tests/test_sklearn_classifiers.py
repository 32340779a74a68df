"""The estimator convention (methods/base.py) and scikit-learn's tools on the classifiers:
check_estimator, sorted classes_, the binary margin, zero rows, tags, seeds, and the right
numbers from scikit-learn's metrics and model selection."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from scipy.special import log_softmax, softmax
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import log_loss, roc_auc_score, top_k_accuracy_score
from sklearn.model_selection import (GridSearchCV, StratifiedKFold, cross_val_predict,
                                     cross_val_score)
from sklearn.utils import get_tags

from zeroshot_plus import (DescriptionClassifier, GDAClassifier, InputError, Predictor,
                           RealLinearClassifier, RealPromptClassifier, TPTClassifier,
                           ZeroShotClassifier)
from zeroshot_plus.evaluation.conformance import ESTIMATORS, run_checks
from zeroshot_plus.methods.base import class_columns

NAMES = ["cat", "dog", "bird"]  # not sorted


def separable(n_per_class: int = 20, dim: int = 8, seed: int = 0):
    """Clusters around unit centroids (NAMES order) that share a direction; every row is
    nearest its own centroid. Returns X (N, D) unit rows, y (N,) names, centroids (3, D)."""
    rng = np.random.default_rng(seed)
    centroids = np.eye(dim)[-1] + 0.3 * np.eye(dim)[:3]
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    labels = np.repeat(np.arange(3), n_per_class)
    X = centroids[labels] + 0.03 * rng.standard_normal((len(labels), dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), np.array(NAMES)[labels], centroids


TEXT_SIDE_CLASSIFIERS = [ZeroShotClassifier, GDAClassifier, DescriptionClassifier,
                         RealPromptClassifier, RealLinearClassifier]


# ---------------------------------------------------------------------- check_estimator


@pytest.mark.parametrize("name, factory, expected, api_only", ESTIMATORS,
                         ids=[row[0] for row in ESTIMATORS])
def test_check_estimator_passes_but_for_the_stated_properties(name, factory, expected, api_only):
    outcome = run_checks(factory(), expected, api_only)
    assert not outcome.unexpected, outcome.unexpected
    assert not outcome.not_failing, f"expected to fail, but passed: {outcome.not_failing}"
    assert outcome.passed and set(outcome.expected) == set(expected)


# ---------------------------------------------------------------------- classes and columns


def test_classes_are_sorted_and_the_columns_follow():
    X, y, centroids = separable()
    clf = ZeroShotClassifier(text_weights=centroids, classnames=NAMES).fit()
    assert list(clf.classes_) == sorted(NAMES) == list(clf.classnames_)
    assert clf.classnames == NAMES  # the parameter is kept as given
    rows = [NAMES.index(c) for c in clf.classes_]
    np.testing.assert_allclose(clf.text_head_, centroids[rows], atol=1e-6)
    proba = clf.predict_proba(X)
    np.testing.assert_array_equal(clf.predict(X), y)
    assert roc_auc_score(y, proba, multi_class="ovr") == 1.0
    assert top_k_accuracy_score(y, proba, k=1) == 1.0
    true_column = [NAMES.index(label) for label in y]  # log loss from the cosines themselves
    expected = -log_softmax(100.0 * X @ centroids.T, axis=1)[np.arange(len(y)), true_column]
    assert log_loss(y, proba) == pytest.approx(expected.mean(), rel=1e-5)


def test_every_text_side_classifier_takes_text_weights_and_names_its_head_text_head_():
    X, y, centroids = separable()
    for klass in TEXT_SIDE_CLASSIFIERS:
        clf = klass(text_weights=centroids, classnames=NAMES)
        clf.fit(X, y)
        assert list(clf.classes_) == sorted(NAMES), klass.__name__
        assert clf.text_head_.shape == (3, 8) and clf.score(X, y) == 1.0, klass.__name__


def test_repeated_class_names_label_the_classes_by_position(tmp_path, backbone):
    classes, names, order = class_columns(["crane", "missile", "crane"])
    assert classes.tolist() == [0, 1, 2] and names.tolist() == ["crane", "missile", "crane"]
    assert order.tolist() == [0, 1, 2]
    metrics = {str(i): {"name": n, "alternates": {s: 1}, "most_common_name": s}
               for i, (n, s) in enumerate([("crane", "crane bird"), ("missile", "rocket"),
                                           ("crane", "crane machine")])}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    real = RealPromptClassifier(backbone, synonyms=str(path), templates=["a {}."]).fit()
    assert real.classes_.tolist() == [0, 1, 2]
    assert real.classnames_.tolist() == ["crane", "missile", "crane"]
    assert real.prompt_names_.tolist() == ["crane bird", "rocket", "crane machine"]
    X = backbone.encode_texts(["a crane machine."])
    assert real.predict(X).tolist() == [2]


# ---------------------------------------------------------------------- binary problems


def test_binary_decision_function_is_the_margin_of_the_second_class():
    X, y, centroids = separable()
    keep = y != "bird"
    X, y = X[keep], y[keep]
    clf = ZeroShotClassifier(text_weights=centroids[[1, 0]], classnames=["dog", "cat"]).fit()
    margin = clf.decision_function(X)
    logits = clf.logits(X)
    assert margin.shape == (len(X),) and logits.shape == (len(X), 2)
    np.testing.assert_allclose(margin, logits[:, 1] - logits[:, 0], rtol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(X)[:, 1], 1 / (1 + np.exp(-margin)), atol=1e-6)
    np.testing.assert_array_equal(clf.predict(X), np.where(margin > 0, "dog", "cat"))
    assert roc_auc_score(y, margin) == 1.0
    assert cross_val_score(clf, X, y, cv=3, scoring="roc_auc").min() == 1.0
    ints = ZeroShotClassifier(text_weights=centroids[:2])
    assert cross_val_score(ints, X, (y == "dog").astype(int), cv=3,
                           scoring="average_precision").min() == pytest.approx(1.0)


# ---------------------------------------------------------------------- inputs


def test_zero_rows_integers_float16_and_lists():
    X, y, centroids = separable()
    clf = ZeroShotClassifier(text_weights=centroids).fit()
    zero = np.zeros((2, 8))
    np.testing.assert_array_equal(clf.logits(zero), 0.0)
    np.testing.assert_array_equal(clf.predict_proba(zero), np.full((2, 3), 1 / 3))
    np.testing.assert_allclose(clf.logits(X.astype(np.float16)), clf.logits(X), atol=0.1)
    np.testing.assert_allclose(clf.logits(X.tolist()), clf.logits(X), rtol=1e-6)
    assert clf.logits(np.eye(8, dtype=int)).dtype == np.float32
    plain = GDAClassifier().fit(np.vstack([X, zero]), np.concatenate([y, ["cat", "dog"]]))
    assert np.isfinite(plain.predict_proba(zero)).all()


def test_zero_shot_fit_checks_the_y_it_is_given():
    X, y, centroids = separable()
    for klass in (ZeroShotClassifier, DescriptionClassifier, RealPromptClassifier):
        with pytest.raises(InputError, match=rf"^{klass.__name__}: Found input variables with "
                                             r"inconsistent numbers of samples: \[60, 59\]"):
            klass(text_weights=centroids).fit(X, y[:-1])
        with pytest.raises(InputError, match="Unknown label type: continuous"):
            klass(text_weights=centroids).fit(X, np.linspace(0, 1, len(X)))


@pytest.mark.parametrize("klass, param, value, message", [
    (ZeroShotClassifier, "logit_scale", -1.0, "a number >= 0"),
    (GDAClassifier, "cv", 1, "an integer >= 2"),
    (GDAClassifier, "logit_scale", "big", "a number >= 0"),
    (DescriptionClassifier, "logit_scale", np.nan, "a number >= 0"),
    (RealLinearClassifier, "batch_size", 0, "an integer >= 1"),
    (RealLinearClassifier, "mention", "some", "'synonym' or 'any'"),
    (RealLinearClassifier, "wise_alpha", np.nan, "a number in [0, 1]"),
    (RealLinearClassifier, "wise_alpha", 1.5, "a number in [0, 1]"),
    (RealLinearClassifier, "lr", np.inf, "a number >= 0"),
    (RealLinearClassifier, "weight_decay", -0.1, "a number >= 0"),
    (RealLinearClassifier, "warmup_iter", 2.5, "an integer >= 0"),
    (ZeroShotClassifier, "logit_scale", np.float32("nan"), "a number >= 0"),
])
def test_parameters_are_checked_in_one_sentence(klass, param, value, message):
    X, y, centroids = separable()
    with pytest.raises(InputError) as info:
        klass(text_weights=centroids, **{param: value}).fit(X, y)
    assert str(info.value) == f"{klass.__name__}: {param} must be {message}, got {value!r}."


@pytest.mark.parametrize("value", [np.nan, np.inf, -1e-3, "fast"])
def test_tpt_learning_rate_is_checked_in_one_sentence(backbone, value):
    with pytest.raises(InputError) as info:
        TPTClassifier(backbone, classnames=NAMES, lr=value).fit()
    assert str(info.value) == f"TPTClassifier: lr must be a number >= 0, got {value!r}."


@pytest.mark.parametrize("scale", [1e19, 1e30, 1e-20])
def test_rows_of_extreme_norm_keep_their_direction(scale):
    X, y, centroids = separable()
    classifier = ZeroShotClassifier(text_weights=centroids).fit()
    expected = classifier.predict_proba(X[:5])
    np.testing.assert_allclose(classifier.predict_proba(X[:5] * np.float32(scale)), expected,
                               atol=1e-5)
    np.testing.assert_allclose(ZeroShotClassifier(text_weights=centroids * np.float32(scale))
                               .fit().predict_proba(X[:5]), expected, atol=1e-5)


def test_constructors_are_keyword_only_after_the_backbone():
    for klass in [*TEXT_SIDE_CLASSIFIERS, TPTClassifier]:
        with pytest.raises(TypeError):
            klass(None, NAMES)
        assert klass().get_params()["backbone"] is None


# ---------------------------------------------------------------------- tags, seeds


def test_tags_say_what_each_method_needs():
    for clf in (ZeroShotClassifier(), DescriptionClassifier(), RealPromptClassifier(),
                TPTClassifier()):
        assert get_tags(clf).target_tags.required is False, type(clf).__name__
    for clf in (GDAClassifier(), RealLinearClassifier()):
        assert get_tags(clf).target_tags.required is True, type(clf).__name__
    tpt = get_tags(TPTClassifier()).input_tags
    assert not tpt.two_d_array and tpt.string
    assert get_tags(ZeroShotClassifier()).input_tags.two_d_array


def test_random_state_none_int_or_randomstate(backbone):
    X, y, centroids = separable(n_per_class=6)
    first, second = (GDAClassifier(text_weights=centroids, classnames=NAMES).fit(X, y)
                     for _ in range(2))
    assert first.random_state == 0 and first.alpha_ == second.alpha_
    np.testing.assert_array_equal(first.alpha_scores_, second.alpha_scores_)
    for seed in (None, 3, np.random.RandomState(3)):
        GDAClassifier(text_weights=centroids, classnames=NAMES, random_state=seed).fit(X, y)
        tpt = TPTClassifier(backbone, classnames=NAMES, n_views=2, random_state=seed).fit()
        assert tpt.classes_.tolist() == sorted(NAMES)


# ---------------------------------------------------------------------- model selection


def test_cross_val_predict_proba_with_a_text_side():
    X, y, centroids = separable()
    gda = GDAClassifier(text_weights=centroids, classnames=NAMES)
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    proba = cross_val_predict(gda, X, y, cv=folds, method="predict_proba")
    assert proba.shape == (len(X), 3)
    assert roc_auc_score(y, proba, multi_class="ovr") == 1.0
    np.testing.assert_array_equal(np.array(sorted(NAMES))[proba.argmax(axis=1)], y)


def test_calibration_grid_search_clone_and_pickle():
    X, y, centroids = separable()
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    zero_shot = ZeroShotClassifier(text_weights=centroids, classnames=NAMES)
    calibrated = CalibratedClassifierCV(zero_shot, cv=folds).fit(X, y)
    assert calibrated.score(X, y) == 1.0
    assert roc_auc_score(y, calibrated.predict_proba(X), multi_class="ovr") == 1.0
    search = GridSearchCV(GDAClassifier(text_weights=centroids, classnames=NAMES),
                          {"alpha": [0.1, 1.0]}, scoring="roc_auc_ovr", cv=folds).fit(X, y)
    assert search.best_score_ == 1.0
    assert cross_val_score(zero_shot, X, y, cv=folds, scoring="roc_auc_ovr").min() == 1.0
    copy = clone(zero_shot)
    assert copy.classnames == NAMES and not hasattr(copy, "classes_")
    fitted = pickle.loads(pickle.dumps(zero_shot.fit()))
    np.testing.assert_array_equal(fitted.predict_proba(X), zero_shot.predict_proba(X))


def test_save_and_load_keep_the_text_head_and_column_names(tmp_path):
    X, y, centroids = separable()
    for klass in TEXT_SIDE_CLASSIFIERS:
        clf = klass(text_weights=centroids, classnames=NAMES).fit(X, y)
        clf.save(tmp_path / "clf.npz")
        loaded = Predictor.load(tmp_path / "clf.npz")
        np.testing.assert_array_equal(loaded.text_head_, clf.text_head_)
        np.testing.assert_array_equal(loaded.classnames_, clf.classnames_)
        np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
        np.testing.assert_allclose(loaded.predict_proba(X), softmax(clf.logits(X), axis=1),
                                   rtol=1e-5)


def test_descriptions_from_text_weights_score_by_cosine_and_cannot_explain():
    X, y, centroids = separable()
    clf = DescriptionClassifier(text_weights=centroids, classnames=NAMES, logit_scale=10.0).fit()
    rows = [NAMES.index(c) for c in clf.classes_]
    np.testing.assert_allclose(clf.logits(X), 10.0 * X @ centroids[rows].T, rtol=1e-5)
    with pytest.raises(InputError, match="^DescriptionClassifier: explain needs descriptors"):
        clf.explain(X)
