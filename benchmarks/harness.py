"""The benchmark harness's own overhead once embeddings are cached.

A miniature of CoOp's EuroSAT layout is built in a temporary folder from the CIFAR-10 photos in
../shared/data/images/cifar10 (10 classes, as EuroSAT has: class i holds CIFAR-10's class i;
--train / --val / --test photos per class), and the harness runs on it with a random-weight
model: methods zeroshot, gda, descriptions (a made-up descriptor file) and real (the released
EuroSAT REAL metrics, which also give head/tail), protocols zeroshot, fewshot, base2new and
headtail, shots 1, 2, 4, 8, 16 x seeds 1, 2, 3 (GDA: 10 augmented views per support image).
TPT is left out by default: it tunes on every test image's 63 views, which no store saves.

Measured, each in a fresh process state:
  embed once   : every image the harness encodes, into an empty store, with the library
                 directly: the test and val images, and the augmented support views of every
                 (shots, seed) draw, few-shot and base-to-new (views of an image drawn twice
                 with one seed are counted twice, encoded once);
  cold harness : the harness from scratch (empty store, no records);
  cached       : the harness into a new output folder with the store of the cold run: every
                 run is done again, every embedding is read back;
  resumed      : the harness again on the cached run's folder: every run is recorded already.
The ratio "cached / embed once" is the harness's cost, once the embeddings exist, relative to
encoding the data set once.

Measured on the development machine (2 shared CPU cores, torch threads 2), one run each:

    --model tests/zsp-tiny.json (defaults: 250 test+val images, 13,950 support views, 37 runs)
    | embed once 5.81 s | cold 7.28 s | cached 2.14 s (0.058 s/run) | resume 0.35 s | ratio 0.37 |
    --model ViT-B-32 --train 4 --val 2 --test 5 --shots 1,2,4 (70 images, 3,150 views, 25 runs;
    other work loading the machine)
    | embed once 236.4 s | cold 272.8 s | cached 13.3 s (0.53 s/run) | resume 1.5 s | ratio 0.056 |

Usage: python benchmarks/harness.py [--model ViT-B-32 | --model tests/zsp-tiny.json]
       [--train 16 --val 5 --test 20] [--methods zeroshot,gda,descriptions,real]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from zeroshot_plus import Backbone, augmented_support  # noqa: E402
from zeroshot_plus.data.datasets import dataset_classnames, load_dataset  # noqa: E402
from zeroshot_plus.data.fewshot import base_new, few_shot  # noqa: E402
from zeroshot_plus.evaluation.benchmark import Benchmark  # noqa: E402

PROTOCOLS = ["zeroshot", "fewshot", "base2new", "headtail"]


def miniature(root: Path, train: int, val: int, test: int) -> Path:
    """DATA/eurosat/{2750/<class>/*.jpg, split_zhou_EuroSAT.json} from CIFAR-10 photos."""
    cifar = SHARED / "images" / "cifar10" / "train"
    folder = root / "eurosat"
    split = {"train": [], "val": [], "test": []}
    ranges = {"train": (0, train), "val": (train, val), "test": (train + val, test)}
    classes = sorted(p.name for p in cifar.iterdir())
    for label, (cifar_class, name) in enumerate(zip(classes, dataset_classnames("eurosat"))):
        photos = sorted((cifar / cifar_class).iterdir())
        disk = name.replace(" ", "")
        (folder / "2750" / disk).mkdir(parents=True)
        for part, (first, count) in ranges.items():
            for photo in photos[first:first + count]:
                (folder / "2750" / disk / photo.name).write_bytes(photo.read_bytes())
                split[part].append([f"{disk}/{photo.name}", label, name])
    (folder / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    return root


def backbone(args) -> Backbone:
    return Backbone(args.model, "none", progress=False, batch_size=args.batch_size)


def embed_once(args, data: Path, store: Path) -> tuple[float, int, int]:
    """Seconds to encode what the harness encodes, into an empty store; (images, views)."""
    bb = backbone(args)
    bb.model  # loading is not encoding
    dataset = load_dataset("eurosat", data)
    start = time.perf_counter()
    bb.encode_images(dataset.test, cache=store)
    bb.encode_images(dataset.val, cache=store)
    views = 0
    if "gda" in args.methods:
        for shots in args.shots:
            for seed in args.seeds:
                # few-shot draws, and base-to-new's (GDA's single draw, base classes)
                for support in (few_shot(dataset, shots, seed, protocol="gda").train,
                                base_new(few_shot(dataset, shots, seed, protocol="gda_single"),
                                         "base").train):
                    views += len(augmented_support(bb, support, n_views=10, random_state=seed,
                                                   cache=store).X)
    return time.perf_counter() - start, len(dataset.test) + len(dataset.val), views


def harness(args, data: Path, out: Path, store: Path, inputs: dict) -> tuple[float, object]:
    bb = backbone(args)
    bb.model
    start = time.perf_counter()
    report = Benchmark(bb, data, datasets=["eurosat"], methods=args.methods, protocols=PROTOCOLS,
                       shots=args.shots, seeds=args.seeds, out=out, cache=store, progress=False,
                       **inputs).run()
    return time.perf_counter() - start, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32",
                        help="open_clip model (random weights) or a model-config JSON")
    parser.add_argument("--train", type=int, default=16, help="train photos per class")
    parser.add_argument("--val", type=int, default=5, help="val photos per class")
    parser.add_argument("--test", type=int, default=20, help="test photos per class")
    parser.add_argument("--methods", default="zeroshot,gda,descriptions,real")
    parser.add_argument("--shots", default="1,2,4,8,16")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    args.shots, args.seeds = ([int(v) for v in text.split(",")]
                              for text in (args.shots, args.seeds))
    metrics = SHARED / "real" / "eurosat" / "metrics-LAION400M-satellite.json"
    if not metrics.is_file():
        sys.exit(f"needs the CIFAR-10 photos and the released REAL EuroSAT metrics in {SHARED}")
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = miniature(tmp / "data", args.train, args.val, args.test)
        descriptors = tmp / "descriptors.json"
        descriptors.write_text(json.dumps({name: ["a field seen from above", "has straight edges"]
                                           for name in dataset_classnames("eurosat")}))
        inputs = {"descriptors": {"eurosat": descriptors}, "real_metrics": {"eurosat": metrics}}
        embed, n_images, n_views = embed_once(args, data, tmp / "store-once")
        cold, report = harness(args, data, tmp / "cold", tmp / "store", inputs)
        cached, cached_report = harness(args, data, tmp / "cached", tmp / "store", inputs)
        resumed, resumed_report = harness(args, data, tmp / "cached", tmp / "store", inputs)
    runs = report.planned
    print(f"model {args.model} (random weights), torch threads {torch.get_num_threads()}; "
          f"EuroSAT miniature: {n_images} test+val images, {n_views} support views; "
          f"{runs} runs ({', '.join(args.methods)} x {', '.join(PROTOCOLS)}; shots "
          f"{args.shots} x seeds {args.seeds}); {len(report.skipped)} skipped\n")
    rows = [("embed once (empty store)", embed, "-", "encodes every image and view once"),
            ("harness, cold", cold, f"{cold / runs:.3f}",
             f"{report.images_encoded} images encoded"),
            ("harness, cached embeddings", cached, f"{cached / runs:.3f}",
             f"{cached_report.ran} runs done, {cached_report.images_from_store} images and every "
             f"view from the store"),
            ("harness, all recorded (resume)", resumed, f"{resumed / runs:.4f}",
             f"{resumed_report.resumed} runs found done")]
    print("| step | seconds | s / run | notes |\n|---|---|---|---|")
    for name, seconds, per_run, notes in rows:
        print(f"| {name} | {seconds:.2f} | {per_run} | {notes} |")
    print(f"\ncached harness / embed once = {cached / embed:.3f}")


if __name__ == "__main__":
    main()
