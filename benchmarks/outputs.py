"""Record every method's outputs on fixed inputs, or compare them with an earlier record.

A refactor must not change what the library computes. Run this before the change with
``--out before.npz`` and after it with ``--compare before.npz``: it prints one row per output
(shape, largest absolute difference, whether it is bit-identical) and exits 1 on any
difference. Inputs: the tiny random-weight model of tests/, CIFAR-10 and ImageNet sample photos
and the released prompt files from ../shared/data (required), and the command line run in
process on the same photos.

    python benchmarks/outputs.py --out before.npz
    python benchmarks/outputs.py --compare before.npz
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's library, not an installed copy
SHARED = REPO.parent / "shared" / "data"
TINY = str(REPO / "tests" / "zsp-tiny.json")


def record(work: Path) -> dict[str, np.ndarray]:
    from zeroshot_plus import (Backbone, ComCLIPMatcher, DescriptionClassifier, GDAClassifier,
                               RealLinearClassifier, RealPromptClassifier, SchurEditor,
                               TPTClassifier, ZeroShotClassifier, augmented_support,
                               sample_shots, sce_score)
    from zeroshot_plus.cli import main

    torch.set_num_threads(1)
    out: dict[str, np.ndarray] = {}
    cifar = SHARED / "images" / "cifar10"
    classes = sorted(p.name for p in (cifar / "test").iterdir())
    test = sorted((cifar / "test" / c / f) for c in classes
                  for f in sorted(p.name for p in (cifar / "test" / c).iterdir())[:3])
    photos = sorted((SHARED / "images" / "imagenet-samples").glob("*.JPEG"))[:6]
    bb = Backbone(TINY, "none", progress=False, batch_size=16)
    cache = work / "store"

    X = bb.encode_images(test, cache=cache)
    out["encode_images"] = X
    out["encode_images_warm"] = bb.encode_images(test, cache=cache)
    out["encode_photos"] = bb.encode_images(photos)
    out["encode_texts"] = bb.encode_texts([f"a photo of a {c}." for c in classes] + ["x", "a b c d e"])

    zs = ZeroShotClassifier(bb, classnames=classes).fit()
    out["zeroshot"] = zs.decision_function(X)
    shots = sample_shots(cifar / "train", 2, random_state=0)
    views = augmented_support(bb, shots, n_views=3, random_state=0, cache=cache)
    out["support_views"] = views.X
    gda = GDAClassifier(bb, classnames=classes, templates="photo", random_state=0).fit(
        views.X, views.y, groups=views.groups)
    out["gda"] = gda.decision_function(X)
    out["gda_plain"] = GDAClassifier(alpha=1.0).fit(views.X, views.y).decision_function(X)

    descriptors = json.loads((SHARED / "descriptors" / "descriptors_imagenet.json").read_text())
    names = list(descriptors)[:5]
    subset = {n: descriptors[n] for n in names}
    path = work / "desc.json"
    path.write_text(json.dumps(subset))
    out["descriptions"] = DescriptionClassifier(bb, classnames=names,
                                                descriptors=str(path)).fit().decision_function(X)
    metrics = SHARED / "real" / "oxford_pets" / "metrics-LAION400M.json"
    imagenet = [m["name"] for _, m in sorted(json.loads(metrics.read_text()).items(),
                                             key=lambda kv: int(kv[0]))]
    out["real_prompt"] = RealPromptClassifier(bb, classnames=None, synonyms=str(metrics),
                                              templates="simple_imagenet").fit().decision_function(X)
    pool_captions = [f"a photo of a {imagenet[i % len(imagenet)]} in the wild" for i in range(len(X))]
    linear = RealLinearClassifier(bb, classnames=None, synonyms=str(metrics), templates="photo",
                                  max_iter=5, random_state=0).fit(X, captions=pool_captions)
    out["real_linear"] = linear.decision_function(X)

    texts = bb.encode_texts([f"a photo of a {c}" for c in classes for _ in range(3)])
    result = sce_score(X, texts, n_features=64, random_state=0)
    out["sce"] = np.array([result.score, result.text_score])
    out["sce_cosine"] = np.array([sce_score(X, texts, kernel="cosine").score])
    out["schur_edit"] = SchurEditor(bb, texts=texts).fit_transform(X)

    tpt = TPTClassifier(bb, classnames=classes, n_views=7, batch_images=2, random_state=0).fit()
    out["tpt"] = tpt.decision_function(test[:5])
    out["tpt_steps2"] = TPTClassifier(bb, classnames=classes, n_views=7, steps=2, batch_images=2,
                                      random_state=0).fit().decision_function(test[:3])
    out["difftpt"] = TPTClassifier(
        bb, classnames=classes, n_views=7, steps=2, selection_p=0.3, random_state=0,
        diffusion_views=lambda image: [image.rotate(90), image.transpose(0)],
    ).fit().decision_function(test[:3])

    captions = ["a dog on a red car", "a cat sits next to a bird", "a ship near a frog"]
    matcher = ComCLIPMatcher(bb, cache=cache).fit()
    out["comclip"] = matcher.decision_function(photos[:3], captions)
    out["comclip_crop"] = ComCLIPMatcher(bb, mask_mode="crop").fit().decision_function(
        photos[:2], captions[:2])

    model = ["--model", TINY, "--pretrained", "none", "--no-progress", "--batch-size", "16"]
    manifest = work / "test.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in test))
    classes_arg = ["--classes", ",".join(classes)]
    runs = {  # output key -> command line; each writes work/<key>.csv (embed: .npz)
        "cli_predict": ["predict", str(manifest), *classes_arg],
        "cli_predict_gda": ["predict", str(manifest), *classes_arg, "--method", "gda",
                            "--support", str(cifar / "train"), "--shots", "2", "--views", "2",
                            "--templates", "photo"],
        "cli_predict_tpt": ["predict", *map(str, test[:4]), *classes_arg, "--method", "tpt",
                            "--tpt-views", "5"],
    }
    for key, argv in runs.items():
        with contextlib.redirect_stderr(io.StringIO()):
            assert main([*argv, "--out", str(work / f"{key}.csv"), *model]) == 0, key
        rows = list(csv.reader(open(work / f"{key}.csv")))
        out[key] = np.array([float(v) for row in rows[1:] for v in row[2::2]])
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["embed", str(manifest), "--out", str(work / "e.npz"), *model]) == 0
    with np.load(work / "e.npz") as data:
        out["cli_embed"] = data["embeddings"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the record here (.npz)")
    parser.add_argument("--compare", help="compare with this earlier record")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"needs the shared data at {SHARED}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        outputs = record(Path(tmp))
    if args.out:
        from zeroshot_plus.data.files import atomic_output

        with atomic_output(args.out, binary=True) as handle:
            np.savez(handle, **outputs)
    if not args.compare:
        for key, value in outputs.items():
            print(f"{key:<22} {str(value.shape):<14} checksum {float(np.abs(value).sum()):.9g}")
        return 0
    with np.load(args.compare) as before:
        print(f"| output | shape | max abs difference | identical |\n|---|---|---|---|")
        changed = 0
        for key in sorted(set(before.files) | set(outputs)):
            if key not in before.files or key not in outputs:
                print(f"| {key} | only in {'before' if key in before.files else 'now'} | | no |")
                changed += 1
                continue
            old, new = before[key], outputs[key]
            same = old.shape == new.shape and np.array_equal(old, new)
            diff = float(np.abs(old - new).max()) if old.shape == new.shape and old.size else 0.0
            changed += not same
            print(f"| {key} | {new.shape} | {diff:.3g} | {'yes' if same else 'NO'} |")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
