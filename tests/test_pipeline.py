"""The image pipeline: every view maker goes through one decode -> views -> encode -> store."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import zeroshot_plus.encoders.pipeline as pipeline
from zeroshot_plus import Backbone, EncodeReport, InputError
from zeroshot_plus.data.support import SupportViews
from zeroshot_plus.encoders.pipeline import Preprocessed, View, ViewMaker, encode_views
from zeroshot_plus.methods.comclip import _Candidates, _Regions
from zeroshot_plus.methods.tpt import AugmentedViews


class Corners(ViewMaker):
    """A test view maker: ``n`` views per image (its preprocessing, shifted), not stored."""

    def __init__(self, backbone: Backbone, n: int, companions=()):
        self.backbone, self.n, self.extra = backbone, n, companions

    def companions(self, image, position):
        return self.extra

    def __call__(self, picture, known):
        pixels = self.backbone.preprocess(picture.image)
        views = [View(f"{picture.position}/{v}", pixels.roll(v, dims=-1)) for v in range(self.n)]
        views += [View(f"{picture.position}/c{k}", self.backbone.preprocess(c))
                  for k, c in enumerate(picture.companions)]
        return views


def _view_makers(backbone):
    return {
        "images": Preprocessed(backbone),
        "support": SupportViews(backbone, 3, (0.5, 1.0), 0),
        "comclip-candidates": _Candidates(backbone, "blackout", (2,), [True, False] * 5),
        "comclip-regions": _Regions(backbone, "crop", [[((0, 0, 10, 10),), ((5, 5, 30, 20),)]] * 10),
    }


def _encode(backbone, images, views, **kwargs):
    return [image for batch in encode_views(backbone, images, views, **kwargs) for image in batch]


@pytest.fixture
def paths(tmp_path, make_image):
    return [make_image(tmp_path / "images" / f"{i}.png", i, (48, 40)) for i in range(10)]


@pytest.mark.parametrize("kind", ["images", "support", "comclip-candidates", "comclip-regions"])
def test_stored_views_are_read_back_without_encoding(backbone, paths, tmp_path, monkeypatch, kind):
    views = _view_makers(backbone)[kind]
    first_report, second_report = EncodeReport(), EncodeReport()
    first = _encode(backbone, paths, views, cache=tmp_path / "store", report=first_report)
    assert (first_report.n_encoded, first_report.n_cached) == (10, 0)
    assert any((tmp_path / "store").rglob(f"{views.kind}/*.npz"))

    def refuse(*args, **kwargs):
        raise AssertionError("a stored view was encoded again")

    monkeypatch.setattr(backbone, "encode_pixels", refuse)
    second = _encode(backbone, paths, views, cache=tmp_path / "store", report=second_report)
    assert (second_report.n_encoded, second_report.n_cached) == (0, 10)
    assert [(e.position, e.keys) for e in second] == [(e.position, e.keys) for e in first]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.embeddings, b.embeddings)


def test_fully_stored_views_with_known_keys_are_not_decoded(backbone, paths, tmp_path, monkeypatch):
    views = SupportViews(backbone, 2, (0.5, 1.0), 0)
    _encode(backbone, paths, views, cache=tmp_path / "store")
    read = []
    original = pipeline.read_image
    monkeypatch.setattr(pipeline, "read_image", lambda *a: read.append(a[0]) or original(*a))
    _encode(backbone, paths, views, cache=tmp_path / "store")
    assert read == []
    _encode(backbone, paths + [paths[0]], views)  # no store: each image is decoded once
    assert sorted(read) == sorted(paths)


@pytest.mark.parametrize("n_views, expected", [(3, [18, 12]), (1, [16, 14]), (20, [20] * 10)])
def test_passes_hold_whole_images_and_at_least_a_batch(backbone, tmp_path, make_image,
                                                       monkeypatch, n_views, expected):
    images = [make_image(tmp_path / f"{i}.png", i) for i in range(30 if n_views == 1 else 10)]
    sizes = []
    encode = backbone.encode_pixels
    monkeypatch.setattr(backbone, "encode_pixels", lambda p: sizes.append(len(p)) or encode(p))
    encoded = _encode(backbone, images, Corners(backbone, n_views), batch_size=4)
    assert sizes == expected
    assert [e.position for e in encoded] == list(range(len(images)))
    assert all(e.keys == [f"{e.position}/{v}" for v in range(n_views)] for e in encoded)


def test_views_equal_encoding_each_image_alone(backbone, paths):
    views = AugmentedViews(backbone, 5, False, 0)
    encoded = _encode(backbone, paths[:4], views, batch_size=3)
    for image, path in zip(encoded, paths):
        alone = backbone.encode_pixels(views.render(Image.open(path).convert("RGB")))
        np.testing.assert_allclose(image.embeddings, alone, atol=1e-6)
        assert image.size == (48, 40)


def test_unreadable_image_is_reported_once_with_all_its_views(backbone, paths, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    items = [paths[0], broken, paths[1], broken]
    report = EncodeReport()
    encoded = _encode(backbone, items, Corners(backbone, 4), on_error="skip", report=report)
    assert [e.position for e in encoded] == [0, 2]
    assert [f.name for f in report.failures] == [str(broken)] * 2  # once per listed image
    assert report.n_encoded == 2
    with pytest.raises(InputError, match="broken.jpg"):
        _encode(backbone, items, Corners(backbone, 4))


def test_companions_are_decoded_by_the_pipeline(backbone, paths, tmp_path):
    encoded = _encode(backbone, paths[:2], Corners(backbone, 1, companions=paths[2:4]))
    assert all(e.keys[1:] == [f"{e.position}/c0", f"{e.position}/c1"] for e in encoded)
    np.testing.assert_allclose(encoded[0].embeddings[1:], backbone.encode_images(paths[2:4]),
                               atol=1e-6)
    missing = tmp_path / "generated" / "gone.png"
    with pytest.raises(InputError, match="gone.png"):  # the view maker's input, not skipped
        _encode(backbone, paths[:2], Corners(backbone, 1, companions=[missing]), on_error="skip")


def test_a_lost_shard_is_recomputed_and_the_rest_read_back(backbone, paths, tmp_path):
    views = SupportViews(backbone, 3, (0.5, 1.0), 0)
    cache = tmp_path / "store"
    first = _encode(backbone, paths, views, cache=cache)  # passes of 6 + 4 images
    shards = sorted((p for p in cache.rglob("views/*.npz")), key=lambda p: p.stat().st_size)
    assert len(shards) == 2
    shards[0].unlink()  # the smaller pass: a run killed before it was written
    report = EncodeReport()
    again = _encode(backbone, paths, views, cache=cache, report=report)
    assert (report.n_encoded, report.n_cached) == (4, 6)
    np.testing.assert_allclose(np.concatenate([e.embeddings for e in again]),
                               np.concatenate([e.embeddings for e in first]), atol=1e-6)


def test_decoding_workers_give_the_same_views(tiny_config, paths):
    threads = Backbone(tiny_config, "none", progress=False, batch_size=4)
    workers = Backbone(tiny_config, "none", progress=False, batch_size=4, num_workers=2)
    expected = _encode(threads, paths, SupportViews(threads, 2, (0.5, 1.0), 0), batch_size=2)
    found = _encode(workers, paths, SupportViews(workers, 2, (0.5, 1.0), 0), batch_size=2)
    for a, b in zip(expected, found):
        assert a.keys == b.keys
        torch.testing.assert_close(torch.from_numpy(a.embeddings), torch.from_numpy(b.embeddings))


# ---------------------------------------------------------------------- decoding ahead


@pytest.fixture(scope="module")
def pairs(tiny_config):
    """The tiny backbone encoding two views per forward pass, so that runs yield many passes."""
    return Backbone(tiny_config, "none", progress=False, batch_size=2)


def _decoding_threads():
    return [t for t in threading.enumerate() if t.name.startswith("zeroshot-plus-decode")]


class Uneven(Corners):
    """Corners whose even images take longer to draw, so that the decoding thread and the
    caller finish images out of order."""

    def __call__(self, picture, known):
        if picture.position % 2 == 0:
            time.sleep(0.02)
        return super().__call__(picture, known)


def test_decoding_ahead_keeps_input_order(pairs, paths):
    encoded = _encode(pairs, paths, Uneven(pairs, 1), batch_size=3)
    assert [e.position for e in encoded] == list(range(len(paths)))
    alone = pairs.encode_images(paths)
    np.testing.assert_allclose(np.concatenate([e.embeddings for e in encoded]), alone, atol=1e-6)


@pytest.mark.parametrize("batch_size", [2, 16])
def test_unreadable_images_across_batches(pairs, paths, tmp_path, batch_size):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    items = [paths[0], paths[1], paths[2], broken, paths[3], paths[4], broken]
    report = EncodeReport()
    encoded = _encode(pairs, items, Corners(pairs, 2), on_error="skip", report=report,
                      batch_size=batch_size)
    assert [e.position for e in encoded] == [0, 1, 2, 4, 5]
    assert [f.name for f in report.failures] == [str(broken)] * 2
    with pytest.raises(InputError, match="broken.jpg"):
        _encode(pairs, items, Corners(pairs, 2), batch_size=batch_size)
    assert _decoding_threads() == []


def test_a_consumer_that_stops_early_leaves_no_decoding_thread(pairs, paths):
    for batch in encode_views(pairs, paths, Corners(pairs, 1), batch_size=2):
        assert [e.position for e in batch] == [0, 1]
        assert _decoding_threads() != []  # batch [2, 3] was decoded ahead
        break
    assert _decoding_threads() == []


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_the_decoding_thread_runs_at_idle_priority(pairs, paths):
    for _ in encode_views(pairs, paths, Corners(pairs, 1), batch_size=2):
        (thread,) = _decoding_threads()
        assert os.sched_getscheduler(thread.native_id) == os.SCHED_IDLE
        break
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller's own thread is untouched


def test_an_error_in_decoding_reaches_the_caller(pairs, paths, tmp_path):
    missing = tmp_path / "generated" / "gone.png"

    class LateCompanion(Corners):
        def companions(self, image, position):
            return [missing] if position == 5 else []

    positions = []
    with pytest.raises(InputError, match="gone.png"):
        for batch in encode_views(pairs, paths, LateCompanion(pairs, 1), batch_size=2,
                                  on_error="skip"):
            positions += [e.position for e in batch]
    assert positions == [0, 1, 2, 3]  # the batches before the one that failed
    assert _decoding_threads() == []


def test_an_interrupt_while_encoding_stops_the_decoding_thread(pairs, paths, monkeypatch):
    def interrupt(pixels):
        raise KeyboardInterrupt

    monkeypatch.setattr(pairs, "encode_pixels", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _encode(pairs, paths, Corners(pairs, 1), batch_size=2)
    assert _decoding_threads() == []
