"""Throughput of `zeroshot-plus predict` against the bare encoder, in one run.

Over the 1,000 full-size ImageNet sample photos in ../shared/data/images/imagenet-samples with
ViT-B-32 (random weights, `--pretrained none`) and the 1,000 ImageNet class names:

1. bare encoder: `model.encode_image` over the same photos already decoded and preprocessed
   into tensors (batches of --batch-size, torch.inference_mode), images per second, measured
   before and after the commands and averaged (a shared machine drifts over minutes);
2. end to end, cold store: the `zeroshot-plus predict` command as a user runs it (process start,
   imports, model build, decoding, encoding, writing the store and the CSV), with the class
   prompts already in the store (their one-off cost is printed separately);
3. end to end, warm store: the same command again, every embedding read back from the store;
4. peak memory (max RSS of the command) over 250 and 1,000 images, to show that it stays flat.

Usage: python benchmarks/throughput.py [--images DIR] [--batch-size 64] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from measure import run_measured
from zeroshot_plus import Backbone
from zeroshot_plus.images import open_image, read_image_source

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "imagenet-samples"


def run_command(argv: list[str]) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS in MiB) of that command alone."""
    wall, peak, _ = run_measured(argv)
    return wall, peak


def bare_encoder_rate(backbone: Backbone, pixels: torch.Tensor, batch_size: int) -> float:
    """Images per second of the encoder alone over pre-decoded, preprocessed tensors."""
    backbone.encode_pixels(pixels[:batch_size])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        backbone.encode_pixels(pixels[i:i + batch_size])
    return len(pixels) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    if not args.images.is_dir():
        sys.exit(f"no images at {args.images}; pass --images DIR")
    paths = read_image_source(args.images).items
    import open_clip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        classes = tmp / "classes.txt"
        names = list(open_clip.IMAGENET_CLASSNAMES)
        # open_clip's list names two classes 'missile' and two 'sunglasses'
        names = [n if names.index(n) == i else f"{n} ({i})" for i, n in enumerate(names)]
        classes.write_text("\n".join(names))
        quarter = tmp / "quarter.csv"
        quarter.write_text("path\n" + "\n".join(str(p) for p in paths[: len(paths) // 4]))
        command = [sys.executable, "-m", "zeroshot_plus.cli", "predict", "--model", args.model,
                   "--pretrained", "none", "--classes", str(classes), "--templates", "photo",
                   "--batch-size", str(args.batch_size), "--no-progress"]
        if args.workers is not None:
            command += ["--workers", str(args.workers)]

        backbone = Backbone(args.model, "none", batch_size=args.batch_size, progress=False)
        pixels = torch.stack([backbone.preprocess(open_image(p)) for p in paths])
        bare_before = bare_encoder_rate(backbone, pixels, args.batch_size)

        # one-off: the 1,000 class prompts, encoded into the store of the measured runs
        text_wall, _ = run_command(command + [str(paths[0]), "--cache", str(tmp / "store"),
                                              "--out", str(tmp / "warmup.csv")])
        (tmp / "store").rename(tmp / "text-only")
        cold_runs = []
        for name, source, n in (("cold", args.images, len(paths)), ("quarter", quarter, len(paths) // 4)):
            store = tmp / f"store-{name}"
            subprocess.run(["cp", "-r", str(tmp / "text-only"), str(store)], check=True)
            # drop the one image embedded by the warm-up so that every image is encoded
            for shard in (store).glob("*/images/*.npz"):
                shard.unlink()
            wall, rss = run_command(command + [str(source), "--cache", str(store),
                                               "--out", str(tmp / f"{name}.csv")])
            cold_runs.append((name, n, wall, rss, store))
        _, n, cold_wall, cold_rss, store = cold_runs[0]
        warm_wall, warm_rss = run_command(command + [str(args.images), "--cache", str(store),
                                                     "--out", str(tmp / "warm.csv")])
        rows = np.loadtxt(tmp / "cold.csv", delimiter=",", skiprows=1, dtype=str, usecols=0)
    bare_after = bare_encoder_rate(backbone, pixels, args.batch_size)
    bare = (bare_before + bare_after) / 2

    e2e = n / cold_wall
    print(f"zeroshot-plus predict throughput — {args.model}, random weights, {n} photos from "
          f"{args.images.name}, batch {args.batch_size}, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} cores")
    print(f"(one-off: encoding the 1,000 class prompts took {text_wall:.1f} s including start-up; "
          f"bare encoder {bare_before:.1f} img/s before the commands, {bare_after:.1f} after)")
    print()
    print(f"| run | wall (s) | images/s | vs bare encoder | peak RSS (MiB) |")
    print(f"|---|---|---|---|---|")
    print(f"| bare encoder, preprocessed tensors | {n / bare:.1f} | {bare:.1f} | 1.00x | - |")
    print(f"| predict, cold store ({n} images) | {cold_wall:.1f} | {e2e:.1f} | {e2e / bare:.2f}x | {cold_rss:.0f} |")
    _, q_n, q_wall, q_rss, _ = cold_runs[1]
    print(f"| predict, cold store ({q_n} images) | {q_wall:.1f} | {q_n / q_wall:.1f} | {q_n / q_wall / bare:.2f}x | {q_rss:.0f} |")
    print(f"| predict, warm store ({n} images) | {warm_wall:.1f} | {n / warm_wall:.1f} | {n / warm_wall / bare:.2f}x | {warm_rss:.0f} |")
    print()
    print(f"warm store is {cold_wall / warm_wall:.1f}x faster than the cold run; "
          f"{len(rows)} prediction rows written; peak memory {q_rss:.0f} MiB for {q_n} images "
          f"vs {cold_rss:.0f} MiB for {n}.")


if __name__ == "__main__":
    main()
