"""Backbone: encoding, identity (fingerprint), local checkpoints, and load errors."""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

import zeroshot_plus.encoders.models as models_module
from zeroshot_plus import Backbone, InputError, ModelLoadError

from conftest import synthetic_image


def _unit_norm(x: np.ndarray) -> None:
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------- encoding


def test_encode_texts(backbone):
    texts = ["a photo of a cat.", "a photo of a dog.", "a photo of a cat."]
    out = backbone.encode_texts(texts)
    assert out.shape == (3, 32) and out.dtype == np.float32
    _unit_norm(out)
    np.testing.assert_array_equal(out[0], out[2])
    assert not np.allclose(out[0], out[1])
    single = backbone.encode_texts(["a photo of a dog."])
    np.testing.assert_allclose(single[0], out[1], atol=1e-6)
    assert backbone.embed_dim == 32 and backbone.image_size == 32


def test_encode_texts_matches_the_raw_model(backbone):
    tokens = backbone.tokenizer(["a red car"])
    with torch.inference_mode():
        raw = backbone.model.encode_text(tokens).double().numpy()
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(backbone.encode_texts(["a red car"]), expected, atol=1e-5)


def test_encode_texts_rejects_empty_list(backbone):
    with pytest.raises(InputError, match="no texts"):
        backbone.encode_texts([])


def test_encode_images_paths_and_pil_agree(backbone, tmp_path):
    images = [synthetic_image(i, (40 + 8 * i, 36)) for i in range(5)]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    from_paths = backbone.encode_images(paths)
    from_pil = backbone.encode_images(images)
    assert from_paths.shape == (5, 32) and from_paths.dtype == np.float32
    _unit_norm(from_paths)
    np.testing.assert_allclose(from_paths, from_pil, atol=1e-6)
    # the same as preprocessing and encoding by hand
    pixels = torch.stack([backbone.preprocess(im) for im in images])
    with torch.inference_mode():
        raw = backbone.model.encode_image(pixels).double().numpy()
    np.testing.assert_allclose(from_pil, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    # distinct images give distinct embeddings
    assert np.abs(from_pil[0] - from_pil[1]).max() > 1e-3


def test_batch_size_and_workers_do_not_change_embeddings(backbone, tiny_config, tmp_path):
    paths = []
    for i in range(11):
        paths.append(tmp_path / f"{i}.jpg")
        synthetic_image(i, (70, 50)).save(paths[-1])
    reference = backbone.encode_images(paths)  # one batch of 16, decoded in-process
    small = Backbone(tiny_config, "none", batch_size=3, num_workers=2, progress=False)
    np.testing.assert_allclose(small.encode_images(paths), reference, atol=1e-5)


def test_random_weights_are_reproducible(backbone, tiny_config):
    again = Backbone(tiny_config, "none", progress=False)
    text = ["a small bird"]
    np.testing.assert_array_equal(again.encode_texts(text), backbone.encode_texts(text))
    # and do not disturb the caller's random state
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Backbone(tiny_config, "none", progress=False).model
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------- identity


def test_fingerprint(backbone, tiny_config, tmp_path):
    assert Backbone(tiny_config, "none").fingerprint == backbone.fingerprint
    assert Backbone(tiny_config, "none", precision="bf16").fingerprint != backbone.fingerprint
    # the architecture's content, not only its file name, is part of the identity
    config = tmp_path / "zsp-tiny.json"
    config.write_text(open(tiny_config).read())
    before = Backbone(str(config), "none").fingerprint
    changed = json.loads(config.read_text())
    changed["embed_dim"] = 16
    config.write_text(json.dumps(changed))
    assert Backbone(str(config), "none").fingerprint != before
    described = backbone.describe()
    assert described["model"] == tiny_config and described["pretrained"] == "none"
    assert described["fingerprint"] == backbone.fingerprint and described["checkpoint"] is None
    assert described["jpeg_draft"] is False


def test_jpeg_draft_is_opt_in_and_part_of_the_identity(backbone, tiny_config, tmp_path):
    # a photo large enough for draft decoding (short side >= 2 x the 32 px input)
    path = tmp_path / "large.jpg"
    synthetic_image(7, (300, 200)).save(path, quality=90)
    drafted = Backbone(tiny_config, "none", progress=False, jpeg_draft=True)
    assert backbone.jpeg_draft is False
    assert drafted.fingerprint != backbone.fingerprint and drafted.describe()["jpeg_draft"]
    # by default the photo goes through open_clip's transform exactly as decoded in full
    with Image.open(path) as image:
        full = backbone.encode_pixels(backbone.preprocess(image.convert("RGB"))[None])
    np.testing.assert_array_equal(backbone.encode_images([path]), full)
    assert not np.array_equal(drafted.encode_images([path]), full)
    # one store, two settings: neither reads the other's embeddings
    cache = tmp_path / "store"
    np.testing.assert_array_equal(drafted.encode_images([path], cache=cache),
                                  drafted.encode_images([path]))
    np.testing.assert_array_equal(backbone.encode_images([path], cache=cache), full)


def test_fingerprint_without_loading(tiny_config):
    fresh = Backbone(tiny_config, "none")
    fresh.fingerprint
    assert fresh._model is None


def test_deepcopy_shares_the_backbone(backbone):
    assert copy.deepcopy(backbone) is backbone


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "fp8"}, "fp8"),
    ({"device": "gpu0"}, "gpu0"),
    ({"device": "cuda:99"}, "device 'cuda:99' is not available: torch sees"),
    ({"batch_size": 0}, "batch size"),
])
def test_bad_options(tiny_config, kwargs, message):
    with pytest.raises(InputError, match=message):
        Backbone(tiny_config, "none", **kwargs)


# ---------------------------------------------------------------------- checkpoints


def test_local_checkpoint_round_trip(backbone, tiny_config, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(backbone.model.state_dict(), path)
    loaded = Backbone(tiny_config, checkpoint=path, progress=False)
    images = [synthetic_image(i) for i in range(3)]
    texts = ["a cat", "a dog"]
    np.testing.assert_allclose(loaded.encode_images(images), backbone.encode_images(images), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_texts(texts), backbone.encode_texts(texts), atol=1e-6)
    assert loaded.fingerprint != backbone.fingerprint
    assert loaded.describe()["checkpoint"] == str(path)
    assert loaded.describe()["pretrained"] is None  # the checkpoint, not the default tag


def test_checkpoint_weights_are_really_used(backbone, tiny_config, tmp_path):
    # Weights unlike the seeded random ones, so that ignoring the file would show.
    generator = torch.Generator().manual_seed(7)
    state = {k: (v + 0.05 * torch.randn(v.shape, generator=generator)
                 if v.is_floating_point() else v)
             for k, v in backbone.model.state_dict().items()}
    path = tmp_path / "perturbed.pt"
    torch.save(state, path)
    reference = copy.deepcopy(backbone.model)
    reference.load_state_dict(state)
    images = [synthetic_image(i) for i in range(3)]
    pixels = torch.stack([backbone.preprocess(im) for im in images])
    with torch.inference_mode():
        raw = reference.encode_image(pixels).double().numpy()
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    loaded = Backbone(tiny_config, checkpoint=path, progress=False)
    got = loaded.encode_images(images)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - backbone.encode_images(images)).max() > 1e-3


def test_missing_checkpoint_file(tiny_config, tmp_path):
    missing = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(ModelLoadError, match="weights.pt") as info:
        Backbone(tiny_config, checkpoint=missing)
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)


def test_unreadable_checkpoint_file(tiny_config, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint" * 10)
    bb = Backbone(tiny_config, checkpoint=garbage, progress=False)
    with pytest.raises(ModelLoadError, match="garbage.pt") as info:
        bb.encode_texts(["a"])
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- model errors


def test_missing_model_config_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no-such-config.json"):
        Backbone(str(tmp_path / "no-such-config.json"), "none")


def test_unknown_model_name():
    bb = Backbone("ViT-Nonexistent-99", "none", progress=False)
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="ViT-Nonexistent-99") as info:
        bb.encode_texts(["a"])
    assert time.monotonic() - start < 10
    assert "list_models" in str(info.value)


def test_unknown_pretrained_tag(monkeypatch, tmp_path):
    monkeypatch.setattr(models_module, "_reachable", lambda host, timeout=3.0: False)
    bb = Backbone("ViT-B-32", "no-such-tag", download_dir=str(tmp_path), progress=False)
    with pytest.raises(ModelLoadError, match="no-such-tag") as info:
        bb.model
    assert "openai" in str(info.value)  # lists the tags that exist


def test_unreachable_weights_fail_fast_with_advice(monkeypatch, tmp_path):
    asked = []

    def unreachable(host, timeout=3.0):
        asked.append(host)
        return False

    monkeypatch.setattr(models_module, "_reachable", unreachable)
    bb = Backbone("ViT-B-32", "openai", download_dir=str(tmp_path), progress=False)
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        bb.encode_images([Image.new("RGB", (8, 8))])
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert asked, "reachability was not checked"
    assert "--checkpoint" in message and "ViT-B-32" in message and "openai" in message
    assert "\n" not in message
    assert not any(tmp_path.iterdir())  # nothing was downloaded


def test_truncated_text_tower_equals_full_77_token_features(backbone):
    """Under the causal mask, running the text tower only up to the longest prompt is exact."""
    from zeroshot_plus.encoders.text_tower import encode_text_truncated

    texts = ["a", "a photo of a dog.", "a very long prompt " * 6, "itap of a cat."]
    tokens = backbone.tokenizer(texts)
    assert tokens.shape[1] == 77
    with torch.inference_mode():
        full = backbone.model.encode_text(tokens)
        truncated = encode_text_truncated(backbone.model, tokens)
        # each prompt alone, truncated to its own length, gives the same features again
        alone = torch.cat([encode_text_truncated(backbone.model, tokens[i:i + 1])
                           for i in range(len(texts))])
    torch.testing.assert_close(truncated, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone, full, rtol=1e-5, atol=1e-5)


def test_encode_texts_order_does_not_depend_on_length_batching(backbone):
    """Texts are encoded in length order internally, but come back in the order given."""
    texts = ["a photo of a very large and fluffy dog.", "cat", "a photo of a bird.", "cat"]
    together = backbone.encode_texts(texts)
    one_by_one = np.concatenate([backbone.encode_texts([t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    np.testing.assert_array_equal(together[1], together[3])
