"""Few-shot support sets: K images per class, and augmented views encoded once and cached.

GDA (and any few-shot method) fits on several random views of each support image, each view a
separate sample: RandomResizedCrop(scale=(0.5, 1), bicubic) + horizontal flip, then the
backbone's own normalisation. A view is a pure function of (image content, seed, view index),
so its embedding is stored in the embedding store under that key and never encoded twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..encoders.backbone import Backbone
from ..errors import InputError
from .images import content_keys, open_image, seeded_torch_rng
from .sources import ImageInput, ImageSet, read_image_source
from .store import EmbeddingStore

log = logging.getLogger(__name__)


class AugmentedSupport(NamedTuple):
    """Embeddings of the augmented views, image-major (row = image * n_views + view)."""

    X: np.ndarray       # (M * n_views, D) float32, unit rows
    y: np.ndarray       # (M * n_views,) label of each view
    groups: np.ndarray  # (M * n_views,) index of the source image (for cross-validation)


def sample_shots(images: str | os.PathLike | Sequence[ImageInput] | ImageSet, shots: int,
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
                      images: str | os.PathLike | Sequence[ImageInput] | ImageSet,
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
    image_keys = content_keys(image_set.items)
    for position, key in enumerate(image_keys):
        if key is None:
            open_image(image_set.items[position])  # raises InputError naming the file
    view_keys = [f"{key}/rrc{scale[0]:g}-{scale[1]:g}/seed{random_state}/view{view}"
                 for key in image_keys for view in range(n_views)]
    store = EmbeddingStore(cache, backbone.fingerprint, "views") if cache is not None else None
    missing = [row for row, key in enumerate(view_keys) if store is None or key not in store]
    wanted = set(missing)

    rows, parts = [], []
    if missing:
        augment = _view_transform(backbone, scale)
        pending: list[int] = []
        pixels: list[torch.Tensor] = []
        todo = sorted({row // n_views for row in missing})
        for position in tqdm(todo, desc="encoding support views", unit="img",
                             disable=not backbone.progress):
            image = open_image(image_set.items[position])
            for view in range(n_views):
                row = position * n_views + view
                if row in wanted:
                    pixels.append(_view(augment, image, view_keys[row]))
                    pending.append(row)
            if len(pending) >= backbone.batch_size or position == todo[-1]:
                vectors = backbone.encode_pixels(torch.stack(pixels))
                if store is not None:
                    store.put([view_keys[r] for r in pending], vectors)
                rows.append(np.array(pending))
                parts.append(vectors)
                pending, pixels = [], []
    stored = [row for row in range(len(view_keys)) if row not in wanted]
    if stored:
        rows.append(np.array(stored))
        parts.append(store.get([view_keys[r] for r in stored]))
    order = np.argsort(np.concatenate(rows), kind="stable")
    X = np.concatenate(parts)[order].astype(np.float32, copy=False)
    log.info("support: %d images x %d views (%d encoded, %d from the store)",
             len(image_set), n_views, len(missing), len(stored))
    return AugmentedSupport(X, np.repeat(np.array(labels), n_views),
                            np.repeat(np.arange(len(image_set)), n_views))


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

