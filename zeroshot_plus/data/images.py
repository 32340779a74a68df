"""Image sources and safe decoding.

A source is a folder in ImageFolder layout (sub-folders are labels), a CSV or JSONL manifest
(``path[,label]``), one image file, or a list of paths or PIL images. Decoding turns any
common PIL mode (greyscale, palette, RGBA, CMYK, 16-bit, float) into 8-bit RGB and applies the
EXIF orientation. The image pipeline (``encoders.pipeline``) decides when and where images
are decoded; this module only turns one source or one image into pixels.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

log = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, Image.Image]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif",
                    ".tif", ".tiff", ".webp")
MANIFEST_EXTENSIONS = (".csv", ".jsonl")


@dataclass
class ImageSet:
    """Images to encode, with their labels when the source carries them."""

    items: list[ImageInput]
    labels: list[str] | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.items)

    def names(self) -> list[str]:
        """One printable name per image: its path, or ``<image i>`` for in-memory images."""
        return [image_name(item, i) for i, item in enumerate(self.items)]


@dataclass
class Failure:
    """An image that could not be read, and why."""

    name: str
    reason: str


def image_name(item: ImageInput, position: int) -> str:
    return f"<image {position}>" if isinstance(item, Image.Image) else os.fspath(item)


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_image_source(source: str | os.PathLike | Sequence[ImageInput] | ImageSet) -> ImageSet:
    """Resolve a folder, manifest, image file or list of images into an ImageSet."""
    if isinstance(source, ImageSet):
        return source
    if isinstance(source, Image.Image):
        return ImageSet([source], source="<PIL image>")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"image source '{path}' does not exist.")
        if path.is_dir():
            return _read_folder(path)
        if path.suffix.lower() in MANIFEST_EXTENSIONS:
            return _read_manifest(path)
        if _is_image_file(path):
            return ImageSet([path], source=str(path))
        raise InputError(
            f"image source '{path}' is neither a folder, a .csv/.jsonl manifest nor an image "
            f"file (known image extensions: {', '.join(IMAGE_EXTENSIONS)}).")
    items = list(source)
    if not items:
        raise InputError("the list of images is empty.")
    for i, item in enumerate(items):
        if not isinstance(item, (str, os.PathLike, Image.Image)):
            raise InputError(f"image {i} is a {type(item).__name__}; expected a path or a PIL image.")
    return ImageSet(items, source="<list>")


def _read_folder(root: Path) -> ImageSet:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    labelled = [(d.name, f) for d in class_dirs for f in sorted(d.rglob("*")) if _is_image_file(f)]
    loose = sorted(f for f in root.iterdir() if f.is_file() and _is_image_file(f))
    if labelled:
        if loose:
            log.warning("%s: ignoring %d images outside the class sub-folders", root, len(loose))
        labels, items = zip(*labelled)
        return ImageSet(list(items), list(labels), source=str(root))
    if loose:
        return ImageSet(list(loose), source=str(root))
    raise InputError(f"folder '{root}' contains no images "
                     f"(looked for {', '.join(IMAGE_EXTENSIONS)} files, also in sub-folders).")


def _read_manifest(path: Path) -> ImageSet:
    """Read ``path[,label]`` rows; relative paths are taken relative to the manifest."""
    rows: list[tuple[str, str | None]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read manifest '{path}': {exc}.") from None
    if path.suffix.lower() == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                rows.append((str(record["path"]), None if record.get("label") is None
                             else str(record["label"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"manifest '{path}' line {lineno} is not a JSON object with "
                                 f"a \"path\" field.") from None
    else:
        table = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
        if table and table[0][0].strip().lower() == "path":
            header = [c.strip().lower() for c in table[0]]
            label_col = header.index("label") if "label" in header else None
            table = table[1:]
        else:
            label_col = 1 if any(len(r) > 1 for r in table) else None
        for r in table:
            label = r[label_col].strip() if label_col is not None and len(r) > label_col else None
            rows.append((r[0].strip(), label or None))
    if not rows:
        raise InputError(f"manifest '{path}' lists no images.")
    has_label = [label is not None for _, label in rows]
    if any(has_label) and not all(has_label):
        missing = has_label.index(False) + 1
        raise InputError(f"manifest '{path}': some rows have a label and some do not "
                         f"(data row {missing} has none).")
    items = [Path(p) if os.path.isabs(p) else path.parent / p for p, _ in rows]
    labels = [label for _, label in rows] if all(has_label) else None
    return ImageSet(items, labels, source=str(path))


# --------------------------------------------------------------------------------------
# Decoding


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


def read_image(item: ImageInput, draft_size: int | None = None) -> Image.Image:
    """One image from a path or PIL image as upright RGB (``decode_image``); a file that
    cannot be read raises what PIL or the file system raise."""
    if isinstance(item, Image.Image):
        return to_rgb(ImageOps.exif_transpose(item))
    return decode_image(Path(item).read_bytes(), draft_size)


def open_image(item: ImageInput) -> Image.Image:
    """Load one image from a path or PIL image as RGB; raises InputError naming the file."""
    if isinstance(item, Image.Image):
        return read_image(item)
    try:
        return read_image(item)
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
