"""Safe decoding of images (their sources are ``sources``).

The image pipeline (``encoders.pipeline``) decides when and where images are decoded; this
module only turns one image into pixels. Decoding turns any common PIL mode (greyscale,
palette, RGBA, CMYK, 16-bit, float) into 8-bit RGB and applies the EXIF orientation.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from .sources import ImageInput

log = logging.getLogger(__name__)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited on white, deep images rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            low, high = ((float(np.nanmin(values)), float(np.nanmax(values)))
                         if not np.isnan(values).all() else (0.0, 0.0))  # all NaN: black
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


def read_image(item: ImageInput, draft_size: int | None = None) -> Image.Image:
    """One image from a path or PIL image as upright RGB (``decode_image``); a file that
    cannot be read raises what PIL or the file system raise."""
    if isinstance(item, Image.Image):
        return to_rgb(ImageOps.exif_transpose(item))
    image = decode_image(Path(item).read_bytes(), draft_size)
    # PIL's own warning names neither the file nor what to do (the command line hides it)
    if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
        log.warning("%s has %d pixels, over PIL's limit of %d for a safe image; it was decoded, "
                    "but check it is not a decompression bomb", os.fspath(item),
                    image.width * image.height, Image.MAX_IMAGE_PIXELS)
    return image


def open_image(item: ImageInput) -> Image.Image:
    """Load one image from a path or PIL image as RGB; raises InputError naming the file."""
    if isinstance(item, Image.Image):
        return read_image(item)
    try:
        return read_image(item)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
            Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read image '{os.fspath(item)}': {describe_error(exc)}") from None


def describe_error(exc: BaseException) -> str:
    """Why an image could not be read, as the end of one sentence."""
    if isinstance(exc, FileNotFoundError):
        return "no such file."
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can identify (corrupt or unsupported format)."
    if isinstance(exc, Image.DecompressionBombError):
        return (f"its header claims more than the {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels "
                f"PIL decodes (a possible decompression bomb); it is not decoded.")
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
