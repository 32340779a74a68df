"""The Predictor contract through ZeroShotClassifier: maths, scikit-learn conventions, save/load."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline

from zeroshot_plus import Backbone, ImageEmbedder, InputError, Predictor, ZeroShotClassifier

from conftest import synthetic_image

D = 32


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def raw_weights(rng):
    return rng.normal(size=(4, D)) * rng.uniform(0.5, 3, size=(4, 1))  # rows not unit length


@pytest.fixture
def raw_x(rng):
    return rng.normal(size=(9, D)) * rng.uniform(0.1, 5, size=(9, 1))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T


def test_logits_are_100_times_cosine(raw_weights, raw_x):
    clf = ZeroShotClassifier(text_weights=raw_weights).fit()
    logits = clf.decision_function(raw_x)
    assert logits.shape == (9, 4)
    np.testing.assert_allclose(logits, 100 * _cos(raw_x, raw_weights), atol=1e-3)
    half = clone(clf).set_params(logit_scale=50.0).fit()
    np.testing.assert_allclose(half.decision_function(raw_x), 50 * _cos(raw_x, raw_weights), atol=1e-3)


def test_probabilities_are_softmax_and_sum_to_one(raw_weights, raw_x):
    clf = ZeroShotClassifier(text_weights=raw_weights, logit_scale=10.0).fit()
    proba = clf.predict_proba(raw_x)
    logits = 10 * _cos(raw_x, raw_weights)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(proba, expected, atol=1e-5)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert (proba >= 0).all()
    # at CLIP's scale the probabilities still sum to 1 (no overflow)
    sharp = ZeroShotClassifier(text_weights=raw_weights).fit().predict_proba(raw_x)
    np.testing.assert_allclose(sharp.sum(axis=1), 1.0, atol=1e-12)
    assert np.isfinite(sharp).all()


def test_predict_and_score_use_class_names(raw_weights, raw_x):
    names = ["ant", "bee", "cow", "dog"]
    clf = ZeroShotClassifier(text_weights=raw_weights, classnames=names).fit()
    expected = np.array(names)[_cos(raw_x, raw_weights).argmax(axis=1)]
    assert list(clf.classes_) == names
    np.testing.assert_array_equal(clf.predict(raw_x), expected)
    y = expected.copy()
    y[:3] = "ant" if expected[0] != "ant" else "bee"  # 3 of 9 wrong at least for row 0
    wrong = int((y != expected).sum())
    assert clf.score(raw_x, y) == pytest.approx(1 - wrong / 9)
    # without names the classes are row indices
    unnamed = ZeroShotClassifier(text_weights=raw_weights).fit()
    np.testing.assert_array_equal(unnamed.classes_, np.arange(4))


def test_fit_from_backbone_builds_the_template_ensemble(backbone):
    templates = ["a photo of a {}.", "a sketch of the {}."]
    clf = ZeroShotClassifier(backbone, classnames=["cat", "sea_lion"], templates=templates).fit()
    assert list(clf.classes_) == ["cat", "sea_lion"] and clf.n_features_in_ == D
    for c, name in enumerate(["cat", "sea_lion"]):  # names as given, as in open_clip
        each = backbone.encode_texts([t.format(name) for t in templates]).astype(np.float64)
        mean = each.mean(axis=0)
        np.testing.assert_allclose(clf.text_head_[c], mean / np.linalg.norm(mean), atol=1e-5)
    images = backbone.encode_images([synthetic_image(i) for i in range(4)])
    np.testing.assert_allclose(clf.logits(images), 100 * _cos(images, clf.text_head_), atol=1e-3)


def test_classnames_as_comma_string_and_named_template_set(backbone):
    clf = ZeroShotClassifier(backbone, classnames="cat,dog", templates="photo").fit()
    expected = backbone.encode_texts(["a photo of a cat.", "a photo of a dog."])
    np.testing.assert_allclose(clf.text_head_, expected, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "text_weights, or a backbone and classnames"),
    ({"text_weights": np.ones(5)}, "shape"),
    ({"text_weights": np.full((2, 4), np.nan)}, "finite"),
    ({"text_weights": np.eye(3), "classnames": ["a", "b"]}, "2 class names for 3 rows"),
])
def test_bad_text_side(kwargs, message):
    with pytest.raises(InputError, match=message):
        ZeroShotClassifier(**kwargs).fit()


def test_repeated_class_names_are_usable_and_label_classes_by_position(backbone):
    """Standard lists repeat names (open_clip's ImageNet list has two "missile"s): the issue
    asks that they work; classes_ are then the positions, classnames_ the names."""
    clf = ZeroShotClassifier(text_weights=np.eye(3), classnames=["b", "a", "b"]).fit()
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    assert list(clf.classnames_) == ["b", "a", "b"]
    np.testing.assert_array_equal(clf.predict(np.eye(3)[[2, 0]]), [2, 0])
    names = ZeroShotClassifier(backbone, classnames=["cat", "dog", "cat"], templates="photo").fit()
    np.testing.assert_allclose(names.text_head_[0], names.text_head_[2])


def test_backbone_without_classnames(backbone):
    with pytest.raises(InputError, match="classnames"):
        ZeroShotClassifier(backbone).fit()


def test_bad_embeddings(raw_weights):
    clf = ZeroShotClassifier(text_weights=raw_weights).fit()
    with pytest.raises(ValueError, match=str(D)):
        clf.predict(np.ones((2, D + 1)))
    with pytest.raises(ValueError):
        clf.predict(np.full((2, D), np.nan))
    zero = np.ones((3, D))
    zero[1] = 0  # not an embedding, but scikit-learn feeds such rows: cosine 0 to every class
    np.testing.assert_array_equal(clf.predict_proba(zero)[1], np.full(4, 0.25))
    with pytest.raises(ValueError, match=str(D)):
        ZeroShotClassifier(text_weights=raw_weights).fit(np.ones((2, 5)))


def test_not_fitted(raw_x):
    with pytest.raises(NotFittedError):
        ZeroShotClassifier(text_weights=np.eye(D)).predict(raw_x)


# ---------------------------------------------------------------------- scikit-learn conventions


def test_get_params_set_params_and_clone_share_the_backbone(backbone):
    clf = ZeroShotClassifier(backbone, classnames=["cat", "dog"], templates="photo",
                             logit_scale=20.0)
    params = clf.get_params()
    assert params["backbone"] is backbone and params["classnames"] == ["cat", "dog"]
    assert params["templates"] == "photo" and params["logit_scale"] == 20.0
    assert set(params) == {"backbone", "classnames", "templates", "text_weights",
                           "logit_scale", "cache"}
    assert clf.set_params(logit_scale=5.0) is clf and clf.logit_scale == 5.0
    copy = clone(clf)
    assert copy is not clf and copy.backbone is backbone  # shared, not copied
    assert copy.get_params()["logit_scale"] == 5.0
    assert copy.classnames == ["cat", "dog"] and copy.classnames is not clf.classnames
    assert not hasattr(copy, "weights_")
    fitted = clf.fit()
    refit = clone(fitted).fit()
    np.testing.assert_array_equal(refit.text_head_, fitted.text_head_)


def test_constructor_stores_arguments_unchanged(backbone):
    weights = np.eye(3, D)
    clf = ZeroShotClassifier(text_weights=weights, classnames="a,b,c")
    assert clf.text_weights is weights and clf.classnames == "a,b,c"


def test_pipeline_on_image_paths(backbone, tmp_path):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        synthetic_image(i).save(paths[-1])
    embeddings = backbone.encode_images(paths)
    weights = embeddings[[0, 3]]  # class "first" looks like image 0, "second" like image 3
    pipe = make_pipeline(ImageEmbedder(backbone),
                         ZeroShotClassifier(text_weights=weights, classnames=["first", "second"]))
    pipe.fit(paths)
    predicted = pipe.predict([str(p) for p in paths])
    assert predicted[0] == "first" and predicted[3] == "second"
    np.testing.assert_array_equal(predicted, np.array(["first", "second"])[
        (embeddings @ weights.T).argmax(axis=1)])
    np.testing.assert_allclose(ImageEmbedder(backbone).fit_transform(paths), embeddings, atol=1e-6)
    assert clone(pipe).steps[0][1].backbone is backbone


def test_image_embedder_with_cache(backbone, tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        synthetic_image(i).save(paths[-1])
    embedder = ImageEmbedder(backbone, cache=tmp_path / "cache")
    first = embedder.transform(np.array([str(p) for p in paths]))
    assert any((tmp_path / "cache").rglob("*.npz"))
    np.testing.assert_array_equal(embedder.transform(paths), first)


# ---------------------------------------------------------------------- save / load


def test_save_load_round_trip_with_backbone(backbone, tmp_path):
    clf = ZeroShotClassifier(backbone, classnames=["cat", "dog", "bird"],
                             templates="simple_imagenet",
                             logit_scale=42.0).fit()
    X = backbone.encode_images([synthetic_image(i) for i in range(5)])
    path = tmp_path / "clf.npz"
    clf.save(path)
    loaded = ZeroShotClassifier.load(path, backbone=backbone)
    assert type(loaded) is ZeroShotClassifier and loaded.backbone is backbone
    assert loaded.get_params()["logit_scale"] == 42.0
    assert loaded.get_params()["templates"] == "simple_imagenet"
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    np.testing.assert_array_equal(loaded.decision_function(X), clf.decision_function(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    # through the base class too
    assert type(Predictor.load(path, backbone=backbone)) is ZeroShotClassifier


def test_load_rebuilds_the_backbone(backbone, tmp_path):
    clf = ZeroShotClassifier(backbone, classnames=["cat", "dog"], templates="photo").fit()
    clf.save(tmp_path / "clf.npz")
    loaded = ZeroShotClassifier.load(tmp_path / "clf.npz")
    assert isinstance(loaded.backbone, Backbone) and loaded.backbone is not backbone
    assert loaded.backbone.fingerprint == backbone.fingerprint
    refit = clone(loaded).fit()  # the rebuilt backbone encodes the same prompts
    np.testing.assert_allclose(refit.text_head_, clf.text_head_, atol=1e-6)


def test_load_rebuilds_a_jpeg_draft_backbone_as_saved(tiny_config, tmp_path):
    drafted = Backbone(tiny_config, "none", jpeg_draft=True, progress=False)
    ZeroShotClassifier(drafted, classnames=["cat", "dog"], templates="photo").fit().save(
        tmp_path / "clf.npz")
    loaded = ZeroShotClassifier.load(tmp_path / "clf.npz")
    assert loaded.backbone.jpeg_draft and loaded.backbone.fingerprint == drafted.fingerprint


def test_load_refuses_a_backbone_with_another_fingerprint(backbone, tiny_config, tmp_path):
    clf = ZeroShotClassifier(backbone, classnames=["cat", "dog"], templates="photo").fit()
    clf.save(tmp_path / "clf.npz")
    other = Backbone(tiny_config, "none", precision="bf16", progress=False)
    with pytest.raises(InputError, match="clf.npz") as info:
        ZeroShotClassifier.load(tmp_path / "clf.npz", backbone=other)
    assert "not the backbone given" in str(info.value)


def test_save_load_with_text_weights(raw_weights, raw_x, tmp_path):
    clf = ZeroShotClassifier(text_weights=raw_weights, classnames=["a", "b", "c", "d"]).fit()
    clf.save(tmp_path / "tw.npz")
    loaded = ZeroShotClassifier.load(tmp_path / "tw.npz")
    assert loaded.backbone is None
    np.testing.assert_array_equal(loaded.text_weights, raw_weights)
    np.testing.assert_array_equal(loaded.predict(raw_x), clf.predict(raw_x))
    np.testing.assert_array_equal(loaded.predict_proba(raw_x), clf.predict_proba(raw_x))


def test_save_requires_fit_and_load_rejects_other_files(tmp_path):
    with pytest.raises(NotFittedError):
        ZeroShotClassifier(text_weights=np.eye(2)).save(tmp_path / "x.npz")
    np.savez(tmp_path / "plain.npz", a=np.ones(2))
    with pytest.raises(InputError, match="plain.npz"):
        ZeroShotClassifier.load(tmp_path / "plain.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.npz"):
        ZeroShotClassifier.load(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="predictor file '.*missing.npz' does not exist"):
        ZeroShotClassifier.load(tmp_path / "missing.npz")


def test_load_names_every_kind_of_wrong_file_in_one_sentence(tmp_path):
    saved = tmp_path / "saved.npz"
    ZeroShotClassifier(text_weights=np.eye(2)).fit().save(saved)
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "truncated.npz").write_bytes(saved.read_bytes()[:200])
    np.save(tmp_path / "array.npy", np.ones(3))
    np.savez(tmp_path / "list-meta.npz", __meta__=np.array("[1, 2]"))
    np.savez(tmp_path / "bad-json.npz", __meta__=np.array("{not json"))
    for name in ("empty.npz", "truncated.npz", "array.npy", "list-meta.npz", "bad-json.npz"):
        with pytest.raises(InputError, match=f"'.*{name}' is not a predictor file written by save"):
            ZeroShotClassifier.load(tmp_path / name)
    assert isinstance(ZeroShotClassifier.load(saved), ZeroShotClassifier)


def test_a_file_of_the_earlier_format_is_refused_not_misread(tmp_path):
    """Format 1 kept the user's class order under per-method head names (weights_)."""
    old = tmp_path / "old.npz"
    meta = {"format": "zeroshot_plus.predictor/1", "class": "ZeroShotClassifier",
            "backbone": None, "params": {}, "fitted": {}}
    np.savez(old, __meta__=np.array(json.dumps(meta)), **{"fitted:weights_": np.eye(2)})
    with pytest.raises(InputError, match="'.*old.npz' was saved by an earlier zeroshot_plus"):
        ZeroShotClassifier.load(old)


def test_images_given_to_an_embedding_classifier_point_to_the_embedder(tmp_path):
    from zeroshot_plus import GDAClassifier

    path = tmp_path / "cat.png"
    synthetic_image(0).save(path)
    fitted = ZeroShotClassifier(text_weights=np.eye(3)).fit()
    for images in (str(tmp_path), path, [str(path)], [synthetic_image(1)]):
        with pytest.raises(InputError, match=r"takes image embeddings \(N, D\), not images.*"
                                             r"ImageEmbedder"):
            fitted.predict(images)
    with pytest.raises(InputError, match="GDAClassifier takes image embeddings"):
        GDAClassifier().fit([str(path)], ["cat"])


def test_bad_embeddings_are_one_sentence():
    fitted = ZeroShotClassifier(text_weights=np.eye(3)).fit()
    for X, message in ((np.full((2, 3), np.nan), "NaN"), (np.zeros(3), "Expected 2D array"),
                       (np.ones((2, 4)), "4 features")):
        with pytest.raises(InputError, match=message) as info:
            fitted.predict(X)
        assert "\n" not in str(info.value) and str(info.value).startswith("ZeroShotClassifier")


def _tampered(saved: Path, path: Path, edit_meta=None, **arrays) -> Path:
    """A copy of ``saved`` with its metadata passed through ``edit_meta`` and arrays replaced
    (None: removed)."""
    with np.load(saved, allow_pickle=False) as data:
        meta = json.loads(str(data["__meta__"]))
        contents = {k: data[k] for k in data.files if k != "__meta__"}
    if edit_meta is not None:
        edit_meta(meta)
    for key, value in arrays.items():
        key = key.replace("__", ":", 1)
        if value is None:
            contents.pop(key)
        else:
            contents[key] = value
    np.savez(path, __meta__=np.array(json.dumps(meta)), **contents)
    return path


@pytest.mark.parametrize("edit_meta, arrays, field, problem", [
    (lambda m: m["params"].update(temperature=2.0), {}, "parameter 'temperature'",
     "is not a parameter of ZeroShotClassifier"),
    (lambda m: m["params"].update(logit_scale=float("nan")), {}, "parameter 'logit_scale'",
     "must be a finite number, got nan"),
    (lambda m: m["params"].update(logit_scale="big"), {}, "parameter 'logit_scale'",
     "must be a finite number, got 'big'"),
    (lambda m: m.pop("fitted"), {}, "metadata field 'fitted'", "is missing or not a mapping"),
    (lambda m: m.update(backbone={"model": "ViT-B-32"}), {}, "metadata field 'backbone.param'",
     "is missing"),
    (lambda m: m.update(backbone={**dict.fromkeys(("param", "model", "fingerprint"), "x"),
                                  "pretrained": None, "checkpoint": None, "precision": 16}),
     {}, "metadata field 'backbone.precision'", "is 16, not a name"),
    (lambda m: m["fitted"].update(predict=1), {}, "fitted attribute 'predict'",
     "is not an attribute name a fit sets (a private name, a method's, or without the final "
     "'_')"),
    (lambda m: m["fitted"].update(_cache=1), {}, "fitted attribute '_cache'",
     "is not an attribute name a fit sets (a private name, a method's, or without the final "
     "'_')"),
    (lambda m: m["fitted"].update(weights_=[1.0]), {}, "fitted attribute 'weights_'",
     "is not one ZeroShotClassifier sets"),
    (lambda m: m["fitted"].pop("n_features_in_"), {}, "fitted attribute 'n_features_in_'",
     "is missing"),
    (lambda m: m["fitted"].update(n_features_in_=5), {}, "fitted attribute 'n_features_in_'",
     f"is 5, not the {D} columns of text_head_"),
    (None, {"fitted__text_head_": None}, "fitted attribute 'text_head_'", "is missing"),
    (None, {"fitted__text_head_": np.ones((3, D))}, "fitted attribute 'text_head_'",
     f"has the shape (3, {D}), not (4, {D}) (C = len(classes_), D = n_features_in_)"),
    (None, {"fitted__text_head_": np.ones((4, D), np.int64)}, "fitted attribute 'text_head_'",
     "is not a 2-dimensional float array"),
    (lambda m: m["fitted"].update(n_features_in_="32"), {}, "fitted attribute 'n_features_in_'",
     "is '32', not a whole number >= 1"),
    (None, {"fitted__text_head_": np.full((4, D), np.inf)}, "fitted attribute 'text_head_'",
     "holds non-finite values (NaN or infinity)"),
    (None, {"fitted__classnames_": np.array(["a", "b"])}, "fitted attribute 'classnames_'",
     "does not have the shape (4,) of classes_"),
    (None, {"fitted__classes_": np.zeros((0,))}, "fitted attribute 'classes_'",
     "is not a non-empty one-dimensional array"),
    (None, {"extra": np.ones(2)}, "array 'extra'", "is not a parameter or a fitted attribute"),
])
def test_load_refuses_tampered_contents_in_one_sentence(raw_weights, tmp_path, edit_meta, arrays,
                                                        field, problem):
    saved = tmp_path / "saved.npz"
    ZeroShotClassifier(text_weights=raw_weights).fit().save(saved)
    tampered = _tampered(saved, tmp_path / "tampered.npz", edit_meta, **arrays)
    with pytest.raises(InputError) as info:
        Predictor.load(tampered)
    assert str(info.value) == f"saved ZeroShotClassifier '{tampered}': {field} {problem}."


def test_load_accepts_every_fitted_attribute_its_class_sets(backbone, tmp_path):
    """The schema's names match what each fit sets (text side given or from a backbone)."""
    from zeroshot_plus import (DescriptionClassifier, GDAClassifier, RealLinearClassifier,
                               RealPromptClassifier, TPTClassifier)

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(12, 32)).astype(np.float32), np.repeat(["cat", "dog"], 6)
    fitted = [GDAClassifier(backbone, classnames=["cat", "dog"], cv=2).fit(X, y),
              GDAClassifier(cv=2).fit(X, y),
              DescriptionClassifier(backbone, descriptors={"cat": ["whiskers"], "dog": ["a tail"]}).fit(),
              DescriptionClassifier(text_weights=X[:2]).fit(),
              RealPromptClassifier(backbone, classnames=["cat", "dog"],
                                   synonyms={"cat": "kitten", "dog": "puppy"}).fit(),
              RealLinearClassifier(text_weights=X[:2], classnames=["cat", "dog"], max_iter=2).fit(X, y),
              TPTClassifier(backbone, classnames=["cat", "dog"], n_views=3).fit()]
    for classifier in fitted:
        classifier.save(tmp_path / "c.npz")
        loaded = Predictor.load(tmp_path / "c.npz", backbone)
        assert type(loaded) is type(classifier)
        names = {k for k in vars(classifier) if k.endswith("_") and not k.startswith("_")}
        assert names <= type(classifier)._required_fitted | type(classifier)._optional_fitted


def _fitted_files(tmp_path: Path) -> dict[str, Path]:
    """A saved GDA (text side), DescriptionClassifier and RealLinearClassifier, fitted on
    embeddings alone: 3 classes, 8 features."""
    from zeroshot_plus import DescriptionClassifier, GDAClassifier, RealLinearClassifier

    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(30, 8)).astype(np.float32), np.repeat(["a", "b", "c"], 10)
    text = rng.normal(size=(3, 8)).astype(np.float32)
    fitted = {"gda": GDAClassifier(text_weights=text, classnames=["a", "b", "c"], cv=2).fit(X, y),
              "descriptions": DescriptionClassifier(text_weights=text).fit(),
              "real": RealLinearClassifier(text_weights=text, classnames=["a", "b", "c"],
                                           max_iter=3).fit(X, y)}
    paths = {}
    for name, classifier in fitted.items():
        paths[name] = tmp_path / f"{name}.npz"
        classifier.save(paths[name])
    return paths


SHAPE = "(C = len(classes_), D = n_features_in_)"


@pytest.mark.parametrize("saved, edit_meta, arrays, field, problem", [
    ("gda", None, {"fitted__weights_": np.ones((3, 7))}, "weights_",
     f"has the shape (3, 7), not (3, 8) {SHAPE}"),
    ("gda", None, {"fitted__weights_": np.ones((2, 8))}, "weights_",
     f"has the shape (2, 8), not (3, 8) {SHAPE}"),
    ("gda", None, {"fitted__precision_": np.eye(8)[:, :7]}, "precision_",
     "has the shape (8, 7), not (8, 8) (D = n_features_in_)"),
    ("gda", None, {"fitted__means_": np.ones(24)}, "means_", "is not a 2-dimensional float array"),
    ("gda", None, {"fitted__bias_": np.ones(4)}, "bias_",
     "has the shape (4,), not (3,) (C = len(classes_))"),
    ("gda", None, {"fitted__class_counts_": np.ones(3)}, "class_counts_",
     "is not a 1-dimensional integer array"),
    ("gda", None, {"fitted__class_counts_": np.array([10, -1, 10])}, "class_counts_",
     "holds negative values"),
    ("gda", None, {"fitted__alpha_scores_": np.ones(2)}, "alpha_scores_",
     "has the shape (2,), not (7,) (G shared with the arrays of that length)"),
    ("gda", lambda m: m["fitted"].update(n_features_in_=9), {}, "n_features_in_",
     "is 9, not the 8 columns of text_head_"),
    ("descriptions", None, {"fitted__class_means_": np.ones((3, 9), np.float32)}, "class_means_",
     f"has the shape (3, 9), not (3, 8) {SHAPE}"),
    ("real", None, {"fitted__linear_weights_": np.ones((3, 9), np.float32)}, "linear_weights_",
     f"has the shape (3, 9), not (3, 8) {SHAPE}"),
    ("real", None, {"fitted__sample_labels_": np.full(30, 3)}, "sample_labels_",
     "holds class indices beyond the 3 classes"),
    ("real", None, {"fitted__sample_labels_": np.zeros(29, np.int64)}, "sample_labels_",
     "has the shape (29,), not (30,) (S shared with the arrays of that length)"),
    ("real", None, {"fitted__learning_rates_": np.ones(4), "fitted__loss_curve_": np.ones(4)},
     "learning_rates_",
     "has 4 steps, not n_iter_ = 3"),
])
def test_load_checks_every_fitted_array_against_classes_and_features(
        tmp_path, saved, edit_meta, arrays, field, problem):
    path = _fitted_files(tmp_path)[saved]
    klass = {"gda": "GDAClassifier", "descriptions": "DescriptionClassifier",
             "real": "RealLinearClassifier"}[saved]
    Predictor.load(path)  # the file as saved loads
    tampered = _tampered(path, tmp_path / "tampered.npz", edit_meta, **arrays)
    with pytest.raises(InputError) as info:
        Predictor.load(tampered)
    assert str(info.value) == f"saved {klass} '{tampered}': fitted attribute '{field}' {problem}."


def test_load_checks_descriptor_rows(backbone, tmp_path):
    from zeroshot_plus import DescriptionClassifier

    path = tmp_path / "d.npz"
    DescriptionClassifier(backbone, descriptors={"a": ["x", "y"], "b": ["z"]}).fit().save(path)
    Predictor.load(path, backbone)
    for arrays, field, problem in [
            ({"fitted__offsets_": np.array([2, 0])}, "offsets_",
             "points past the 3 descriptor prompts"),
            ({"fitted__counts_": np.array([2, 0])}, "counts_",
             "holds a class without descriptor prompts"),
            ({"fitted__prompts_": np.array(["p"] * 4)}, "prompts_",
             "has the shape (4,), not (3,) (P shared with the arrays of that length)")]:
        tampered = _tampered(path, tmp_path / "t.npz", None, **arrays)
        with pytest.raises(InputError, match=rf"'{field}' {re.escape(problem)}\.$"):
            Predictor.load(tampered, backbone)
