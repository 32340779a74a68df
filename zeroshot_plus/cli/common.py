"""What the commands share: output files, image sources, the backbone, the end-of-run summary.

Only light modules are imported here; torch and the models load when a command needs them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator

import numpy as np

from ..choices import saved_runtime
from ..data.files import atomic_output
from ..data.names import path_text
from ..data.sources import ImageSet, read_image_source
from ..errors import InputError

if TYPE_CHECKING:
    from ..encoders.backbone import Backbone, EncodeReport

log = logging.getLogger("zeroshot_plus")


def check_output(option: str, path: str | None, *suffixes: str) -> None:
    """Refuse, before any work, an output path with another suffix, one that is a folder, or
    one whose folder is missing, a file or not writable."""
    if path is None:
        return
    if not path.lower().endswith(suffixes):
        raise InputError(f"{option} '{path}' must end in {' or '.join(suffixes)}.")
    target = Path(path)
    folder = target.resolve().parent
    if target.is_dir():
        raise InputError(f"{option} '{path}' is a folder; name a file in it.")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} '{path}': '{target.parent}' is a file, not a folder.")
    if not folder.is_dir():
        raise InputError(f"output folder '{target.parent}' does not exist.")
    if not os.access(folder, os.W_OK):
        raise InputError(f"output folder '{target.parent}' is not writable (permission denied "
                         f"or a read-only file system).")


@contextmanager
def output(path: str | None, binary: bool = False) -> Iterator[IO]:
    """A stream to ``path`` that appears only once complete, or stdout when path is None."""
    if path is None:
        yield sys.stdout
        return
    with atomic_output(path, binary) as handle:
        yield handle


def join_ray(address: str | None) -> None:
    """Start or join the Ray runtime of ``--engine ray``; Ray's own log lines only with -v."""
    from ..distributed import start_ray

    start_ray(address)
    import ray.data  # noqa: F401 - configures its loggers, which are then turned down

    level = logging.INFO if log.isEnabledFor(logging.INFO) else logging.ERROR
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(level)


def read_images(sources: list[str], engine: str = "local", address: str | None = None
                ) -> ImageSet:
    """The IMAGES arguments as one ImageSet; labelled only when every source is. With
    ``engine="ray"``, scanned on the Ray cluster (which also reads WebDataset tar shards)."""
    if engine == "ray":
        from ..distributed import scan_images

        join_ray(address)
        return scan_images(sources, address=address)
    shards = [s for s in sources if s.lower().endswith(".tar")]
    if shards:
        raise InputError(f"'{shards[0]}' is a tar shard: shards are read by the Ray engine "
                         f"only (embed --engine ray); extract them first.")
    sets = [read_image_source(s) for s in sources]
    if len(sets) == 1:
        return sets[0]
    labelled = [s.labels is not None for s in sets]
    if any(labelled) and not all(labelled):
        raise InputError("some IMAGES sources carry labels and some do not; give only labelled "
                         "sources or only unlabelled ones.")
    return ImageSet([i for s in sets for i in s.items],
                    [lab for s in sets for lab in s.labels] if all(labelled) else None,
                    source=", ".join(s.source for s in sets))


def load_backbone(args: argparse.Namespace) -> Backbone:
    """The run's Backbone; with --classifier, the file's model unless the options name one
    (a checkpoint's path may differ between machines; a wrong model fails the fingerprint
    check when the classifier is loaded)."""
    from ..encoders.backbone import Backbone
    from ..methods.base import saved_backbone

    saved = saved_backbone(args.classifier) if getattr(args, "classifier", None) else None
    saved = saved or {"model": "ViT-B-32", "pretrained": "openai", "checkpoint": None,
                      "precision": None}
    return Backbone(args.model or saved["model"], args.pretrained or saved["pretrained"],
                    checkpoint=args.checkpoint or saved["checkpoint"], device=args.device,
                    precision=args.precision or saved["precision"], batch_size=args.batch_size,
                    num_workers=args.workers, progress=not args.no_progress,
                    jpeg_draft=args.jpeg_draft or saved.get("jpeg_draft", False),
                    runtime=args.runtime or saved_runtime(saved),
                    compiled_dir=Path(args.cache) / "compiled" if args.cache else None)


def stream(args: argparse.Namespace, backbone: Backbone, images: ImageSet,
           report: EncodeReport) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, embeddings) batches of the readable images, in input order; on Ray with
    ``--engine ray`` (``images`` then from ``read_images(..., engine="ray")``)."""
    if getattr(args, "engine", "local") == "ray":
        from ..distributed import ray_image_embeddings

        yield from ray_image_embeddings(backbone, images, address=args.ray_address,
                                        cache=args.cache, report=report,
                                        on_error="raise" if args.strict else "skip")
        return
    yield from backbone.iter_image_embeddings(images, cache=args.cache, report=report,
                                              on_error="raise" if args.strict else "skip")


def encode(args: argparse.Namespace, backbone: Backbone, images: ImageSet,
           report: EncodeReport) -> tuple[np.ndarray, np.ndarray]:
    """(positions (N,), embeddings (N, D)) of the readable images, in input order."""
    positions, parts = [], []
    for batch_positions, vectors in stream(args, backbone, images, report):
        positions.append(batch_positions)
        parts.append(vectors)
    return (np.concatenate(positions) if positions else np.empty(0, np.int64),
            np.concatenate(parts) if parts else np.empty((0, 0), np.float32))


def finish(report: EncodeReport, total: int) -> int:
    """Log what was done, list the skipped images; 2 when no image could be read, else 0."""
    forward = (f" ({report.encoder_seconds:.2f} s in the image encoder's forward passes)"
               if report.encoder_seconds else "")
    log.info("%d images: %d encoded%s, %d read from the store, %d skipped",
             total, report.n_encoded, forward, report.n_cached, len(report.failures))
    if report.failures:
        print(f"zeroshot-plus: skipped {len(report.failures)} unreadable image(s):", file=sys.stderr)
        for failure in report.failures:
            print(f"  {path_text(failure.name)}: {failure.reason}", file=sys.stderr)
    if total and len(report.failures) == total:
        print("zeroshot-plus: error: no image could be read.", file=sys.stderr)
        return 2
    return 0


@contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """Library warnings as one 'zeroshot-plus: warning:' line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        print(f"zeroshot-plus: warning: {warning.message}", file=sys.stderr)
