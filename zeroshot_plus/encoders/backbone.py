"""Backbone: a frozen open_clip model that turns images and texts into embeddings.

This is the one place that knows how models are built. The model is built on first use, so
that a run whose embeddings are all in the store never imports open_clip or loads weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..choices import PRECISIONS
from ..errors import InputError, ModelLoadError
from ..data.images import DecodedItem, content_keys, decoded_batches
from ..data.sources import Failure, ImageInput, ImageSet, image_name, read_image_source
from ..data.store import EmbeddingStore

log = logging.getLogger(__name__)

_RANDOM_SEED = 0
_HF_HOST = "huggingface.co"


@dataclass
class EncodeReport:
    """What an image-encoding run did: how many images came from the store, how many were
    encoded (and the seconds their forward passes took), and which could not be read."""

    n_cached: int = 0
    n_encoded: int = 0
    encoder_seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)


class Backbone:
    """A frozen open_clip model.

    Parameters
    ----------
    model : open_clip model name, e.g. "ViT-B-32" (``open_clip.list_models()``).
    pretrained : an open_clip pretrained tag (``open_clip.list_pretrained_tags_by_model``),
        or "none" for random weights (smoke tests and speed measurements only).
    checkpoint : path to a local weights file (.pt, .bin, .safetensors); overrides
        ``pretrained``. Use this on machines without network.
    device : "cpu", "cuda", "cuda:1", ...; default: CUDA when available, else CPU.
    precision : "fp32", "fp16" or "bf16" (autocast); default: fp32 on CPU, fp16 on CUDA.
    batch_size : images or texts per forward pass.
    num_workers : image-decoding processes that run ahead of the encoder; 0 decodes each batch
        in this process with one thread per core. Default: 0 on CPU, where the encoder already
        uses every core, 4 on CUDA.
    progress : show progress bars on stderr.
    download_dir : where open_clip keeps downloaded weights (its default when None).
    """

    def __init__(self, model: str = "ViT-B-32", pretrained: str = "openai", *,
                 checkpoint: str | os.PathLike | None = None, device: str | None = None,
                 precision: str | None = None, batch_size: int = 64,
                 num_workers: int | None = None, progress: bool = True,
                 download_dir: str | None = None):
        self.model_name = str(model)
        # A path to an open_clip model-config JSON registers that architecture under its stem.
        self._config_file = Path(model) if self.model_name.endswith(".json") else None
        if self._config_file is not None and not self._config_file.is_file():
            raise ModelLoadError(f"model config file '{model}' does not exist.")
        self.pretrained = "none" if pretrained is None else str(pretrained)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise ModelLoadError(f"checkpoint file '{self.checkpoint}' does not exist.")
        try:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError:
            raise InputError(f"unknown device '{device}'; use 'cpu', 'cuda' or 'cuda:N'.") from None
        if self.device.type == "cuda" and (self.device.index or 0) >= torch.cuda.device_count():
            found = torch.cuda.device_count()
            choices = "'cpu'" + (f" or 'cuda:0' to 'cuda:{found - 1}'" if found else "")
            raise InputError(f"device '{device}' is not available: torch sees {found} CUDA "
                             f"GPU(s) here; use {choices}.")
        self.precision = precision or ("fp32" if self.device.type == "cpu" else "fp16")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}.")
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}.")
        self.batch_size = batch_size
        if num_workers is not None and num_workers < 0:
            raise InputError(f"the number of decoding workers must be 0 or more, got {num_workers}.")
        self.num_workers = (num_workers if num_workers is not None
                            else (0 if self.device.type == "cpu" else 4))
        self.progress = progress
        self.download_dir = download_dir
        self._model = None
        self._preprocess = None
        self._tokenizer = None
        self._open_clip_name: str | None = None
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        weights = f"checkpoint='{self.checkpoint}'" if self.checkpoint else f"pretrained='{self.pretrained}'"
        return f"Backbone('{self.model_name}', {weights}, device='{self.device}', precision='{self.precision}')"

    def __deepcopy__(self, memo):
        # A frozen model is shared, never copied: scikit-learn's clone() deep-copies parameters.
        return self

    # ------------------------------------------------------------------ identity

    @property
    def fingerprint(self) -> str:
        """Stable id of (model, weights, preprocessing, precision), computed without loading."""
        if self._fingerprint is None:
            identity = {"model": self.model_name, "precision": self.precision,
                        "open_clip": version("open_clip_torch")}
            if self._config_file is not None:
                identity["config"] = _file_digest(self._config_file)
            if self.checkpoint is not None:
                identity["checkpoint"] = _file_digest(self.checkpoint)
            elif self.pretrained == "none":
                identity.update(weights="random", seed=_RANDOM_SEED, torch=torch.__version__)
            else:
                identity["pretrained"] = self.pretrained
            blob = json.dumps(identity, sort_keys=True).encode()
            self._fingerprint = hashlib.blake2b(blob, digest_size=10).hexdigest()
        return self._fingerprint

    def describe(self) -> dict:
        """What a saved predictor records about its backbone."""
        return {"model": self.model_name, "pretrained": self.pretrained,
                "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "precision": self.precision, "fingerprint": self.fingerprint}

    # ------------------------------------------------------------------ loading

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._load()
        return self._model

    @property
    def preprocess(self):
        """open_clip's evaluation transform: PIL image -> (3, H, W) tensor."""
        if self._preprocess is None:
            self._load()
        return self._preprocess

    @property
    def normalize(self):
        """The Normalize step of the preprocessing (the weights' mean and std), for callers that
        build their own views (augmented support, TPT)."""
        from torchvision import transforms

        steps = [t for t in self.preprocess.transforms if isinstance(t, transforms.Normalize)]
        if not steps:
            raise InputError(f"the preprocessing of {self!r} has no Normalize step to reuse.")
        return steps[-1]

    @property
    def tokenizer(self):
        """open_clip's tokenizer for the model; made on first use (image-only runs never need it)."""
        if self._tokenizer is None:
            import open_clip

            self.model  # registers a config file's architecture, or fails with one sentence
            self._tokenizer = open_clip.get_tokenizer(self._open_clip_name)
        return self._tokenizer

    @property
    def image_size(self) -> int:
        """Side of the square the preprocessing crops to."""
        import open_clip

        size = open_clip.get_model_preprocess_cfg(self.model)["size"]
        return int(size if isinstance(size, int) else min(size))

    @property
    def embed_dim(self) -> int:
        return int(self.encode_texts(["a"], progress=False).shape[1])

    def _load(self) -> None:
        import open_clip  # heavy import, deferred until a model is really needed

        name = self.model_name
        if self._config_file is not None:
            open_clip.add_model_config(self._config_file)
            name = self._config_file.stem
        if name not in open_clip.list_models():
            raise ModelLoadError(
                f"unknown model '{name}'; open_clip knows e.g. ViT-B-32, ViT-B-16, "
                f"ViT-L-14, RN50 (full list: open_clip.list_models()).")
        if self.checkpoint is not None:
            weights = str(self.checkpoint)
        elif self.pretrained.lower() == "none":
            weights = None
        else:
            weights = self.pretrained
            _check_weights_reachable(open_clip, name, weights, self.download_dir)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_RANDOM_SEED)  # "none" gives the same random weights every time
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=weights, device=self.device,
                    cache_dir=self.download_dir)
        except Exception as exc:  # open_clip raises RuntimeError, KeyError, OSError, ...
            what = (f"checkpoint '{self.checkpoint}'" if self.checkpoint
                    else "random weights" if weights is None else f"weights '{weights}'")
            hint = " (is it a weights file for this model?)" if self.checkpoint else ""
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelLoadError(f"could not load {what} for model '{self.model_name}'{hint}: "
                                 f"{detail}") from None
        model.eval().requires_grad_(False)
        self._model, self._preprocess, self._open_clip_name = model, preprocess, name

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ encoding

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed images (B, 3, H, W) -> L2-normalised float32 embeddings (B, D)."""
        with self._autocast():
            features = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def _encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        with self._autocast():
            features = encode_text_truncated(self.model, tokens.to(self.device))
        return F.normalize(features.float(), dim=-1).cpu().numpy()

    def encode_texts(self, texts: Sequence[str], *, cache: str | os.PathLike | None = None,
                     progress: bool | None = None) -> np.ndarray:
        """Texts -> L2-normalised float32 embeddings (N, D). Repeated texts are encoded once.

        Texts are batched by token length, and each batch runs the text tower only up to its
        longest text (see ``encode_text_truncated``).
        """
        texts = [str(t) for t in texts]
        if not texts:
            raise InputError("no texts to encode.")
        unique = list(dict.fromkeys(texts))
        keys = [hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in unique]
        store = EmbeddingStore(cache, self.fingerprint, "texts") if cache is not None else None
        missing = [i for i, k in enumerate(keys) if store is None or k not in store]
        encoded: dict[int, np.ndarray] = {}
        if missing:
            tokens = self.tokenizer([unique[i] for i in missing])
            by_length = np.argsort(_token_lengths(tokens).numpy(), kind="stable")
            show = self.progress if progress is None else progress
            with tqdm(total=len(missing), desc="encoding texts", unit="text",
                      disable=not show or len(missing) <= self.batch_size, leave=False) as bar:
                for start in range(0, len(missing), self.batch_size):
                    rows = by_length[start:start + self.batch_size]
                    chunk = [missing[r] for r in rows]
                    vectors = self._encode_tokens(tokens[torch.from_numpy(rows)])
                    if store is not None:
                        store.put([keys[i] for i in chunk], vectors)
                    encoded.update(zip(chunk, vectors))
                    bar.update(len(chunk))
        hits = [i for i in range(len(unique)) if i not in encoded]
        if hits:
            encoded.update(zip(hits, store.get([keys[i] for i in hits])))
        by_text = {text: encoded[i] for i, text in enumerate(unique)}
        return np.stack([by_text[t] for t in texts]).astype(np.float32, copy=False)

    def iter_image_embeddings(self, images: str | os.PathLike | Sequence[ImageInput] | ImageSet, *,
                              cache: str | os.PathLike | None = None, on_error: str = "raise",
                              report: EncodeReport | None = None, progress: bool | None = None,
                              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream ``(positions, embeddings)`` batches in input order.

        Images already in the store ``cache`` are read back, the rest are decoded by worker
        processes and encoded, and each new batch is written to the store before it is
        yielded. With ``on_error="skip"`` unreadable images are left out and listed in
        ``report.failures``; with "raise" the first one raises InputError.
        """
        if on_error not in ("raise", "skip"):
            raise InputError(f"on_error must be 'raise' or 'skip', got '{on_error}'.")
        image_set = read_image_source(images)
        report = report if report is not None else EncodeReport()
        store = keys = None
        hits: frozenset[int] = frozenset()
        copies: frozenset[int] = frozenset()
        if cache is not None:
            store = EmbeddingStore(cache, self.fingerprint, "images")
            keys = content_keys(image_set.items)
            hits = frozenset(i for i, key in enumerate(keys) if key in store)
            # The same content under several names is encoded once: later copies are read
            # back from the store, where the first copy is written before they are reached.
            first: dict[str, int] = {}
            copies = frozenset(i for i, key in enumerate(keys)
                               if key is not None and i not in hits and first.setdefault(key, i) != i)
        # A run whose images are all stored needs no model (and imports no open_clip).
        needs_model = len(hits) < len(image_set)
        if needs_model:
            self.model  # load (or fail) before a progress bar is drawn
        show = self.progress if progress is None else progress
        with tqdm(total=len(image_set), desc="embedding images", unit="img",
                  disable=not show) as bar:
            for batch in decoded_batches(
                    image_set.items, self.preprocess if needs_model else None,
                    batch_size=self.batch_size, num_workers=self.num_workers, skip=hits | copies,
                    draft_size=self.image_size if needs_model else None):
                positions, vectors = self._embed_batch(batch, image_set, keys, store, on_error, report)
                bar.update(len(batch))
                if len(positions):
                    yield positions, vectors

    def _embed_batch(self, batch: list[DecodedItem], image_set: ImageSet, keys: list | None,
                     store: EmbeddingStore | None, on_error: str, report: EncodeReport,
                     ) -> tuple[np.ndarray, np.ndarray]:
        fresh, stored = [], []
        for item in batch:
            if item.pixels is not None:
                fresh.append(item.position)
            elif item.error is None:
                stored.append(item.position)
            else:
                self._fail(image_set, item.position, item.error, on_error, report)
        vectors: dict[int, np.ndarray] = {}
        if fresh:
            pixels = torch.stack([it.pixels for it in batch if it.pixels is not None])
            start = time.perf_counter()
            encoded = self.encode_pixels(pixels)
            report.encoder_seconds += time.perf_counter() - start
            if store is not None:
                store.put([keys[p] for p in fresh], encoded)
            vectors.update(zip(fresh, encoded))
            report.n_encoded += len(fresh)
        # A copy of an image that could not be read never reaches the store.
        for position in [p for p in stored if keys[p] not in store]:
            stored.remove(position)
            self._fail(image_set, position, "same content as another image that could not be "
                       "read.", on_error, report)
        if stored:
            vectors.update(zip(stored, store.get([keys[p] for p in stored])))
            report.n_cached += len(stored)
        positions = np.array(sorted(vectors), dtype=np.int64)
        if not vectors:
            return positions, np.empty((0, 0), np.float32)
        return positions, np.stack([vectors[p] for p in positions])

    @staticmethod
    def _fail(image_set: ImageSet, position: int, error: str, on_error: str,
              report: EncodeReport) -> None:
        name = image_name(image_set.items[position], position)
        if on_error == "raise":
            raise InputError(f"cannot read image '{name}': {error}")
        log.warning("skipping %s: %s", name, error)
        report.failures.append(Failure(name, error))

    def encode_images(self, images: str | os.PathLike | Sequence[ImageInput] | ImageSet, *,
                      cache: str | os.PathLike | None = None,
                      progress: bool | None = None) -> np.ndarray:
        """Images (folder, manifest, paths, PIL) -> L2-normalised float32 embeddings (N, D).

        Raises InputError naming the first image that cannot be read.
        """
        parts = [vectors for _, vectors in
                 self.iter_image_embeddings(images, cache=cache, on_error="raise", progress=progress)]
        return np.concatenate(parts).astype(np.float32, copy=False)


def _token_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """(B,) number of tokens up to and including the end-of-text token (the largest id)."""
    return tokens.argmax(dim=-1) + 1


def encode_text_truncated(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip text features (B, D) of tokens (B, L), run only up to the longest text.

    For the standard CLIP text tower (causal mask, pooling at the end-of-text token) no position
    attends to a later one, so dropping the padding after the batch's last end-of-text token
    leaves the features unchanged; the cost falls from L=77 positions to the prompt length.
    Other text towers go through ``model.encode_text`` unchanged.
    """
    standard = (getattr(model, "attn_mask", None) is not None
                and getattr(model, "text_pool_type", None) == "argmax"
                and hasattr(model, "token_embedding"))
    if not standard:
        return model.encode_text(tokens)
    length = int(_token_lengths(tokens).max())
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_weights_reachable(open_clip, model: str, tag: str, download_dir: str | None) -> None:
    """Fail fast, with advice, when weights are neither cached nor downloadable."""
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ModelLoadError(
            f"model '{model}' has no pretrained tag '{tag}'; known tags: "
            f"{', '.join(tags) if tags else 'none (use --pretrained none or --checkpoint PATH)'}.")
    if _weights_cached(cfg, download_dir):
        return
    host = _HF_HOST if cfg.get("hf_hub") else urlparse(cfg.get("url", "")).hostname
    if host and not _reachable(host):
        raise ModelLoadError(
            f"cannot download weights '{tag}' for '{model}': {host} is unreachable and they are "
            f"not in the local cache; copy the weights file to this machine and pass it with "
            f"--checkpoint PATH (Python: Backbone('{model}', checkpoint=PATH)).")


def _weights_cached(cfg: dict, download_dir: str | None) -> bool:
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(repo, name, cache_dir=download_dir), str)
                   for name in names)
    url = cfg.get("url", "")
    folder = Path(download_dir or Path.home() / ".cache" / "clip")
    return bool(url) and (folder / os.path.basename(url)).is_file()


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
