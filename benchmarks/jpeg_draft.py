"""What JPEG draft decoding (``Backbone(jpeg_draft=True)``, ``--jpeg-draft``) gains and costs.

On the ImageNet sample photos: CPU time per photo to decode it, alone and with the
preprocessing, with and without draft decoding (one thread, medians of alternating rounds).
On the photos it applies to (short side at least twice the encoder's input): the cosine
between their embeddings with and without it, and the top-1 agreement of a zero-shot head over
the 1,000 ImageNet class names ("a photo of a {}."). Photos below that size are decoded
identically either way. The checkout's library is used, not an installed copy.

    python benchmarks/jpeg_draft.py [--model ViT-B-32] [--pretrained none] [--limit N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PHOTOS = REPO.parent / "shared" / "data" / "images" / "imagenet-samples"


def per_photo_ms(backbone, blobs: list[bytes], draft_size: int, rounds: int,
                 preprocess: bool) -> tuple[float, float]:
    """CPU milliseconds per photo to decode it (and preprocess it when ``preprocess``), in full
    and in draft mode: medians over rounds that alternate the two, after a warm-up round."""
    from zeroshot_plus.data.images import decode_image

    times: dict[int | None, list[float]] = {None: [], draft_size: []}
    for _ in range(rounds + 1):
        for size in times:
            start = time.process_time()
            for blob in blobs:
                image = decode_image(blob, size)
                if preprocess:
                    backbone.preprocess(image)
            times[size].append((time.process_time() - start) / len(blobs) * 1e3)
    return statistics.median(times[None][1:]), statistics.median(times[draft_size][1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--images", type=Path, default=PHOTOS)
    parser.add_argument("--limit", type=int, help="use the first N photos (default: all)")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (default: 5)")
    args = parser.parse_args()

    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    from zeroshot_plus import Backbone
    from zeroshot_plus.text.heads import class_weights
    from zeroshot_plus.text.templates import class_prompts

    torch.set_num_threads(1)  # CPU time of one decoding thread, as the pipeline runs them
    paths = sorted(args.images.glob("*.JPEG"))[:args.limit]
    if not paths:
        sys.exit(f"no JPEG photos in {args.images}")
    full = Backbone(args.model, args.pretrained, progress=False)
    draft = Backbone(args.model, args.pretrained, progress=False, jpeg_draft=True)
    size = full.image_size
    large = [p for p in paths if min(Image.open(p).size) >= 2 * size]
    print(f"{args.model} ({args.pretrained}), input {size} px: {len(paths)} photos, "
          f"{len(large)} with a short side >= {2 * size} px (draft decoding applies to those)")

    for name, subset in (("all photos", paths), ("photos it applies to", large)):
        blobs = [p.read_bytes() for p in subset]
        for step, preprocess in (("decode", False), ("decode + preprocess", True)):
            plain, drafted = per_photo_ms(full, blobs, size, args.rounds, preprocess)
            print(f"{step}, {name}: {plain:.2f} ms full, {drafted:.2f} ms draft per photo "
                  f"({plain / drafted:.2f}x faster)")
    if not large:
        return 0

    X_full, X_draft = full.encode_images(large), draft.encode_images(large)
    cosine = np.einsum("ij,ij->i", X_full, X_draft)
    head = class_weights(full, class_prompts(open_clip.IMAGENET_CLASSNAMES, ["a photo of a {}."]))
    top1_full, top1_draft = (X_full @ head.T).argmax(1), (X_draft @ head.T).argmax(1)
    changed = int((top1_full != top1_draft).sum())
    print(f"embeddings of the {len(large)} photos, draft vs full: cosine mean "
          f"{cosine.mean():.4f}, min {cosine.min():.4f}")
    print(f"zero-shot top-1 over {len(head)} classes: changed on {changed} of {len(large)} "
          f"photos ({changed / len(large):.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
