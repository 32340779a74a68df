"""Safe decoding of images (their sources are ``sources``).

Decoding turns any common PIL mode (greyscale, palette, RGBA, CMYK, 16-bit, float) into 8-bit
RGB and applies the EXIF orientation. Batches are decoded and preprocessed by threads between
forward passes (on a CPU) or ahead of them by worker processes (for an accelerator).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from .sources import ImageInput


@dataclass
class DecodedItem:
    """What a worker returns for one image: its pixels, or an error, or neither (skipped)."""

    position: int
    pixels: torch.Tensor | None = None
    error: str | None = None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited on white, deep images rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
            values = (values - low) / (high - low or 1.0) * 255.0
        elif image.mode.startswith("I;16") or values.max() > 255:  # 16-bit range
            values = values / 257.0
        grey = np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
            image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Encoded image bytes -> upright 8-bit RGB PIL image.

    ``draft_size`` lets JPEG decoding downscale by a power of two while staying at least
    that large on both sides, which is several times faster for large photos.
    """
    image = Image.open(io.BytesIO(data))
    if draft_size and image.format == "JPEG":
        width, height = image.size
        short = min(width, height)
        if short >= 2 * draft_size:
            # keep the short side >= draft_size after the DCT-domain reduction
            image.draft("RGB", (draft_size * width // short, draft_size * height // short))
    ImageOps.exif_transpose(image, in_place=True)  # a copy would cost a tenth of the decoding
    return to_rgb(image)


def content_key(data: bytes) -> str:
    """Hex digest of the encoded bytes: the identity of an image in the embedding store."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def pil_key(image: Image.Image) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def open_image(item: ImageInput) -> Image.Image:
    """Load one image from a path or PIL image as RGB; raises InputError naming the file."""
    if isinstance(item, Image.Image):
        return to_rgb(ImageOps.exif_transpose(item))
    try:
        return decode_image(Path(item).read_bytes())
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read image '{os.fspath(item)}': {describe_error(exc)}") from None


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file."
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can identify (corrupt or unsupported format)."
    text = str(exc).strip() or type(exc).__name__
    return text if text.endswith(".") else text + "."


def item_key(item: ImageInput) -> str | None:
    """Content key of one image, or None when it cannot be read (reported when decoding)."""
    if isinstance(item, Image.Image):
        return pil_key(item)
    try:
        return content_key(Path(item).read_bytes())
    except OSError:
        return None


def content_keys(items: Sequence[ImageInput], num_threads: int = 4) -> list[str | None]:
    """Content keys of many images, hashed by a few threads (hashlib releases the GIL)."""
    with ThreadPoolExecutor(num_threads) as pool:
        return list(pool.map(item_key, items, chunksize=64))


class _DecodeDataset(torch.utils.data.Dataset):
    """Decodes and preprocesses the images that are not skipped (already stored)."""

    def __init__(self, items: Sequence[ImageInput], transform: Callable | None,
                 skip: frozenset[int], draft_size: int | None):
        self.items = items
        self.transform = transform
        self.skip = skip
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> DecodedItem:
        if position in self.skip:
            return DecodedItem(position)
        item = self.items[position]
        try:
            if isinstance(item, Image.Image):
                image = to_rgb(ImageOps.exif_transpose(item))
            else:
                image = decode_image(Path(item).read_bytes(), self.draft_size)
            return DecodedItem(position, self.transform(image))
        except Exception as exc:  # noqa: BLE001 - any failure is reported per image
            return DecodedItem(position, error=describe_error(exc))


_TORCH_RNG = threading.Lock()


@contextmanager
def seeded_torch_rng(seed: int) -> Iterator[None]:
    """Run torchvision's random transforms, which draw from torch's global generator, under
    ``seed``: one thread at a time (decoding threads share that generator), and with the
    caller's generator state restored afterwards."""
    with _TORCH_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _lower_priority(_worker_id: int) -> None:
    """Decoding processes yield the CPU to the encoder when they share it."""
    if hasattr(os, "nice"):
        os.nice(10)


def _keep_list(batch: list[DecodedItem]) -> list[DecodedItem]:
    return batch


def decoded_batches(items: Sequence[ImageInput], transform: Callable | None, *,
                    batch_size: int, num_workers: int, skip: frozenset[int] = frozenset(),
                    draft_size: int | None = None) -> Iterator[list[DecodedItem]]:
    """Yield lists of DecodedItem in input order.

    With ``num_workers`` > 0, that many processes decode ahead while the caller encodes (the
    choice for an accelerator). With 0, each batch is decoded when it is asked for, by one thread
    per core (PIL and torch release the GIL): on a CPU the encoder already keeps every core
    busy, and a process decoding alongside it slows it by more than the decoding costs.
    Positions in ``skip`` come back without pixels and are not read at all.
    """
    dataset = _DecodeDataset(items, transform, skip, draft_size)
    if num_workers == 0:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for start in range(0, len(items), batch_size):
                positions = range(start, min(start + batch_size, len(items)))
                yield list(pool.map(dataset.__getitem__, positions))
        return
    workers = num_workers if len(items) - len(skip) > batch_size else 0
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_keep_list, prefetch_factor=4 if workers else None,
        worker_init_fn=_lower_priority)
    yield from loader
