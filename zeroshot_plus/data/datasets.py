"""Standard datasets as the papers' code reads them: class names, splits and images.

A ``Dataset`` holds one dataset's classes and its train / val / test images, each split an
``ImageSet`` whose labels are class names (unique within a dataset, so a label is its class).

``load_dataset(name, root)`` reads the on-disk layout of CoOp's DATASETS.md (KaiyangZhou/CoOp):
one folder per dataset under ``root``, its images, and CoOp's fixed ``split_zhou_*.json``
(``{"train" | "val" | "test": [[relative path, label, class name], ...]}``); FGVC-Aircraft's
``images_variant_*.txt`` + ``variants.txt``; ImageNet's ``images/{train,val}/<wnid>/`` (its
val set is the test set, as in CoOp and GDA); and the test-only variants. A label index
``i`` is the class ``dataset_classnames(name)[i]``: the class names ship with the package
(``prompts/datasets/*.json``; CoOp's names with ``_`` read as a space, as every reference
writes them into prompts; ImageNet's made unique), so ImageNet's ``classnames.txt`` is not
needed. The ImageNet variants label their images with ImageNet's class names; ImageNet-A and
-R have 200 classes, ``imagenet_indices(name)`` gives their positions among ImageNet's 1000.

Few-shot draws and base / new class halves are in ``fewshot``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from ..errors import InputError
from .sources import IMAGE_EXTENSIONS, ImageSet

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """One dataset: C class names in label order, and its splits (labels are class names)."""

    name: str
    classnames: list[str]
    test: ImageSet
    train: ImageSet | None = None
    val: ImageSet | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Where CoOp's layout keeps one dataset under the data root.

    ``kind`` says how it is read: ``split`` (a ``split_zhou_*.json``), ``aircraft``
    (FGVC-Aircraft's text files), ``imagenet`` (``train/`` and ``val/`` wnid folders),
    ``numbered`` (ImageNet-V2's folders ``0`` .. ``999``) or ``wnids`` (one wnid folder per class).
    """

    name: str
    section: str  # the section of CoOp's DATASETS.md that says how to get it
    folder: str
    images: str  # image folder inside ``folder`` ("" = the folder itself)
    kind: str
    split_file: str = ""
    aliases: tuple[str, ...] = ()


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("imagenet", "ImageNet", "imagenet", "images", "imagenet",
                aliases=("imagenet1k", "ilsvrc2012", "in1k")),
    DatasetSpec("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "split",
                "split_zhou_Caltech101.json", ("caltech",)),
    DatasetSpec("oxford_pets", "OxfordPets", "oxford_pets", "images", "split",
                "split_zhou_OxfordPets.json", ("pets", "oxfordiiitpet")),
    DatasetSpec("stanford_cars", "StanfordCars", "stanford_cars", "", "split",
                "split_zhou_StanfordCars.json", ("cars",)),
    DatasetSpec("oxford_flowers", "Flowers102", "oxford_flowers", "jpg", "split",
                "split_zhou_OxfordFlowers.json", ("flowers102", "flowers", "oxfordflowers102")),
    DatasetSpec("food101", "Food101", "food-101", "images", "split",
                "split_zhou_Food101.json", ("food",)),
    DatasetSpec("fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "images", "aircraft",
                aliases=("aircraft", "fgvc")),
    DatasetSpec("sun397", "SUN397", "sun397", "SUN397", "split", "split_zhou_SUN397.json",
                ("sun",)),
    DatasetSpec("dtd", "DTD", "dtd", "images", "split",
                "split_zhou_DescribableTextures.json", ("describabletextures", "textures")),
    DatasetSpec("eurosat", "EuroSAT", "eurosat", "2750", "split", "split_zhou_EuroSAT.json"),
    DatasetSpec("ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split",
                "split_zhou_UCF101.json", ("ucf",)),
    DatasetSpec("imagenet_v2", "ImageNetV2", "imagenetv2",
                "imagenetv2-matched-frequency-format-val", "numbered",
                aliases=("imagenetv2matchedfrequency",)),
    DatasetSpec("imagenet_sketch", "ImageNet-Sketch", "imagenet-sketch", "images", "wnids",
                aliases=("sketch",)),
    DatasetSpec("imagenet_a", "ImageNet-A", "imagenet-adversarial", "imagenet-a", "wnids",
                aliases=("imagenetadversarial",)),
    DatasetSpec("imagenet_r", "ImageNet-R", "imagenet-rendition", "imagenet-r", "wnids",
                aliases=("imagenetrendition",)),
)}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


_ALIASES = {_key(k): s.name for s in DATASETS.values()
            for k in (s.name, s.section, s.folder, *s.aliases)}


def dataset_names() -> list[str]:
    """The canonical names of the catalogued datasets."""
    return list(DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    """The catalogue entry for a dataset name or alias (case, '-', '_' and spaces ignored)."""
    canonical = _ALIASES.get(_key(str(name)))
    if canonical is None:
        raise InputError(f"unknown dataset '{name}'; known datasets: {', '.join(DATASETS)}.")
    return DATASETS[canonical]


# --- shipped class names, templates and masks -------------------------------------------------

@lru_cache(maxsize=None)
def _shipped(name: str) -> dict:
    path = resources.files("zeroshot_plus.prompt_data").joinpath("datasets", f"{name}.json")
    return json.loads(path.read_text("utf-8"))


def imagenet_indices(name: str) -> np.ndarray | None:
    """(200,) positions of ImageNet-A's or -R's classes among ImageNet's 1000, ascending;
    None for every other dataset."""
    indices = _shipped(dataset_spec(name).name).get("imagenet_indices")
    return None if indices is None else np.asarray(indices, dtype=np.int64)


def dataset_classnames(name: str) -> list[str]:
    """The dataset's C class names in label order (unique)."""
    spec = dataset_spec(name)
    if spec.name.startswith("imagenet"):
        names = _shipped("imagenet")["classnames"]
        indices = imagenet_indices(spec.name)
        return list(names) if indices is None else [names[i] for i in indices]
    return list(_shipped(spec.name)["classnames"])


def template_styles(name: str) -> list[str]:
    """The template styles shipped for a dataset (``coop``, ``gda``, ``clip``, ``real``...)."""
    return list(_shipped(dataset_spec(name).name)["templates"])


def dataset_templates(name: str, style: str = "coop") -> list[str]:
    """The dataset's templates in one style, ``{}`` where the class name goes.

    ``coop``: CoOp's single template; ``gda``: GDA's (CoOp's, except ImageNet and its
    variants: 7 templates); ``clip``: the CLIP paper's ensemble; ``real``: REAL's
    hand-engineered list, where REAL has one.
    """
    spec = dataset_spec(name)
    templates = _shipped(spec.name)["templates"]
    if style not in templates:
        raise InputError(f"no '{style}' templates for {spec.name}; available: "
                         f"{', '.join(templates)}.")
    return list(templates[style])


def _wnid_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(_shipped("imagenet")["wnids"])}


# --- loaders ----------------------------------------------------------------------------------

def load_dataset(name: str, root: str | os.PathLike) -> Dataset:
    """Read a catalogued dataset from ``root`` laid out as CoOp's DATASETS.md describes."""
    spec = dataset_spec(name)
    folder = os.path.join(os.fspath(root), spec.folder)
    if not os.path.isdir(folder):
        raise InputError(f"{spec.name}: expected the folder '{folder}' (see the {spec.section} "
                         f"section of CoOp's DATASETS.md for how to lay it out).")
    reader = {"split": _read_split_dataset, "aircraft": _read_aircraft,
              "imagenet": _read_imagenet, "numbered": _read_imagenet_v2,
              "wnids": _read_wnid_variant}[spec.kind]
    return reader(spec, folder)


def _missing(spec: DatasetSpec, path: str, what: str) -> InputError:
    return InputError(f"{spec.name}: expected {what} at '{path}' (the {spec.section} section "
                      f"of CoOp's DATASETS.md says where to get it).")


def _require_dir(spec: DatasetSpec, path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise _missing(spec, path, what)
    return path


def _check_files(spec: DatasetSpec, paths: list[str], listed_in: str) -> None:
    absent = [p for p in paths if not os.path.isfile(p)]
    if absent:
        raise InputError(f"{spec.name}: {len(absent)} image(s) listed in '{listed_in}' are "
                         f"missing, the first being '{absent[0]}'.")


def _labelled(spec: DatasetSpec, classnames: list[str], rows, image_dir: str, listed_in: str,
              split: str) -> ImageSet:
    """An ImageSet from (relative path, label index, name on disk) rows; the label index picks
    the shipped class name, and a name on disk that disagrees is logged."""
    items, labels, disagree = [], [], 0
    for i, row in enumerate(rows):
        try:
            relpath, label, disk_name = row
            label = int(label)
        except (TypeError, ValueError):
            raise InputError(f"{spec.name}: entry {i} of '{split}' in '{listed_in}' is not a "
                             f"[path, label, class name] triple.") from None
        if not 0 <= label < len(classnames):
            raise InputError(f"{spec.name}: entry {i} of '{split}' in '{listed_in}' has label "
                             f"{label}, outside 0..{len(classnames) - 1}.")
        disagree += str(disk_name).replace("_", " ") != classnames[label]
        items.append(os.path.join(image_dir, relpath))
        labels.append(classnames[label])
    if disagree:
        log.warning("%s: %d entries of '%s' in %s name their class differently from the "
                    "shipped class list; the label index decides", spec.name, disagree, split,
                    listed_in)
    _check_files(spec, items, listed_in)
    return ImageSet(items, labels, source=f"{listed_in}:{split}")


def _read_split_dataset(spec: DatasetSpec, folder: str) -> Dataset:
    image_dir = _require_dir(spec, os.path.join(folder, spec.images), "the image folder")
    split_path = os.path.join(folder, spec.split_file)
    if not os.path.isfile(split_path):
        raise _missing(spec, split_path, f"CoOp's split file {spec.split_file}")
    try:
        with open(split_path, encoding="utf-8") as f:
            split = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{spec.name}: cannot read the split file '{split_path}' ({e}).") from None
    if not isinstance(split, dict) or any(not isinstance(split.get(k), list)
                                          for k in ("train", "val", "test")):
        raise InputError(f"{spec.name}: the split file '{split_path}' must hold the lists "
                         f"'train', 'val' and 'test'.")
    classnames = dataset_classnames(spec.name)
    sets = {k: _labelled(spec, classnames, split[k], image_dir, split_path, k)
            for k in ("train", "val", "test")}
    return Dataset(spec.name, classnames, test=sets["test"], train=sets["train"], val=sets["val"])


def _read_aircraft(spec: DatasetSpec, folder: str) -> Dataset:
    image_dir = _require_dir(spec, os.path.join(folder, spec.images), "the image folder")
    variants_path = os.path.join(folder, "variants.txt")
    if not os.path.isfile(variants_path):
        raise _missing(spec, variants_path, "variants.txt")
    with open(variants_path, encoding="utf-8") as f:
        variants = [line.strip() for line in f if line.strip()]
    label_of = {v: i for i, v in enumerate(variants)}
    classnames = dataset_classnames(spec.name)
    sets = {}
    for split in ("train", "val", "test"):
        path = os.path.join(folder, f"images_variant_{split}.txt")
        if not os.path.isfile(path):
            raise _missing(spec, path, f"images_variant_{split}.txt")
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                image, _, variant = line.strip().partition(" ")
                if variant not in label_of:
                    raise InputError(f"{spec.name}: line {n} of '{path}' names the variant "
                                     f"'{variant}', which variants.txt does not list.")
                rows.append((image + ".jpg", label_of[variant], variant))
        sets[split] = _labelled(spec, classnames, rows, image_dir, path, split)
    return Dataset(spec.name, classnames, test=sets["test"], train=sets["train"], val=sets["val"])


def _image_files(folder: str) -> list[str]:
    """The image files in one class folder, sorted by name (hidden files skipped)."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.is_file() and not e.name.startswith(".")
                       and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    return [os.path.join(folder, n) for n in names]


def _class_folders(image_dir: str) -> list[str]:
    with os.scandir(image_dir) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _read_wnid_folders(spec: DatasetSpec, image_dir: str, classnames: list[str],
                       allowed: np.ndarray | None) -> ImageSet:
    """Images under ``image_dir/<wnid>/``, labelled with ImageNet's class names."""
    index = _wnid_index()
    names = _shipped("imagenet")["classnames"]
    allowed_set = None if allowed is None else set(allowed.tolist())
    items, labels = [], []
    for wnid in _class_folders(image_dir):
        i = index.get(wnid)
        if i is None or (allowed_set is not None and i not in allowed_set):
            raise InputError(f"{spec.name}: '{os.path.join(image_dir, wnid)}' is not a folder "
                             f"of one of the dataset's {len(classnames)} ImageNet classes "
                             f"(expected folders named by WordNet id, like n01440764).")
        files = _image_files(os.path.join(image_dir, wnid))
        items += files
        labels += [names[i]] * len(files)
    if not items:
        raise InputError(f"{spec.name}: no images in the class folders under '{image_dir}'.")
    return ImageSet(items, labels, source=image_dir)


def _read_imagenet(spec: DatasetSpec, folder: str) -> Dataset:
    images = os.path.join(folder, spec.images)
    train_dir = _require_dir(spec, os.path.join(images, "train"), "the training images")
    val_dir = _require_dir(spec, os.path.join(images, "val"), "the validation images")
    classnames = dataset_classnames(spec.name)
    return Dataset(spec.name, classnames,
                   test=_read_wnid_folders(spec, val_dir, classnames, None),
                   train=_read_wnid_folders(spec, train_dir, classnames, None))


def _read_imagenet_v2(spec: DatasetSpec, folder: str) -> Dataset:
    image_dir = _require_dir(spec, os.path.join(folder, spec.images), "the image folder")
    classnames = dataset_classnames(spec.name)
    items, labels = [], []
    for entry in _class_folders(image_dir):
        if not entry.isdigit() or not 0 <= int(entry) < len(classnames):
            raise InputError(f"{spec.name}: '{os.path.join(image_dir, entry)}' is not one of "
                             f"the class folders 0 .. {len(classnames) - 1}.")
    for label in range(len(classnames)):
        class_dir = os.path.join(image_dir, str(label))
        if os.path.isdir(class_dir):
            files = _image_files(class_dir)
            items += files
            labels += [classnames[label]] * len(files)
    if not items:
        raise InputError(f"{spec.name}: no images in the class folders under '{image_dir}'.")
    return Dataset(spec.name, classnames, test=ImageSet(items, labels, source=image_dir))


def _read_wnid_variant(spec: DatasetSpec, folder: str) -> Dataset:
    image_dir = _require_dir(spec, os.path.join(folder, spec.images), "the image folder")
    classnames = dataset_classnames(spec.name)
    test = _read_wnid_folders(spec, image_dir, classnames, imagenet_indices(spec.name))
    return Dataset(spec.name, classnames, test=test)


# --- torchvision datasets ---------------------------------------------------------------------

def _torchvision_pairs(ds) -> tuple[list[str], list[int]]:
    """(paths, label indices) of a torchvision dataset object, read from its file list."""
    for attr in ("samples", "_samples"):  # ImageFolder (EuroSAT, ImageNet), StanfordCars
        pairs = getattr(ds, attr, None)
        if pairs is not None:
            return [os.fspath(p) for p, _ in pairs], [int(y) for _, y in pairs]
    for attr in ("_image_files", "_images"):  # Flowers102, DTD, Food101, SUN397, FGVC, Pets
        files, labels = getattr(ds, attr, None), getattr(ds, "_labels", None)
        if files is not None and labels is not None:
            return [os.fspath(p) for p in files], [int(y) for y in labels]
    raise InputError(f"cannot read the file list of a {type(ds).__name__}: expected a "
                     f"torchvision dataset with 'samples', '_samples' or '_image_files' and "
                     f"'_labels'.")


def _torchvision_set(ds, classnames: list[str], pairs=None) -> ImageSet:
    paths, labels = _torchvision_pairs(ds) if pairs is None else pairs
    if labels and not 0 <= min(labels) <= max(labels) < len(classnames):
        raise InputError(f"the {type(ds).__name__} has labels up to {max(labels)}, but only "
                         f"{len(classnames)} class names were given.")
    return ImageSet(paths, [classnames[y] for y in labels], source=type(ds).__name__)


def from_torchvision(ds, name: str | None = None, classnames: list[str] | None = None, *,
                     train=None, val=None) -> Dataset:
    """A Dataset from torchvision dataset objects a user already holds (nothing is downloaded).

    ``ds`` becomes the test split (``train`` / ``val``: the same dataset's other splits).
    Class names: ``classnames`` if given, else the catalogue's when ``name`` is a catalogued
    dataset, else ``ds.classes``.
    """
    pairs = _torchvision_pairs(ds)
    spec = dataset_spec(name) if name is not None and _key(name) in _ALIASES else None
    if classnames is None:
        if spec is not None:
            classnames = dataset_classnames(spec.name)
        elif getattr(ds, "classes", None) is not None:
            classnames = [c if isinstance(c, str) else str(c[0]) for c in ds.classes]
        else:
            raise InputError(f"the {type(ds).__name__} carries no class names: pass "
                             f"classnames, or the name of a catalogued dataset.")
    classnames = list(classnames)
    if len(set(classnames)) != len(classnames):
        raise InputError(f"the class names of the {type(ds).__name__} repeat a name; "
                         f"pass unique classnames.")
    return Dataset(spec.name if spec else (name or type(ds).__name__.lower()), classnames,
                   test=_torchvision_set(ds, classnames, pairs),
                   train=None if train is None else _torchvision_set(train, classnames),
                   val=None if val is None else _torchvision_set(val, classnames))
