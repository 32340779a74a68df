"""Open-vocabulary detection for ComCLIP's grounding: an OWL-ViT / OWLv2 detector, queried
with an entity's words, through Hugging Face ``transformers`` (the ``[detect]`` extra).

``Detector(model)`` loads like the backbone: ``model`` is a Hugging Face hub id (downloaded
once on a machine with network, then read from the hub cache) or a local folder written by
``save_pretrained`` (the way offline); when it is neither there nor reachable, loading fails
with one sentence. Nothing is loaded until a detection is asked for, and not at all when every
detection asked for is in the store.

``detect`` returns, per image and query, up to ``max_boxes`` boxes with their scores. Each
query is scored on its own: a box's score for a query is sigmoid(its logit for that query),
whatever other queries share the forward pass, so a query's boxes do not depend on the
caption it came from. Boxes of one query that overlap a better one by more than ``NMS_IOU``
are dropped (non-maximum suppression), so several boxes are several objects, not one object
found by several patches. The score threshold is applied when the boxes are read, so it can
change without detecting again.

Boxes are ``[x0, y0, x1, y1]`` floats in pixels of the original image (OWLv2 pads the image to
a square at the bottom and right before resizing, so its unit boxes are scaled by the longer
side; OWL-ViT resizes without padding, so by width and height), clipped to the image; boxes
left empty (OWLv2's in the padding) are dropped before the best are chosen. ComCLIP turns
them into integer end-exclusive boxes (see ``zeroshot_plus.methods.comclip``).

Store: with ``cache``, detections are kept under ``<cache>/<detector fingerprint>/detections``
as JSON shards (one per call that detected anything, written atomically), keyed by image
content, query and ``max_boxes``; a damaged shard is set aside and its detections run again;
a store that cannot be written never fails a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.files import atomic_output
from ..data.images import open_image
from ..data.sources import ImageInput
from ..data.store import set_aside
from ..errors import InputError, ModelLoadError
from .models import _HF_HOST, _reachable

log = logging.getLogger(__name__)

DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
SUPPORTED = ("owlv2", "owlvit")   # transformers' model_type of the OWL-ViT family
NMS_IOU = 0.3                     # transformers' default for OWL's image-guided detection
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_NO_TRANSFORMERS = ("detector grounding needs Hugging Face transformers; install it with "
                    "pip install 'zeroshot_plus[detect]'.")
Detection = list[tuple[list[float], float]]   # [([x0, y0, x1, y1], score), ...], best first


def require_transformers() -> None:
    """InputError (one sentence naming the extra) when transformers cannot be imported."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise InputError(_NO_TRANSFORMERS) from None


class Detector:
    """An OWL-ViT / OWLv2 zero-shot detector, loaded on first use.

    Parameters
    ----------
    model : hub id (e.g. "google/owlv2-base-patch16-ensemble") or a local folder holding the
        model and its processor (``save_pretrained``).
    device : "cpu", "cuda", ... (default: cuda when available).
    progress : a progress bar over the images being detected.
    """

    def __init__(self, model: str | os.PathLike = DEFAULT_DETECTOR, *,
                 device: str | torch.device | None = None, progress: bool = True):
        self.name = os.fspath(model)
        folder = Path(self.name).expanduser()
        self.folder = folder if folder.is_dir() else None
        if self.folder is None and not _HUB_ID.match(self.name):
            raise ModelLoadError(f"detector folder '{self.name}' does not exist.")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.progress = progress
        self._model = None
        self._processor = None
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"Detector({self.name!r})"

    # ------------------------------------------------------------------ loading

    def _files(self) -> Path | None:
        """The folder of the weights: the local folder, or the hub cache's snapshot (None
        when the hub id is not cached)."""
        if self.folder is not None:
            return self.folder
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(self.name, "config.json")
        return Path(config).parent if isinstance(config, str) else None

    def load(self) -> None:
        """Load the model and its processor (once); ModelLoadError in one sentence."""
        if self._model is not None:
            return
        require_transformers()
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        from transformers.utils import logging as hf_logging

        files = self._files()
        if files is None and not _reachable(_HF_HOST):
            raise ModelLoadError(
                f"cannot load detector '{self.name}': it is neither a folder here nor in the "
                f"local Hugging Face cache, and {_HF_HOST} is unreachable; on a machine with "
                f"network, save it with save_pretrained (model and processor), copy that "
                f"folder here and pass it with --detector PATH (Python: detector=PATH).")
        source = str(files) if files is not None else self.name
        bars = hf_logging.is_progress_bar_enabled()
        if not self.progress:
            hf_logging.disable_progress_bar()
        try:
            model = AutoModelForZeroShotObjectDetection.from_pretrained(
                source, local_files_only=files is not None)
            processor = AutoProcessor.from_pretrained(source, local_files_only=files is not None)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelLoadError(f"could not load detector '{self.name}' (a folder or hub id "
                                 f"of an OWL-ViT or OWLv2 model with its processor): "
                                 f"{detail}") from None
        finally:
            if bars and not self.progress:
                hf_logging.enable_progress_bar()
        if model.config.model_type not in SUPPORTED:
            raise ModelLoadError(f"detector '{self.name}' is a '{model.config.model_type}' "
                                 f"model; grounding supports OWL-ViT and OWLv2 ({', '.join(SUPPORTED)}).")
        self._model = model.to(self.device).eval().requires_grad_(False)
        self._processor = processor

    @property
    def fingerprint(self) -> str:
        """Hex id of (weights and processor files, transformers version, post-processing);
        the weights are downloaded first when a hub id is not cached yet."""
        if self._fingerprint is None:
            files = self._files()
            if files is None:
                self.load()
                files = self._files()
            digest = hashlib.blake2b(digest_size=10)
            try:
                digest.update(f"{version('transformers')}|{NMS_IOU}".encode())
            except PackageNotFoundError:
                raise InputError(_NO_TRANSFORMERS) from None
            for path in sorted(p for p in Path(files).iterdir() if p.is_file()):
                digest.update(path.name.encode())
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 22), b""):
                        digest.update(block)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    # ------------------------------------------------------------------ detection

    def detect(self, images: Sequence[ImageInput], queries: Sequence[Sequence[str]],
               contents: Sequence[str], *, max_boxes: int,
               cache: str | os.PathLike | None = None) -> list[dict[str, Detection]]:
        """Per image, {query: up to ``max_boxes`` (box, score), best first} for its queries.

        images : paths or PIL images; queries : the texts to find in each image;
        contents : each image's content key (``data.images.content_keys``), for the store.
        """
        store = _DetectionStore(cache, self.fingerprint) if cache is not None else None
        out: list[dict[str, Detection]] = []
        todo = []
        for position, (wanted, content) in enumerate(zip(queries, contents)):
            found = {}
            for query in dict.fromkeys(wanted):
                stored = store.get(_key(content, query, max_boxes)) if store else None
                if stored is not None:
                    found[query] = stored
            out.append(found)
            missing = [q for q in dict.fromkeys(wanted) if q not in found]
            if missing:
                todo.append((position, missing))
        if not todo:
            return out
        self.load()
        written: dict[str, Detection] = {}
        for position, missing in tqdm(todo, desc="detecting", unit="image",
                                      disable=not self.progress):
            found = self._run(open_image(images[position]), missing, max_boxes)
            out[position].update(found)
            written.update({_key(contents[position], q, max_boxes): found[q] for q in missing})
        if store is not None:
            store.put(written)
        return out

    def _run(self, picture, queries: list[str], max_boxes: int) -> dict[str, Detection]:
        """One forward pass: each query's best boxes after non-maximum suppression."""
        from torchvision.ops import nms

        inputs = self._processor(text=[list(queries)], images=picture, return_tensors="pt")
        with torch.inference_mode():
            outputs = self._model(**{k: v.to(self.device) for k, v in inputs.items()})
        scores = torch.sigmoid(outputs.logits[0].float()).cpu()          # (patches, queries)
        cx, cy, w, h = outputs.pred_boxes[0].float().cpu().unbind(-1)    # unit, (patches,)
        width, height = picture.size
        if self._model.config.model_type == "owlv2":   # padded to a square, then resized
            scale = torch.tensor([max(width, height)] * 4, dtype=torch.float32)
        else:
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * scale
        boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([width, height] * 2))
        inside = torch.nonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[:, 0]
        boxes, scores = boxes[inside], scores[inside]
        found = {}
        for q, query in enumerate(queries):
            keep = nms(boxes, scores[:, q], NMS_IOU)[:max_boxes]
            found[query] = [([round(float(v), 3) for v in boxes[k]], float(scores[k, q]))
                            for k in keep.tolist()]
        return found


def _key(content: str, query: str, max_boxes: int) -> str:
    return hashlib.blake2b(f"{content}|{query}|{max_boxes}".encode(), digest_size=16).hexdigest()


def _valid(entry: object) -> bool:
    """Whether a stored entry is a list of [x0, y0, x1, y1, score] rows of finite numbers."""
    return isinstance(entry, list) and all(
        isinstance(row, list) and len(row) == 5
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                for v in row) for row in entry)


class _DetectionStore:
    """JSON shards {key: [[x0, y0, x1, y1, score], ...]} under one detector's folder."""

    def __init__(self, root: str | os.PathLike, fingerprint: str):
        self.directory = Path(root) / fingerprint / "detections"
        self.entries: dict[str, Detection] = {}
        self.writable = True
        for shard in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(shard.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or not all(map(_valid, data.values())):
                    raise ValueError("not a map of detections")
            except (OSError, ValueError) as exc:
                set_aside(shard, str(exc), "detection cache")
                continue
            for key, rows in data.items():
                self.entries[key] = [(row[:4], float(row[4])) for row in rows]

    def get(self, key: str) -> Detection | None:
        return self.entries.get(key)

    def put(self, found: dict[str, Detection]) -> None:
        """Write one shard; a failed write is logged once and turns writing off."""
        if not found or not self.writable:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_output(self.directory / f"{uuid.uuid4().hex}.json") as handle:
                json.dump({k: [[*box, score] for box, score in v] for k, v in found.items()},
                          handle)
        except (OSError, InputError) as exc:
            self.writable = False
            log.warning("detection cache: %s; the run goes on without caching detections",
                        str(exc).rstrip("."))
            return
        self.entries.update(found)
