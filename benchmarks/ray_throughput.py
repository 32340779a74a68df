"""Ray's local throughput against the single-process pipeline, in one run.

Over the 1,000 full-size ImageNet sample photos in ../shared/data/images/imagenet-samples
with ViT-B-32 (random weights, `--pretrained none`), each engine embeds the photos into its
own empty store (zeroshot_plus.distributed.image_embeddings), one after the other in this
process:

1. local: the single-process pipeline (decoding by threads between forward passes);
2. ray: a local Ray runtime with every core of the machine (started before the clock runs,
   its start-up time printed apart): hashing tasks, decoding tasks, CPU encoder actors, store
   writes in the actors;
3. ray, warm: the same run again, everything read back from the store.

It prints each run's wall time and images per second, the ratio ray / local (the engine's
overhead on one machine), the seconds the forward passes took in each, whether the
embeddings are identical, and per-image costs of the three stages that move between nodes
(decoding + preprocessing, a forward pass, a store write), measured on one thread here.

Usage: python benchmarks/ray_throughput.py [--images DIR] [--limit N] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from zeroshot_plus import Backbone
from zeroshot_plus.data.images import read_image
from zeroshot_plus.data.sources import read_image_source
from zeroshot_plus.data.store import EmbeddingStore
from zeroshot_plus.distributed import image_embeddings, start_ray
from zeroshot_plus.encoders.pipeline import EncodeReport

DEFAULT_IMAGES = (Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
                  / "imagenet-samples")


def embed(backbone: Backbone, photos: list[Path], engine: str, cache: str
          ) -> tuple[float, np.ndarray, EncodeReport]:
    report = EncodeReport()
    start = time.perf_counter()
    parts = [e for _, e in image_embeddings(backbone, photos, engine=engine, cache=cache,
                                            on_error="skip", report=report, progress=False)]
    return time.perf_counter() - start, np.concatenate(parts), report


def stage_costs(backbone: Backbone, photos: list[Path], batch_size: int, folder: str
                ) -> tuple[float, float, float]:
    """Milliseconds per image, one thread: decoding + preprocessing, a forward pass (in
    passes of batch_size), a store write (one shard per pass)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sample = photos[:batch_size]
    start = time.perf_counter()
    pixels = torch.stack([backbone.preprocess(read_image(p)) for p in sample])
    decode = (time.perf_counter() - start) / len(sample)
    backbone.encode_pixels(pixels[:2])  # warm-up
    start = time.perf_counter()
    vectors = backbone.encode_pixels(pixels)
    forward = (time.perf_counter() - start) / len(sample)
    torch.set_num_threads(threads)
    store = EmbeddingStore(folder, backbone.fingerprint, "images")
    start = time.perf_counter()
    for i in range(10):
        store.put([f"{i}-{j}" for j in range(len(vectors))], vectors)
    write = (time.perf_counter() - start) / (10 * len(vectors))
    return 1000 * decode, 1000 * forward, 1000 * write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--limit", type=int, help="only the first N photos (a quick run)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    photos = [Path(p) for p in read_image_source(args.images).items][:args.limit]
    backbone = Backbone("ViT-B-32", "none", device="cpu", batch_size=args.batch_size,
                        progress=False)
    backbone.model
    cpus = os.cpu_count() or 1
    print(f"{len(photos)} photos, ViT-B-32 (random weights), batch {args.batch_size}, "
          f"{cpus} CPU cores, torch {torch.get_num_threads()} threads in this process")
    start = time.perf_counter()
    ray = start_ray()
    print(f"Ray runtime start: {time.perf_counter() - start:.1f} s "
          f"({int(ray.cluster_resources()['CPU'])} CPUs)")
    with tempfile.TemporaryDirectory() as root:
        local_s, local, local_report = embed(backbone, photos, "local", f"{root}/local")
        ray_s, on_ray, ray_report = embed(backbone, photos, "ray", f"{root}/ray")
        warm_s, warm, warm_report = embed(backbone, photos, "ray", f"{root}/ray")
        decode, forward, write = stage_costs(backbone, photos, args.batch_size, f"{root}/w")
    n = len(photos)
    print("| run | wall (s) | img/s | encoded | from store | forward passes (s) |")
    print("|---|---|---|---|---|---|")
    for name, seconds, report in (("local", local_s, local_report), ("ray", ray_s, ray_report),
                                  ("ray, warm store", warm_s, warm_report)):
        print(f"| {name} | {seconds:.1f} | {n / seconds:.1f} | {report.n_encoded} | "
              f"{report.n_cached} | {report.encoder_seconds:.1f} |")
    print(f"ray / local throughput: {local_s / ray_s:.2f}x "
          f"(Ray's overhead on this machine: {ray_s / local_s:.2f}x the wall time)")
    print(f"embeddings identical: {np.array_equal(local, on_ray)} "
          f"(largest difference {np.abs(local - on_ray).max():.2e}); warm run identical: "
          f"{np.array_equal(on_ray, warm)}")
    print(f"per image, one thread: decode + preprocess {decode:.1f} ms, forward pass "
          f"{forward:.1f} ms, store write {write:.3f} ms")


if __name__ == "__main__":
    main()
