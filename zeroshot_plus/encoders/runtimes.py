"""Runtimes for the frozen image tower: torch itself, or a compiled copy on the CPU.

Every image the library encodes, whatever the method, reaches the image tower through
``Backbone.image_features``, which runs it under the backbone's ``runtime`` (``RUNTIMES``):

- "torch" (the default): the open_clip model, on any device and precision.
- "openvino", "onnxruntime": the tower exported once to ONNX by torch's exporter (batch
  dimension dynamic, input fixed at the model's S x S), then run on the CPU in fp32 by
  OpenVINO or by ONNX Runtime, with as many threads as torch uses. Exact (below).
- "onnxruntime-int8": that export with ONNX Runtime's dynamic int8 quantisation (int8 weights,
  activations quantised per batch). Faster and not exact: an explicit opt-in whose agreement
  with fp32 is measured in the README.

Cache. A compiled model lives in ``directory / <fingerprint>-<form>-<digest>``, where the
form is "onnx" (read by both exact runtimes) or "onnx-int8"; the digest
covers what the files depend on besides the model and weights (the exporter's and, for int8,
the quantiser's versions), so a new version builds a new copy, never reads a stale one. Beside
the tower, a copy keeps open_clip's preprocessing settings for the model
(``preprocess.json``), so that a run that reads it, and finds its texts in the store, never
builds the torch model. A copy is built by ``files.atomic_directory`` (all its files or none,
whatever kills the build) and reused by every later run. A copy that cannot be loaded or fails the guard is
removed and built again once. A cache folder that cannot be written costs the cache, not the
run: the model is then built in a temporary folder.

Guard. Before first use a compiled tower encodes a few fixed inputs (``check_inputs``: random
pixels, and a fixed picture through the copy's preprocessing settings) and is
compared row by row with torch's features of them, which torch computes when the copy is built
and which are kept beside it (so that a run does not pay a cold torch forward pass): a cosine
below ``EXACT_COSINE`` (int8: ``INT8_COSINE``) refuses it with one sentence.

Store. Exact runtimes keep torch's fingerprint, so their embeddings share the store's keys with
torch's: having passed the guard they differ from torch's by no more than float rounding, the
same kind of difference torch shows between batch sizes and thread counts.
int8 embeddings differ by more, so the int8 runtime is part of the fingerprint and its
embeddings are stored apart (``models.fingerprint``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..choices import INEXACT_RUNTIMES as INEXACT, RUNTIMES
from ..data.files import atomic_directory, os_error_cause
from ..errors import InputError, ModelLoadError
from . import models

log = logging.getLogger(__name__)

EXACT_COSINE = 0.9999   # the least cosine to torch, per check row, of an exact runtime
INT8_COSINE = 0.99      # the same for the int8 runtime
_PACKAGE = {"onnxruntime": "onnxruntime", "openvino": "openvino",
            "onnxruntime-int8": "onnxruntime"}
_CHECK_ROWS = 3           # fixed inputs the guard encodes (not the export's example batch of 2)


def default_directory() -> Path:
    """Where compiled towers are kept: $XDG_CACHE_HOME/zeroshot_plus/compiled, else
    ~/.cache/zeroshot_plus/compiled."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "zeroshot_plus" / "compiled"


def check_runtime(runtime: str, device: torch.device, precision: str) -> None:
    """InputError, one sentence, for a runtime that does not exist or cannot run here."""
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime '{runtime}'; use one of {', '.join(RUNTIMES)}.")
    if runtime == "torch":
        return
    if device.type != "cpu" or precision != "fp32":
        raise InputError(f"runtime '{runtime}' runs on the CPU in fp32, not on '{device}' in "
                         f"{precision}; use runtime 'torch' there.")
    package = _PACKAGE[runtime]
    try:
        version(package)
    except PackageNotFoundError:
        raise InputError(f"runtime '{runtime}' needs the {package} package: "
                         f"pip install 'zeroshot_plus[{package}]'.") from None


class CompiledTower:
    """A compiled image tower: pixels (B, 3, S, S) float32 -> features (B, D) float32, as
    ``model.encode_image`` returns them (not normalised)."""

    def __init__(self, runtime: str, run: Callable[[np.ndarray], np.ndarray], folder: Path,
                 preprocess_config: dict, dim: int):
        self.runtime = runtime
        self.folder = folder  # where its files are (gone if it was built in a temporary folder)
        self.preprocess_config = preprocess_config  # open_clip's, for ``models.image_transform``
        self.dim = dim  # D
        self._run = run

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(np.asarray(self._run(array), dtype=np.float32))

    def __repr__(self) -> str:
        return f"CompiledTower('{self.runtime}', '{self.folder}')"


def compile_image_tower(build_model: Callable[[], torch.nn.Module], runtime: str, *,
                        fingerprint: str, directory: Path, progress: bool = False
                        ) -> CompiledTower:
    """The image tower of the model ``fingerprint`` names, compiled for ``runtime``: read from
    ``directory``, or built there from ``build_model()`` (called only then), and checked
    against torch (the module's docstring); ModelLoadError, one sentence, when it cannot be
    built or disagrees with torch. ``progress``: say so on stderr while building."""
    form = "onnx-int8" if runtime in INEXACT else "onnx"  # the exact runtimes share a copy
    folder = directory / f"{fingerprint}-{form}-{_digest(runtime)}"
    threshold = INT8_COSINE if runtime in INEXACT else EXACT_COSINE
    for _ in range(2):  # a cached copy that cannot serve is removed and built again, once
        with _built(build_model, runtime, folder, progress) as (built, fresh):
            try:
                config = json.loads((built / "preprocess.json").read_text())
                reference = torch.from_numpy(np.load(built / "reference.npy"))
                tower = _load(runtime, built, config, reference.shape[1])
                worst = agreement(tower, reference, check_inputs(config))
            except Exception as exc:  # noqa: BLE001 - any runtime's failure to read the files
                if not fresh:
                    _discard(folder, f"cannot be loaded: {_first_line(exc)}")
                    continue
                raise ModelLoadError(f"{runtime} cannot load the image tower it compiled "
                                     f"({_first_line(exc)}); use runtime 'torch'.") from None
        if worst >= threshold:
            log.info("image tower compiled for %s (%s): cosine to torch >= %.7f",
                     runtime, built, worst)
            return tower
        if not fresh:
            _discard(folder, f"it disagrees with torch (cosine {worst:.6f})")
            continue
        raise ModelLoadError(f"runtime '{runtime}' encodes images differently from torch "
                             f"(cosine {worst:.6f} < {threshold} on a check image); use "
                             f"runtime 'torch'.")
    raise ModelLoadError(f"the compiled image tower in '{folder}' cannot serve and cannot be "
                         f"removed; delete that folder, or use runtime 'torch'.")


def check_pixels(image_size: int) -> torch.Tensor:
    """The guard's fixed tower inputs (R, 3, S, S): seeded standard normal pixels."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(_CHECK_ROWS, 3, image_size, image_size, generator=generator)


def check_inputs(config: dict) -> torch.Tensor:
    """What the guard encodes (R + 1, 3, S, S): ``check_pixels``, and a fixed picture
    preprocessed with ``config`` (open_clip's settings), so that preprocessing settings that
    are not the model's fail the guard as a wrong tower does."""
    picture = np.random.default_rng(0).integers(0, 256, (56, 40, 3), dtype=np.uint8)
    preprocessed = models.image_transform(config)(Image.fromarray(picture))
    return torch.cat([check_pixels(models.image_size(config)), preprocessed[None]])


def agreement(tower: Callable[[torch.Tensor], torch.Tensor], reference: torch.Tensor,
              pixels: torch.Tensor) -> float:
    """The least cosine, over the rows of ``pixels`` (R, 3, S, S), between ``tower``'s
    features and ``reference`` (R, D), torch's features of them."""
    with torch.inference_mode():
        features = tower(pixels).float()
    return float(torch.nn.functional.cosine_similarity(features, reference.float(), dim=1).min())


# ---------------------------------------------------------------------- building


def _digest(runtime: str) -> str:
    """What a compiled copy depends on besides the model and its weights (the fingerprint
    names them, and with them the input shape): its layout and the versions that wrote it."""
    packages = ["torch", "onnx", "onnxscript"] + (["onnxruntime"] if runtime in INEXACT else [])
    identity = {"batch": "dynamic", "files": ["tower.onnx", "reference.npy", "preprocess.json"],
                "reference": "check_inputs",
                "versions": {p: _version(p) for p in packages}}
    return hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(),
                           digest_size=6).hexdigest()


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


@contextlib.contextmanager
def _built(build_model: Callable[[], torch.nn.Module], runtime: str, folder: Path,
           progress: bool) -> Iterator[tuple[Path, bool]]:
    """(the folder holding the compiled files, whether they were built now): ``folder``,
    built there first from ``build_model()`` if missing, or a temporary folder, removed
    afterwards, when ``folder`` cannot be written."""
    if (folder / "tower.onnx").is_file():
        yield folder, False
        return
    model = build_model()
    log.info("compiling the image tower for %s into %s (once)", runtime, folder)
    with tqdm(total=1, desc=f"compiling the image tower for {runtime} (once)",
              disable=not progress, bar_format="{desc}: {elapsed}") as bar:
        try:
            with atomic_directory(folder) as building:
                _build(model, runtime, building)
        except OSError as exc:
            log.warning("compiled model cache '%s' cannot be written (%s); the image tower "
                        "is compiled for this run only", folder.parent, os_error_cause(exc))
            temporary = tempfile.TemporaryDirectory(prefix="zeroshot_plus-compiled-")
            _build(model, runtime, Path(temporary.name))
        else:
            temporary = None
        bar.update()
    if temporary is None:
        yield folder, True
        return
    with temporary:
        yield Path(temporary.name), True


class _ImageTower(torch.nn.Module):
    """``model.encode_image`` as a module of its own, for the exporter."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


def _build(model: torch.nn.Module, runtime: str, folder: Path) -> None:
    """Write ``folder/tower.onnx`` (and its weights beside it) for ``runtime``, torch's
    features of the guard's inputs, ``folder/reference.npy``, and open_clip's preprocessing
    settings for the model, ``folder/preprocess.json``."""
    config = models.preprocess_config(model)
    (folder / "preprocess.json").write_text(json.dumps(config))
    image_size = models.image_size(config)
    with torch.inference_mode():
        reference = model.encode_image(check_inputs(config)).float().numpy()
    np.save(folder / "reference.npy", reference)
    for package in ("onnx", "onnxscript"):
        if _version(package) is None:
            raise InputError(f"runtime '{runtime}' needs the {package} package to export the "
                             f"image tower: pip install 'zeroshot_plus[{_PACKAGE[runtime]}]'.")
    if runtime not in INEXACT:
        _export(model, runtime, image_size, folder / "tower.onnx")
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=folder) as fp32:  # the fp32 export, quantised
        exported = Path(fp32) / "tower.onnx"
        _export(model, runtime, image_size, exported)
        with _quiet():
            quantize_dynamic(exported, folder / "tower.onnx", weight_type=QuantType.QInt8,
                             use_external_data_format=True)


def _export(model: torch.nn.Module, runtime: str, image_size: int, target: Path) -> None:
    """The fp32 tower as ONNX at ``target`` (its weights beside it), batch dimension dynamic."""
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with torch.inference_mode(False), torch.no_grad(), _quiet():
            torch.onnx.export(_ImageTower(model).eval(), (example,), target, dynamo=True,
                              input_names=["pixels"], output_names=["features"],
                              dynamic_shapes=({0: batch},), verbose=False)
    except OSError:
        raise  # a folder that cannot be written: the caller builds elsewhere
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
        raise ModelLoadError(f"cannot export this model's image tower to ONNX for runtime "
                             f"'{runtime}' ({_first_line(exc)}); use runtime 'torch'.") from None


@contextlib.contextmanager
def _quiet():
    """The exporter and the quantiser print progress on stdout, which holds a command's
    results: send it to the log instead."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        yield
    for line in captured.getvalue().splitlines():
        log.debug("%s", line)


# ---------------------------------------------------------------------- loading


def _load(runtime: str, folder: Path, config: dict, dim: int) -> CompiledTower:
    path = folder / "tower.onnx"
    threads = torch.get_num_threads()
    if runtime == "openvino":
        return CompiledTower(runtime, _openvino(path, threads), folder, config, dim)
    ort = import_module("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(pixels: np.ndarray) -> np.ndarray:
        return session.run(None, {"pixels": pixels})[0]

    return CompiledTower(runtime, run, folder, config, dim)


def _openvino(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """The ONNX tower compiled by OpenVINO for the CPU in fp32, batch dynamic. (A model
    compiled for a fixed batch of 64 ran no faster for ViT-B-32 here, and cost 0.6 s to compile
    and a copy of the weights; README, "Thread settings".)"""
    ov = import_module("openvino")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
              "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()

    def run(pixels: np.ndarray) -> np.ndarray:
        return request.infer({0: pixels})[0].copy()

    return run


def _discard(folder: Path, reason: str) -> None:
    """Remove a cached compiled copy that cannot serve (it is built again)."""
    log.warning("compiled model %s is damaged (%s); it is built again", folder.name, reason)
    shutil.rmtree(folder, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
