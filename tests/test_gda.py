"""GDAClassifier: the closed form, the alpha search, unseen classes, bad inputs, scikit-learn,
persistence, augmented support views, and the command line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.special import softmax
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import check_estimator

from zeroshot_plus import (Backbone, GDAClassifier, ImageEmbedder, InputError, Predictor,
                           ZeroShotClassifier, augmented_support, sample_shots)
from zeroshot_plus.cli import main

TINY = Path(__file__).resolve().parent / "zsp-tiny.json"


def unit(x: np.ndarray) -> np.ndarray:
    """float32 unit rows, exactly as the classifier would normalise them."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]


def clusters(n_classes=4, shots=10, dim=16, spread=0.6, seed=0, text_noise=0.8):
    """Unit embeddings around random class directions, and a noisy text head (C, D)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim))
    y = np.repeat(np.arange(n_classes), shots)
    X = unit(centres[y] + spread * rng.standard_normal((len(y), dim)))
    text = unit(centres + text_noise * rng.standard_normal(centres.shape))
    return X, y, text


def closed_form(X: np.ndarray, y: np.ndarray):
    """Means, KS precision (numpy.linalg.inv), W (C, D) and b (C,), computed independently."""
    Xd = X.astype(np.float64)
    classes = np.unique(y)
    means = np.stack([Xd[y == c].mean(axis=0) for c in classes])
    centred = Xd - means[np.searchsorted(classes, y)]
    scatter = centred.T @ centred
    n, dim = Xd.shape
    precision = dim * np.linalg.inv(scatter + np.trace(scatter) / (n - 1) * np.eye(dim))
    weights = means @ precision
    bias = np.log(1 / len(classes)) - 0.5 * np.einsum("cd,cd->c", weights, means)
    return means, precision, weights, bias


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    backbone = Backbone(str(TINY), "none", progress=False, batch_size=16)
    backbone.model
    return backbone


def photo(seed: int, size=(40, 36)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, 3)
    noise = rng.integers(-40, 40, (size[1], size[0], 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------- the closed form


def test_precision_weights_and_bias_equal_the_closed_form():
    X, y, _ = clusters(n_classes=3, shots=20, dim=8)
    clf = GDAClassifier().fit(X, y)
    means, precision, weights, bias = closed_form(X, y)
    np.testing.assert_allclose(clf.means_, means, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(clf.precision_, precision, rtol=1e-9)
    np.testing.assert_allclose(clf.weights_, weights, rtol=1e-6)
    np.testing.assert_allclose(clf.bias_, bias, rtol=1e-6)
    assert clf.precision_.dtype == np.float64 and clf.n_features_in_ == 8
    np.testing.assert_array_equal(clf.class_counts_, [20, 20, 20])


def test_logits_equal_a_direct_evaluation_of_the_formulas():
    X, y, text = clusters()
    queries = clusters(seed=1)[0]
    _, _, weights, bias = closed_form(X, y)
    clf = GDAClassifier(text_weights=text, alpha=0.3).fit(X, y)
    expected = 100 * queries @ text.T.astype(np.float64) + 0.3 * (queries @ weights.T + bias)
    np.testing.assert_allclose(clf.decision_function(queries), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(clf.predict_proba(queries), softmax(expected, axis=1), atol=1e-5)
    plain = GDAClassifier().fit(X, y)  # no text side: plain GDA, xᵀW + b
    np.testing.assert_allclose(plain.decision_function(queries), queries @ weights.T + bias,
                               rtol=1e-5, atol=1e-5)
    assert plain.alpha_ == 1.0 and plain.alpha_scores_ is None and plain.text_head_ is None


def test_gda_predictions_approach_the_bayes_lda_rule_as_shots_grow():
    # z ~ N(m_c, Σ) in R^8 with a shared Σ. In float32, x = normalise([1e5, z]) is [1, z/1e5]
    # exactly (‖z‖² vanishes beside 1e10), an affine image of z: the Bayes rule is LDA on z.
    rng = np.random.default_rng(0)
    dim, n_classes = 8, 4
    factor = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    cov = factor @ factor.T + 0.1 * np.eye(dim)
    means = rng.standard_normal((n_classes, dim))
    means *= 1.5 / np.linalg.norm(means, axis=1, keepdims=True)
    chol = np.linalg.cholesky(cov)

    def draw(per_class):
        labels = np.repeat(np.arange(n_classes), per_class)
        z = means[labels] + rng.standard_normal((len(labels), dim)) @ chol.T
        return z, labels

    z_test, _ = draw(1000)
    inverse = np.linalg.inv(cov)
    bayes = np.argmax(z_test @ inverse @ means.T - 0.5 * np.einsum("cd,de,ce->c", means, inverse, means), axis=1)
    embed = lambda z: unit(np.hstack([np.full((len(z), 1), 1e5), z]))  # noqa: E731
    agreement = []
    for shots in (4, 32, 4000):
        z, labels = draw(shots)
        clf = GDAClassifier().fit(embed(z), labels)
        agreement.append(np.mean(clf.predict(embed(z_test)) == bayes))
    assert agreement[0] < agreement[1] < agreement[2], agreement
    assert agreement[2] > 0.98, agreement


def test_alpha_to_zero_gives_the_zero_shot_predictions():
    X, y, text = clusters(text_noise=1.5)
    queries = clusters(seed=3, text_noise=1.5)[0]
    zero_shot = ZeroShotClassifier(text_weights=text).fit().predict(queries)
    for alpha in (0.0, 1e-9):
        clf = GDAClassifier(text_weights=text, alpha=alpha).fit(X, y)
        np.testing.assert_array_equal(clf.predict(queries), zero_shot)
    assert (GDAClassifier(text_weights=text, alpha=100.0).fit(X, y).predict(queries) != zero_shot).any()


# ---------------------------------------------------------------------- choosing alpha


def test_validation_scores_are_the_accuracies_of_refits_at_each_alpha():
    X, y, text = clusters(shots=8, text_noise=1.2)
    X_val, y_val, _ = clusters(shots=30, seed=5, text_noise=1.2)
    clf = GDAClassifier(text_weights=text).fit(X, y, X_val=X_val, y_val=y_val)
    refits = [GDAClassifier(text_weights=text, alpha=a).fit(X, y).score(X_val, y_val)
              for a in clf.alpha_grid_]
    np.testing.assert_allclose(clf.alpha_scores_, refits)
    assert clf.alpha_ == clf.alpha_grid_[np.argmax(refits)]


def test_cross_validation_scores_are_the_accuracies_of_refits_on_the_folds():
    X, y, text = clusters(shots=12, text_noise=1.2)
    groups = np.arange(len(y)) // 3  # three "views" per image
    clf = GDAClassifier(text_weights=text, random_state=0).fit(X, y, groups=groups)
    folds = clf._folds(y, groups, len(y))
    assert all((folds[groups == g] == folds[groups == g][0]).all() for g in np.unique(groups))
    assert len(np.unique(folds)) == 4  # min(cv=5, 4 images per class)
    refits = []
    for alpha in clf.alpha_grid_:
        correct = 0
        for fold in np.unique(folds):
            train = folds != fold
            model = GDAClassifier(text_weights=text, alpha=alpha).fit(X[train], y[train])
            correct += np.sum(model.predict(X[~train]) == y[~train])
        refits.append(correct / len(y))
    np.testing.assert_allclose(clf.alpha_scores_, refits)


def test_alpha_ties_go_to_the_smaller_alpha_and_the_search_is_deterministic():
    X, y, text = clusters(spread=0.05, text_noise=0.0)  # every alpha is perfect
    clf = GDAClassifier(text_weights=text, alpha_grid=(10.0, 0.5, 1e-3), random_state=0).fit(X, y)
    assert clf.alpha_ == 1e-3 and (clf.alpha_scores_ == 1).all()
    np.testing.assert_array_equal(clf.alpha_grid_, [1e-3, 0.5, 10.0])
    X, y, text = clusters(shots=8, text_noise=1.5, seed=2)
    first = GDAClassifier(text_weights=text, random_state=7).fit(X, y)
    again = GDAClassifier(text_weights=text, random_state=7).fit(X, y)
    np.testing.assert_array_equal(first.alpha_scores_, again.alpha_scores_)
    np.testing.assert_array_equal(first.decision_function(X), again.decision_function(X))


def test_random_state_takes_a_numpy_generator_and_refuses_other_values_in_one_sentence():
    X, y, text = clusters(shots=8, text_noise=1.5, seed=2)
    groups = np.arange(len(y)) // 2
    folds = [GDAClassifier(random_state=np.random.default_rng(5))._folds(y, groups, len(y))
             for _ in range(2)]
    np.testing.assert_array_equal(*folds)  # equal Generators draw equal folds
    assert len(np.unique(folds[0])) == 4
    for bad in ("abc", True, 1.5):
        with pytest.raises(InputError, match=r"^GDAClassifier: random_state must be None, an "
                                             r"int, a numpy Generator or RandomState, got "):
            GDAClassifier(text_weights=text, random_state=bad).fit(X, y)


def test_a_useless_text_head_makes_the_search_pick_a_large_alpha():
    X, y, _ = clusters(shots=12, spread=0.4)
    wrong = unit(np.random.default_rng(9).standard_normal((4, 16)))
    clf = GDAClassifier(text_weights=wrong, random_state=0).fit(X, y)
    assert clf.alpha_ >= 1 and clf.alpha_scores_[-1] > clf.alpha_scores_[0]


# ---------------------------------------------------------------------- unseen classes


def test_classes_without_support_are_predicted_from_synthesised_statistics():
    X, y, text = clusters(n_classes=6, shots=10, dim=48, spread=0.5, text_noise=0.3)
    seen = y < 4
    clf = GDAClassifier(text_weights=text, alpha=1.0, n_neighbors=7, text_copies=3)
    clf.fit(X[seen], y[seen])
    np.testing.assert_array_equal(clf.class_counts_, [10, 10, 10, 10, 0, 0])
    # independent evaluation: neighbours of each unseen text vector, pooled scatter, KS
    support, labels = X[seen].astype(np.float64), y[seen]
    means = np.stack([support[labels == c].mean(axis=0) for c in range(4)])
    centred = support - means[labels]
    scatter, n = centred.T @ centred, len(support)
    for u in (4, 5):
        t = text[u].astype(np.float64)
        nearest = support[np.argsort(-(X[seen] @ text[u]))[:7]]
        means = np.vstack([means, (nearest.sum(axis=0) + 3 * t) / 10])
        scatter += (nearest - t).T @ (nearest - t)
        n += 7
    precision = 48 * np.linalg.inv(scatter + np.trace(scatter) / (n - 1) * np.eye(48))
    np.testing.assert_allclose(clf.means_, means, atol=1e-12)
    np.testing.assert_allclose(clf.precision_, precision, rtol=1e-9)
    predicted = clf.predict(X)
    assert set(predicted[~seen]) & {4, 5}
    assert np.mean(predicted[~seen] == y[~seen]) > 0.5
    assert np.mean(predicted[seen] == y[seen]) > 0.9


def test_base_to_new_alpha_is_chosen_among_the_classes_with_support_or_validation_rows():
    # METHODS.md 1.3: the reference picks alpha on the base validation set with the base head
    X, y, text = clusters(n_classes=6, shots=20, dim=24, spread=1.0, seed=4, text_noise=0.8)
    text[4] = unit(text[0:1] + 0.3 * text[4:5])[0]  # an unseen class whose text resembles 0's
    base, train = y < 4, np.arange(len(y)) % 2 == 0
    clf = GDAClassifier(text_weights=text).fit(X[base & train], y[base & train],
                                               X_val=X[base & ~train], y_val=y[base & ~train])
    X_val, y_val = unit(X[base & ~train]).astype(np.float64), y[base & ~train]

    def accuracies(columns):
        zero_shot = 100 * X_val @ text.T.astype(np.float64)
        gda = X_val @ clf.weights_.T + clf.bias_
        return np.array([np.mean(columns[np.argmax((zero_shot + a * gda)[:, columns], axis=1)]
                                 == y_val) for a in clf.alpha_grid_])

    base_only, every_class = accuracies(np.arange(4)), accuracies(np.arange(6))
    np.testing.assert_allclose(clf.alpha_scores_, base_only)
    assert clf.alpha_ == clf.alpha_grid_[np.argmax(base_only)]
    assert clf.alpha_ != clf.alpha_grid_[np.argmax(every_class)]  # the choice this changes
    # a validation row of an unseen class brings its class into the scored columns
    with_new = GDAClassifier(text_weights=text).fit(X[base & train], y[base & train],
                                                    X_val=X[~train], y_val=y[~train])
    X_all, y_all = unit(X[~train]).astype(np.float64), y[~train]
    logits = 100 * X_all @ text.T.astype(np.float64) + with_new.alpha_grid_[:, None, None] * (
        X_all @ with_new.weights_.T + with_new.bias_)
    np.testing.assert_allclose(with_new.alpha_scores_, np.mean(logits.argmax(axis=2) == y_all,
                                                               axis=1))


def test_a_class_with_one_image_becomes_unseen_in_the_fold_that_holds_it_out():
    X, y, text = clusters(shots=6, text_noise=0.5)
    keep = np.ones(len(y), bool)
    keep[np.flatnonzero(y == 3)[1:]] = False  # class 3: one sample
    clf = GDAClassifier(text_weights=text, random_state=0).fit(X[keep], y[keep])
    assert clf.class_counts_[3] == 1 and np.isfinite(clf.alpha_scores_).all()
    one_per_class = GDAClassifier(text_weights=text, random_state=0).fit(X[::6], y[::6])
    assert one_per_class.alpha_ in one_per_class.alpha_grid_  # folds hold out whole classes


# ---------------------------------------------------------------------- inputs


def test_one_shot_classes_contribute_no_scatter():
    X, y, _ = clusters(n_classes=3, shots=10, dim=8)
    extra = unit(np.random.default_rng(4).standard_normal((1, 8)))
    clf = GDAClassifier().fit(np.vstack([X, extra]), np.append(y, 3))
    means, _, _, _ = closed_form(X, y)
    centred = X.astype(np.float64) - means[y]
    scatter = centred.T @ centred  # the one-shot class adds nothing, but counts in N
    expected = 8 * np.linalg.inv(scatter + np.trace(scatter) / len(X) * np.eye(8))
    np.testing.assert_allclose(clf.precision_, expected, rtol=1e-9)
    assert clf.predict(extra)[0] == 3
    # every class one shot: no scatter at all, P = D·I (nearest class mean)
    single = GDAClassifier().fit(X[::10], y[::10])
    np.testing.assert_allclose(single.precision_, 8 * np.eye(8))
    np.testing.assert_array_equal(single.predict(X[::10]), y[::10])


def test_labels_may_be_strings_or_ints():
    X, y, text = clusters()
    names = np.array(["cat", "dog", "eel", "fox"])
    by_name = GDAClassifier(text_weights=text, classnames=list(names), alpha=1.0).fit(X, names[y])
    by_index = GDAClassifier(text_weights=text, alpha=1.0).fit(X, y)
    np.testing.assert_array_equal(by_name.predict(X), names[by_index.predict(X)])
    plain = GDAClassifier().fit(X, names[y])
    assert list(plain.classes_) == list(names) and plain.predict(X).dtype.kind == "U"


def test_unnormalised_embeddings_are_normalised():
    X, y, text = clusters()
    scaled = X * np.random.default_rng(0).uniform(0.5, 3, (len(X), 1)).astype(np.float32)
    a = GDAClassifier(text_weights=text, random_state=0).fit(X, y)
    b = GDAClassifier(text_weights=text, random_state=0).fit(scaled, y)
    np.testing.assert_allclose(b.precision_, a.precision_, rtol=1e-4)
    np.testing.assert_allclose(b.decision_function(scaled), a.decision_function(X), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("case, match", [
    ("nan", r"GDAClassifier: Input X contains NaN\.$"),
    ("unknown label", r"support labels 'zebra' are not among the classes of the text side \('cat', 'dog'"),
    ("int labels beyond the classes",
     r"support labels 4, 5 are not among the classes of the text side "
     r"\(.cat., .dog., .eel., .fox.\)\.$"),
    ("rows vs names", "3 class names for 4 rows of text_weights"),
    ("dimension", "the support embeddings have D=16 but the text side has D=12"),
    ("predict dimension", "X has 12 features, but GDAClassifier is expecting 16 features"),
    ("no y", "requires y to be passed"),
    ("alpha", "alpha must be 'auto' or a number >= 0, got 'best'"),
    ("negative alpha", "alpha must be 'auto' or a number >= 0, got -1"),
    ("cv", "cv must be an integer >= 2, got 1"),
    ("validation label", "validation labels 'zebra' are not among"),
    ("validation rows", "X_val has 16 rows but y_val has 3 labels"),
    ("groups", "groups has 5 entries for 40 support rows"),
    ("mixed group", "a group \\(support image\\) carries more than one label"),
    ("single image", "cannot cross-validate a single support image"),
    ("no text side", "needs either text_weights, or a backbone and classnames"),
])
def test_bad_inputs_raise_one_input_error_sentence(case, match):
    X, y, text = clusters()
    names = ["cat", "dog", "eel", "fox"]
    labels = np.array(names)[y]
    named = GDAClassifier(text_weights=text, classnames=names)
    with pytest.raises(InputError, match=match) as info:
        if case == "nan":
            bad = X.copy()
            bad[3, 2] = np.nan
            GDAClassifier().fit(bad, y)
        elif case == "unknown label":
            named.fit(X, np.where(y == 3, "zebra", labels))
        elif case == "int labels beyond the classes":  # integers are positions in classes_
            named.fit(X, y + 2)
        elif case == "rows vs names":
            GDAClassifier(text_weights=text, classnames=names[:3]).fit(X, labels)
        elif case == "dimension":
            GDAClassifier(text_weights=text[:, :12]).fit(X, y)
        elif case == "predict dimension":
            GDAClassifier().fit(X, y).predict(X[:, :12])
        elif case == "no y":
            GDAClassifier().fit(X, None)
        elif case == "alpha":
            GDAClassifier(text_weights=text, alpha="best").fit(X, y)
        elif case == "negative alpha":
            GDAClassifier(text_weights=text, alpha=-1).fit(X, y)
        elif case == "cv":
            GDAClassifier(text_weights=text, cv=1).fit(X, y)
        elif case == "validation label":
            named.fit(X, labels, X_val=X[:3], y_val=["cat", "zebra", "dog"])
        elif case == "validation rows":
            named.fit(X, labels, X_val=X[:16], y_val=["cat", "dog", "dog"])
        elif case == "groups":
            GDAClassifier(text_weights=text).fit(X, y, groups=[0, 1, 2, 3, 4])
        elif case == "mixed group":
            GDAClassifier(text_weights=text).fit(X, y, groups=np.arange(len(y)) // 20)
        elif case == "single image":
            GDAClassifier(text_weights=text).fit(X[:1], y[:1])
        elif case == "no text side":
            GDAClassifier(classnames=names).fit(X, labels)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- scikit-learn


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_check_estimator_in_the_embeddings_only_configuration():
    check_estimator(GDAClassifier())


def test_pipeline_on_images_grid_search_and_cross_val_score(tiny):
    images = [photo(i) for i in range(12)]
    labels = ["red", "green", "blue"] * 4
    pipeline = make_pipeline(ImageEmbedder(tiny),
                             GDAClassifier(tiny, classnames=["red", "green", "blue"],
                                           templates=["a {} photo."],
                                           random_state=0))
    pipeline.fit(images, labels)
    assert set(pipeline.predict(images)) <= {"red", "green", "blue"}
    assert pipeline.predict_proba(images).shape == (12, 3)

    X, y, text = clusters(shots=12)
    search = GridSearchCV(GDAClassifier(text_weights=text), {"alpha": [0.01, 1.0, 100.0]}, cv=3)
    search.fit(X, y)
    assert search.best_params_["alpha"] in (0.01, 1.0, 100.0) and search.best_score_ > 0.5
    scores = cross_val_score(GDAClassifier(text_weights=text, random_state=0), X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.5


# ---------------------------------------------------------------------- persistence


def test_save_and_load_round_trip(tmp_path, tiny):
    X, y, text = clusters(shots=8, text_noise=1.0)
    clf = GDAClassifier(text_weights=text, classnames=["a", "b", "c", "d"], random_state=3)
    clf.fit(X, np.array(["a", "b", "c", "d"])[y])
    clf.save(tmp_path / "gda.npz")
    loaded = Predictor.load(tmp_path / "gda.npz")
    assert isinstance(loaded, GDAClassifier) and loaded.alpha_ == clf.alpha_
    np.testing.assert_array_equal(loaded.alpha_scores_, clf.alpha_scores_)
    np.testing.assert_array_equal(loaded.decision_function(X), clf.decision_function(X))
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))

    names = ["red", "green"]
    support = np.array(["red", "green"] * 3)
    Xs = tiny.encode_images([photo(i) for i in range(6)])
    with_backbone = GDAClassifier(tiny, classnames=names, templates=["a {} photo."],
                                  alpha=0.5).fit(Xs, support)
    with_backbone.save(tmp_path / "backbone.npz")
    again = GDAClassifier.load(tmp_path / "backbone.npz")  # backbone rebuilt from its name
    assert again.backbone.fingerprint == tiny.fingerprint
    np.testing.assert_array_equal(again.decision_function(Xs), with_backbone.decision_function(Xs))
    plain = GDAClassifier().fit(X, y)
    plain.save(tmp_path / "plain.npz")
    np.testing.assert_array_equal(Predictor.load(tmp_path / "plain.npz").predict(X), plain.predict(X))


# ---------------------------------------------------------------------- augmented support


def test_augmented_views_are_seeded_cached_and_grouped(tmp_path, tiny, monkeypatch):
    images = [photo(i, size=(48, 40)) for i in range(4)]
    labels = ["x", "y", "x", "y"]
    first = augmented_support(tiny, images, labels, n_views=3, random_state=1, cache=tmp_path)
    assert first.X.shape == (12, 32) and first.X.dtype == np.float32
    np.testing.assert_array_equal(first.y, np.repeat(labels, 3))
    np.testing.assert_array_equal(first.groups, np.repeat(np.arange(4), 3))
    np.testing.assert_allclose(np.linalg.norm(first.X, axis=1), 1, atol=1e-5)
    assert np.abs(first.X[0] - first.X[1]).max() > 1e-4  # views differ
    same = augmented_support(tiny, images, labels, n_views=3, random_state=1)  # no cache
    np.testing.assert_allclose(same.X, first.X, atol=1e-6)
    other = augmented_support(tiny, images, labels, n_views=3, random_state=2)
    assert np.abs(other.X - first.X).max() > 1e-4

    def fail(*_):
        raise AssertionError("a stored view was encoded again")
    monkeypatch.setattr(tiny, "encode_pixels", fail)
    cached = augmented_support(tiny, images[::-1], labels[::-1], n_views=3, random_state=1, cache=tmp_path)
    np.testing.assert_array_equal(cached.X.reshape(4, 3, -1), first.X.reshape(4, 3, -1)[::-1])
    with pytest.raises(InputError, match="carry no labels"):
        augmented_support(tiny, images, n_views=2)
    with pytest.raises(InputError, match="n_views must be an integer >= 1"):
        augmented_support(tiny, images, labels, n_views=0)


def test_sample_shots_draws_k_per_class_with_a_seed(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(5):
            photo(i).save(tmp_path / label / f"{i}.png")
    one = sample_shots(tmp_path, 2, random_state=0)
    assert one.labels == ["a", "a", "b", "b"]
    assert sample_shots(tmp_path, 2, random_state=0).items == one.items
    assert any(sample_shots(tmp_path, 2, random_state=s).items != one.items for s in range(1, 6))
    assert len(sample_shots(tmp_path, 9).items) == 10  # fewer than K: all of them


# ---------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gda-cli")
    for split, count in (("support", 4), ("test", 2)):
        for c, label in enumerate(("red", "green", "blue")):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                photo(100 * c + 10 * i + (split == "test"), size=(36, 36)).save(
                    root / split / label / f"{i}.png")
    return root


def test_cli_gda_predict_fit_and_reuse(folders, tmp_path, capsys):
    model = ["--model", str(TINY), "--pretrained", "none", "--no-progress",
             "--templates", str(_template_file(tmp_path))]
    gda = ["--method", "gda", "--support", str(folders / "support"), "--shots", "2",
           "--views", "2", "--seed", "0"]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(folders / "test"), "--classes", "red,green,blue",
                 "--out", str(out), *model, *gda]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0][:3] == ["path", "label1", "prob1"] and len(rows) == 7
    classifier = tmp_path / "gda.npz"
    assert main(["fit", str(folders / "support"), "--out", str(classifier), "--shots", "2",
                 "--views", "2", "--seed", "0", *model]) == 0
    fitted = GDAClassifier.load(classifier)
    assert list(fitted.classes_) == ["blue", "green", "red"] and fitted.class_counts_.sum() == 12
    reused = tmp_path / "reused.csv"
    assert main(["predict", str(folders / "test"), "--classifier", str(classifier),
                 "--out", str(reused), "--no-progress"]) == 0
    assert len(list(csv.reader(reused.open()))) == 7
    capsys.readouterr()
    assert main(["evaluate", str(folders / "test"), "--classifier", str(classifier),
                 "--no-progress"]) == 0
    assert "top-1" in capsys.readouterr().out
    assert main(["predict", str(folders / "test"), "--classes", "red,green,blue", *model,
                 "--method", "gda"]) == 2
    assert "--method gda needs --support" in capsys.readouterr().err


def _template_file(tmp_path: Path) -> Path:
    path = tmp_path / "templates.txt"
    path.write_text("a photo of a {}.\n")
    return path


def test_plain_gda_predicts_as_scikit_learns_shrunk_lda():
    """Without a text side GDA is scikit-learn's LDA with a fixed shrinkage, on equal classes.

    LinearDiscriminantAnalysis(solver="lsqr", shrinkage=s) pools the class covariances,
    each shrunk as (1 − s)·S_c/n_c + s·tr(S_c/n_c)/D·I, with the priors n_c/N as weights:
    Σ_s = (1 − s)·S/N + s·tr(S)/(N·D)·I. With s = D/(N − 1 + D), s/(1 − s) = D/(N − 1), so
    Σ_s = (1 − s)/N · (S + tr(S)/(N − 1)·I) = k⁻¹·P⁻¹ with P the KS precision and
    k = N/((1 − s)·D). LDA's discriminant is then k·(xᵀPμ_c − ½μ_cᵀPμ_c) + log π_c, and with
    equal class counts π_c = 1/C: GDA's logits scaled by k about the same log(1/C) constant.
    """
    n_classes, shots, dim = 5, 40, 16
    X, y, _ = clusters(n_classes, shots, dim, spread=2.0, seed=3)      # 78% accuracy
    X_test, _, _ = clusters(n_classes, 400, dim, spread=2.0, seed=3)  # 2,000 points
    n = len(X)
    shrinkage = dim / (n - 1 + dim)
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage)
    lda.fit(X.astype(np.float64), y)
    gda = GDAClassifier().fit(X, y)
    np.testing.assert_array_equal(gda.predict(X_test), lda.predict(X_test.astype(np.float64)))
    scale = n / ((1 - shrinkage) * dim)
    prior = np.log(1 / n_classes)
    np.testing.assert_allclose(lda.decision_function(X_test.astype(np.float64)) - prior,
                               scale * (gda.decision_function(X_test) - prior), rtol=1e-9,
                               atol=1e-9)


def test_fit_gda_from_support_is_what_the_cli_fits(folders, tmp_path):
    from zeroshot_plus import fit_gda_from_support

    templates = _template_file(tmp_path)
    out = tmp_path / "gda.npz"
    assert main(["fit", str(folders / "support"), "--out", str(out), "--shots", "2", "--views",
                 "2", "--seed", "1", "--alpha", "0.5", "--templates", str(templates),
                 "--model", str(TINY), "--pretrained", "none", "--no-progress"]) == 0
    backbone = Backbone(TINY, "none", progress=False)
    fitted = fit_gda_from_support(backbone, folders / "support", shots=2, n_views=2, alpha=0.5,
                                  random_state=1, templates=str(templates))
    saved = GDAClassifier.load(out, backbone)
    assert list(fitted.classes_) == list(saved.classes_) == ["blue", "green", "red"]
    assert fitted.class_counts_.tolist() == [4, 4, 4] and fitted.alpha_ == 0.5
    X = backbone.encode_images(folders / "test")
    np.testing.assert_array_equal(fitted.decision_function(X), saved.decision_function(X))
    # alpha chosen on labelled validation images; an unlabelled set is one sentence
    on_val = fit_gda_from_support(backbone, folders / "support", ["red", "green", "blue"],
                                  n_views=1, val=folders / "test", templates=str(templates))
    assert on_val.alpha_ in on_val.alpha_grid and list(on_val.classes_) == ["blue", "green", "red"]
    with pytest.raises(InputError, match="validation images '.*' carry no labels"):
        fit_gda_from_support(backbone, folders / "support", n_views=1,
                             val=sorted((folders / "test" / "red").iterdir()))
    with pytest.raises(InputError, match="support images '.*' carry no labels"):
        fit_gda_from_support(backbone, sorted((folders / "test" / "red").iterdir()))
