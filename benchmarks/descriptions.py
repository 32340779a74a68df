"""Classification by description: cost at ImageNet scale, and accuracy against templates.

(1) Speed (always run). ImageNet's 1,000 classes with the released descriptors
    (descriptors_imagenet.json, 5,800 prompts), ViT-B-32 text tower with random weights
    (``Backbone("ViT-B-32", "none")``: the cost does not depend on the weights):
      prompts   : matching the file to the class list and building the 5,800 prompt strings;
      encoding  : ours, one ``Backbone.encode_texts`` call over all prompts (length-sorted
                  batches, text tower run only up to the longest prompt of each batch);
                  reference, one ``encode_text`` call per class on 77-token prompts, as
                  classify_by_description_release does (timed on --reference-classes classes
                  and scaled to 1,000);
      scoring   : --images random unit image embeddings (D=512) scored against all classes:
                  reference, a Python loop over classes (X @ E_kᵀ, mean over descriptors, as
                  in the reference's main.py); similarity matrix, one X @ Eᵀ (N, 5,800) and a
                  segment mean by np.add.reduceat; ours, DescriptionClassifier.decision_function,
                  one X @ Mᵀ with the per-class mean descriptor embeddings M (C, D) formed at fit
                  time (the mean of similarities is the similarity to the mean);
                  and ``explain`` (top-3 descriptors of the predicted class) for the same rows.
    Scoring times are the best of --repeat runs; the three scorers' outputs are compared.

    Measured on the development machine (2 CPU cores shared with other jobs, load average
    5-8 during the run, torch 2.15, fp32, batch 256), one run; absolute times are
    pessimistic, ratios are the point:

        | part     | what                                                              | time                     |
        |----------|-------------------------------------------------------------------|--------------------------|
        | prompts  | match 1000 classes + build 5800 prompts                           | 14.7 ms                  |
        | encoding | ours: one batched pass, 5800 prompts (fit)                        | 221.7 s (26 prompts/s)   |
        | encoding | reference: per-class 77-token calls (100 classes, scaled to 1000) | 2192.5 s (3 prompts/s)   |
        | scoring  | reference: Python loop over 1000 classes, 10000 images            | 8789 ms (1,138 images/s) |
        | scoring  | similarity matrix (N, 5800) + np.add.reduceat, 10000 images       | 1421 ms (7,036 images/s) |
        | scoring  | ours: X @ M.T with class-mean embeddings, 10000 images            | 271 ms (36,955 images/s) |
        | scoring  | ours: explain(top=3), 10000 images                                | 477 ms (20,950 images/s) |
        | check    | max |score difference| vs reference; same argmax                  | 1.9e-07; 100.00%         |

(2) Accuracy (needs weights: --checkpoint PATH [--model NAME]). Top-1/top-5 on
    ../shared/data/images: the 1,000 ImageNet sample photos (one per class, labels from the
    file order) with the released ImageNet descriptors, and the CIFAR-10 test photos
    (--cifar-per-class per class) with the released CuPL CIFAR-10 sentences (there are no
    DCLIP descriptors for CIFAR-10). Rows: the bare class name (the reference's baseline),
    "a photo of a {}.", the 80 OpenAI templates, descriptions with the paper's rule and with
    the corrected rule (ImageNet), CuPL sentences scored as descriptions (mean similarity) and
    as CuPL does (normalised mean embedding), both datasets where the data allow.

        python benchmarks/descriptions.py --checkpoint ~/weights/ViT-B-32-openai.pt

Usage: python benchmarks/descriptions.py [--images 10000 --reference-classes 100 --repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zeroshot_plus import Backbone, DescriptionClassifier, ZeroShotClassifier
from zeroshot_plus.text.descriptors import descriptor_prompts, match_descriptors
from zeroshot_plus.evaluation.metrics import top_k_accuracy

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGENET_DESCRIPTORS = DATA / "descriptors" / "descriptors_imagenet.json"


def _best(function, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


# ---------------------------------------------------------------------- (1) speed


def reference_scores(X: np.ndarray, embeddings: list[np.ndarray]) -> np.ndarray:
    """The reference's loop: per class, similarities to its descriptors, then their mean."""
    return np.stack([(X @ E.T).mean(axis=1) for E in embeddings], axis=1)


def similarity_matrix_scores(X: np.ndarray, E: np.ndarray, offsets: np.ndarray,
                             counts: np.ndarray) -> np.ndarray:
    """One (N, P) similarity matrix, then a segment mean over each class's columns."""
    return np.add.reduceat(X @ E.T, offsets, axis=1) / counts


@torch.inference_mode()
def reference_encoding(backbone: Backbone, prompts: list[list[str]]) -> list[np.ndarray]:
    """Per class: tokenise to 77 tokens and run the full text tower (the reference's loop)."""
    model, tokenizer = backbone.model, backbone.tokenizer
    return [F.normalize(model.encode_text(tokenizer(group)), dim=-1).numpy() for group in prompts]


def speed(args) -> list[tuple[str, str, str]]:
    rows = []
    start = time.perf_counter()
    match = match_descriptors(args.descriptors)
    prompts = [descriptor_prompts(name, items) for name, items in
               zip(match.classnames, match.descriptors)]
    n_prompts = sum(len(p) for p in prompts)
    rows.append(("prompts", f"match {len(prompts)} classes + build {n_prompts} prompts",
                 f"{(time.perf_counter() - start) * 1e3:.1f} ms"))

    backbone = Backbone("ViT-B-32", "none", device="cpu", batch_size=args.batch_size,
                        progress=False)
    backbone.encode_texts(["warm-up"], progress=False)  # load and warm up outside the timings
    start = time.perf_counter()
    clf = DescriptionClassifier(backbone, descriptors=str(args.descriptors)).fit()
    ours = time.perf_counter() - start
    rows.append(("encoding", f"ours: one batched pass, {n_prompts} prompts (fit)",
                 f"{ours:.1f} s ({n_prompts / ours:.0f} prompts/s)"))
    subset = prompts[:args.reference_classes]
    n_subset = sum(len(p) for p in subset)
    start = time.perf_counter()
    reference_encoding(backbone, subset)
    ref = (time.perf_counter() - start) * n_prompts / n_subset
    rows.append(("encoding", f"reference: per-class 77-token calls ({len(subset)} classes, "
                             f"scaled to {len(prompts)})",
                 f"{ref:.1f} s ({n_prompts / ref:.0f} prompts/s)"))

    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.images, clf.n_features_in_)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    E, offsets, counts = clf.descriptor_embeddings_, clf.offsets_, clf.counts_
    per_class = [E[o:o + c] for o, c in zip(offsets, counts)]
    n = args.images
    t_ref, s_ref = _best(lambda: reference_scores(X, per_class), args.repeat)
    t_mat, s_mat = _best(lambda: similarity_matrix_scores(X, E, offsets, counts), args.repeat)
    t_ours, s_ours = _best(lambda: clf.decision_function(X) / clf.logit_scale, args.repeat)
    t_why, _ = _best(lambda: clf.explain(X, top=3), args.repeat)
    for name, seconds in ((f"reference: Python loop over {len(per_class)} classes", t_ref),
                          (f"similarity matrix (N, {len(E)}) + np.add.reduceat", t_mat),
                          ("ours: X @ M.T with class-mean embeddings", t_ours),
                          ("ours: explain(top=3)", t_why)):
        rows.append(("scoring", f"{name}, {n} images",
                     f"{seconds * 1e3:.0f} ms ({n / seconds:,.0f} images/s)"))
    gap = max(np.abs(s_mat - s_ref).max(), np.abs(s_ours - s_ref).max())
    same = (s_ours.argmax(1) == s_ref.argmax(1)).mean()
    rows.append(("check", "max |score difference| vs reference; same argmax",
                 f"{gap:.1e}; {same:.2%}"))
    return rows


# ---------------------------------------------------------------------- (2) accuracy


def _imagenet(backbone: Backbone, cache) -> tuple[np.ndarray, np.ndarray]:
    files = sorted((DATA / "images" / "imagenet-samples").glob("*.JPEG"))
    return backbone.encode_images(files, cache=cache), np.arange(len(files))


def _cifar(backbone: Backbone, per_class: int, cache) -> tuple[np.ndarray, np.ndarray, list[str]]:
    root = DATA / "images" / "cifar10" / "test"
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(names):
        chosen = sorted((root / name).glob("*.jpg"))[:per_class]
        files += chosen
        labels += [label] * len(chosen)
    return backbone.encode_images(files, cache=cache), np.array(labels), names


def accuracy(args) -> list[tuple[str, str, str, str]]:
    backbone = Backbone(args.model, checkpoint=args.checkpoint, batch_size=args.batch_size)
    rows = []

    def record(dataset, method, logits, y):
        rows.append((dataset, method, f"{top_k_accuracy(y, logits, 1):.2%}",
                     f"{top_k_accuracy(y, logits, 5):.2%}"))

    imagenet = match_descriptors(args.descriptors)
    X, y = _imagenet(backbone, args.cache)
    names = imagenet.classnames
    for label, templates in (("bare class name", ["{}"]), ("'a photo of a {}.'", ["a photo of a {}."]),
                             ("80 OpenAI templates", "openai_imagenet")):
        clf = ZeroShotClassifier(backbone, classnames=names, templates=templates,
                                 cache=args.cache).fit()
        record("ImageNet samples", label, clf.decision_function(X), y)
    for style in ("menon", "corrected"):
        clf = DescriptionClassifier(backbone, classnames=names, descriptors=str(args.descriptors),
                                    prompt_style=style,
                                    cache=args.cache).fit()
        record("ImageNet samples", f"descriptions ({style} rule)", clf.decision_function(X), y)

    cupl = DATA / "cupl" / "cifar10_prompts_full.json"
    X, y, names = _cifar(backbone, args.cifar_per_class, args.cache)
    for label, templates in (("bare class name", ["{}"]), ("'a photo of a {}.'", ["a photo of a {}."]),
                             ("80 OpenAI templates", "openai_imagenet")):
        clf = ZeroShotClassifier(backbone, classnames=names, templates=templates,
                                 cache=args.cache).fit()
        record("CIFAR-10 test", label, clf.decision_function(X), y)
    clf = DescriptionClassifier(backbone, classnames=names, descriptors=str(cupl),
                                prompt_style="sentences",
                                cache=args.cache).fit()
    record("CIFAR-10 test", "CuPL sentences as descriptions (mean similarity)",
           clf.decision_function(X), y)
    record("CIFAR-10 test", "CuPL sentences as CuPL (normalised mean embedding)",
           X @ clf.text_head_.T, y)
    return rows


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--descriptors", type=Path, default=IMAGENET_DESCRIPTORS)
    parser.add_argument("--images", type=int, default=10_000, help="image embeddings to score")
    parser.add_argument("--reference-classes", type=int, default=100,
                        help="classes encoded the reference's way (scaled to all)")
    parser.add_argument("--repeat", type=int, default=3, help="scoring runs; the best is kept")
    parser.add_argument("--batch-size", type=int, default=256, help="texts/images per pass")
    parser.add_argument("--checkpoint", help="weights file: also measure accuracy")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model of --checkpoint")
    parser.add_argument("--cifar-per-class", type=int, default=1000)
    parser.add_argument("--cache", help="embedding store for images and prompts")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    if not args.descriptors.is_file():
        print(f"descriptor file {args.descriptors} not found (pass --descriptors)", file=sys.stderr)
        return 2
    if not args.skip_speed:
        print(_table(("part", "what", "time"), speed(args)))
    if args.checkpoint:
        print()
        print(_table(("data set", "prompts", "top-1", "top-5"), accuracy(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
