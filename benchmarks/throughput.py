"""Throughput of `zeroshot-plus predict` against the bare encoder, in one run.

Over the 1,000 full-size ImageNet sample photos in ../shared/data/images/imagenet-samples with
ViT-B-32 (random weights, `--pretrained none`) and the 1,000 ImageNet class names:

1. bare encoder: `model.encode_image` over the same photos already decoded and preprocessed
   into tensors (batches of --batch-size, torch.inference_mode), images per second, measured
   just before and just after each cold run and averaged (a shared machine drifts over minutes);
2. end to end, cold store: the `zeroshot-plus predict` command as a user runs it (process start,
   imports, model build, decoding, encoding, writing the store and the CSV), with the class
   prompts already in the store (their one-off cost is printed separately). The command also
   logs (-v) the seconds its encoder's forward passes took: the share of its wall time they
   fill is the pipeline's efficiency measured within one run, free of the machine's drift
   between runs;
3. end to end, warm store: the same command again, every embedding read back from the store;
4. start-up against steady state: each round also runs the cold command over the first quarter
   of the photos. The extra photos' extra seconds give the command's steady rate (its marginal
   images per second, start-up excluded), and the quarter's wall less its photos at that rate
   gives its fixed start-up seconds (imports, model build or compiled-tower load); from them,
   the number of photos from which a cold run reaches 0.95x the bare encoder;
5. peak memory (max RSS of the command) over 250 and 1,000 images, to show that it stays flat;
6. predict in Python: ``make_pipeline(ImageEmbedder(backbone, cache=STORE), ZeroShotClassifier)``
   ``.predict(paths)`` in this process, the backbone already built and the classifier fitted (as
   in a notebook or a service), from the same file paths into a fresh store, against the bare
   encoder measured just before and after it; its labels are compared with the command's.

With ``--runtime openvino`` (or another ``Backbone(runtime=...)``), both sides run the image
tower on that runtime: the bare encoder is that runtime's, and the command gets ``--runtime``.
The tower is compiled once, before the measured runs, into the store the cold runs start from
(``--cache DIR`` keeps compiled towers in DIR/compiled), so they load it as a user's second run
does.

Usage: python benchmarks/throughput.py [--images DIR] [--batch-size 64] [--workers N] [--rounds 2]
                                       [--runtime torch|openvino|onnxruntime|onnxruntime-int8]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.pipeline import make_pipeline

from measure import run_measured
from zeroshot_plus import Backbone, ImageEmbedder, ZeroShotClassifier
from zeroshot_plus.choices import RUNTIMES
from zeroshot_plus.data.images import open_image
from zeroshot_plus.data.sources import read_image_source

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "imagenet-samples"


def run_command(argv: list[str]) -> tuple[float, float, float]:
    """Run a command; return (wall seconds, peak RSS in MiB) of that command alone, and the
    seconds its image encoder's forward passes took (its -v log; 0 when it encoded nothing)."""
    wall, peak, _, log = run_measured(argv)
    forward = re.search(r"\(([\d.]+) s in the image encoder's forward passes\)", log)
    return wall, peak, float(forward.group(1)) if forward else 0.0


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
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch")
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
                   "--batch-size", str(args.batch_size), "--runtime", args.runtime,
                   "--no-progress", "-v"]
        if args.workers is not None:
            command += ["--workers", str(args.workers)]

        backbone = Backbone(args.model, "none", batch_size=args.batch_size, progress=False,
                            runtime=args.runtime, compiled_dir=tmp / "store" / "compiled")
        backbone.image_tower  # compiled here, once, into the store the cold runs copy
        pixels = torch.stack([backbone.preprocess(open_image(p)) for p in paths])

        # one-off: the 1,000 class prompts, encoded into the store of the measured runs
        text_wall, _, _ = run_command(command + [str(paths[0]), "--cache", str(tmp / "store"),
                                              "--out", str(tmp / "warmup.csv")])
        (tmp / "store").rename(tmp / "text-only")

        def cold_store(name: str) -> Path:
            store = tmp / f"store-{name}"
            subprocess.run(["cp", "-r", str(tmp / "text-only"), str(store)], check=True)
            for shard in store.glob("*/images/*.npz"):  # the warm-up's one image
                shard.unlink()
            return store

        # the same classifier in Python, its 1,000 prompts encoded here, before the measured runs
        classifier = ZeroShotClassifier(backbone, classnames=names, templates="photo",
                                        cache=tmp / "library-texts").fit()

        # rounds of bare encoder -> predict in Python -> bare encoder -> quarter, cold and warm
        # commands -> bare encoder, so that each measured run is compared with the encoder
        # measured just before and after it
        bare = [bare_encoder_rate(backbone, pixels, args.batch_size)]
        rounds, quarters, library = [], [], []
        for r in range(args.rounds):
            pipeline = make_pipeline(ImageEmbedder(backbone, cache=tmp / f"library{r}"), classifier)
            start = time.perf_counter()
            labels = pipeline.predict([str(p) for p in paths])
            library.append(time.perf_counter() - start)
            bare.append(bare_encoder_rate(backbone, pixels, args.batch_size))
            quarters.append(run_command(command + [str(quarter), "--cache",
                                                   str(cold_store(f"quarter{r}")),
                                                   "--out", str(tmp / "quarter.csv")])[:2])
            store = cold_store(f"round{r}")
            cold_wall, cold_rss, forward = run_command(
                command + [str(args.images), "--cache", str(store), "--out", str(tmp / "cold.csv")])
            warm_wall, warm_rss, _ = run_command(
                command + [str(args.images), "--cache", str(store), "--out", str(tmp / "warm.csv")])
            bare.append(bare_encoder_rate(backbone, pixels, args.batch_size))
            rounds.append((cold_wall, cold_rss, forward, warm_wall, warm_rss))
        quarter_rss = max(rss for _, rss in quarters)
        rows = np.loadtxt(tmp / "cold.csv", delimiter=",", skiprows=1, dtype=str, usecols=(0, 1))
        command_labels = dict(rows.tolist())
        same = sum(command_labels[str(p)] == label for p, label in zip(paths, labels))

    n = len(paths)
    print(f"zeroshot-plus predict throughput — {args.model} (runtime {args.runtime}), random "
          f"weights, {n} photos from "
          f"{args.images.name}, batch {args.batch_size}, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} cores")
    print(f"(one-off: encoding the 1,000 class prompts took {text_wall:.1f} s including start-up)")
    print()
    print("| round | bare encoder (img/s, before / after) | predict, cold store: wall (s) | "
          "img/s | vs bare encoder | its forward passes: s (img/s) | forward share of its wall "
          "| predict, warm store: wall (s) | warm vs cold |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios, shares, inside, speedups = [], [], [], []
    for r, (cold_wall, _, forward, warm_wall, _) in enumerate(rounds):
        before, after = bare[2 * r + 1], bare[2 * r + 2]
        reference = (before + after) / 2
        ratios.append(n / cold_wall / reference)
        shares.append(forward / cold_wall)
        inside.append(n / forward / reference)
        speedups.append(cold_wall / warm_wall)
        print(f"| {r + 1} | {before:.1f} / {after:.1f} | {cold_wall:.1f} | "
              f"{n / cold_wall:.1f} | {ratios[-1]:.2f}x | {forward:.1f} ({n / forward:.1f}) | "
              f"{shares[-1]:.2f} | {warm_wall:.2f} | {speedups[-1]:.1f}x |")
    print()
    print(f"mean over {len(rounds)} rounds: cold store {np.mean(ratios):.2f}x the bare encoder "
          f"(goal 0.95x; spread {min(ratios):.2f}-{max(ratios):.2f}); within each cold run, "
          f"the forward passes fill {np.mean(shares):.2f} of the wall time (spread "
          f"{min(shares):.2f}-{max(shares):.2f}), and run at {np.mean(inside):.2f}x the bare "
          f"encoder's rate; warm store {np.mean(speedups):.1f}x faster than cold (target 20x).")
    print()
    print(f"| round | {n // 4} photos, cold: wall (s) | steady rate: img/s (vs bare encoder) | "
          f"start-up (s) | photos for 0.95x |")
    print("|---|---|---|---|---|")
    for r, ((quarter_wall, _), (cold_wall, *_)) in enumerate(zip(quarters, rounds)):
        reference = (bare[2 * r + 1] + bare[2 * r + 2]) / 2
        steady = (n - n // 4) / (cold_wall - quarter_wall)
        fixed = quarter_wall - (n // 4) / steady
        goal = 0.95 * reference
        needed = f"{0.95 * reference * fixed / (1 - goal / steady):,.0f}" if steady > goal else "never"
        print(f"| {r + 1} | {quarter_wall:.1f} | {steady:.1f} ({steady / reference:.2f}x) | "
              f"{fixed:.1f} | {needed} |")
    print()
    print("predict in Python (backbone built, classifier fitted; fresh store):")
    print()
    print("| round | bare encoder (img/s, before / after) | predict: wall (s) | img/s | "
          "vs bare encoder |")
    print("|---|---|---|---|---|")
    in_python = []
    for r, wall in enumerate(library):
        before, after = bare[2 * r], bare[2 * r + 1]
        in_python.append(n / wall / ((before + after) / 2))
        print(f"| {r + 1} | {before:.1f} / {after:.1f} | {wall:.1f} | {n / wall:.1f} | "
              f"{in_python[-1]:.2f}x |")
    print()
    print(f"mean {np.mean(in_python):.2f}x the bare encoder (goal 0.95x); its labels equal the "
          f"command's for {same} of {n} photos.")
    print()
    print(f"{len(rows)} prediction rows written. Peak RSS: {quarter_rss:.0f} MiB for {n // 4} "
          f"images, {rounds[0][1]:.0f} MiB for {n} (cold), {rounds[0][4]:.0f} MiB (warm).")

if __name__ == "__main__":
    main()
