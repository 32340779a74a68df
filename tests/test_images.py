"""Image sources (folder, manifests, lists) and safe decoding of every common PIL mode."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zeroshot_plus import EncodeReport, ImageSet, InputError, read_image_source
from zeroshot_plus.data.images import decode_image, open_image, to_rgb

W, H = 48, 24  # not square, so that a swapped width/height shows


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def _check_rgb(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert image.mode == "RGB"
    assert image.size == size
    array = _pixels(image)
    assert array.dtype == np.uint8 and array.shape == (size[1], size[0], 3)
    return array


# ---------------------------------------------------------------------- odd modes


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def make_exif_rotated(path: Path) -> Path:
    """Stored W x H, left half red and right half blue, EXIF orientation 6 (rotate 90 CW)."""
    array = np.zeros((H, W, 3), np.uint8)
    array[:, : W // 2] = (255, 0, 0)
    array[:, W // 2:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(array), path, exif=exif, quality=95)


def test_exif_orientation_6_swaps_width_and_height(tmp_path):
    path = make_exif_rotated(tmp_path / "rotated.jpg")
    assert Image.open(path).size == (W, H)  # as stored
    array = _check_rgb(open_image(path), (H, W))
    # Rotating 90 degrees clockwise puts the stored left (red) half on top.
    top, bottom = array[: W // 2 - 4].reshape(-1, 3).mean(0), array[W // 2 + 4:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_exif_orientation_applied_with_jpeg_draft(tmp_path):
    # Large enough for the draft (DCT-domain downscale) path of decode_image.
    array = np.zeros((200, 400, 3), np.uint8)
    array[:, :200] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(array), tmp_path / "big.jpg", exif=exif)
    image = decode_image(path.read_bytes(), draft_size=32)
    assert image.mode == "RGB"
    width, height = image.size
    assert height > width  # rotated
    assert min(image.size) >= 32  # the draft keeps at least the requested size
    assert np.asarray(image)[: height // 4].mean(axis=(0, 1))[0] > 200  # red on top


def test_greyscale_l(tmp_path):
    path = _save(Image.new("L", (W, H), 100), tmp_path / "grey.png")
    array = _check_rgb(open_image(path), (W, H))
    assert (array == 100).all()


def test_one_bit(tmp_path):
    image = Image.new("1", (W, H), 0)
    image.paste(1, (0, 0, W // 2, H))
    path = _save(image, tmp_path / "bits.png")
    assert Image.open(path).mode == "1"
    array = _check_rgb(open_image(path), (W, H))
    assert (array[:, : W // 2] == 255).all() and (array[:, W // 2:] == 0).all()


def test_palette(tmp_path):
    image = Image.new("P", (W, H), 1)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    path = _save(image, tmp_path / "palette.png")
    assert Image.open(path).mode == "P"
    array = _check_rgb(open_image(path), (W, H))
    assert (array == (0, 255, 0)).all()


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (W, H), 0)
    image.paste(1, (W // 2, 0, W, H))
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    path = _save(image, tmp_path / "palette_t.png", transparency=0)
    opened = Image.open(path)
    assert opened.mode == "P" and "transparency" in opened.info
    array = _check_rgb(open_image(path), (W, H))
    assert (array[:, : W // 2] == 255).all()  # transparent black -> white
    assert (array[:, W // 2:] == (0, 0, 255)).all()


def test_rgba_transparent_pixels_come_out_white(tmp_path):
    array = np.zeros((H, W, 4), np.uint8)  # transparent black everywhere ...
    array[:, W // 2:] = (10, 200, 30, 255)  # ... but an opaque green right half
    path = _save(Image.fromarray(array, "RGBA"), tmp_path / "rgba.png")
    out = _check_rgb(open_image(path), (W, H))
    assert (out[:, : W // 2] == 255).all()
    assert (out[:, W // 2:] == (10, 200, 30)).all()


def test_rgba_half_transparent_blends_with_white(tmp_path):
    path = _save(Image.new("RGBA", (W, H), (0, 0, 0, 128)), tmp_path / "half.png")
    out = _check_rgb(open_image(path), (W, H))
    assert np.abs(out.astype(int) - 127).max() <= 1  # 255 * (1 - 128/255)


def test_la_transparent_pixels_come_out_white(tmp_path):
    image = Image.new("LA", (W, H), (0, 0))
    image.paste((50, 255), (W // 2, 0, W, H))
    path = _save(image, tmp_path / "la.png")
    assert Image.open(path).mode == "LA"
    out = _check_rgb(open_image(path), (W, H))
    assert (out[:, : W // 2] == 255).all() and (out[:, W // 2:] == 50).all()


def test_cmyk_jpeg(tmp_path):
    path = _save(Image.new("CMYK", (W, H), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = _check_rgb(open_image(path), (W, H)).reshape(-1, 3).mean(0)
    assert out[0] > 230 and out[1] < 25 and out[2] < 25  # pure red


def test_16_bit_greyscale_png_is_rescaled(tmp_path):
    path = _save(Image.fromarray(np.full((H, W), 32768, np.uint16)), tmp_path / "grey16.png")
    assert Image.open(path).mode == "I;16"
    out = _check_rgb(open_image(path), (W, H))
    assert np.abs(out.astype(int) - 128).max() <= 1  # mid-grey, not saturated white


def test_16_bit_dark_image_stays_dark(tmp_path):
    # A 16-bit image whose values are all <= 255 is nearly black, not 8-bit data.
    array = np.full((H, W), 200, np.uint16)
    array[:, W // 2:] = 0
    path = _save(Image.fromarray(array), tmp_path / "dark16.png")
    assert Image.open(path).mode == "I;16"
    out = _check_rgb(open_image(path), (W, H))
    assert (out[:, : W // 2] == 1).all() and (out[:, W // 2:] == 0).all()  # 200/257 -> 1


def test_32_bit_integer_tiff(tmp_path):
    array = np.full((H, W), 32768, np.int32)
    array[:, W // 2:] = 0
    path = _save(Image.fromarray(array), tmp_path / "int32.tif")
    assert Image.open(path).mode == "I"
    out = _check_rgb(open_image(path), (W, H))
    assert np.abs(out[:, : W // 2].astype(int) - 128).max() <= 1 and (out[:, W // 2:] == 0).all()


def test_float_tiff(tmp_path):
    ramp = np.tile(np.linspace(-1.0, 3.0, W, dtype=np.float32), (H, 1))
    path = _save(Image.fromarray(ramp), tmp_path / "float.tif")
    assert Image.open(path).mode == "F"
    out = _check_rgb(open_image(path), (W, H))
    row = out[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255  # full range used
    assert (np.diff(row) >= 0).all()  # order kept
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_in_memory_pil_images_of_odd_modes():
    for image in (Image.new("RGBA", (W, H), (0, 0, 0, 0)), Image.new("LA", (W, H), (0, 0))):
        assert (np.asarray(to_rgb(image)) == 255).all()
    assert to_rgb(Image.new("I;16", (W, H), 65535)).getpixel((0, 0)) == (255, 255, 255)


ODD_WRITERS = {
    "rotated.jpg": make_exif_rotated,
    "grey.png": lambda p: _save(Image.new("L", (W, H), 100), p),
    "bits.png": lambda p: _save(Image.new("1", (W, H), 1), p),
    "palette.gif": lambda p: _save(Image.new("P", (W, H), 3), p),
    "palette_t.png": lambda p: _save(Image.new("P", (W, H), 0), p, transparency=0),
    "rgba.png": lambda p: _save(Image.new("RGBA", (W, H), (0, 0, 0, 0)), p),
    "la.png": lambda p: _save(Image.new("LA", (W, H), (0, 0)), p),
    "cmyk.jpg": lambda p: _save(Image.new("CMYK", (W, H), (0, 255, 255, 0)), p),
    "grey16.png": lambda p: _save(Image.fromarray(np.full((H, W), 32768, np.uint16)), p),
    "int32.tif": lambda p: _save(Image.fromarray(np.full((H, W), 1000, np.int32)), p),
    "float.tif": lambda p: _save(Image.fromarray(np.eye(H, W, dtype=np.float32)), p),
    "photo.webp": lambda p: _save(Image.new("RGB", (W, H), (1, 2, 3)), p),
}


def test_backbone_encodes_every_odd_mode(tmp_path, backbone):
    paths = [writer(tmp_path / name) for name, writer in ODD_WRITERS.items()]
    report = EncodeReport()
    parts = list(backbone.iter_image_embeddings(paths, report=report, on_error="raise"))
    positions = np.concatenate([p for p, _ in parts])
    embeddings = np.concatenate([e for _, e in parts])
    assert positions.tolist() == list(range(len(paths)))
    assert report.failures == [] and report.n_encoded == len(paths)
    assert embeddings.shape == (len(paths), 32) and embeddings.dtype == np.float32
    assert np.all(np.isfinite(embeddings))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------- unreadable files


@pytest.fixture
def broken_files(tmp_path, make_image):
    good = [make_image(tmp_path / f"good{i}.png", i) for i in range(3)]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" + os.urandom(200))
    truncated = tmp_path / "truncated.jpg"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buffer, "JPEG")
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    missing = tmp_path / "missing.png"
    return good, [corrupt, truncated, missing]


def test_unreadable_images_are_skipped_and_reported(backbone, broken_files):
    good, bad = broken_files
    items = [good[0], bad[0], good[1], bad[1], bad[2], good[2]]
    report = EncodeReport()
    parts = list(backbone.iter_image_embeddings(items, on_error="skip", report=report))
    positions = np.concatenate([p for p, _ in parts]).tolist()
    embeddings = np.concatenate([e for _, e in parts])
    assert positions == [0, 2, 5]
    assert [f.name for f in report.failures] == [str(p) for p in bad]
    assert all(f.reason for f in report.failures)
    assert "no such file" in report.failures[2].reason
    assert report.n_encoded == 3
    np.testing.assert_allclose(embeddings, backbone.encode_images(good), atol=1e-6)


@pytest.mark.parametrize("which", [0, 1, 2], ids=["corrupt", "truncated", "missing"])
def test_unreadable_image_raises_naming_the_file(backbone, broken_files, which):
    good, bad = broken_files
    with pytest.raises(InputError, match=bad[which].name) as info:
        backbone.encode_images([good[0], bad[which]])
    assert str(bad[which]) in str(info.value)
    with pytest.raises(InputError, match=bad[which].name):
        open_image(bad[which])


def test_invalid_on_error_value(backbone, broken_files):
    with pytest.raises(InputError, match="on_error"):
        list(backbone.iter_image_embeddings(broken_files[0], on_error="ignore"))


# ---------------------------------------------------------------------- sources


def test_folder_layout_gives_labels(labelled_folder):
    (labelled_folder / "dog" / "notes.txt").write_text("not an image")
    (labelled_folder / "dog" / ".hidden.png").write_bytes(b"")
    image_set = read_image_source(labelled_folder)
    assert len(image_set) == 12
    assert image_set.labels == ["cat"] * 4 + ["dog"] * 4 + ["fish"] * 4
    for item, label in zip(image_set.items, image_set.labels):
        assert Path(item).parent.name == label
    assert image_set.names() == [os.fspath(i) for i in image_set.items]


def test_nested_class_folders_are_searched(tmp_path, make_image):
    make_image(tmp_path / "a" / "deep" / "x.png", 0)
    make_image(tmp_path / "b" / "y.png", 1)
    image_set = read_image_source(tmp_path)
    assert image_set.labels == ["a", "b"]


def test_loose_files_are_unlabelled(tmp_path, make_image):
    for i in range(3):
        make_image(tmp_path / f"img{i}.png", i)
    (tmp_path / "readme.md").write_text("x")
    image_set = read_image_source(tmp_path)
    assert image_set.labels is None
    assert [Path(p).name for p in image_set.items] == ["img0.png", "img1.png", "img2.png"]


def test_loose_files_beside_class_folders_are_ignored(labelled_folder, make_image, caplog):
    make_image(labelled_folder / "stray.png", 99)
    with caplog.at_level("WARNING", logger="zeroshot_plus.data.sources"):
        image_set = read_image_source(labelled_folder)
    assert len(image_set) == 12 and labelled_folder / "stray.png" not in image_set.items
    assert "ignoring 1 images" in caplog.text


def test_single_file_and_list_sources(tmp_path, make_image):
    one = make_image(tmp_path / "one.png", 0)
    assert read_image_source(one).items == [one] and read_image_source(one).labels is None
    pil = Image.new("RGB", (4, 4))
    mixed = read_image_source([str(one), pil])
    assert len(mixed) == 2 and mixed.names() == [str(one), "<image 1>"]


@pytest.mark.parametrize("source, message", [
    ([], "empty"),
    ([3.5], "image 0"),
])
def test_bad_list_sources(source, message):
    with pytest.raises(InputError, match=message):
        read_image_source(source)


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(InputError, match="nowhere") as info:
        read_image_source(tmp_path / "nowhere")
    assert "does not exist" in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "sub").mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="empty") as info:
        read_image_source(empty)
    assert "no images" in str(info.value)
    text = tmp_path / "file.txt"
    text.write_text("x")
    with pytest.raises(InputError, match="file.txt"):
        read_image_source(text)


@pytest.fixture
def manifest_dir(tmp_path, make_image):
    folder = tmp_path / "data"
    for i in range(3):
        make_image(folder / "imgs" / f"{i}.png", i)
    return folder


def _chdir_elsewhere(monkeypatch, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)


def test_csv_manifest_with_header_relative_paths(manifest_dir, tmp_path, monkeypatch):
    manifest = manifest_dir / "set.csv"
    manifest.write_text("path,label\nimgs/0.png,cat\nimgs/1.png, dog\n\nimgs/2.png,cat\n")
    _chdir_elsewhere(monkeypatch, tmp_path)  # relative to the manifest, not the cwd
    image_set = read_image_source(manifest)
    assert image_set.items == [manifest_dir / "imgs" / f"{i}.png" for i in range(3)]
    assert all(Path(p).is_file() for p in image_set.items)
    assert image_set.labels == ["cat", "dog", "cat"]


def test_csv_manifest_header_with_label_first(manifest_dir):
    manifest = manifest_dir / "set.csv"
    manifest.write_text("path,label\nimgs/0.png,a\n")
    assert read_image_source(manifest).labels == ["a"]
    manifest.write_text("PATH\nimgs/0.png\nimgs/1.png\n")
    assert read_image_source(manifest).labels is None


def test_csv_manifest_without_header(manifest_dir):
    manifest = manifest_dir / "set.csv"
    absolute = manifest_dir / "imgs" / "2.png"
    manifest.write_text(f"imgs/0.png,cat\nimgs/1.png,dog\n{absolute},dog\n")
    image_set = read_image_source(manifest)
    assert image_set.items[2] == absolute
    assert image_set.labels == ["cat", "dog", "dog"]
    manifest.write_text("imgs/0.png\nimgs/1.png\n")
    image_set = read_image_source(manifest)
    assert image_set.labels is None and len(image_set) == 2


def test_jsonl_manifest(manifest_dir, tmp_path, monkeypatch):
    manifest = manifest_dir / "set.jsonl"
    rows = [{"path": f"imgs/{i}.png", "label": lab} for i, lab in enumerate(["x", "y", "x"])]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    _chdir_elsewhere(monkeypatch, tmp_path)
    image_set = read_image_source(manifest)
    assert image_set.items == [manifest_dir / "imgs" / f"{i}.png" for i in range(3)]
    assert image_set.labels == ["x", "y", "x"]
    manifest.write_text('{"path": "imgs/0.png"}\n')
    assert read_image_source(manifest).labels is None


@pytest.mark.parametrize("name, text", [
    ("mixed.csv", "path,label\nimgs/0.png,cat\nimgs/1.png\n"),
    ("mixed_noheader.csv", "imgs/0.png,cat\nimgs/1.png,\n"),
    ("mixed_first_unlabelled.csv", "imgs/0.png\nimgs/1.png,cat\n"),
    ("mixed.jsonl", '{"path": "imgs/0.png", "label": "cat"}\n{"path": "imgs/1.png"}\n'),
])
def test_manifest_with_mixed_labelled_and_unlabelled_rows(manifest_dir, name, text):
    manifest = manifest_dir / name
    manifest.write_text(text)
    with pytest.raises(InputError, match=name) as info:
        read_image_source(manifest)
    assert "label" in str(info.value)


@pytest.mark.parametrize("name, text, message", [
    ("empty.csv", "path,label\n", "lists no images"),
    ("bad.jsonl", '{"path": "a.png"}\nnot json\n', "line 2"),
    ("nopath.jsonl", '{"file": "a.png"}\n', "line 1"),
])
def test_bad_manifests(manifest_dir, name, text, message):
    manifest = manifest_dir / name
    manifest.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        read_image_source(manifest)
    assert name in str(info.value)


def test_manifest_listing_a_missing_file_is_reported_when_encoding(manifest_dir, backbone):
    manifest = manifest_dir / "set.csv"
    manifest.write_text("imgs/0.png\nimgs/gone.png\nimgs/1.png\n")
    report = EncodeReport()
    parts = list(backbone.iter_image_embeddings(manifest, on_error="skip", report=report))
    assert np.concatenate([p for p, _ in parts]).tolist() == [0, 2]
    assert [Path(f.name) for f in report.failures] == [manifest_dir / "imgs" / "gone.png"]


def test_image_set_passes_through():
    image_set = ImageSet([Image.new("RGB", (2, 2))], ["a"])
    assert read_image_source(image_set) is image_set


# ---------------------------------------------------------------------- decompression bombs


def test_a_decompression_bomb_is_one_sentence_on_every_decoding_path(backbone, tmp_path,
                                                                      make_image):
    from conftest import bomb_png

    from zeroshot_plus import ComCLIPMatcher, TPTClassifier, fit_gda_from_support

    bomb = bomb_png(tmp_path / "support" / "cat" / "bomb.png")
    with pytest.raises(Image.DecompressionBombError):  # what PIL itself raises
        Image.open(bomb)
    pattern = r"cannot read image '.*bomb.png': its header claims more than the \d+ pixels PIL decodes \(a possible decompression bomb\)"
    with pytest.raises(InputError, match=pattern):
        open_image(bomb)
    report = EncodeReport()
    assert not list(backbone.iter_image_embeddings([bomb], on_error="skip", report=report))
    assert "decompression bomb" in report.failures[0].reason
    with pytest.raises(InputError, match=pattern):
        backbone.encode_images([bomb])
    for label in ("cat", "dog"):
        make_image(tmp_path / "support" / label / "ok.png", len(label))
    with pytest.raises(InputError, match=pattern):
        fit_gda_from_support(backbone, tmp_path / "support", n_views=1, alpha=1.0)
    with pytest.raises(InputError, match="decompression bomb"):
        ComCLIPMatcher(backbone).decision_function([bomb], ["a dog"])
    photo = make_image(tmp_path / "test" / "photo.png", 3)
    bomb_png(tmp_path / "generated" / "photo_0.png")
    tpt = TPTClassifier(backbone, classnames=["cat", "dog"], n_views=4, steps=1,
                        diffusion_views=tmp_path / "generated").fit()
    with pytest.raises(InputError, match=r"cannot read image '.*photo_0.png': .*decompression bomb"):
        tpt.decision_function([photo])


def test_an_all_nan_float_image_is_black_without_a_numpy_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = to_rgb(Image.fromarray(np.full((H, W), np.nan, np.float32), mode="F"))
    assert not _check_rgb(image, (W, H)).any()


def test_an_image_over_pils_warning_limit_is_named_once_in_the_projects_words(
        tmp_path, make_image, monkeypatch, caplog, tiny_config):
    import warnings

    from zeroshot_plus.cli import main

    path = make_image(tmp_path / "set" / "large.png", 1, (40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns above 1000, refuses 2000
    with warnings.catch_warnings(record=True) as raw:
        assert main(["predict", str(tmp_path / "set"), "--classes", "cat,dog", "--model",
                     tiny_config, "--pretrained", "none", "--no-progress"]) == 0
    assert not [w for w in raw if issubclass(w.category, Image.DecompressionBombWarning)]
    message, = [r.getMessage() for r in caplog.records if "large.png" in r.getMessage()]
    assert message.startswith(f"{path} has 1600 pixels, over PIL's limit of 1000")
