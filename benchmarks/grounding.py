"""ComCLIP's grounding on this machine: the added cost per image-caption pair of detector
grounding against grid grounding and plain CLIP, in one run.

ViT-B-32 with random weights as the backbone and, unless ``--detector`` names a real
checkpoint folder, an OWLv2 of the base-patch16 architecture at 960 x 960 pixels (the size of
google/owlv2-base-patch16-ensemble) with random weights and a byte-level toy vocabulary:
weights change neither the cost nor the number of boxes asked for (``box_threshold=0``, so
every entity gets ``max_boxes`` = 3 boxes whatever random weights score). N ImageNet sample photos
x N captions (built from their class names), all N x N pairs scored by

- CLIP: ``ComCLIPMatcher(components=())``;
- ComCLIP, grid grounding (the default): 19 candidate regions per image;
- ComCLIP, detector grounding: one detector pass per image for all its entities' words, then
  the boxes' sub-images;
- both again by a fresh matcher on the store the first run filled (re-scoring: detections and
  sub-image embeddings are read back, nothing is detected or encoded).

    python benchmarks/grounding.py [--n-images 4] [--threads 2] [--device cpu] [--detector DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's library, not an installed copy
SHARED = REPO.parent / "shared" / "data"

from zeroshot_plus import Backbone, ComCLIPMatcher  # noqa: E402
from zeroshot_plus.encoders.detector import Detector  # noqa: E402

PATTERNS = ("a small {a} next to a {b}", "a {a} is sitting on a red {b}",
            "a {b} behind an old {a}", "a white {a} is looking at a {b}")


def captions_for(paths: list[Path], patterns: tuple[str, ...]) -> list[str]:
    names = [p.stem.split("_", 1)[1].replace("_", " ") for p in paths]
    return [patterns[i % len(patterns)].format(a=name, b=names[(i + 1) % len(names)])
            for i, name in enumerate(names)]


def random_owlv2(folder: Path) -> Path:
    """OWLv2 base-patch16 at 960 px, random weights, saved with a toy processor."""
    import transformers

    vocab = {chr(c): c - 33 for c in range(33, 127)}
    vocab.update({chr(c) + "</w>": 94 + c - 33 for c in range(33, 127)})
    vocab.update({"<|startoftext|>": 188, "<|endoftext|>": 189})
    config = transformers.Owlv2Config(
        text_config={"bos_token_id": 188, "eos_token_id": 189, "pad_token_id": 189},
        vision_config={"image_size": 960, "patch_size": 16})
    torch.manual_seed(0)
    transformers.Owlv2ForObjectDetection(config).save_pretrained(folder)
    transformers.Owlv2Processor(
        image_processor=transformers.Owlv2ImageProcessor(size={"height": 960, "width": 960}),
        tokenizer=transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16),
    ).save_pretrained(folder)
    return folder


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED / "images" / "imagenet-samples")
    parser.add_argument("--n-images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--detector", type=Path, help="a local OWLv2 / OWL-ViT folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    paths = sorted(args.images.glob("*.JPEG"))[:: max(1, 1000 // args.n_images)][:args.n_images]
    captions = captions_for(paths, PATTERNS)
    backbone = Backbone("ViT-B-32", "none", device=args.device, progress=False)
    backbone.encode_texts(["warm up"])
    n_pairs = len(paths) * len(captions)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        folder = args.detector or random_owlv2(work / "owlv2")
        detector = Detector(folder, device=args.device, progress=False)
        detector.load()
        print(f"ViT-B-32 (random weights), detector {'random OWLv2 base-patch16 960 px' if args.detector is None else folder}, "
              f"{len(paths)} photos x {len(captions)} captions = {n_pairs} pairs, "
              f"{args.threads} threads, {args.device}; e.g. '{captions[0]}'\n")
        rows = []
        for name, params, store in (
                ("CLIP", {"components": ()}, "clip"),
                ("ComCLIP, grid grounding", {}, "grid"),
                ("ComCLIP, detector grounding", {"grounding": "detector"}, "det"),
                ("ComCLIP, grid, re-scored (store)", {}, "grid"),
                ("ComCLIP, detector, re-scored (store)", {"grounding": "detector"}, "det")):
            matcher = ComCLIPMatcher(backbone, detector=detector, box_threshold=0.0,
                                     cache=work / store, **params)
            _, wall, cpu = timed(lambda: matcher.decision_function(paths, captions))
            rows.append((name, wall, cpu))
    base = rows[0][1]
    print(f"{'':40} {'wall s':>8} {'CPU s':>8} {'s/pair':>8} {'added s/pair':>13} {'x CLIP':>8}")
    for name, wall, cpu in rows:
        print(f"{name:40} {wall:8.2f} {cpu:8.2f} {wall / n_pairs:8.3f} "
              f"{(wall - base) / n_pairs:13.3f} {wall / base:8.1f}")
    grid, cold = rows[1][1], rows[2][1]
    print(f"\ndetector vs grid grounding: {cold / grid:.2f}x the time "
          f"({(cold - grid) / n_pairs:+.3f} s per pair, {(cold - grid) / len(paths):+.2f} s "
          f"per image)")


if __name__ == "__main__":
    main()
