"""Pickle size of a fitted classifier that holds a Backbone, and GridSearchCV over image paths
with n_jobs=1 and 2 (joblib pickles the estimator into every worker).

A Backbone pickles by name, weights and fingerprint, not its torch model; this prints the
pickle's size beside the model's parameter bytes (what pickling the model would copy). A
worker builds the model again on first use (importing open_clip and building it are most of
what n_jobs=2 costs here), unless every embedding is already in the store (``cache``).

    python benchmarks/pickling.py                                   # the tiny test model
    python benchmarks/pickling.py --model ViT-B-32 --pretrained none
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

CLASSES = ["cat", "dog", "bird"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "tests" / "zsp-tiny.json"))
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--images", type=int, default=12, help="synthetic images to search on")
    args = parser.parse_args()

    import torch
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    from PIL import Image

    from zeroshot_plus import Backbone, ImageEmbedder, ZeroShotClassifier

    backbone = Backbone(args.model, args.pretrained, progress=False)
    clf = ZeroShotClassifier(backbone, classnames=CLASSES, templates="photo").fit()
    parameter_bytes = sum(p.numel() * p.element_size() for p in backbone.model.parameters())
    start = time.perf_counter()
    blob = pickle.dumps(clf)
    seconds = time.perf_counter() - start
    print(f"model {Path(args.model).stem} ({args.pretrained}): parameters "
          f"{parameter_bytes / 1e6:.1f} MB; fitted ZeroShotClassifier pickles to "
          f"{len(blob):,} bytes in {seconds * 1e3:.1f} ms")

    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        paths = [str(Path(folder) / f"{i}.png") for i in range(args.images)]
        for path in paths:
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        labels = np.array(CLASSES * (args.images // len(CLASSES) + 1))[:args.images]
        store = Path(folder) / "store"
        weights = backbone.encode_images(paths, cache=store)[:len(CLASSES)]  # fills the store
        grid = {"zeroshotclassifier__logit_scale": [10.0, 100.0]}
        torch.set_num_threads(1)
        for n_jobs, cache in ((1, None), (2, None), (2, store)):
            pipe = make_pipeline(ImageEmbedder(backbone, cache=cache),
                                 ZeroShotClassifier(text_weights=weights, classnames=CLASSES))
            start = time.perf_counter()
            GridSearchCV(pipe, grid, cv=3, n_jobs=n_jobs).fit(paths, labels)
            print(f"GridSearchCV on {args.images} image paths, 2 candidates x 3 folds, "
                  f"n_jobs={n_jobs}{', embeddings from the store' if cache else ''}: "
                  f"{time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
