"""Standard datasets as the papers' code reads them: class names, splits and images.

A ``Dataset`` holds one dataset's classes and its train / val / test images, each split an
``ImageSet`` whose labels are class names (unique within a dataset, so a label is its class).
"""

from __future__ import annotations

from dataclasses import dataclass

from .sources import ImageSet


@dataclass
class Dataset:
    """One dataset: C class names in label order, and its splits (labels are class names)."""

    name: str
    classnames: list[str]
    test: ImageSet
    train: ImageSet | None = None
    val: ImageSet | None = None
