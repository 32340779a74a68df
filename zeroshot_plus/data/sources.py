"""Image sources: folders, manifests, image files and lists, resolved into an ImageSet.

A source is a folder in ImageFolder layout (sub-folders are labels), a CSV or JSONL manifest
(``path[,label]``, read by ``tables.read_table``), one image file, or a list of paths or PIL
images. Nothing here decodes an image: that is ``images``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from PIL import Image

from ..errors import InputError
from .names import label_text
from .tables import read_table

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


ImageSource = Union[str, os.PathLike, Sequence[ImageInput], ImageSet]
"""What every function that takes images accepts (see ``read_image_source``)."""


@dataclass
class Failure:
    """An image that could not be read, and why."""

    name: str
    reason: str


def image_name(item: ImageInput, position: int) -> str:
    return f"<image {position}>" if isinstance(item, Image.Image) else os.fspath(item)


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def takes_images(tags):
    """scikit-learn tags (``__sklearn_tags__``) of an estimator whose X is an image source:
    paths (strings) or PIL images, one per sample, not a 2-D array."""
    tags.input_tags.two_d_array = False
    tags.input_tags.one_d_array = True
    tags.input_tags.string = True
    return tags


def read_image_source(source: ImageSource) -> ImageSet:
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
    labelled = [(label_text(d.name), f) for d in class_dirs for f in sorted(d.rglob("*"))
                if _is_image_file(f)]
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
    """``path[,label]`` rows; relative paths are taken relative to the manifest."""
    rows = read_table(path, ("label",), what="manifest")
    labels = [label for _, (label,) in rows]
    if None in labels and any(label is not None for label in labels):
        raise InputError(f"manifest '{path}': some rows have a label and some do not "
                         f"(data row {labels.index(None) + 1} has none).")
    return ImageSet([row.path for row in rows], None if None in labels else labels,
                    source=str(path))
