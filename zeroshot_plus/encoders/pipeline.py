"""The image pipeline: items -> decode -> views -> preprocess -> encode -> store, for every method.

``encode_views(backbone, items, views)`` streams the embeddings of the views that a view maker
draws from each image: the preprocessed image itself (``Preprocessed``, what
``Backbone.encode_images`` returns), a support set's augmented views, TPT's views, ComCLIP's
regions. Decoding, batching, the store and the error policy live here once:

- Decoding: the next batch of images is decoded, and its views drawn, while the current one
  is encoded: by one background thread at idle priority (the choice on a CPU, where the
  encoder already keeps every core busy and one thread keeps well ahead of it), or by
  ``backbone.num_workers`` worker processes at a lower priority (the choice for an
  accelerator). The look-ahead is one batch, so memory stays flat, and the thread is idle
  whenever the caller's own code runs between yields. With ``backbone.jpeg_draft`` (off by
  default), the preprocessed image may be decoded from a JPEG's reduced DCT (``draft``); other
  views always need the full picture.
- Batching: consecutive images form one forward pass until it holds ``backbone.batch_size``
  views to encode (an image's views are never split) or ``backbone.batch_size`` images.
- Store: with ``cache``, views are kept under ``<cache>/<fingerprint>/<views.kind>`` by their
  keys; an image whose views are all stored is not read at all, a view already stored is
  not drawn, and each pass is written before it is yielded, so a killed run resumes.
  Images whose views have the same keys as an earlier image's (the same content) are read
  once.
- Errors: ``on_error="raise"`` raises InputError naming the first image that cannot be read;
  "skip" leaves it out and lists it in ``report.failures``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Container, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import content_keys, describe_error, open_image, read_image
from ..data.sources import Failure, ImageInput, ImageSet, ImageSource, image_name, read_image_source
from ..data.store import EmbeddingStore, open_store
from ..errors import InputError

if TYPE_CHECKING:
    from .backbone import Backbone

log = logging.getLogger(__name__)


@dataclass
class EncodeReport:
    """What an image-encoding run did: how many images came from the store, how many were
    encoded (and the seconds their forward passes took), and which could not be read."""

    n_cached: int = 0
    n_encoded: int = 0
    encoder_seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)


class View(NamedTuple):
    """One view of an image: its key, and its pixels (3, H, W) unless it is already known."""

    key: str
    pixels: torch.Tensor | None


@dataclass
class Picture:
    """A decoded image, as a view maker receives it."""

    image: Image.Image                 # upright 8-bit RGB
    position: int                      # its index among the items
    content: str | None                # hash of its encoded bytes (None: not asked for)
    companions: list[Image.Image]      # its decoded ``views.companions``


class ViewMaker:
    """What ``encode_views`` encodes of each image. Subclasses set the attributes and
    implement ``__call__``; the defaults describe views that are not stored.

    kind : the store's sub-folder for these views; None: they are not stored.
    draft : the views only need the picture at the encoder's size, so a backbone with
        ``jpeg_draft`` may decode large JPEGs at a reduced size.
    keyed : the view keys derive from the image content, which is hashed even without a store.
    """

    kind: str | None = None
    draft: bool = False
    keyed: bool = False

    def keys(self, position: int, content: str | None) -> list[str] | None:
        """The keys of an image's views when they are known before decoding it, else None."""
        return None

    def companions(self, image: Image.Image, position: int) -> Sequence[ImageInput]:
        """Other images (paths or PIL) that the views of this image are drawn from, such as
        DiffTPT's generated images; the pipeline decodes them after the image."""
        return ()

    def __call__(self, picture: Picture, known: Container[str]) -> list[View]:
        """The views of one image; those whose key is ``known`` come without pixels."""
        raise NotImplementedError


class Preprocessed(ViewMaker):
    """One view per image: the backbone's own preprocessing, stored by image content."""

    kind = "images"
    draft = True

    def __init__(self, backbone: Backbone):
        self.backbone = backbone

    def keys(self, position: int, content: str | None) -> list[str] | None:
        return None if content is None else [content]

    def __call__(self, picture: Picture, known: Container[str]) -> list[View]:
        key = picture.content or f"image {picture.position}"
        return [View(key, self.backbone.preprocess(picture.image))]


class EncodedImage(NamedTuple):
    """The views of one image, encoded (or read back from the store)."""

    position: int                     # its index among the items
    size: tuple[int, int] | None      # the decoded picture's (width, height); None: not read
    keys: list[str]                   # (V,) its views, in the view maker's order
    embeddings: np.ndarray            # (V, D) float32, unit rows


def encode_views(backbone: Backbone, items: ImageSource, views: ViewMaker, *,
                 cache: str | os.PathLike | None = None, on_error: str = "raise",
                 report: EncodeReport | None = None, batch_size: int | None = None,
                 progress: bool | None = None, desc: str = "encoding images",
                 ) -> Iterator[list[EncodedImage]]:
    """Stream the encoded views of every image, one forward pass's images at a time, in
    input order.

    items : folder, manifest, image file, or list of paths / PIL images.
    views : the view maker (``Preprocessed(backbone)`` for the images themselves).
    cache : embedding store directory.
    on_error : "raise" or "skip" (unreadable images are left out and listed in ``report``).
    batch_size : images decoded together; default ``backbone.batch_size``. Views with many
        pixels per image want fewer.
    """
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got '{on_error}'.")
    image_set = read_image_source(items)
    report = report if report is not None else EncodeReport()
    store = (open_store(cache, backbone.fingerprint, views.kind)
             if cache is not None and views.kind is not None else None)
    n_images = len(image_set)
    contents = (content_keys(image_set.items) if store is not None or views.keyed
                else [None] * n_images)
    planned = [views.keys(position, contents[position]) for position in range(n_images)]
    known, skip, copied, needs_model = plan_reads(backbone, store, planned)
    draft_size = (backbone.image_size if views.draft and backbone.jpeg_draft and needs_model
                  else None)
    dataset = _Decoder(image_set.items, views, contents, frozenset(skip), known, draft_size)
    reader = _ReadAhead(dataset, batch_size or backbone.batch_size, backbone.num_workers)
    passes = _Passes(backbone, image_set, store, copied, on_error, report)
    show = backbone.progress if progress is None else progress
    # a bar only for real work: a run answered from the store is over at once
    batches = iter(reader)
    with tqdm(total=n_images, desc=desc, unit="img", disable=not show or not needs_model) as bar, \
            closing(batches):
        for batch in batches:
            for item in batch:
                done = passes.add(item, skip.get(item.position))
                if done is not None:
                    reader.settle()  # the caller's code runs with no decoding beside it
                    yield done
            bar.update(len(batch))
        done = passes.flush()
        if done is not None:
            yield done


def plan_reads(backbone: Backbone, store: EmbeddingStore | None,
               planned: list[list[str] | None]
               ) -> tuple[frozenset[str], dict[int, list[str]], set[str], bool]:
    """What a run reads, given each image's planned view keys (None: known only once
    decoded): (the stored keys, the images not to read and their keys, the keys of those
    images that earlier images of the run provide, whether any image needs the model).

    The model is loaded (or fails) here when it is needed, and the store then serves only
    embeddings of its dimension."""
    known = store.keys() if store is not None else frozenset()
    skip = _not_read(planned, known)
    # A run whose views are all stored needs no model (and imports no open_clip).
    needs_model = len(skip) < len(planned)
    if needs_model:
        backbone.image_tower  # load, compile or fail before a progress bar is drawn
        if store is not None and store.dim is not None and store.expect(backbone.embed_dim):
            known = store.keys()
            skip = _not_read(planned, known)
    copied = {k for position, keys in skip.items() for k in keys if k not in known}
    return known, skip, copied, needs_model


def _not_read(planned: list[list[str] | None], known: frozenset[str]) -> dict[int, list[str]]:
    """Images not to read: all their views are stored, or an earlier image has the same views."""
    skip: dict[int, list[str]] = {}
    first: dict[tuple[str, ...], int] = {}
    for position, keys in enumerate(planned):
        if keys is not None and (all(k in known for k in keys)
                                 or first.setdefault(tuple(keys), position) != position):
            skip[position] = keys
    return skip


# ---------------------------------------------------------------------- decoding


@dataclass
class _Decoded:
    """What decoding returns for one image: its views, or an error, or neither (not read)."""

    position: int
    views: list[View] | None = None
    size: tuple[int, int] | None = None
    error: str | None = None


class _Decoder(torch.utils.data.Dataset):
    """Decodes an image and draws its views; images in ``skip`` are not read."""

    def __init__(self, items: Sequence[ImageInput], views: ViewMaker,
                 contents: Sequence[str | None], skip: frozenset[int], known: frozenset[str],
                 draft_size: int | None):
        self.items, self.views, self.contents = items, views, contents
        self.skip, self.known, self.draft_size = skip, known, draft_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> _Decoded:
        if position in self.skip:
            return _Decoded(position)
        try:
            image = read_image(self.items[position], self.draft_size)
        except Exception as exc:  # noqa: BLE001 - any failure is reported per image
            return _Decoded(position, error=describe_error(exc))
        # a companion that cannot be read raises, naming it: it is the view maker's input
        companions = [open_image(c) for c in self.views.companions(image, position)]
        picture = Picture(image, position, self.contents[position], companions)
        try:
            return _Decoded(position, self.views(picture, self.known), image.size)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a transform that rejects the image
            return _Decoded(position, error=describe_error(exc))


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


def _idle_priority() -> None:
    """The decoding thread runs only on cores that nothing else wants (Linux's SCHED_IDLE
    class), so that it fills the gaps the encoder's threads leave and never preempts them."""
    if hasattr(os, "SCHED_IDLE"):
        with suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only


def _keep_list(batch: list[_Decoded]) -> list[_Decoded]:
    return batch


class _ReadAhead:
    """Lists of ``_Decoded`` in input order, ``batch_size`` images at a time, decoded ahead of
    the caller.

    With ``num_workers`` > 0, that many processes decode ahead (DataLoader). With 0, one thread
    decodes batch k + 1 while the caller encodes batch k (PIL and torch release the GIL); one
    batch ahead, no more. On a CPU a batch decodes in about 5% of its forward pass, and the
    encoder's threads already keep every core busy, so the thread runs at idle priority: it
    decodes in the moments the encoder leaves a core free instead of preempting one of its
    threads, which would stall the others at their next synchronisation (README,
    "Throughput"). Images the thread has not begun when their batch is taken (the first batch,
    or all of them on a machine busy with other work) are decoded by the caller. A failure in
    decoding is raised when its batch is taken; closing the iteration cancels the batch ahead
    and waits for the image in hand.
    """

    def __init__(self, dataset: _Decoder, batch_size: int, num_workers: int):
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self._ahead: list[tuple[int, Future]] = []

    def __iter__(self) -> Iterator[list[_Decoded]]:
        if self.num_workers > 0:
            yield from self._loader()
            return
        n_images, size = len(self.dataset), self.batch_size
        pool = ThreadPoolExecutor(1, thread_name_prefix="zeroshot-plus-decode",
                                  initializer=_idle_priority)

        def submit(start: int) -> list[tuple[int, Future]]:
            stop = min(start + size, n_images)
            return [(p, pool.submit(self.dataset.__getitem__, p)) for p in range(start, stop)]

        try:
            self._ahead = submit(0)
            for start in range(0, n_images, size):
                batch, self._ahead = self._ahead, submit(start + size)
                yield [future.result() for future in self._help(batch)]
        finally:
            self._ahead = []
            pool.shutdown(wait=True, cancel_futures=True)

    def _help(self, batch: list[tuple[int, Future]]) -> list[Future]:
        """The batch's futures, after the caller has decoded, from the end of the batch, the
        images that the thread (working from the start) has not begun."""
        futures = [future for _, future in batch]
        for i in reversed(range(len(batch))):
            if not futures[i].cancel():
                break
            futures[i] = Future()
            try:
                futures[i].set_result(self.dataset[batch[i][0]])
            except Exception as exc:  # noqa: BLE001 - raised in input order, by result()
                futures[i].set_exception(exc)
        return futures

    def settle(self) -> None:
        """Wait until the batch ahead is decoded, so that nothing decodes while the caller's
        own code runs (view makers borrow torch's global generator: ``seeded_torch_rng``)."""
        wait([future for _, future in self._ahead])

    def _loader(self) -> Iterator[list[_Decoded]]:
        dataset = self.dataset
        workers = self.num_workers if len(dataset) - len(dataset.skip) > self.batch_size else 0
        yield from torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, num_workers=workers,
            collate_fn=_keep_list, prefetch_factor=4 if workers else None,
            worker_init_fn=_lower_priority)


# ---------------------------------------------------------------------- encoding


class _Passes:
    """Gathers decoded images into forward passes, encodes them, stores and resolves them."""

    def __init__(self, backbone: Backbone, image_set: ImageSet, store: EmbeddingStore | None,
                 copied: set[str], on_error: str, report: EncodeReport,
                 encode: Callable[[list[View]], np.ndarray] | None = None):
        self.backbone, self.image_set, self.store = backbone, image_set, store
        # fresh views (B,) -> (B, D), stored; default: the backbone's forward pass here
        self.encode = encode or self._encode_here
        self.copied = copied              # keys that later images read back
        self.on_error, self.report = on_error, report
        self.reused: dict[str, np.ndarray] = {}
        self.images: list[tuple[_Decoded, list[View]]] = []
        self.n_read = self.n_fresh = 0  # images (unreadable ones too) and views to encode

    def add(self, item: _Decoded, planned: list[str] | None) -> list[EncodedImage] | None:
        """Add one image; returns the pass it completes, if any."""
        self.n_read += 1
        if item.error is not None:
            self._fail(item.position, item.error)
        else:
            views = item.views if item.views is not None else [View(k, None) for k in planned]
            self.images.append((item, views))
            self.n_fresh += sum(v.pixels is not None for v in views)
        size = self.backbone.batch_size
        return self.flush() if self.n_fresh >= size or self.n_read >= size else None

    def flush(self) -> list[EncodedImage] | None:
        images, self.images, self.n_read, self.n_fresh = self.images, [], 0, 0
        if not images:
            return None
        fresh = [view for _, views in images for view in views if view.pixels is not None]
        vectors: dict[str, np.ndarray] = {}
        if fresh:
            encoded = self.encode(fresh)
            keys = [v.key for v in fresh]
            vectors.update(zip(keys, encoded))
            self.reused.update((k, e) for k, e in zip(keys, encoded) if k in self.copied)
        wanted = dict.fromkeys(v.key for _, views in images for v in views
                               if v.pixels is None and v.key not in self.reused)
        stored = [k for k in wanted if self.store is not None and k in self.store]
        if stored:
            vectors.update(zip(stored, self.store.get(stored)))
        out = []
        for item, views in images:
            found = [vectors.get(v.key, self.reused.get(v.key)) for v in views]
            if any(f is None for f in found):
                # a copy of an image that could not be read never reaches the store
                self._fail(item.position, "same content as another image that could not be read.")
                continue
            if any(v.pixels is not None for v in views):
                self.report.n_encoded += 1
            else:
                self.report.n_cached += 1
            out.append(EncodedImage(item.position, item.size, [v.key for v in views],
                                    np.stack(found)))
        return out

    def _encode_here(self, fresh: list[View]) -> np.ndarray:
        start = time.perf_counter()
        encoded = self.backbone.encode_pixels(torch.stack([v.pixels for v in fresh]))
        self.report.encoder_seconds += time.perf_counter() - start
        if self.store is not None:
            self.store.put([v.key for v in fresh], encoded)
        return encoded

    def _fail(self, position: int, error: str) -> None:
        name = image_name(self.image_set.items[position], position)
        if self.on_error == "raise":
            raise InputError(f"cannot read image '{name}': {error}")
        log.warning("skipping %s: %s", name, error)
        self.report.failures.append(Failure(name, error))


def image_embeddings(backbone: Backbone, images: ImageSource, *,
                     cache: str | os.PathLike | None = None, on_error: str = "raise",
                     report: EncodeReport | None = None, progress: bool | None = None,
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream ``(positions (B,), embeddings (B, D))`` of the preprocessed images, in input
    order: ``Backbone.iter_image_embeddings``."""
    for encoded in encode_views(backbone, images, Preprocessed(backbone), cache=cache,
                                on_error=on_error, report=report, progress=progress,
                                desc="embedding images"):
        if encoded:
            yield (np.array([e.position for e in encoded], dtype=np.int64),
                   np.concatenate([e.embeddings for e in encoded]))
