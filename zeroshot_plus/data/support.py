"""Few-shot support sets: K images per class, and augmented views encoded once and cached.

GDA (and any few-shot method) fits on several random views of each support image, each view a
separate sample: RandomResizedCrop(scale=(0.5, 1), bicubic) + horizontal flip, then the
backbone's own normalisation. A view is a pure function of (image content, seed, view index),
so its embedding is stored in the embedding store under that key and never encoded twice.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from functools import cached_property
from typing import Callable, Container, NamedTuple, Sequence

import numpy as np
import torch

from ..encoders.backbone import Backbone
from ..encoders.pipeline import EncodeReport, Picture, View, ViewMaker, encode_views, seeded_torch_rng
from ..errors import InputError
from .sources import ImageSet, ImageSource, read_image_source

log = logging.getLogger(__name__)


class AugmentedSupport(NamedTuple):
    """Embeddings of the augmented views, image-major (row = image * n_views + view)."""

    X: np.ndarray       # (M * n_views, D) float32, unit rows
    y: np.ndarray       # (M * n_views,) label of each view
    groups: np.ndarray  # (M * n_views,) index of the source image (for cross-validation)


def sample_shots(images: ImageSource, shots: int,
                 random_state: int = 0) -> ImageSet:
    """``shots`` images per class, drawn without replacement with the seed ``random_state``.

    A class with fewer images keeps all of them (logged). Classes come out in sorted order.
    """
    image_set = read_image_source(images)
    if image_set.labels is None:
        raise InputError(f"support images '{image_set.source}' carry no labels: use a folder "
                         f"with one sub-folder per class, or a manifest with a label column.")
    if shots < 1:
        raise InputError(f"shots must be at least 1, got {shots}.")
    rng = np.random.default_rng(random_state)
    labels = np.array(image_set.labels)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < shots:
            log.warning("class '%s' has only %d support images (asked for %d)",
                        label, len(members), shots)
        chosen.extend(np.sort(rng.choice(members, min(shots, len(members)), replace=False)))
    return ImageSet([image_set.items[i] for i in chosen], [image_set.labels[i] for i in chosen],
                    source=f"{image_set.source} ({shots} per class, seed {random_state})")


def augmented_support(backbone: Backbone,
                      images: ImageSource,
                      labels: Sequence | None = None, *, n_views: int = 10,
                      scale: tuple[float, float] = (0.5, 1.0), random_state: int = 0,
                      cache: str | os.PathLike | None = None) -> AugmentedSupport:
    """Encode ``n_views`` random-resized-crop + flip views of every support image.

    images : folder (class sub-folders are labels), manifest, or list of paths / PIL images.
    labels : one label per image; default: the labels the source carries.
    scale : RandomResizedCrop area range (the paper: (0.5, 1); (0.08, 1) for ImageNet).
    random_state : integer seed; with the image content and the view index it fixes each view.
    cache : embedding store directory; views already stored are read back.
    """
    image_set = read_image_source(images)
    labels = image_set.labels if labels is None else list(labels)
    if labels is None:
        raise InputError(f"support images '{image_set.source}' carry no labels: pass labels, or "
                         f"use a folder with one sub-folder per class.")
    if len(labels) != len(image_set):
        raise InputError(f"{len(labels)} labels for {len(image_set)} support images.")
    if not isinstance(n_views, (int, np.integer)) or n_views < 1:
        raise InputError(f"n_views must be an integer >= 1, got {n_views!r}.")
    if not isinstance(random_state, (int, np.integer)):
        raise InputError(f"random_state must be an integer seed, got {random_state!r}.")
    views = SupportViews(backbone, n_views, scale, random_state)
    report = EncodeReport()
    # Whole images per forward pass, about batch_size views in each.
    encoded = [image.embeddings for batch in encode_views(
                   backbone, image_set, views, cache=cache, report=report,
                   batch_size=math.ceil(backbone.batch_size / n_views),
                   desc="encoding support views")
               for image in batch]
    X = np.concatenate(encoded).astype(np.float32, copy=False)
    log.info("support: %d images x %d views (%d images encoded, %d from the store)",
             len(image_set), n_views, report.n_encoded, report.n_cached)
    return AugmentedSupport(X, np.repeat(np.array(labels), n_views),
                            np.repeat(np.arange(len(image_set)), n_views))


class SupportViews(ViewMaker):
    """``n_views`` random-resized-crop + flip views of each image, stored as "views".

    A view is a pure function of (image content, scale, seed, view index): its randomness is
    seeded from its store key, so a stored view is never drawn or encoded again.
    """

    kind = "views"
    keyed = True

    def __init__(self, backbone: Backbone, n_views: int, scale: tuple[float, float],
                 random_state: int):
        self.backbone, self.n_views = backbone, n_views
        self.scale, self.random_state = scale, random_state

    @cached_property
    def augment(self) -> Callable:
        return _view_transform(self.backbone, self.scale)

    def keys(self, position: int, content: str | None) -> list[str] | None:
        if content is None:
            return None
        return [f"{content}/rrc{self.scale[0]:g}-{self.scale[1]:g}/seed{self.random_state}/view{view}"
                for view in range(self.n_views)]

    def __call__(self, picture: Picture, known: Container[str]) -> list[View]:
        return [View(key, None if key in known else _view(self.augment, picture.image, key))
                for key in self.keys(picture.position, picture.content)]


def _view_transform(backbone: Backbone, scale: tuple[float, float]) -> Callable:
    """RandomResizedCrop (bicubic) + flip + the backbone's own tensor conversion/normalisation."""
    from torchvision import transforms  # deferred: a heavy import the command line rarely needs

    return transforms.Compose([
        transforms.RandomResizedCrop(backbone.image_size, scale=scale,
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        backbone.normalize,
    ])


def _view(augment: Callable, image, key: str) -> torch.Tensor:
    """One view, its randomness seeded from its store key (image content, seed, view)."""
    seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    with seeded_torch_rng(seed):
        return augment(image)

