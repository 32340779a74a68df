"""Backbone: a frozen open_clip model that turns images and texts into embeddings.

The facade over the encoder side: ``models`` builds the model (on first use, so that a run
whose embeddings are all in the store never imports open_clip or loads weights),
``text_tower`` encodes texts, ``pipeline`` encodes images and ``runtimes`` runs the image tower
in torch or a compiled runtime.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..choices import INEXACT_RUNTIMES, PRECISIONS
from ..data.sources import ImageSource
from ..errors import InputError, ModelLoadError
from . import models, runtimes, text_tower
from .pipeline import EncodeReport, image_embeddings


# built on first use
_LOADED = ("_model", "_preprocess", "_tokenizer", "_open_clip_name", "_image_tower")


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
    num_workers : image-decoding processes that run ahead of the encoder; 0 decodes in this
        process, one thread at idle priority a batch ahead. Default: 0 on CPU, where the
        encoder already uses every core, 4 on CUDA.
    progress : show progress bars on stderr.
    download_dir : where open_clip keeps downloaded weights (its default when None).
    jpeg_draft : decode large JPEGs (short side at least twice the encoder's input) at a
        reduced size in PIL's draft mode before the preprocessing: faster decoding, slightly
        different embeddings (README, ``benchmarks/jpeg_draft.py``). Off by default, so that
        images are preprocessed exactly as open_clip's transform does.
    runtime : what runs the image tower (``encoders.runtimes``): "torch" (default), or on the
        CPU in fp32 "openvino" or "onnxruntime" (compiled once, checked against torch, same
        embeddings within float rounding; extras ``[openvino]``, ``[onnxruntime]``), or the
        opt-in "onnxruntime-int8" (faster, not exact; its embeddings are stored apart).
        Texts are always encoded by torch.
    compiled_dir : where compiled image towers are kept; default
        ``~/.cache/zeroshot_plus/compiled`` ($XDG_CACHE_HOME honoured).
    """

    def __init__(self, model: str = "ViT-B-32", pretrained: str = "openai", *,
                 checkpoint: str | os.PathLike | None = None, device: str | None = None,
                 precision: str | None = None, batch_size: int = 64,
                 num_workers: int | None = None, progress: bool = True,
                 download_dir: str | None = None, jpeg_draft: bool = False,
                 runtime: str = "torch", compiled_dir: str | os.PathLike | None = None):
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
        self.jpeg_draft = bool(jpeg_draft)
        runtimes.check_runtime(runtime, self.device, self.precision)
        self.runtime = runtime
        self.compiled_dir = (Path(compiled_dir) if compiled_dir is not None
                             else runtimes.default_directory())
        self._model = None
        self._preprocess = None
        self._tokenizer = None
        self._open_clip_name: str | None = None
        self._fingerprint: str | None = None
        self._image_tower: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __repr__(self) -> str:
        weights = f"checkpoint='{self.checkpoint}'" if self.checkpoint else f"pretrained='{self.pretrained}'"
        runtime = f", runtime='{self.runtime}'" if self.runtime != "torch" else ""
        return (f"Backbone('{self.model_name}', {weights}, device='{self.device}', "
                f"precision='{self.precision}'{runtime})")

    def __deepcopy__(self, memo):
        # A frozen model is shared, never copied: scikit-learn's clone() deep-copies parameters.
        return self

    def __getstate__(self) -> dict:
        """Pickle (and joblib) by name, weights and fingerprint, as ``save()`` records a
        backbone, never the torch model: an unpickled Backbone builds it on first use."""
        state = {k: v for k, v in vars(self).items() if k not in _LOADED}
        state["_fingerprint"] = self.fingerprint
        return state

    def __setstate__(self, state: dict) -> None:
        """Restore unloaded; the weights must still have the pickled fingerprint."""
        pickled = state["_fingerprint"]
        self.__dict__.update(state, _fingerprint=None, **dict.fromkeys(_LOADED))
        try:
            now = self.fingerprint
        except OSError as exc:
            raise ModelLoadError(f"cannot unpickle {self!r}: '{exc.filename}' cannot be read "
                                 f"({exc.strerror or exc}).") from None
        if now != pickled:
            raise ModelLoadError(f"cannot unpickle {self!r}: its checkpoint, model config or "
                                 f"open_clip/torch version differs from when it was pickled "
                                 f"(fingerprint {now}, pickled {pickled}).")

    # ------------------------------------------------------------------ identity

    @property
    def fingerprint(self) -> str:
        """Stable id of (model, weights, preprocessing, precision), computed without loading."""
        if self._fingerprint is None:
            self._fingerprint = models.fingerprint(
                self.model_name, self.precision, config_file=self._config_file,
                checkpoint=self.checkpoint, pretrained=self.pretrained,
                jpeg_draft=self.jpeg_draft,
                runtime=self.runtime if self.runtime in INEXACT_RUNTIMES else None)
        return self._fingerprint

    def describe(self) -> dict:
        """What a saved predictor records about its backbone; ``pretrained`` is None when the
        weights come from a local checkpoint."""
        return {"model": self.model_name,
                "pretrained": self.pretrained if self.checkpoint is None else None,
                "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "precision": self.precision, "jpeg_draft": self.jpeg_draft,
                "runtime": self.runtime, "fingerprint": self.fingerprint}

    # ------------------------------------------------------------------ loading

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._load()
        return self._model

    @property
    def image_tower(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The image tower under ``runtime``: pixels (B, 3, S, S) -> features (B, D), not
        normalised; a compiled one is built (or read from ``compiled_dir``) and checked
        against torch on first use. A compiled copy read from ``compiled_dir`` carries the
        preprocessing settings and torch's features of the guard's inputs, so the torch
        model is then not built unless texts need encoding."""
        if self._image_tower is None:
            self._image_tower = (self.model.encode_image if self.runtime == "torch" else
                                 runtimes.compile_image_tower(
                                     lambda: self.model, self.runtime,
                                     fingerprint=self.fingerprint, directory=self.compiled_dir,
                                     progress=self.progress))
        return self._image_tower

    @property
    def preprocess(self):
        """open_clip's evaluation transform: PIL image -> (3, H, W) tensor."""
        if self._preprocess is None:
            if self.runtime == "torch":
                self._load()
            else:
                self._preprocess = models.image_transform(self.image_tower.preprocess_config)
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
            self.model  # registers a config file's architecture, or fails with one sentence
            self._tokenizer = models.load_tokenizer(self._open_clip_name)
        return self._tokenizer

    @property
    def image_size(self) -> int:
        """Side of the square the preprocessing crops to."""
        return models.image_size(models.preprocess_config(self.model) if self.runtime == "torch"
                                 else self.image_tower.preprocess_config)

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint embedding space (the image and text features)."""
        if self._model is None and isinstance(self._image_tower, runtimes.CompiledTower):
            return self._image_tower.dim  # without building the torch model
        return int(self.encode_texts(["a"], progress=False).shape[1])

    def _load(self) -> None:
        self._model, self._preprocess, self._open_clip_name = models.load_model(
            self.model_name, config_file=self._config_file, checkpoint=self.checkpoint,
            pretrained=self.pretrained, device=self.device, download_dir=self.download_dir)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the model runs in: autocast to fp16 / bf16, or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ encoding

    @torch.inference_mode()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, H, W) -> the image tower's float32 features (B, D), not
        normalised, on the backbone's device."""
        tower = self.image_tower
        with self.autocast():
            return tower(pixels.to(self.device, non_blocking=True)).float()

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed images (B, 3, H, W) -> L2-normalised float32 embeddings (B, D)."""
        return F.normalize(self.image_features(pixels), dim=-1).cpu().numpy()

    def encode_texts(self, texts: Sequence[str], *, cache: str | os.PathLike | None = None,
                     progress: bool | None = None) -> np.ndarray:
        """Texts -> L2-normalised float32 embeddings (N, D); see ``text_tower.encode_texts``."""
        return text_tower.encode_texts(self, texts, cache=cache, progress=progress)

    def iter_image_embeddings(self, images: ImageSource, *,
                              cache: str | os.PathLike | None = None, on_error: str = "raise",
                              report: EncodeReport | None = None, progress: bool | None = None,
                              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream ``(positions, embeddings)`` batches in input order (``encoders.pipeline``).

        Images already in the store ``cache`` are read back, the rest are decoded and encoded,
        and each new batch is written to the store before it is yielded. With
        ``on_error="skip"`` unreadable images are left out and listed in ``report.failures``;
        with "raise" the first one raises InputError.
        """
        return image_embeddings(self, images, cache=cache, on_error=on_error, report=report,
                                progress=progress)

    def encode_images(self, images: ImageSource, *,
                      cache: str | os.PathLike | None = None,
                      progress: bool | None = None) -> np.ndarray:
        """Images (folder, manifest, paths, PIL) -> L2-normalised float32 embeddings (N, D).

        Raises InputError naming the first image that cannot be read.
        """
        parts = [vectors for _, vectors in
                 self.iter_image_embeddings(images, cache=cache, on_error="raise", progress=progress)]
        return np.concatenate(parts).astype(np.float32, copy=False)
