"""The benchmark harness: protocol arithmetic on miniatures of CoOp's layout (random weights).

Each miniature is built from the CIFAR-10 photos in ../shared: EuroSAT's CoOp layout (10
classes, like CIFAR-10: class i holds CIFAR-10's class i) with 4 train, 2 val and 3 test
images per class. Expected values are computed here independently of the harness: prompts
encoded with the backbone, argmax over the columns a protocol allows, numpy's mean and std.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_DIR
from zeroshot_plus import Backbone
from zeroshot_plus.cli import main
from zeroshot_plus.data.datasets import Dataset, dataset_classnames, dataset_templates, imagenet_indices
from zeroshot_plus.data.fewshot import few_shot
from zeroshot_plus.data.sources import ImageSet
from zeroshot_plus.evaluation.benchmark import Benchmark, summarise
from zeroshot_plus.evaluation.protocols import harmonic_mean, tail_classes

SPLITS = {"train": (0, 4), "val": (4, 2), "test": (6, 3)}  # CIFAR-10 train photos per class


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, shared_data) -> Path:
    """DATA/eurosat/{2750/<class>/*.jpg, split_zhou_EuroSAT.json}, CIFAR-10 photos inside."""
    cifar = shared_data / "images" / "cifar10" / "train"
    if not cifar.is_dir():
        pytest.skip(f"CIFAR-10 images not found at {cifar}")
    root = tmp_path_factory.mktemp("data")
    folder = root / "eurosat"
    names = dataset_classnames("eurosat")
    split = {part: [] for part in SPLITS}
    for label, (cifar_class, name) in enumerate(zip(sorted(p.name for p in cifar.iterdir()),
                                                    names)):
        photos = sorted((cifar / cifar_class).iterdir())
        disk = name.replace(" ", "")
        (folder / "2750" / disk).mkdir(parents=True)
        for part, (first, count) in SPLITS.items():
            for photo in photos[first:first + count]:
                relative = f"{disk}/{photo.name}"
                (folder / "2750" / relative).write_bytes(photo.read_bytes())
                split[part].append([relative, label, name])
    (folder / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    return root


def records_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def zero_shot_logits(backbone, images, classnames, templates) -> np.ndarray:
    """(N, C) cosine logits, prompts and images encoded here (no harness code)."""
    prompts = [t.replace("{}", c) for c in classnames for t in templates]
    text = backbone.encode_texts(prompts).reshape(len(classnames), len(templates), -1).mean(1)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return backbone.encode_images(images) @ text.T


def test_zero_shot_and_few_shot_records(data_root, backbone, tmp_path):
    out = tmp_path / "out"
    report = Benchmark(backbone, data_root, datasets=["eurosat"], methods=["zeroshot", "gda"],
                       protocols=["zeroshot", "fewshot"], shots=[1, 2], seeds=[1, 2], out=out,
                       n_views=2, progress=False).run()
    assert (report.planned, report.ran, report.resumed, report.skipped) == (5, 5, 0, [])
    records = records_of(out)
    assert [(r["protocol"], r["method"], r["shots"], r["seed"]) for r in records] == [
        ("zeroshot", "zeroshot", 0, None), ("fewshot", "gda", 1, 1), ("fewshot", "gda", 1, 2),
        ("fewshot", "gda", 2, 1), ("fewshot", "gda", 2, 2)]
    for record in records:
        assert {"dataset", "protocol", "method", "shots", "seed", "metrics", "model",
                "pretrained", "templates", "seconds"} <= set(record)
        assert record["dataset"] == "eurosat" and record["model"] == backbone.model_name
        assert record["pretrained"] == "none" and record["seconds"] >= 0
        assert record["templates"] == dataset_templates("eurosat", "gda")
        assert set(record["metrics"]) == {"top1", "top5", "mean_per_class_recall"}
    # the support images are the data set's K-shot draw for the seed
    from zeroshot_plus.data.datasets import load_dataset

    dataset = load_dataset("eurosat", data_root)
    for record in records[1:]:
        drawn = few_shot(dataset, record["shots"], record["seed"], protocol="gda").train.items
        assert record["support"] == [str(p) for p in drawn]
        assert len(record["support"]) == 10 * record["shots"]
    # zero-shot accuracy, from prompts and images encoded here
    logits = zero_shot_logits(backbone, dataset.test, dataset.classnames,
                              dataset_templates("eurosat", "gda"))
    y = np.array([dataset.classnames.index(label) for label in dataset.test.labels])
    top5 = np.argsort(-logits, axis=1)[:, :5]
    recall = np.mean([np.mean(logits[y == c].argmax(1) == c) for c in range(10)])
    assert records[0]["metrics"] == pytest.approx(
        {"top1": np.mean(logits.argmax(1) == y), "top5": np.mean((top5 == y[:, None]).any(1)),
         "mean_per_class_recall": recall})
