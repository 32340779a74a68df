"""Compiled runtimes for the image tower: same embeddings as torch, every image path uses them,
the on-disk cache (built once, reused, rebuilt when damaged, atomic), the guard, the errors."""

from __future__ import annotations

import json
import logging
import os
import pickle
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import numpy as np
import pytest
import torch

import zeroshot_plus.encoders.runtimes as runtimes
from zeroshot_plus import Backbone, ComCLIPMatcher, TPTClassifier, fit_gda_from_support
from zeroshot_plus.cli import main
from zeroshot_plus.encoders.pipeline import EncodeReport
from zeroshot_plus.encoders.runtimes import CompiledTower
from zeroshot_plus.errors import InputError, ModelLoadError

from conftest import synthetic_image

EXACT = ["openvino", "onnxruntime"]
ALL = EXACT + ["onnxruntime-int8"]


def _needs(runtime: str) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("openvino" if runtime == "openvino" else "onnxruntime")


@pytest.fixture(scope="module")
def compiled_dir(tmp_path_factory) -> Path:
    """One compiled-model cache for the module: each runtime's tower is exported once."""
    return tmp_path_factory.mktemp("compiled")


@pytest.fixture(scope="module")
def pictures():
    return [synthetic_image(seed, (48, 40)) for seed in range(10)]


def _backbone(tiny_config, runtime: str, compiled_dir, **kwargs) -> Backbone:
    return Backbone(tiny_config, "none", progress=False, batch_size=4, runtime=runtime,
                    compiled_dir=compiled_dir, **kwargs)


def _forbid_torch_images(backbone: Backbone) -> None:
    """After the compiled tower is built, any image encoded by torch fails the test."""
    assert isinstance(backbone.image_tower, CompiledTower)

    def no_torch(*args, **kwargs):
        raise AssertionError("an image was encoded by torch, not by the compiled runtime")

    backbone.model.encode_image = no_torch


# ---------------------------------------------------------------------- same embeddings


@pytest.mark.parametrize("runtime", ALL)
def test_runtime_embeddings_agree_with_torch(runtime, tiny_config, compiled_dir, backbone,
                                             pictures):
    _needs(runtime)
    compiled = _backbone(tiny_config, runtime, compiled_dir)
    ours = compiled.encode_images(pictures)
    reference = backbone.encode_images(pictures)
    cosines = np.sum(ours * reference, axis=1)
    if runtime in EXACT:
        assert cosines.min() >= 0.9999
        np.testing.assert_allclose(ours, reference, atol=1e-4)
    else:  # int8: close, not exact
        assert cosines.min() >= 0.99 and np.abs(ours - reference).max() > 1e-6
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    # batch sizes that differ from one pass to the next
    again = np.concatenate([compiled.encode_pixels(torch.stack(
        [compiled.preprocess(p) for p in pictures[i:j]])) for i, j in ((0, 3), (3, 6), (6, 10))])
    if runtime in EXACT:
        np.testing.assert_allclose(again, ours, atol=1e-5)
    else:  # int8 quantises each batch's activations with that batch's range
        assert np.sum(again * ours, axis=1).min() >= 0.99


def test_exact_runtimes_share_torchs_store_and_int8_is_stored_apart(tiny_config, compiled_dir,
                                                                     backbone, pictures, tmp_path):
    _needs("openvino")
    _needs("onnxruntime-int8")
    store = tmp_path / "store"
    reference = backbone.encode_images(pictures, cache=store)
    exact = _backbone(tiny_config, "openvino", compiled_dir)
    int8 = _backbone(tiny_config, "onnxruntime-int8", compiled_dir)
    assert exact.fingerprint == backbone.fingerprint != int8.fingerprint
    report = EncodeReport()
    read = np.concatenate([e for _, e in exact.iter_image_embeddings(pictures, cache=store,
                                                                      report=report)])
    assert (report.n_cached, report.n_encoded) == (len(pictures), 0)
    np.testing.assert_array_equal(read, reference)
    report = EncodeReport()
    list(int8.iter_image_embeddings(pictures, cache=store, report=report))
    assert (report.n_cached, report.n_encoded) == (0, len(pictures))
    assert {p.name for p in store.iterdir()} == {backbone.fingerprint, int8.fingerprint}


# ---------------------------------------------------------------------- every image path


@pytest.mark.parametrize("runtime", EXACT)
def test_every_image_path_runs_on_the_compiled_tower(runtime, tiny_config, compiled_dir,
                                                     backbone, pictures, tmp_path, make_image):
    _needs(runtime)
    compiled = _backbone(tiny_config, runtime, compiled_dir)
    _forbid_torch_images(compiled)
    # embeddings
    np.testing.assert_allclose(compiled.encode_images(pictures), backbone.encode_images(pictures),
                               atol=1e-4)
    # TPT's views (its gradient path, the text tower, stays in torch)
    classes = ["cat", "dog", "fish"]
    params = dict(classnames=classes, n_views=7, selection_p=0.3, random_state=0)
    ours = TPTClassifier(compiled, **params).fit().decision_function(pictures[:3])
    torch_side = TPTClassifier(backbone, **params).fit().decision_function(pictures[:3])
    np.testing.assert_allclose(ours, torch_side, atol=1e-3)
    # ComCLIP's regions, raw (not normalised) embeddings included
    for form in ("normalized", "raw"):
        captions = ["a dog on the grass", "a cat"]
        ours = ComCLIPMatcher(compiled, embeddings=form).decision_function(pictures[:2], captions)
        torch_side = ComCLIPMatcher(backbone, embeddings=form).decision_function(pictures[:2],
                                                                                  captions)
        np.testing.assert_allclose(ours, torch_side, atol=1e-4)
    # a support set's augmented views
    for label in ("red", "blue"):
        for i in range(3):
            make_image(tmp_path / "support" / label / f"{i}.png", 100 * len(label) + i)
    fitted = [fit_gda_from_support(bb, tmp_path / "support", n_views=2, alpha=0.5,
                                   random_state=0, templates="photo")
              for bb in (compiled, backbone)]
    probe = backbone.encode_images(pictures)
    np.testing.assert_allclose(fitted[0].decision_function(probe),
                               fitted[1].decision_function(probe), atol=1e-3)


def test_cli_runtime_predicts_as_torch_and_compiles_into_the_cache(tiny_config, tmp_path,
                                                                   make_image, capsys):
    _needs("onnxruntime")
    for i in range(6):
        make_image(tmp_path / "images" / f"{i}.png", i)
    common = ["predict", str(tmp_path / "images"), "--classes", "cat,dog,fish", "--templates",
              "photo", "--model", tiny_config, "--pretrained", "none", "--no-progress"]
    assert main(common) == 0
    by_torch = capsys.readouterr().out
    cache = tmp_path / "cache"
    assert main([*common, "--runtime", "onnxruntime", "--cache", str(cache)]) == 0
    compiled = capsys.readouterr().out
    labels = [[row.split(",")[1] for row in out.splitlines()[1:]] for out in (by_torch, compiled)]
    assert labels[0] == labels[1]
    assert len(list((cache / "compiled").glob("*-onnx-*/tower.onnx"))) == 1


# ---------------------------------------------------------------------- the cache and the guard


def test_compiled_once_and_reused(tiny_config, tmp_path, pictures):
    _needs("onnxruntime")
    first = _backbone(tiny_config, "onnxruntime", tmp_path)
    first.encode_images(pictures[:2])
    built, = tmp_path.iterdir()
    stamp = (built / "tower.onnx").stat().st_mtime_ns
    second = _backbone(tiny_config, "onnxruntime", tmp_path)
    assert second.image_tower.folder == built
    assert (built / "tower.onnx").stat().st_mtime_ns == stamp
    _needs("openvino")  # the other exact runtime reads the same copy
    third = _backbone(tiny_config, "openvino", tmp_path)
    assert third.image_tower.folder == built and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("runtime", EXACT)
def test_a_cached_copy_serves_images_without_the_torch_model(runtime, tiny_config, tmp_path,
                                                             pictures, backbone):
    """A copy read from the cache carries the preprocessing settings and the guard's reference
    features: images are preprocessed, encoded and checked without building the torch model,
    with the same preprocessing as open_clip's own transform for the model."""
    _needs(runtime)
    _backbone(tiny_config, runtime, tmp_path).image_tower  # built (with the torch model)
    cached = _backbone(tiny_config, runtime, tmp_path)
    embeddings = cached.encode_images(pictures)
    assert cached._model is None
    assert cached.image_size == backbone.image_size and cached.embed_dim == backbone.embed_dim
    for picture in pictures[:3]:
        assert torch.equal(cached.preprocess(picture), backbone.preprocess(picture))
    np.testing.assert_allclose(embeddings, backbone.encode_images(pictures), atol=1e-4)
    assert cached._model is None
    # texts still need the torch model: it is built then, and encodes as torch does
    np.testing.assert_array_equal(cached.encode_texts(["a cat"]), backbone.encode_texts(["a cat"]))


def test_a_copy_without_its_preprocessing_settings_is_rebuilt(tiny_config, tmp_path, caplog):
    _needs("onnxruntime")
    _backbone(tiny_config, "onnxruntime", tmp_path).image_tower
    built, = tmp_path.iterdir()
    (built / "preprocess.json").unlink()
    with caplog.at_level(logging.WARNING):
        _backbone(tiny_config, "onnxruntime", tmp_path).image_tower
    assert "is damaged" in caplog.text and (built / "preprocess.json").is_file()


def test_tampered_preprocessing_settings_fail_the_guard_and_are_rebuilt(tiny_config, tmp_path,
                                                                        pictures, backbone,
                                                                        caplog):
    """The guard also encodes a fixed picture through the copy's preprocessing settings, so
    settings that are not the model's are caught, not used for every image."""
    _needs("onnxruntime")
    _backbone(tiny_config, "onnxruntime", tmp_path).image_tower
    built, = tmp_path.iterdir()
    settings = json.loads((built / "preprocess.json").read_text())
    (built / "preprocess.json").write_text(json.dumps({**settings, "mean": [0.5, 0.5, 0.5],
                                                       "std": [0.5, 0.5, 0.5]}))
    with caplog.at_level(logging.WARNING):
        cached = _backbone(tiny_config, "onnxruntime", tmp_path)
        embeddings = cached.encode_images(pictures[:3])
    assert "disagrees with torch" in caplog.text
    assert json.loads((built / "preprocess.json").read_text()) == settings
    np.testing.assert_allclose(embeddings, backbone.encode_images(pictures[:3]), atol=1e-4)


def test_damaged_copy_is_rebuilt(tiny_config, tmp_path, pictures, backbone, caplog):
    _needs("onnxruntime")
    _backbone(tiny_config, "onnxruntime", tmp_path).image_tower
    built, = tmp_path.iterdir()
    (built / "tower.onnx").write_bytes(b"not a model")
    with caplog.at_level(logging.WARNING):
        rebuilt = _backbone(tiny_config, "onnxruntime", tmp_path)
        embeddings = rebuilt.encode_images(pictures[:3])
    assert "is damaged" in caplog.text and "built again" in caplog.text
    np.testing.assert_allclose(embeddings, backbone.encode_images(pictures[:3]), atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == [built.name]


def test_tampered_reference_fails_the_guard_and_is_rebuilt(tiny_config, tmp_path, caplog):
    _needs("onnxruntime")
    _backbone(tiny_config, "onnxruntime", tmp_path).image_tower
    built, = tmp_path.iterdir()
    reference = np.load(built / "reference.npy")
    np.save(built / "reference.npy", reference[::-1].copy())
    with caplog.at_level(logging.WARNING):
        _backbone(tiny_config, "onnxruntime", tmp_path).image_tower
    assert "disagrees with torch" in caplog.text
    np.testing.assert_array_equal(np.load(built / "reference.npy"), reference)


def test_a_reference_of_the_wrong_shape_counts_as_damaged(tiny_config, tmp_path, caplog):
    _needs("onnxruntime")
    _backbone(tiny_config, "onnxruntime", tmp_path).image_tower
    built, = tmp_path.iterdir()
    reference = np.load(built / "reference.npy")
    np.save(built / "reference.npy", reference[:2])
    with caplog.at_level(logging.WARNING):
        _backbone(tiny_config, "onnxruntime", tmp_path).image_tower
    assert "is damaged" in caplog.text and "cannot be loaded" in caplog.text
    np.testing.assert_array_equal(np.load(built / "reference.npy"), reference)


def test_copy_of_other_weights_fails_the_guard_and_is_rebuilt(tiny_config, tmp_path, pictures,
                                                              backbone, caplog):
    """A cached copy that loads but computes something else (tampered weights) is caught by
    the guard, not served."""
    _needs("onnxruntime")
    _backbone(tiny_config, "onnxruntime", tmp_path).image_tower
    built, = tmp_path.iterdir()
    weights = built / "tower.onnx.data"
    data = bytearray(weights.read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)  # zero the first half of the weights
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        tower = _backbone(tiny_config, "onnxruntime", tmp_path).image_tower
    assert "disagrees with torch" in caplog.text
    pixels = runtimes.check_pixels(backbone.image_size)
    with torch.inference_mode():
        assert runtimes.agreement(tower, backbone.model.encode_image(pixels), pixels) >= 0.9999


def test_guard_refuses_a_tower_that_disagrees(tiny_config, tmp_path, monkeypatch):
    """An exporter that writes a wrong model (here: another model's weights) is refused."""
    _needs("onnxruntime")
    other = Backbone(tiny_config, "none", progress=False)
    with torch.no_grad():
        for parameter in other.model.visual.parameters():
            parameter.mul_(-1.5)
    export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda module, *args, **kwargs: export(
        type(module)(other.model).eval(), *args, **kwargs))
    compiled = _backbone(tiny_config, "onnxruntime", tmp_path)
    with pytest.raises(ModelLoadError, match=r"runtime 'onnxruntime' encodes images "
                                             r"differently from torch \(cosine .* < 0\.9999"):
        compiled.encode_images([synthetic_image(0)])


def test_agreement_is_the_least_row_cosine(backbone):
    def flipped_first_row(pixels):
        features = backbone.model.encode_image(pixels)
        features[0] = -features[0]
        return features

    pixels = runtimes.check_pixels(backbone.image_size)
    with torch.inference_mode():
        reference = backbone.model.encode_image(pixels)
    assert runtimes.agreement(backbone.model.encode_image, reference,
                              pixels) == pytest.approx(1, abs=1e-6)
    assert runtimes.agreement(flipped_first_row, reference, pixels) == pytest.approx(-1, abs=1e-6)


def test_unwritable_cache_costs_the_cache_not_the_run(tiny_config, tmp_path, pictures, backbone,
                                                      caplog):
    _needs("onnxruntime")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        compiled = _backbone(tiny_config, "onnxruntime", blocker / "compiled")
        embeddings = compiled.encode_images(pictures[:3])
    assert "cannot be written" in caplog.text
    np.testing.assert_allclose(embeddings, backbone.encode_images(pictures[:3]), atol=1e-4)
    assert not compiled.image_tower.folder.exists()  # built in a temporary folder, removed


def test_interrupted_build_leaves_nothing(tiny_config, tmp_path, monkeypatch):
    _needs("onnxruntime")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", killed)
    with pytest.raises(KeyboardInterrupt):
        _backbone(tiny_config, "onnxruntime", tmp_path).image_tower
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- choices and errors


@pytest.mark.parametrize("kwargs, message", [
    (dict(runtime="tensorrt"), "unknown runtime 'tensorrt'; use one of torch, openvino"),
    (dict(runtime="openvino", precision="fp16"),
     "runtime 'openvino' runs on the CPU in fp32, not on 'cpu' in fp16"),
])
def test_bad_runtime_is_one_sentence(tiny_config, kwargs, message):
    with pytest.raises(InputError, match=message):
        Backbone(tiny_config, "none", **kwargs)


def test_missing_package_names_the_extra(tiny_config, monkeypatch):
    def absent(package):
        raise PackageNotFoundError(package)

    monkeypatch.setattr(runtimes, "version", absent)
    with pytest.raises(InputError, match=r"needs the openvino package: pip install "
                                         r"'zeroshot_plus\[openvino\]'"):
        Backbone(tiny_config, "none", runtime="openvino")


def test_cli_refuses_runtime_on_fp16_in_one_sentence(tiny_config, tmp_path, make_image, capsys):
    make_image(tmp_path / "a.png", 0)
    assert main(["embed", str(tmp_path / "a.png"), "--out", str(tmp_path / "e.npz"), "--model",
                 tiny_config, "--pretrained", "none", "--runtime", "openvino", "--precision",
                 "fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs on the CPU in fp32" in err[0]


def test_pickled_backbone_keeps_its_runtime_not_its_tower(tiny_config, compiled_dir):
    _needs("onnxruntime")
    compiled = _backbone(tiny_config, "onnxruntime", compiled_dir)
    compiled.image_tower
    restored = pickle.loads(pickle.dumps(compiled))
    assert restored.runtime == "onnxruntime" and restored._image_tower is None
    assert restored.describe()["runtime"] == "onnxruntime"


def test_default_directory_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runtimes.default_directory() == tmp_path / "zeroshot_plus" / "compiled"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert runtimes.default_directory() == Path(os.path.expanduser("~/.cache/zeroshot_plus/compiled"))
