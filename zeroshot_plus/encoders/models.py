"""Model loading and fingerprints: the one place that builds open_clip models.

``load_model`` builds an open_clip model with its evaluation transform, failing with one
sentence (never a download's stack trace) when the weights can be neither found nor fetched.
``fingerprint`` names (model, weights, preprocessing, precision) without loading anything.
The encoder side asks this module, and no other, about open_clip's models and tokenizers.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from importlib.metadata import version
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch

from ..errors import ModelLoadError

RANDOM_SEED = 0  # "none" weights: the same random weights every time
_HF_HOST = "huggingface.co"


def fingerprint(model: str, precision: str, *, config_file: Path | None = None,
                checkpoint: Path | None = None, pretrained: str = "none",
                jpeg_draft: bool = False, runtime: str | None = None) -> str:
    """Stable hex id of (model, weights, preprocessing, precision), computed without loading.

    ``jpeg_draft`` (reduced-size JPEG decoding) is part of the preprocessing: embeddings made
    with and without it are never mixed in one store. ``runtime`` names an image-tower runtime
    whose embeddings are not torch's (``choices.INEXACT_RUNTIMES``); exact runtimes pass None.
    """
    identity = {"model": model, "precision": precision, "open_clip": version("open_clip_torch"),
                "jpeg_draft": jpeg_draft}
    if runtime is not None:
        identity["runtime"] = runtime
    if config_file is not None:
        identity["config"] = _file_digest(config_file)
    if checkpoint is not None:
        identity["checkpoint"] = _file_digest(checkpoint)
    elif pretrained == "none":
        identity.update(weights="random", seed=RANDOM_SEED, torch=torch.__version__)
    else:
        identity["pretrained"] = pretrained
    blob = json.dumps(identity, sort_keys=True).encode()
    return hashlib.blake2b(blob, digest_size=10).hexdigest()


def load_model(model: str, *, config_file: Path | None = None, checkpoint: Path | None = None,
               pretrained: str = "none", device: torch.device,
               download_dir: str | None = None) -> tuple[torch.nn.Module, Callable, str]:
    """Build a frozen open_clip model in eval mode -> (model, preprocess, open_clip name).

    ``config_file`` registers an architecture under its stem; ``checkpoint`` overrides
    ``pretrained``; ``pretrained="none"`` gives seeded random weights.
    """
    import open_clip  # heavy import, deferred until a model is really needed

    name = model
    if config_file is not None:
        open_clip.add_model_config(config_file)
        name = config_file.stem
    if name not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown model '{name}'; open_clip knows e.g. ViT-B-32, ViT-B-16, "
            f"ViT-L-14, RN50 (full list: open_clip.list_models()).")
    if checkpoint is not None:
        weights = str(checkpoint)
    elif pretrained.lower() == "none":
        weights = None
    else:
        weights = pretrained
        _check_weights_reachable(open_clip, name, weights, download_dir)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            built, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=weights, device=device, cache_dir=download_dir)
    except Exception as exc:  # open_clip raises RuntimeError, KeyError, OSError, ...
        what = (f"checkpoint '{checkpoint}'" if checkpoint
                else "random weights" if weights is None else f"weights '{weights}'")
        hint = " (is it a weights file for this model?)" if checkpoint else ""
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"could not load {what} for model '{model}'{hint}: "
                             f"{detail}") from None
    built.eval().requires_grad_(False)
    return built, preprocess, name


def load_tokenizer(open_clip_name: str) -> Callable:
    """open_clip's tokenizer for a model built by ``load_model``."""
    import open_clip

    return open_clip.get_tokenizer(open_clip_name)


def is_clip_tokenizer(tokenizer: Callable) -> bool:
    """Whether a tokenizer is CLIP's byte-pair one, whose end-of-text token has the largest id."""
    from open_clip.tokenizer import SimpleTokenizer

    return isinstance(tokenizer, SimpleTokenizer)


def preprocess_config(model: torch.nn.Module) -> dict:
    """open_clip's preprocessing settings of a built model (size, mean, std, interpolation,
    resize mode, fill colour), in JSON's types."""
    import open_clip

    return json.loads(json.dumps(dict(open_clip.get_model_preprocess_cfg(model))))


def image_transform(config: dict) -> Callable:
    """open_clip's evaluation transform for ``preprocess_config``'s settings: the one
    ``create_model_and_transforms`` returns for the model, built without the model."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return image_transform_v2(PreprocessCfg(**settings), is_train=False)


def image_size(config: dict) -> int:
    """Side of the square that ``preprocess_config``'s settings crop to."""
    size = config["size"]
    return int(size if isinstance(size, int) else min(size))


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
