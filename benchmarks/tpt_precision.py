"""TPT's first gradient under fp16 / bf16 autocast against fp32, on this CPU.

TPT takes its first AdamW step in closed form, ctx ← ctx·(1 − lr·wd) − lr·g / (|g| + eps):
a sign step wherever |g| >> eps = 1e-8, a zero step where g underflowed to exactly 0. The
reference (azshue/TPT) wraps its step in a GradScaler under fp16; ours has no loss scaling.
This measures whether it needs one: for each model, class count and precision, the gradient
g of the marginal entropy with respect to the context at ctx_0 ("a photo of a"), as
``TPTClassifier`` computes it (T(ctx_0), dL/dT and the text tower's backward pass, under
``Backbone(precision=...)``'s autocast), against the fp32 gradient g32 of the same images.

Models: ViT-B-32 with random weights and the tests' tiny model (tests/zsp-tiny.json); full-size
ImageNet sample photos; the first 10 and 100 of their class names; the paper's views (the
original + 63 crop/flip views, the 10% most confident kept). The views are encoded and selected
once, in fp32, so that every precision differentiates the same loss: only the gradient's path
runs under fp16 / bf16. Columns, over all images' entries (B·n_ctx·W):

- zero: fraction of entries with g == 0 exactly (underflow; g32 has none), and rows
  (context vectors) that are zero throughout;
- non-finite: entries that are NaN or ±inf;
- cosine: the smallest, over images, cosine similarity of g to g32;
- sign differs: fraction of entries whose AdamW step has another sign than fp32's;
- |g32| at flips: the largest |g32| among those entries, ÷ the median |g32| (small: only
  entries near zero flip);
- min |g|: the smallest |g|, against eps = 1e-8 (far above: every step is ±lr).

    python benchmarks/tpt_precision.py [--images DIR] [--n-images 2] [--classes 10 100]

CPU autocast emulates fp16 matrix products on most CPUs: the fp16 rows take several times as
long as the others.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from measure import imagenet_photos
from zeroshot_plus import Backbone, TPTClassifier
from zeroshot_plus.methods.tpt import AugmentedViews, confident_views

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "images" / "imagenet-samples"
MODELS = ("ViT-B-32", str(REPO / "tests" / "zsp-tiny.json"))
PRECISIONS = ("fp16", "bf16")


def cpu_autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype a linear layer's output has under CPU autocast to ``precision``; None when
    this torch cannot autocast to it on the CPU."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    try:
        with torch.autocast("cpu", dtype=dtype):
            return torch.nn.functional.linear(torch.ones(2, 2), torch.ones(2, 2)).dtype
    except RuntimeError:
        return None


def first_gradients(backbone: Backbone, names: list[str], features: list[torch.Tensor],
                    selected: list[torch.Tensor]) -> torch.Tensor:
    """TPT's first gradient (B, n_ctx, W) for the views (V', D) of B images, given the views
    to keep, with ``backbone``'s precision."""
    clf = TPTClassifier(backbone, classnames=names).fit()
    return clf._first_gradient([f[s] for f, s in zip(features, selected)])


def compare(grad: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """The table's columns for a gradient (B, n, W) against the fp32 one."""
    flips = torch.sign(grad) != torch.sign(reference)
    magnitude = reference.abs()
    return {
        "zero": float((grad == 0).float().mean()),
        "zero_rows": int((grad == 0).all(dim=-1).sum()),
        "rows": grad.shape[0] * grad.shape[1],
        "non_finite": int((~torch.isfinite(grad)).sum()),
        "cosine": float(F.cosine_similarity(grad.flatten(1), reference.flatten(1), dim=1).min()),
        "flips": float(flips.float().mean()),
        "flip_size": float(magnitude[flips].max() / magnitude.median()) if flips.any() else 0.0,
        "min_abs": float(grad.abs().min()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--n-images", type=int, default=2)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    torch.manual_seed(0)
    images, all_names = imagenet_photos(args.images, args.n_images)
    precisions = [p for p in PRECISIONS if cpu_autocast_dtype(p) is not None]
    for p in PRECISIONS:
        print(f"CPU autocast to {p}: linear layers give {cpu_autocast_dtype(p) or 'an error'}")
    print(f"{args.n_images} photos, 64 views, 10% kept, {torch.get_num_threads()} threads\n")
    print("| model | classes | precision | zero entries (rows) | non-finite | cosine to fp32 "
          "(min) | sign differs | largest \\|g32\\| at a flip ÷ median | min \\|g\\| (fp32) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in MODELS:
        backbones = {p: Backbone(model, "none", device="cpu", precision=p, progress=False)
                     for p in ("fp32", *precisions)}
        views = AugmentedViews(backbones["fp32"], 63, False, 0)
        features = [torch.from_numpy(backbones["fp32"].encode_pixels(views.render(image)))
                    for image in images]
        for n_classes in args.classes:
            names = all_names[:n_classes]
            weights = TPTClassifier(backbones["fp32"], classnames=names).fit()
            scale = weights._learner.logit_scale
            selected = [confident_views(scale * f @ weights._init_weights.T, 0.1) for f in features]
            reference = first_gradients(backbones["fp32"], names, features, selected)
            for p in precisions:
                c = compare(first_gradients(backbones[p], names, features, selected), reference)
                print(f"| {Path(model).stem} | {n_classes} | {p} | {c['zero']:.2%} "
                      f"({c['zero_rows']}/{c['rows']}) | {c['non_finite']} | {c['cosine']:.6f} | "
                      f"{c['flips']:.2%} | {c['flip_size']:.3f} | {c['min_abs']:.1e} "
                      f"({float(reference.abs().min()):.1e}) |", flush=True)


if __name__ == "__main__":
    main()
