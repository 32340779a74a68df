"""Shared fixtures: the tiny random-weight open_clip model, synthetic images, shared data."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zeroshot_plus import Backbone

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
TINY_CONFIG = TESTS_DIR / "zsp-tiny.json"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The tiny model runs in about a millisecond per batch on one thread; with several OpenMP
# threads on a small, busy machine each forward pass can take a hundred times longer.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_config() -> str:
    """Absolute path of the tiny open_clip model config (pass it as the model name)."""
    return str(TINY_CONFIG)


@pytest.fixture(scope="session")
def backbone(tiny_config) -> Backbone:
    """The tiny architecture with its seeded random weights, shared by the whole session.

    Tests must not change its attributes; build a new Backbone for that.
    """
    bb = Backbone(tiny_config, "none", progress=False, batch_size=16)
    bb.model  # load once, up front
    return bb


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cifar10_test(shared_data) -> Path:
    root = shared_data / "images" / "cifar10" / "test"
    if not root.is_dir():
        pytest.skip(f"CIFAR-10 test images not found at {root}")
    return root


def synthetic_image(seed: int, size: tuple[int, int] = (40, 40)) -> Image.Image:
    """A distinct RGB image per seed: a colour gradient plus noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, width)[None, :, None] * rng.integers(-128, 128, 3)
    noise = rng.normal(0, 30, (height, width, 3))
    pixels = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


@pytest.fixture(scope="session")
def make_image():
    """make_image(path, seed, size=(40, 40)) writes a synthetic image and returns its path."""

    def make(path: Path, seed: int, size: tuple[int, int] = (40, 40)) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic_image(seed, size).save(path)
        return path

    return make


@pytest.fixture
def labelled_folder(tmp_path, make_image) -> Path:
    """ImageFolder layout: 3 classes x 4 images (PNG and JPEG)."""
    root = tmp_path / "labelled"
    seed = 0
    for label in ("cat", "dog", "fish"):
        for i in range(4):
            make_image(root / label / f"{label}{i}.{'png' if i % 2 else 'jpg'}", seed)
            seed += 1
    return root


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A small PNG whose header claims width x height pixels: PIL refuses it as a possible
    decompression bomb when it is opened."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    struct.pack_into(">II", data, 16, width, height)  # the IHDR chunk's data starts at 16
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path
