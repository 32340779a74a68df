"""Seconds per image of test-time prompt tuning on this CPU: ours against the reference loop.

Speed (the default): ViT-B-32 with random weights (`--pretrained none`), a few full-size
ImageNet sample photos from ../shared/data/images/imagenet-samples, 10 and 100 ImageNet class
names, the paper's setting (1 original + 63 crop/flip views, p = 0.1, one AdamW step, lr 5e-3).
Both sides get the same decoded images and the same views, in one run:

- reference: a straightforward port of the reference loop (azshue/TPT, METHODS.md §4.2), one
  image at a time: reset ctx and a fresh torch.optim.AdamW; per step encode all 64 views and
  run the text tower over the full 77 tokens with gradients; then encode the original view
  again and run the 77-token text tower once more to predict;
- ours: TPTClassifier (views encoded once, text tower up to the longest prompt, closed-form
  first step, one text pass with gradients shared by ``batch_images`` images).

It prints wall and CPU seconds per image (CPU time is steadier on a shared machine), the
ratio, whether the top-1 predictions agree, and the time of making and encoding the 64 views
alone, which both sides spend and no exact shortcut avoids.

    python benchmarks/tpt.py [--images DIR] [--n-images 4] [--classes 10 100] [--runtime openvino]

With ``--runtime``, ours encodes its views with that image-tower runtime (Backbone(runtime=...));
the reference loop stays in torch, as the reference code is.

The paper's ImageNet-family protocol, for users with a checkpoint and the data (an
ImageFolder of a test set and its class names, one per line, in folder order), compares CLIP
with "a photo of a {}." against TPT over the whole set:

    python benchmarks/tpt.py --protocol --checkpoint ViT-B-16.pt --model ViT-B-16 \\
        --data imagenet-a/ --class-names imagenet_a_classnames.txt [--augmix]

(the same as ``zeroshot-plus evaluate imagenet-a/ --classes imagenet_a_classnames.txt
--method tpt --model ViT-B-16 --checkpoint ViT-B-16.pt``; the paper reports ViT-B/16 CLIP ->
TPT top-1 of 47.87 -> 54.77 on ImageNet-A; use --augmix for the fine-grained sets).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from measure import imagenet_photos
from zeroshot_plus import Backbone, TPTClassifier, ZeroShotClassifier
from zeroshot_plus.choices import RUNTIMES
from zeroshot_plus.data.sources import read_image_source
from zeroshot_plus.methods.tpt import AugmentedViews, confident_views, marginal_entropy

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "imagenet-samples"


def reference_loop(backbone: Backbone, clf: TPTClassifier, images: list) -> np.ndarray:
    """The reference algorithm, one image at a time, without any of our shortcuts."""
    model, learner = backbone.model, clf._learner
    tokens = backbone.tokenizer([f"{clf.ctx_init} {name}." for name in clf.classes_])
    eot = tokens.argmax(dim=-1)
    with torch.no_grad():
        embedded = model.token_embedding(tokens)  # (C, 77, W)
    prefix, suffix = embedded[:, :1], embedded[:, 1 + learner.n_ctx:]
    scale = model.logit_scale.exp()

    def text_features(ctx: torch.Tensor) -> torch.Tensor:  # full 77-token text tower
        x = torch.cat([prefix, ctx.expand(len(prefix), -1, -1), suffix], dim=1)
        x = model.transformer(x + model.positional_embedding, attn_mask=model.attn_mask)
        x = model.ln_final(x)[torch.arange(len(x)), eot] @ model.text_projection
        return F.normalize(x, dim=-1)

    views = AugmentedViews(backbone, clf.n_views, clf.augmix, clf.random_state)
    ctx = torch.nn.Parameter(learner.ctx_init.clone())
    logits = []
    for image in images:
        pixels = views.render(image)
        with torch.no_grad():  # reset
            ctx.copy_(learner.ctx_init)
        optimiser = torch.optim.AdamW([ctx], lr=clf.lr)
        selected = None
        for _ in range(clf.steps):
            with torch.no_grad():
                image_features = F.normalize(model.encode_image(pixels), dim=-1)
            output = scale * image_features @ text_features(ctx).T
            if selected is None:
                selected = confident_views(output.detach(), clf.selection_p)
            loss = marginal_entropy(output[selected])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            original = F.normalize(model.encode_image(pixels[:1]), dim=-1)
            logits.append((scale * original @ text_features(ctx).T)[0].numpy())
    return np.stack(logits)


def speed(args) -> None:
    torch.manual_seed(0)
    images, all_names = imagenet_photos(args.images, args.n_images)
    torch_backbone = Backbone("ViT-B-32", "none", progress=False, num_workers=0)
    torch_backbone.model
    backbone = (torch_backbone if args.runtime == "torch" else
                Backbone("ViT-B-32", "none", progress=False, num_workers=0, runtime=args.runtime))
    backbone.image_tower  # compiled (once) before the clock starts
    print(f"ViT-B-32 (random weights), {args.n_images} photos per setting, 64 views, 1 step, "
          f"{torch.get_num_threads()} threads; ours encodes its views with runtime "
          f"'{args.runtime}', the reference loop with torch")
    rows = []
    for n_classes in args.classes:
        names = all_names[:n_classes]
        clf = TPTClassifier(backbone, classnames=names, batch_images=args.batch_images).fit()
        (ours, *t_ours), (reference, *t_ref) = (
            timed(clf.decision_function, images),
            timed(reference_loop, torch_backbone, clf, images))
        agree = int((ours.argmax(1) == reference.argmax(1)).sum())
        rows.append((n_classes, t_ref, t_ours, agree, float(np.abs(ours - reference).max())))
        print(f"  {n_classes} classes done", flush=True)
    views = AugmentedViews(backbone, 63, False, 0)  # timed last, on a warm model
    _, *t_views = timed(lambda: [backbone.encode_pixels(views.render(image)) for image in images])
    n = len(images)
    print()
    print("| classes | reference loop: wall / CPU s per image | ours: wall / CPU s per image "
          "| speed-up (wall / CPU) | equal top-1 | max abs logit difference |")
    print("|---|---|---|---|---|---|")
    for n_classes, t_ref, t_ours, agree, diff in rows:
        print(f"| {n_classes} | {t_ref[0] / n:.2f} / {t_ref[1] / n:.2f} | "
              f"{t_ours[0] / n:.2f} / {t_ours[1] / n:.2f} | {t_ref[0] / t_ours[0]:.1f}x / "
              f"{t_ref[1] / t_ours[1]:.1f}x | {agree}/{n} | {diff:.1e} |")
    print(f"\nmaking and encoding the 64 views with runtime '{args.runtime}', "
          f"{t_views[0] / n:.2f} / {t_views[1] / n:.2f} s per image (wall / CPU): the floor of "
          f"any exact implementation on that runtime")


def timed(function, *args):
    """(result, wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu

def protocol(args) -> None:
    if not (args.data and args.class_names):
        raise SystemExit("--protocol needs --data DIR and --class-names FILE")
    backbone = Backbone(args.model, args.pretrained, checkpoint=args.checkpoint)
    data = read_image_source(args.data)
    names = [line.strip() for line in open(args.class_names, encoding="utf-8") if line.strip()]
    folders = sorted(set(data.labels))
    if len(folders) != len(names):
        raise SystemExit(f"{len(folders)} class folders but {len(names)} class names")
    y = np.array([folders.index(label) for label in data.labels])
    clip = ZeroShotClassifier(backbone, classnames=names, templates=["a photo of a {}."]).fit()
    tpt = TPTClassifier(backbone, classnames=names, augmix=args.augmix).fit()
    for title, logits in (("CLIP, 'a photo of a {}.'", clip.decision_function(backbone.encode_images(data))),
                          ("TPT", tpt.decision_function(data))):
        top5 = np.argsort(-logits, axis=1)[:, :5]
        print(f"{title}: top-1 {np.mean(top5[:, 0] == y):.2%}, "
              f"top-5 {np.mean((top5 == y[:, None]).any(1)):.2%} over {len(y)} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--n-images", type=int, default=4)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--batch-images", type=int, default=4)
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch",
                        help="what encodes our views (the reference loop always uses torch)")
    parser.add_argument("--protocol", action="store_true")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--pretrained", default="openai")
    parser.add_argument("--checkpoint")
    parser.add_argument("--data")
    parser.add_argument("--class-names")
    parser.add_argument("--augmix", action="store_true")
    args = parser.parse_args()
    protocol(args) if args.protocol else speed(args)


if __name__ == "__main__":
    main()
