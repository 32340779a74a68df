"""The papers' few-shot draws and base / new class halves, as pure functions of their inputs.

``few_shot(dataset, shots, seed, protocol)`` returns the K-shot training set each reference
draws for a seed; it never touches the global ``random`` module (each call replays its own
``random.Random(seed)`` stream).

- ``"coop"``: CoOp / Dassl (KaiyangZhou/CoOp ``datasets/*.py``, Dassl
  ``DatasetBase.generate_fewshot_dataset``). ``set_random_seed(seed)`` seeds Python's
  ``random``, and each dataset's constructor is the first to draw from it: the training split
  is grouped by label in order of first appearance, each group gives ``random.sample(group,
  K)`` (the whole group when it has fewer than K, no repeats); then the validation split the
  same way with ``min(K, 4)`` shots, from the same stream. Each (K, seed) is drawn afresh
  (CoOp caches it as ``split_fewshot/shot_K-seed_S.pkl``). ImageNet has no val split: its
  val is its test set, not subsampled.
- ``"gda"``: GDA (mrflogs/ICLR24 ``main_few_shots.py``, ``datasets/utils.py``,
  ``datasets/imagenet.py``). ``random.seed(seed)`` runs once per seed and the shots loop 1, 2,
  4, 8, 16 then builds each dataset from the same stream, so the K-shot draw is the one that
  follows the draws for every smaller shot count of that loop; only the training split is
  drawn, with repeats (``random.choices(group, k=K)``) for a group smaller than K; val is the
  whole val split (ImageNet: the test set). Nothing else in that loop draws from Python's
  ``random`` (data loading runs in worker processes and torchvision transforms draw from
  torch). ``few_shot(ds, 8, 1, "gda")`` replays the 1-, 2- and 4-shot draws first.
- ``"gda_single"``: GDA's base-to-new and robustness scripts (``main_base2new.py``,
  ``main_robustness.py``): the same draw as ``"gda"``, but the first after seeding (those
  scripts have no shots loop). For base-to-new, draw over all classes and then take
  ``base_new(..., "base")``: GDA's non-ImageNet datasets subsample after drawing, and its
  ImageNet base loop draws the base classes first and stops, so the base draw is the same.

How this was checked: the reference sampling code (the two ``generate_fewshot_dataset``
methods, ``split_dataset_by_label``, GDA's ImageNet loop, and the seed / shots loops of CoOp's
``train.py`` and GDA's ``main_few_shots.py``) was transcribed literally into a throwaway
script, with Datum objects standing in for images, and run beside these functions on
synthetic splits (uneven class sizes, classes smaller than K, labels out of order, several
seeds and every K of the loop): the drawn paths were identical, in the same order. The tests
compare with an independent implementation through the global ``random`` module.

Two differences from the reference runs: CoOp lists ImageNet's training folders with
``os.listdir`` (file-system order), while the loaders here sort file names (torchvision's
``ImageFolder`` order, which GDA's ImageNet uses), so CoOp's ImageNet draws are reproduced only
where the file system lists names sorted. GDA's ImageNet base-to-new run draws only from the
base (or new) classes; ``few_shot`` then ``base_new`` gives the same base draw but not the same
new-class draw (which GDA's script does not use for fitting).
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from ..errors import InputError
from .datasets import Dataset
from .sources import ImageSet

PROTOCOLS = ("coop", "gda", "gda_single")
GDA_SHOTS = (1, 2, 4, 8, 16)  # GDA's shots loop; each seed's stream runs through it in order
COOP_VAL_SHOTS = 4  # CoOp draws min(K, 4) validation shots per class


def _draw(rng: random.Random, images: ImageSet, shots: int, repeat: bool) -> ImageSet:
    """Per label in order of first appearance: ``rng.sample(group, shots)``; a smaller group
    whole, or ``rng.choices(group, k=shots)`` when ``repeat``."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(images.labels):
        groups.setdefault(label, []).append(i)
    chosen: list[int] = []
    for group in groups.values():
        if len(group) >= shots:
            chosen += rng.sample(group, shots)
        elif repeat:
            chosen += rng.choices(group, k=shots)
        else:
            chosen += group
    return ImageSet([images.items[i] for i in chosen], [images.labels[i] for i in chosen],
                    source=f"{images.source} ({shots}-shot)")


def few_shot(dataset: Dataset, shots: int, seed: int, protocol: str = "coop") -> Dataset:
    """The dataset with ``train`` replaced by the reference's K-shot draw for ``seed``, and
    ``val`` as that protocol has it (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown few-shot protocol '{protocol}'; use one of "
                         f"{', '.join(PROTOCOLS)}.")
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise InputError(f"shots must be a positive integer, got {shots!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer, got {seed!r}.")
    if dataset.train is None or dataset.train.labels is None:
        raise InputError(f"dataset '{dataset.name}' has no labelled train split to draw "
                         f"shots from.")
    rng = random.Random(seed)
    if protocol == "coop":
        train = _draw(rng, dataset.train, shots, repeat=False)
        val = (dataset.test if dataset.val is None
               else _draw(rng, dataset.val, min(shots, COOP_VAL_SHOTS), repeat=False))
        return replace(dataset, train=train, val=val)
    for earlier in GDA_SHOTS if protocol == "gda" else ():
        if earlier >= shots:
            break
        _draw(rng, dataset.train, earlier, repeat=True)
    train = _draw(rng, dataset.train, shots, repeat=True)
    return replace(dataset, train=train, val=dataset.test if dataset.val is None else dataset.val)


def _keep(images: ImageSet | None, selected: set[str]) -> ImageSet | None:
    if images is None:
        return None
    keep = [i for i, label in enumerate(images.labels) if label in selected]
    return ImageSet([images.items[i] for i in keep], [images.labels[i] for i in keep],
                    source=images.source)


def base_new(dataset: Dataset, part: str) -> Dataset:
    """CoCoOp's class halves: of the C classes in label order, the first ceil(C/2) are
    ``"base"``, the rest ``"new"``; ``"all"`` keeps every class. Applies to every split."""
    if part not in ("base", "new", "all"):
        raise InputError(f"unknown class part '{part}'; use base, new or all.")
    if part == "all":
        return dataset
    m = math.ceil(len(dataset.classnames) / 2)
    classnames = dataset.classnames[:m] if part == "base" else dataset.classnames[m:]
    selected = set(classnames)
    return replace(dataset, classnames=list(classnames), test=_keep(dataset.test, selected),
                   train=_keep(dataset.train, selected), val=_keep(dataset.val, selected))
