"""The Ray engine: image embedding and caption phrase counting on a Ray cluster.

Every use of Ray is in this module, and Ray is imported only when one of its functions runs
(the ``distributed`` extra: ``pip install zeroshot_plus[distributed]``). ``image_embeddings``
with ``engine="local"`` is the single-process pipeline, unchanged.

Embedding runs the image pipeline (``encoders.pipeline``) as a Ray Data plan:

1. Scan, on CPU workers: each image file is hashed (its content key, the store's key), each
   WebDataset tar shard (img2dataset's layout: ``KEY.jpg`` beside ``KEY.txt``, the caption, in
   uncompressed ``.tar`` files) is listed and its images hashed.
2. Plan, on the driver, with the local path's own ``plan_reads``: images whose key is in the
   store, or repeats an earlier image's, are not read.
3. Decode and preprocess, as Ray tasks on CPU workers: one forward pass of images per task,
   with ``data.images``' decoder and the backbone's preprocessing. The passes are the local
   path's (``batch_size`` consecutive images, less those not read), so the embeddings are the
   same numbers: a forward pass's results depend on the images it holds.
4. Encode, in actors that hold a model replica: one per GPU when the cluster has GPUs, else a
   pool of CPU actors. Each actor writes each pass into the store as one shard, as the local
   path does, so a later run (on Ray or one machine) reads them back.
5. Resolve, on the driver, in input order, with the local path's ``_Passes``: stored and
   repeated images, unreadable ones (same reasons) and the report are as on one machine.

Faults: Ray Data restarts a killed actor and retries its tasks (its actor pools' defaults,
``max_restarts=-1``, ``max_task_retries=-1``), and re-runs a failed task. A run
that fails anyway, or is interrupted, keeps every pass written to the store, and a re-run
encodes only the rest. The store must be on a file system that every node sees.

Caption counting reads each caption file with ``frequency.read_captions`` in one Ray task,
counts phrases with ``phrases.PhraseCounter`` (FTS5's matching rules) and adds the counts.
"""

from __future__ import annotations

import logging
import os
import tarfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from .data.images import content_key, decode_image, describe_error, item_key, read_image
from .data.sources import IMAGE_EXTENSIONS, ImageSet, ImageSource, read_image_source
from .errors import InputError

if TYPE_CHECKING:
    from .encoders.backbone import Backbone
    from .encoders.pipeline import EncodeReport
    from .text.phrases import PhraseCounts
    from .text.synonyms import SynonymTable

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
_INSTALL = "pip install zeroshot_plus[distributed]"
_HASH_BATCH = 256  # image files hashed per task


def start_ray(address: str | None = None):
    """The ``ray`` module, connected: to the runtime already started in this process, to the
    cluster at ``address`` ("auto": the one this node belongs to), or to a new local runtime."""
    try:
        import ray
    except ImportError:
        raise InputError(f"the Ray engine needs Ray: {_INSTALL}.") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address or "local", include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise InputError(f"cannot connect to the Ray cluster at '{address}': "
                             f"{str(exc).splitlines()[0]}") from None
    return ray


@contextmanager
def _quiet_data(ray) -> Iterator[None]:
    """Ray Data without its own progress bars (this module draws one), nor its warning that
    a small run has fewer decoding tasks than CPUs, while a plan runs."""
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
            yield
    finally:
        context.enable_progress_bars = bars


@contextmanager
def _one_sentence(what: str) -> Iterator[None]:
    """A failure inside Ray as one sentence: the InputError a worker raised, else what
    failed, and that the work already stored is kept."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors in its own types
        cause = _input_error(exc)
        if cause is not None:
            raise InputError(str(cause)) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"the Ray run failed while {what} ({type(exc).__name__}: {first}); "
                         f"what was written to the store is kept, and the same command "
                         f"resumes from it.") from None


def _input_error(exc: BaseException | None) -> InputError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, InputError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


# ---------------------------------------------------------------------- sources


@dataclass
class ScannedImages(ImageSet):
    """Images found on the cluster: files, and members of tar shards, with their keys.

    ``items`` are names (a path, or ``SHARD.tar/MEMBER`` for a shard's image); ``keys`` their
    content keys (None: unreadable); ``members`` (file, offset, size) where the bytes are,
    size -1 for a whole file; ``captions`` a shard image's caption (``KEY.txt``), None for
    files, or None when no source is a shard.
    """

    keys: list[str | None] = field(default_factory=list)
    members: list[tuple[str, int, int]] = field(default_factory=list)
    captions: list[str | None] | None = None


def scan_images(sources: ImageSource | Sequence[str | os.PathLike], *,
                address: str | None = None) -> ScannedImages:
    """Resolve folders, manifests, image files and WebDataset ``.tar`` shards (in order) and
    hash their images on the cluster."""
    parts: list[ImageSet | Path] = []
    for source in _source_list(sources):
        if isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(".tar"):
            parts.append(_check_shard(Path(source)))
        else:
            image_set = read_image_source(source)
            if not all(isinstance(i, (str, os.PathLike)) for i in image_set.items):
                raise InputError("the Ray engine reads image files and tar shards, not "
                                 "in-memory PIL images; save them as files first.")
            parts.append(image_set)
    sets = [p for p in parts if isinstance(p, ImageSet)]
    labelled = [s.labels is not None for s in sets]
    if any(labelled) and not (all(labelled) and len(sets) == len(parts)):
        raise InputError("some IMAGES sources carry labels and some do not; give only labelled "
                         "sources or only unlabelled ones.")
    ray = start_ray(address)
    files = [os.fspath(i) for s in sets for i in s.items]
    shards = [str(p) for p in parts if isinstance(p, Path)]
    with _quiet_data(ray), _one_sentence("scanning the images"):
        hashed = (ray.data.from_items([{"i": i, "path": p} for i, p in enumerate(files)])
                  .map_batches(_hash_files, batch_size=_HASH_BATCH).take_all() if files else [])
        listed = (ray.data.from_items([{"shard": j, "path": p} for j, p in enumerate(shards)],
                                      override_num_blocks=len(shards))
                  .flat_map(_list_shard).take_all() if shards else [])
    keys = iter(r["key"] or None for r in sorted(hashed, key=lambda r: r["i"]))
    by_shard: dict[int, list[dict]] = {}
    for row in sorted(listed, key=lambda r: (r["shard"], r["index"])):
        by_shard.setdefault(row["shard"], []).append(row)
    out = ScannedImages([], [s.labels[i] for s in sets for i in range(len(s))]
                        if sets and all(labelled) else None,
                        source=", ".join(s.source if isinstance(s, ImageSet) else str(s)
                                         for s in parts),
                        captions=[] if shards else None)
    shard_number = 0
    for part in parts:
        if isinstance(part, ImageSet):
            for item in part.items:
                out.items.append(os.fspath(item))
                out.keys.append(next(keys))
                out.members.append((os.fspath(item), 0, -1))
                if out.captions is not None:
                    out.captions.append(None)
            continue
        for row in by_shard.get(shard_number, []):
            out.items.append(f"{part}/{row['member']}")
            out.keys.append(row["key"])
            out.members.append((str(part), int(row["offset"]), int(row["size"])))
            out.captions.append(row["caption"])
        shard_number += 1
    if not out.items:
        raise InputError(f"no images found in {out.source}.")
    return out


def _source_list(sources) -> list:
    """One source, or a list of sources (folders, manifests, files, shards)."""
    if isinstance(sources, (str, os.PathLike, ImageSet)):
        return [sources]
    return list(sources)


def _check_shard(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"tar shard '{path}' does not exist.")
    try:
        with tarfile.open(path, "r:"):
            pass
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"'{path}' is not an uncompressed tar shard ({exc}).") from None
    return path


def _hash_files(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray task: the content key of each file ('' when it cannot be read)."""
    return {"i": batch["i"], "key": np.array([item_key(p) or "" for p in batch["path"]],
                                             dtype=object)}


def _list_shard(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray task: the images of one tar shard, in order, with their caption (``KEY.txt``),
    where their bytes are, and their content key."""
    samples: dict[str, dict[str, Any]] = {}
    suffixes = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    with tarfile.open(row["path"], "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, _, suffix = base.partition(".")
            sample = samples.setdefault(f"{folder}/{stem}", {"caption": None})
            if suffix.lower() in suffixes and "member" not in sample:
                data = tar.extractfile(member).read()
                sample.update(member=member.name, offset=member.offset_data, size=member.size,
                              key=content_key(data))
            elif suffix.lower() == "txt":
                sample["caption"] = tar.extractfile(member).read().decode("utf-8", "replace")
    return [{"shard": row["shard"], "index": i, **s}
            for i, s in enumerate(s for s in samples.values() if "member" in s)]


# ---------------------------------------------------------------------- embedding


def image_embeddings(backbone: Backbone, images, *, engine: str = "local",
                     address: str | None = None, cache: str | os.PathLike | None = None,
                     on_error: str = "raise", report: EncodeReport | None = None,
                     progress: bool | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream ``(positions (B,), embeddings (B, D))`` of the images, in input order, on one
    machine (``Backbone.iter_image_embeddings``) or on Ray (``ray_image_embeddings``): the
    entry point for every command that embeds images with a choice of engine."""
    if engine not in ENGINES:
        raise InputError(f"unknown engine '{engine}'; use 'local' or 'ray'.")
    if engine == "local":
        if isinstance(images, ScannedImages) or any(
                str(s).lower().endswith(".tar") for s in _source_list(images)
                if isinstance(s, (str, os.PathLike))):
            raise InputError("tar shards are read by the Ray engine only (--engine ray); "
                             "extract them, or use the Ray engine.")
        return backbone.iter_image_embeddings(images, cache=cache, on_error=on_error,
                                              report=report, progress=progress)
    return ray_image_embeddings(backbone, images, address=address, cache=cache,
                                on_error=on_error, report=report, progress=progress)


def ray_image_embeddings(backbone: Backbone, images, *, address: str | None = None,
                         cache: str | os.PathLike | None = None, on_error: str = "raise",
                         report: EncodeReport | None = None, progress: bool | None = None,
                         ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``image_embeddings`` on Ray (see the module docstring): the same embeddings, store
    entries, report and failures as on one machine.

    images : a ``ScannedImages``, or sources for ``scan_images``.
    """
    import torch

    from .data.store import open_store
    from .encoders.pipeline import (EncodeReport, Preprocessed, View, _Decoded, _Passes,
                                    plan_reads)

    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got '{on_error}'.")
    ray = start_ray(address)
    show = backbone.progress if progress is None else progress
    scanned = (images if isinstance(images, ScannedImages)
               else scan_images(images, address=address))
    report = report if report is not None else EncodeReport()
    views = Preprocessed(backbone)
    store = open_store(cache, backbone.fingerprint, views.kind) if cache is not None else None
    # as on one machine, only a store makes an image's key known before it is decoded
    contents = scanned.keys if store is not None else [None] * len(scanned)
    planned = [views.keys(p, key) for p, key in enumerate(contents)]
    known, skip, copied, needs_model = plan_reads(backbone, store, planned)
    n_images, size = len(scanned), backbone.batch_size
    passes = [range(s, min(s + size, n_images)) for s in range(0, n_images, size)]
    todo = [c for c, positions in enumerate(passes) if any(p not in skip for p in positions)]
    resolver = _Passes(backbone, scanned, store, copied, on_error, report,
                       encode=lambda fresh: torch.stack([v.pixels for v in fresh]).numpy())
    with _quiet_data(ray), _one_sentence("embedding the images"), \
            tqdm(total=n_images, desc="embedding images (ray)", unit="img",
                 disable=not show or not needs_model) as bar:
        results = _run_passes(ray, backbone, scanned, passes, todo, skip, cache) if todo else None
        arrived: dict[int, dict[str, Any]] = {}
        wanted = set(todo)
        for c, positions in enumerate(passes):
            row = None
            if c in wanted:
                while c not in arrived:
                    done = next(results)
                    arrived[int(done["chunk"])] = done
                row = arrived.pop(c)
                report.encoder_seconds += float(row["seconds"])
            for item in _decoded(positions, skip, row, View, _Decoded, torch):
                encoded = resolver.add(item, skip.get(item.position))
                if encoded:
                    yield _stacked(encoded)
            bar.update(len(positions))
        encoded = resolver.flush()
        if encoded:
            yield _stacked(encoded)


def _stacked(encoded) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([e.position for e in encoded], dtype=np.int64),
            np.concatenate([e.embeddings for e in encoded]))


def _decoded(positions: range, skip: dict, row: dict | None, View, Decoded, torch) -> list:
    """The ``_Decoded`` of one pass's images: not read (in ``skip``), unreadable (with the
    worker's reason), or encoded (the embedding stands in for the pixels)."""
    fresh, failed = {}, {}
    if row is not None:
        for p, key, wh, vector in zip(row["positions"], row["keys"], row["sizes"],
                                      row["embeddings"]):
            fresh[int(p)] = (key, (int(wh[0]), int(wh[1])), vector)
        failed = dict(zip((int(p) for p in row["failed"]), row["reasons"]))
    out = []
    for p in positions:
        if p in skip:
            out.append(Decoded(p))
        elif p in failed:
            out.append(Decoded(p, error=failed[p]))
        else:
            key, wh, vector = fresh[p]
            out.append(Decoded(p, [View(key, torch.from_numpy(np.array(vector)))], wh))
    return out


def _run_passes(ray, backbone: Backbone, scanned: ScannedImages, passes: list[range],
                todo: list[int], skip: dict, cache) -> Iterator[dict[str, Any]]:
    """The Ray Data plan for the passes ``todo``: decoding tasks, then encoding actors; its
    rows (one per pass, in any order) as they finish."""
    rows = []
    for c in todo:
        fresh = [p for p in passes[c] if p not in skip]
        rows.append({"chunk": c, "positions": fresh,
                     "keys": [scanned.keys[p] or f"image {p}" for p in fresh],
                     "members": [list(map(str, scanned.members[p])) for p in fresh]})
    draft = backbone.image_size if backbone.jpeg_draft else None
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if gpus:
        actors, threads, placement = gpus, None, {"num_gpus": 1, "num_cpus": 1}
    else:
        # A forward pass costs some twenty times its images' decoding on a CPU: actors of
        # up to 8 threads fill each node, each reserving one CPU less than it uses, which
        # the decoding tasks take (as the local path decodes between forward passes).
        nodes = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]]
        threads = max(1, min(8, min((n for n in nodes if n), default=1)))
        actors = max(1, sum(n // threads for n in nodes))
        placement = {"num_cpus": max(1, threads - 1)}
    dataset = (ray.data.from_items(rows, override_num_blocks=len(rows))
               # at most one decoding task per CPU: a cap that differs from the number of
               # actors also keeps decoding a stage of its own, not fused into the actors
               .map(_decode_pass, fn_kwargs={"preprocess": backbone.preprocess,
                                             "draft_size": draft},
                    compute=ray.data.TaskPoolStrategy(size=cpus))
               .map(_Encoder, fn_constructor_kwargs={"backbone": backbone, "cache": cache,
                                                     "gpu": bool(gpus), "threads": threads},
                    compute=ray.data.ActorPoolStrategy(size=actors), **placement))
    return iter(dataset.iter_rows())


def _decode_pass(row: dict[str, Any], *, preprocess, draft_size: int | None) -> dict[str, Any]:
    """Ray task: decode and preprocess one pass's images; unreadable ones with their reason."""
    pixels, kept, keys, sizes, failed, reasons = [], [], [], [], [], []
    for position, key, (file, offset, size) in zip(row["positions"], row["keys"],
                                                    row["members"]):
        try:
            if int(size) < 0:
                image = read_image(file, draft_size)
            else:
                with open(file, "rb") as handle:
                    handle.seek(int(offset))
                    image = decode_image(handle.read(int(size)), draft_size)
            tensor = preprocess(image)
        except Exception as exc:  # noqa: BLE001 - any failure is reported per image
            failed.append(int(position))
            reasons.append(describe_error(exc))
            continue
        pixels.append(tensor.numpy())
        kept.append(int(position))
        keys.append(str(key))
        sizes.append(image.size)
    return {"chunk": row["chunk"], "positions": np.array(kept, dtype=np.int64),
            "keys": np.array(keys, dtype=object),
            "sizes": np.array(sizes, dtype=np.int64).reshape(-1, 2),
            "pixels": np.stack(pixels) if pixels else np.zeros((0, 1), np.float32),
            "failed": np.array(failed, dtype=np.int64), "reasons": np.array(reasons, dtype=object)}


class _Encoder:
    """Ray actor: a model replica that encodes passes and writes each into the store."""

    def __init__(self, backbone: Backbone, cache, gpu: bool, threads: int | None):
        import torch

        from .data.store import open_store

        if threads:
            torch.set_num_threads(threads)
        backbone.device = torch.device("cuda" if gpu else "cpu")
        backbone.image_tower  # loaded before the first pass, out of its timing
        self.backbone = backbone
        self.store = (open_store(cache, backbone.fingerprint, "images", scan=False)
                      if cache is not None else None)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        import torch

        pixels = row.pop("pixels")
        start = time.perf_counter()
        embeddings = (self.backbone.encode_pixels(torch.from_numpy(np.ascontiguousarray(pixels)))
                      if len(row["positions"]) else np.zeros((0, 1), np.float32))
        seconds = time.perf_counter() - start
        if self.store is not None and len(row["positions"]):
            self.store.put([str(k) for k in row["keys"]], embeddings)
        return {**row, "embeddings": embeddings, "seconds": seconds}


def pool_embeddings(backbone: Backbone, pool, *, engine: str = "local",
                    address: str | None = None, cache: str | os.PathLike | None = None,
                    report: EncodeReport | None = None, progress: bool | None = None,
                    ) -> tuple[np.ndarray, list[str]]:
    """REAL-Linear's retrieval pool, embedded: (image embeddings (N, D), captions (N,)) of
    its readable images, for ``RealLinearClassifier.fit(X, captions=...)``.

    pool : a pairs file (``image,caption`` rows: ``data.tables.read_pairs``); with
        ``engine="ray"`` also img2dataset tar shards (a list of them), whose images are
        paired with their ``KEY.txt`` caption (an image without one is left out).
    Unreadable images are left out, and listed in ``report``.
    """
    from .data.tables import read_pairs

    shards = [s for s in _source_list(pool) if str(s).lower().endswith(".tar")]
    if shards and engine != "ray":
        raise InputError("tar shards are read by the Ray engine only (engine='ray').")
    if shards:
        images = scan_images(shards, address=address)
        keep = [i for i, caption in enumerate(images.captions) if caption is not None]
        images = ScannedImages([images.items[i] for i in keep], None, images.source,
                               [images.keys[i] for i in keep],
                               [images.members[i] for i in keep],
                               [images.captions[i] for i in keep])
        captions = images.captions
    else:
        paths, captions = read_pairs(pool)
        images = paths
    positions, parts = [], []
    for batch_positions, vectors in image_embeddings(
            backbone, images, engine=engine, address=address, cache=cache, on_error="skip",
            report=report, progress=progress):
        positions.append(batch_positions)
        parts.append(vectors)
    if not parts:
        raise InputError("no image of the pool could be read.")
    kept = np.concatenate(positions)
    return np.concatenate(parts), [captions[i] for i in kept]


# ---------------------------------------------------------------------- caption counting


def caption_counts(files: Sequence[str | os.PathLike], table: SynonymTable, *,
                   column: str, require: str | None = None, address: str | None = None,
                   progress: bool = True) -> PhraseCounts:
    """Count, on Ray, the captions of ``files`` that mention each synonym of ``table`` and
    each class's synonyms, as ``frequency.mine_frequencies`` asks an FTS5 index: one task per
    caption file (.txt, .csv/.tsv, .parquet, .jsonl; ``frequency.read_captions``)."""
    from .text.frequency import read_captions
    from .text.phrases import PhraseCounter, PhraseCounts

    if not files:
        raise InputError("no caption files given.")
    groups = [list(dict.fromkeys([name, *alternates]))
              for name, alternates in zip(table.classes, table.alternates)]
    counter = PhraseCounter(groups, require)
    for file in files:  # a missing file or column is one sentence before any task starts
        next(iter(read_captions(file, column)), None)
    ray = start_ray(address)
    phrase_counts = np.zeros(len(counter.phrases_), dtype=np.int64)
    group_counts = np.zeros(len(groups), dtype=np.int64)
    n_captions = 0
    with _quiet_data(ray), _one_sentence("counting the captions"), \
            tqdm(total=len(files), desc="counting synonyms (ray)", unit="file",
                 disable=not progress) as bar:
        dataset = (ray.data.from_items([{"path": str(f)} for f in files],
                                       override_num_blocks=len(files))
                   .map(_count_file, fn_kwargs={"counter": counter, "column": column}))
        for row in dataset.iter_rows():
            phrase_counts += row["phrases"]
            group_counts += row["groups"]
            n_captions += int(row["captions"])
            bar.update(1)
    if n_captions == 0:
        raise InputError(f"the caption files ({', '.join(str(f) for f in files[:3])}"
                         f"{' ...' if len(files) > 3 else ''}) hold no captions.")
    return PhraseCounts(counter, phrase_counts, group_counts, n_captions)


def _count_file(row: dict[str, Any], *, counter, column: str) -> dict[str, Any]:
    """Ray task: the phrase and group counts of one caption file, and its number of captions."""
    from .text.frequency import read_captions

    n = 0

    def captions():
        nonlocal n
        for caption in read_captions(row["path"], column):
            n += 1
            yield caption

    phrases, groups = counter.count(captions())
    return {"phrases": phrases, "groups": groups, "captions": n}
