"""ComCLIP on this CPU: pairs per second against plain CLIP on the same pairs, and the rule
parser's accuracy on ComVG's annotated subject-verb-object triplets.

Speed: ViT-B-32 with random weights (`--pretrained none`; weights do not change the cost),
N full-size ImageNet sample photos from ../shared/data/images/imagenet-samples and N
captions generated from their class names ("a {adjective} {class} next to a {other class}",
...), all N x N pairs scored by

- CLIP: ``Backbone.encode_images`` + ``encode_texts`` + a matrix product;
- ComCLIP, entities only, and entities + relations: ``ComCLIPMatcher.decision_function``
  (candidate regions per image, sub-images encoded once each, batched);
- ComCLIP per pair: the same matcher called on one pair at a time (nothing shared between
  pairs, as the reference runs), on the first ``--loop-pairs`` pairs.

Each row is a fresh matcher without an embedding store, so every image is decoded and every
sub-image encoded; wall and CPU seconds are both printed (CPU time is steadier on a shared
machine).

    python benchmarks/comclip.py [--images DIR] [--n-images 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from zeroshot_plus import Backbone, ComCLIPMatcher
from zeroshot_plus.text.parsing import parse_caption, read_comvg_triplets, triplet_accuracy

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ADJECTIVES = ("small", "red", "old", "white", "large", "dark")
PATTERNS = ("a {adj} {a} next to a {b}", "a {a} is sitting on a {adj} {b}",
            "a {b} behind a {adj} {a}", "a {adj} {a} is looking at a {b}")


def captions_for(paths: list[Path]) -> list[str]:
    names = [p.stem.split("_", 1)[1].replace("_", " ") for p in paths]
    return [PATTERNS[i % len(PATTERNS)].format(adj=ADJECTIVES[i % len(ADJECTIVES)], a=name,
                                               b=names[(i + 1) % len(names)])
            for i, name in enumerate(names)]


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED / "images" / "imagenet-samples")
    parser.add_argument("--comvg", type=Path, default=SHARED / "comvg" / "ComVG.csv")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--n-images", type=int, default=6)
    parser.add_argument("--loop-pairs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    paths = sorted(args.images.glob("*.JPEG"))[:: max(1, 1000 // args.n_images)][:args.n_images]
    captions = captions_for(paths)
    backbone = Backbone(args.model, "none", device="cpu", progress=False)
    backbone.encode_texts(["warm up"])
    n_pairs = len(paths) * len(captions)
    print(f"{args.model} (random weights), {len(paths)} ImageNet sample photos x {len(captions)} "
          f"captions = {n_pairs} pairs, {args.threads} threads; e.g. '{captions[0]}'\n")

    rows = []
    clip, wall, cpu = timed(lambda: backbone.encode_images(paths) @ backbone.encode_texts(captions).T)
    rows.append(("CLIP", n_pairs, wall, cpu, len(paths)))
    for name, components in (("ComCLIP, entities", ("entities",)),
                             ("ComCLIP, entities + relations", ("entities", "relations"))):
        matcher = ComCLIPMatcher(backbone, components=components)
        counter = _count_encodes(backbone)
        scores, wall, cpu = timed(lambda: matcher.decision_function(paths, captions))
        rows.append((name, n_pairs, wall, cpu, counter.restore()))
        if components == ("entities", "relations"):
            full = scores
    matcher = ComCLIPMatcher(backbone)
    pairs = [(i, j) for i in range(len(paths)) for j in range(len(captions))][:args.loop_pairs]
    counter = _count_encodes(backbone)
    loop, wall, cpu = timed(lambda: [matcher.decision_function([paths[i]], [captions[j]])[0, 0]
                                     for i, j in pairs])
    rows.append(("ComCLIP per pair (no sharing)", len(pairs), wall, cpu, counter.restore()))
    assert np.allclose(loop, [full[i, j] for i, j in pairs], atol=1e-5)

    base = rows[0][1] / rows[0][2]
    print(f"{'':32} {'pairs':>6} {'wall s':>8} {'CPU s':>8} {'pairs/s':>8} {'vs CLIP':>8} "
          f"{'images encoded':>15}")
    for name, n, wall, cpu, encoded in rows:
        print(f"{name:32} {n:6d} {wall:8.2f} {cpu:8.2f} {n / wall:8.2f} "
              f"{n / wall / base:8.3f} {encoded:15d}")
    agree = (full.argmax(axis=1) == clip.argmax(axis=1)).mean()
    print(f"\nbest caption per image, ComCLIP = CLIP: {agree:.0%} (random weights: not a "
          f"quality measure)")

    if args.comvg.is_file():
        sentences, triplets = read_comvg_triplets(args.comvg)
        accuracy, wall, _ = timed(lambda: triplet_accuracy(sentences, triplets))
        print(f"\nrule parser on ComVG ({accuracy['n']} distinct sentences with annotated "
              f"triplets; {accuracy['n'] / wall:,.0f} captions/s incl. scoring):")
        print(f"  subject {accuracy['subject']:.1%}  verb {accuracy['verb']:.1%}  object "
              f"{accuracy['object']:.1%}  whole triplet {accuracy['triplet']:.1%}")
        misses = [(s, t, parse_caption(s).triplets()[:1]) for s, t in zip(sentences, triplets)]
        misses = [m for m in misses if not triplet_accuracy([m[0]], [m[1]])["triplet"]]
        for sentence, gold, parsed in misses[:5]:
            print(f"  miss: '{sentence}' annotated {gold}, parsed {parsed}")


class _count_encodes:
    """Counts the images that go through ``backbone.encode_pixels`` until restored."""

    def __init__(self, backbone: Backbone):
        self.backbone, self.count = backbone, 0
        original = backbone.encode_pixels

        def counting(pixels):
            self.count += len(pixels)
            return original(pixels)

        backbone.encode_pixels = counting

    def restore(self) -> int:
        del self.backbone.encode_pixels
        return self.count


if __name__ == "__main__":
    main()
