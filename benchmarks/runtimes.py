"""Image-tower runtimes against eager torch, in one run: images/s, ratio, least cosine.

ViT-B-32 with random weights (`--pretrained none`) over real photos from
../shared/data/images/imagenet-samples, decoded and preprocessed once into tensors, so that only
the forward pass is timed. Rows, timed in interleaved rounds (every runtime once per round, in a shuffled order, so that
a shared machine's drift hits them all alike), each the median over rounds:

- torch eager (the default runtime) and, measured but not offered, ``torch.compile``;
- each runtime of ``Backbone(runtime=...)``: openvino, onnxruntime (exact) and
  onnxruntime-int8 (opt-in);
- with ``--tuning``, the thread settings the library does not use, to show why: ONNX Runtime
  with 2 inter-op threads in parallel mode, OpenVINO with the THROUGHPUT hint.

For each row: images per second, ratio to eager torch, least cosine of its embeddings to
eager torch's over all photos, and (int8) top-1 agreement with eager torch when the photos
are classified zero-shot among the 1,000 ImageNet class names ("a photo of a {}.").

    python benchmarks/runtimes.py [--images DIR] [--n-images 128] [--batch-size 64]
                                  [--rounds 5] [--no-compile] [--tuning]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from importlib import import_module
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zeroshot_plus import Backbone, ZeroShotClassifier
from zeroshot_plus.data.images import open_image

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "imagenet-samples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--n-images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    parser.add_argument("--tuning", action="store_true", help="add the untaken thread settings")
    args = parser.parse_args()

    paths = sorted(Path(args.images).glob("*.JPEG"))[: args.n_images]
    if not paths:
        raise SystemExit(f"no .JPEG photos in {args.images}")
    compiled_dir = Path(tempfile.mkdtemp(prefix="runtimes-benchmark-"))
    eager = Backbone("ViT-B-32", "none", progress=False, compiled_dir=compiled_dir)
    pixels = torch.stack([eager.preprocess(open_image(p)) for p in paths])
    batches = list(torch.split(pixels, args.batch_size))

    towers: dict[str, object] = {"torch eager": eager.model.encode_image}
    notes: dict[str, str] = {}
    if not args.no_compile:
        start = time.perf_counter()
        compiled = torch.compile(eager.model.encode_image, dynamic=True)
        with torch.inference_mode():
            for batch in batches:  # compiles for the shapes it will see
                compiled(batch)
        towers["torch.compile"] = compiled
        notes["torch.compile"] = f"compiled in {time.perf_counter() - start:.0f} s"
    backbones = {}
    for runtime in ("openvino", "onnxruntime", "onnxruntime-int8"):
        start = time.perf_counter()
        backbones[runtime] = Backbone("ViT-B-32", "none", progress=False, runtime=runtime,
                                      compiled_dir=compiled_dir)
        towers[runtime] = backbones[runtime].image_tower
        notes[runtime] = f"built and checked in {time.perf_counter() - start:.0f} s"
    if args.tuning:
        towers.update(_untaken_settings(backbones["openvino"].image_tower.folder / "tower.onnx",
                                        eager.image_size))

    def encode(tower) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([F.normalize(tower(b).float(), dim=-1).numpy()
                                   for b in batches])

    embeddings = {name: encode(tower) for name, tower in towers.items()}  # also warms up
    seconds = {name: [] for name in towers}
    order = np.random.default_rng(0)
    for _ in range(args.rounds):  # each round in a new order: no row is always first or last
        for name in order.permutation(list(towers)):
            tower = towers[name]
            start = time.perf_counter()
            encode(tower)
            seconds[name].append(time.perf_counter() - start)

    reference = embeddings["torch eager"]
    agreement = _top1_agreement(eager, reference, embeddings["onnxruntime-int8"])
    base = np.median(seconds["torch eager"])
    print(f"ViT-B-32 (random weights), {len(paths)} photos, batches of {args.batch_size}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds\n")
    print("| image tower | images/s | ratio to eager | least cosine to eager | note |")
    print("|---|---|---|---|---|")
    for name in towers:
        median = np.median(seconds[name])
        cosine = float(np.sum(embeddings[name] * reference, axis=1).min())
        note = notes.get(name, "")
        if name == "onnxruntime-int8":
            note += f"; zero-shot top-1 equal to eager on {agreement:.1%} of the photos"
        print(f"| {name} | {len(paths) / median:.1f} | {base / median:.2f}x | {cosine:.7f} | "
              f"{note} |")


def _top1_agreement(backbone: Backbone, reference: np.ndarray, other: np.ndarray) -> float:
    """The share of photos whose zero-shot ImageNet top-1 is the same under both embeddings."""
    from zeroshot_plus.data.datasets import dataset_classnames

    classifier = ZeroShotClassifier(backbone, classnames=dataset_classnames("imagenet"),
                                    templates="photo").fit()
    return float(np.mean(classifier.predict(reference) == classifier.predict(other)))


def _untaken_settings(onnx_file: Path, image_size: int) -> dict:
    """Thread settings the library does not use, built from its exported tower."""
    ort, ov = import_module("onnxruntime"), import_module("openvino")
    threads = torch.get_num_threads()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 2
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    core = ov.Core()
    model = core.read_model(str(onnx_file))
    throughput = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT",
                                                   "INFERENCE_PRECISION_HINT": "f32"})

    def wrap(run):
        return lambda pixels: torch.from_numpy(run(pixels.numpy()))

    def queued(pixels: np.ndarray) -> np.ndarray:  # THROUGHPUT wants requests in flight
        parts = np.array_split(pixels, throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        requests = [throughput.create_infer_request() for _ in parts]
        for request, part in zip(requests, parts):
            request.start_async({0: part})
        for request in requests:
            request.wait()
        return np.concatenate([r.get_output_tensor(0).data.copy() for r in requests])

    return {"onnxruntime, 2 inter-op threads, parallel": wrap(
                lambda x: session.run(None, {"pixels": x})[0]),
            "openvino, THROUGHPUT hint": wrap(queued)}


if __name__ == "__main__":
    main()
