"""The transformers and ComCLIPMatcher in scikit-learn's tools, and pickling by name.

Their check_estimator rows (expected failures with reasons) are in
zeroshot_plus.evaluation.conformance, run by tests/test_sklearn_classifiers.py.
"""

from __future__ import annotations

import pickle

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils.validation import check_is_fitted

from conftest import synthetic_image
from zeroshot_plus import (Backbone, ComCLIPMatcher, ImageEmbedder, InputError, SchurEditor,
                           ZeroShotClassifier)
from zeroshot_plus.errors import ModelLoadError
from zeroshot_plus.evaluation.conformance import run_checks

def _reference_pairs(n: int = 30, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images, texts) (n, dim): each image is its text plus noise."""
    rng = np.random.default_rng(seed)
    texts = rng.standard_normal((n, dim))
    return texts + 0.5 * rng.standard_normal((n, dim)), texts


class _TextsFromX(SchurEditor):
    """Test harness: the texts are X with its columns rolled by one and the prompt removed is
    (1, ..., 1), so that they pair with whatever X scikit-learn's checks feed."""

    def _check_X(self, X, reset: bool) -> np.ndarray:
        images = super()._check_X(X, reset)
        if reset:
            self._images = images
        return images

    def _encode(self, prompts, name: str):
        return np.roll(self._images, 1, axis=1) if name == "texts" else np.ones(self.n_features_in_)


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_schur_editor_passes_every_check_when_the_texts_pair_with_X(kernel):
    outcome = run_checks(_TextsFromX(texts="X rolled", prompts="ones", kernel=kernel,
                                     n_features=16, sigma=1.0), {})
    assert set(outcome.unexpected) == {"check_estimators_dtypes"}
    assert "all zeros" in outcome.unexpected["check_estimators_dtypes"]


# ---------------------------------------------------------------------- SchurEditor


def test_schur_editor_pairs_rows_and_removes_each_rows_own_text():
    images, texts = _reference_pairs()
    editor = SchurEditor(texts=texts, ridge=1e-3)
    own = editor.fit_transform(images)
    np.testing.assert_array_equal(own, clone(editor).set_params(prompts=texts).fit(images)
                                  .transform(images))
    np.testing.assert_array_equal(editor.fit(images).gamma_,
                                  clone(editor).fit(images.tolist()).gamma_)
    assert own.dtype == np.float32 and own.shape == images.shape
    with pytest.raises(InputError, match="image_embeddings has 29 rows but text_embeddings has 30"):
        editor.fit(images[1:])
    with pytest.raises(InputError, match="needs texts, the reference prompts paired"):
        SchurEditor().fit(images)
    with pytest.raises(TypeError, match="positional"):
        SchurEditor(None, texts)


def test_schur_editor_in_a_pipeline_with_strings(backbone):
    words = ["a dog", "a cat"] * 12
    images = backbone.encode_texts(words) + 0.1 * np.random.default_rng(0).standard_normal((24, 32))
    editor = SchurEditor(backbone, texts=words, prompts="a dog", ridge=1e-3)
    weights = backbone.encode_texts(["a cat", "a dog"])
    pipe = make_pipeline(editor, ZeroShotClassifier(text_weights=weights,
                                                    classnames=["cat", "dog"]))
    pipe.fit(images)
    np.testing.assert_array_equal(pipe[0].transform(images), clone(editor).set_params(
        prompts=backbone.encode_texts(["a dog"])).fit(images).transform(images))
    assert (pipe.predict(images) == "cat").mean() > (pipe[1].predict(images) == "cat").mean()


def test_schur_editor_feature_names_and_set_output():
    images, texts = _reference_pairs()
    cosine = SchurEditor(texts=texts, prompts=texts[0]).fit(images)
    np.testing.assert_array_equal(cosine.get_feature_names_out(), [f"x{i}" for i in range(8)])
    gaussian = SchurEditor(texts=texts, prompts=texts[0], kernel="gaussian", n_features=6,
                           sigma=1.0).fit(images)
    np.testing.assert_array_equal(gaussian.get_feature_names_out(),
                                  [f"schureditor{i}" for i in range(6)])
    assert gaussian.set_output(transform="default").transform(images).shape == (30, 6)


def test_schur_editor_pandas_output():
    pd = pytest.importorskip("pandas")
    images, texts = _reference_pairs()
    frame = pd.DataFrame(images, columns=[f"d{i}" for i in range(8)])
    editor = SchurEditor(texts=texts, prompts=texts[0]).set_output(transform="pandas")
    out = editor.fit(frame).transform(frame)
    assert list(out.columns) == list(frame.columns)
    np.testing.assert_allclose(out.to_numpy(), editor.set_output(transform="default")
                               .transform(images), atol=1e-7)


def test_schur_editor_random_state():
    images, texts = _reference_pairs()
    make = lambda seed: SchurEditor(texts=texts, kernel="gaussian", n_features=8, sigma=1.0,
                                    random_state=seed).fit(images).omega_
    np.testing.assert_array_equal(make(3), make(3))
    np.testing.assert_array_equal(make(np.random.default_rng(3)), make(3))
    np.testing.assert_array_equal(make(np.random.RandomState(3)),
                                  np.random.RandomState(3).standard_normal((8, 4)))
    assert make(None).shape == (8, 4)
    with pytest.raises(InputError, match="random_state must be None, an int"):
        make("seed")


# ---------------------------------------------------------------------- ImageEmbedder


@pytest.fixture
def paths(tmp_path):
    files = []
    for i in range(6):
        files.append(tmp_path / f"{i}.png")
        synthetic_image(i).save(files[-1])
    return files


def test_image_embedder_names_tags_and_quiet_cache_hits(backbone, paths, tmp_path, capsys):
    loud = Backbone(backbone.model_name, "none", batch_size=4)  # progress bars on
    embedder = ImageEmbedder(loud, cache=tmp_path / "store")
    np.testing.assert_array_equal(embedder.get_feature_names_out(),
                                  [f"imageembedder{i}" for i in range(32)])
    tags = embedder.__sklearn_tags__()
    assert not tags.input_tags.two_d_array and not tags.requires_fit
    embedder.set_output(transform="default")
    weights = backbone.encode_images(paths[:2])
    pipe = make_pipeline(embedder, ZeroShotClassifier(text_weights=weights, classnames=["a", "b"]))
    pipe.fit(paths).predict(paths)
    pipe.predict(paths)  # every embedding from the store
    assert "img" not in capsys.readouterr().err
    ImageEmbedder(loud, progress=True).transform(paths)
    assert "img" in capsys.readouterr().err


def test_image_embedder_pickles_without_the_model(backbone, paths):
    embedder = ImageEmbedder(backbone).fit(paths)
    again = pickle.loads(pickle.dumps(embedder))
    assert again.backbone._model is None and again.backbone.fingerprint == backbone.fingerprint
    np.testing.assert_array_equal(again.transform(paths), embedder.transform(paths))


# ---------------------------------------------------------------------- ComCLIPMatcher


def test_comclip_counts_as_fitted_and_pickles(backbone, paths):
    from zeroshot_plus.text.parsing import parse_caption

    matcher = ComCLIPMatcher(backbone)
    tags = matcher.__sklearn_tags__()
    assert not tags.input_tags.two_d_array and not tags.requires_fit  # scores unfitted too
    captions = ["a red dog", "a cat on a car"]
    unfitted = pickle.loads(pickle.dumps(matcher))
    fitted = pickle.loads(pickle.dumps(matcher.fit()))
    check_is_fitted(matcher, "parser_")
    check_is_fitted(fitted)
    assert fitted.parser_ is parse_caption and not hasattr(unfitted, "parser_")
    expected = matcher.decision_function(paths[:2], captions)
    for other in (unfitted, fitted, clone(matcher)):
        np.testing.assert_array_equal(other.decision_function(paths[:2], captions), expected)
    assert repr(matcher) == f"ComCLIPMatcher(backbone={backbone!r})"


@pytest.mark.parametrize("params, message", [
    ({"grid": (2, 0)}, "grid must be a sequence of grid sizes, integers from 1 to 10"),
    ({"grid": (2, 50)}, "grid must be a sequence"),
    ({"grid": 3}, "grid must be a sequence"),
    ({"grid": (2.5,)}, "grid must be a sequence"),
    ({"margin": float("nan")}, "margin must be a finite number"),
    ({"margin": "0.1"}, "margin must be a finite number"),
])
def test_comclip_range_checks(backbone, params, message):
    with pytest.raises(InputError, match=message):
        ComCLIPMatcher(backbone, **params).fit()


# ---------------------------------------------------------------------- pickling by name


def test_pickled_classifier_holds_the_backbone_by_name(backbone):
    clf = ZeroShotClassifier(backbone, classnames=["cat", "dog", "bird"],
                             templates="photo").fit()
    blob = pickle.dumps(clf)
    parameter_bytes = sum(p.numel() * p.element_size() for p in backbone.model.parameters())
    assert len(blob) < 4096 < parameter_bytes / 1000
    X = backbone.encode_images([synthetic_image(i) for i in range(4)])
    again = pickle.loads(blob)
    assert again.backbone is not backbone and again.backbone._model is None
    np.testing.assert_array_equal(again.predict(X), clf.predict(X))
    np.testing.assert_array_equal(again.decision_function(X), clf.decision_function(X))
    np.testing.assert_array_equal(again.backbone.encode_texts(["a cat"]),
                                  backbone.encode_texts(["a cat"]))
    assert clone(clf).backbone is backbone  # clone still shares the model


def test_unpickling_checks_the_checkpoint(backbone, tmp_path):
    import torch

    checkpoint = tmp_path / "weights.pt"
    torch.save(backbone.model.state_dict(), checkpoint)
    blob = _dumped(Backbone(backbone.model_name, checkpoint=checkpoint), tmp_path)
    with open(checkpoint, "ab") as handle:
        handle.write(b"changed")
    with pytest.raises(ModelLoadError, match="checkpoint, model config or open_clip/torch "
                                             "version differs from when it was pickled"):
        joblib.load(blob)
    checkpoint.unlink()
    with pytest.raises(ModelLoadError, match="cannot unpickle .*weights.pt' cannot be read"):
        joblib.load(blob)


def _dumped(estimator, folder) -> str:
    path = folder / "estimator.joblib"
    joblib.dump(estimator, path)
    return str(path)


def test_grid_search_in_two_workers_on_image_paths(backbone, paths):
    weights = backbone.encode_images(paths[:2])
    labels = np.array(["a", "b", "a", "b", "a", "b"])
    pipe = make_pipeline(ImageEmbedder(backbone),
                         ZeroShotClassifier(text_weights=weights, classnames=["a", "b"]))
    grid = {"zeroshotclassifier__logit_scale": [10.0, 100.0]}
    serial = GridSearchCV(pipe, grid, cv=2, n_jobs=1).fit(paths, labels)
    parallel = GridSearchCV(pipe, grid, cv=2, n_jobs=2).fit(paths, labels)
    np.testing.assert_array_equal(parallel.cv_results_["mean_test_score"],
                                  serial.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(parallel.predict(paths), serial.predict(paths))
