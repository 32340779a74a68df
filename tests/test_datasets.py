"""Standard datasets: catalogue facts, CoOp-layout loaders on miniatures, few-shot draws, halves."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from zeroshot_plus.data.datasets import (DATASETS, Dataset, dataset_classnames, dataset_names,
                                         dataset_spec, dataset_templates, from_torchvision,
                                         imagenet_indices, load_dataset, template_styles)
from zeroshot_plus.data.fewshot import base_new, few_shot
from zeroshot_plus.data.sources import ImageSet
from zeroshot_plus.errors import InputError
from zeroshot_plus.text.templates import load_templates

# --- catalogue facts (published class counts; the CLIP paper's prompt file) --------------------

CLASS_COUNTS = {"imagenet": 1000, "caltech101": 100, "oxford_pets": 37, "stanford_cars": 196,
                "oxford_flowers": 102, "food101": 101, "fgvc_aircraft": 100, "sun397": 397,
                "dtd": 47, "eurosat": 10, "ucf101": 101, "imagenet_v2": 1000,
                "imagenet_sketch": 1000, "imagenet_a": 200, "imagenet_r": 200}
CLIP_TEMPLATE_COUNTS = {"imagenet": 80, "caltech101": 34, "oxford_pets": 1, "stanford_cars": 8,
                        "oxford_flowers": 1, "food101": 1, "fgvc_aircraft": 2, "sun397": 2,
                        "dtd": 8, "eurosat": 3, "ucf101": 48}


def test_catalogue_names_and_aliases():
    assert dataset_names() == list(CLASS_COUNTS)
    for alias, name in [("ImageNet", "imagenet"), ("Caltech101", "caltech101"),
                        ("OxfordPets", "oxford_pets"), ("StanfordCars", "stanford_cars"),
                        ("Flowers102", "oxford_flowers"), ("Food101", "food101"),
                        ("FGVCAircraft", "fgvc_aircraft"), ("SUN397", "sun397"), ("DTD", "dtd"),
                        ("EuroSAT", "eurosat"), ("UCF101", "ucf101"), ("ImageNetV2", "imagenet_v2"),
                        ("ImageNet-Sketch", "imagenet_sketch"), ("ImageNet-A", "imagenet_a"),
                        ("imagenet-r", "imagenet_r"), ("caltech-101", "caltech101")]:
        assert dataset_spec(alias).name == name
    with pytest.raises(InputError, match=r"unknown dataset 'mnist'; known datasets: imagenet, "):
        dataset_spec("mnist")


@pytest.mark.parametrize("name", list(CLASS_COUNTS))
def test_class_counts_unique_names(name):
    names = dataset_classnames(name)
    assert len(names) == CLASS_COUNTS[name]
    assert len(set(names)) == len(names)
    assert all(isinstance(n, str) and n and "_" not in n for n in names)


def test_imagenet_names_made_unique_where_clip_repeats_them():
    names = dataset_classnames("imagenet")
    # open_clip's list names classes 744 and 836 "missile" and "sunglasses" a second time
    assert (names[657], names[744]) == ("missile", "projectile")
    assert (names[836], names[837]) == ("sunglass", "sunglasses")
    import open_clip

    clip_names = list(open_clip.IMAGENET_CLASSNAMES)
    differ = [i for i, (a, b) in enumerate(zip(names, clip_names)) if a != b]
    assert differ == [744, 836]


def test_imagenet_a_r_masks():
    imagenet = dataset_classnames("imagenet")
    a, r = imagenet_indices("imagenet_a"), imagenet_indices("imagenet_r")
    for mask, name in [(a, "imagenet_a"), (r, "imagenet_r")]:
        assert mask.shape == (200,) and mask.dtype == np.int64
        assert np.all(np.diff(mask) > 0) and mask[0] >= 0 and mask[-1] < 1000
        assert dataset_classnames(name) == [imagenet[i] for i in mask]
    # ImageNet-A's first class is n01498041 (stingray, 6); ImageNet-R's is n01443537 (goldfish, 1)
    assert a[0] == 6 and imagenet[6] == "stingray"
    assert r[0] == 1 and imagenet[1] == "goldfish"
    assert len(set(a.tolist()) & set(r.tolist())) < 200
    assert imagenet_indices("imagenet") is None and imagenet_indices("Flowers102") is None


@pytest.mark.parametrize("name", list(CLASS_COUNTS))
def test_templates(name):
    styles = template_styles(name)
    assert {"coop", "gda", "clip"} <= set(styles)
    assert len(dataset_templates(name)) == 1
    for style in styles:
        assert all(t.count("{}") == 1 for t in dataset_templates(name, style))
    if name in CLIP_TEMPLATE_COUNTS:
        assert len(dataset_templates(name, "clip")) == CLIP_TEMPLATE_COUNTS[name]
    if name.startswith("imagenet"):  # GDA's ImageNet set is open_clip's 7-template subset
        assert dataset_templates(name, "gda") == load_templates("simple_imagenet")
        assert dataset_templates(name, "clip") == load_templates("openai_imagenet")
    else:
        assert dataset_templates(name, "gda") == dataset_templates(name, "coop")


def test_template_facts_and_errors():
    assert dataset_templates("OxfordPets") == ["a photo of a {}, a type of pet."]
    assert dataset_templates("dtd") == ["{} texture."]
    assert dataset_templates("ucf101") == ["a photo of a person doing {}."]
    assert load_templates("oxford_pets:coop") == ["a photo of a {}, a type of pet."]
    assert load_templates("Flowers102:clip") == ["a photo of a {}, a type of flower."]
    with pytest.raises(InputError, match=r"no 'real' templates for ucf101; available: coop"):
        dataset_templates("ucf101", "real")
    with pytest.raises(InputError, match="unknown dataset 'nope'"):
        load_templates("nope:coop")


# --- miniature on-disk layouts -----------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(cifar10_test) -> list[Path]:
    found = sorted((cifar10_test / "airplane").glob("*.jpg"))[:12]
    if len(found) < 12:
        pytest.skip("fewer than 12 CIFAR-10 photos")
    return found


def _put(photo: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(photo, path)
    return path


SPLIT_DATASETS = [s.name for s in DATASETS.values() if s.kind == "split"]


def _write_split_dataset(root: Path, name: str, photos, labels=(0, 1, 2)):
    """Two train, one val, one test image for each label; names on disk as CoOp writes them."""
    spec = DATASETS[name]
    folder = root / spec.folder
    image_dir = folder / spec.images if spec.images else folder
    names = dataset_classnames(name)
    split, n = {"train": [], "val": [], "test": []}, 0
    for label in labels:
        for part, count in (("train", 2), ("val", 1), ("test", 1)):
            for _ in range(count):
                rel = f"cls{label}/{part}_{n}.jpg"
                _put(photos[n % len(photos)], image_dir / rel)
                split[part].append([rel, label, names[label].replace(" ", "_")])
                n += 1
    (folder / spec.split_file).write_text(json.dumps(split))
    return folder, image_dir, split


@pytest.mark.parametrize("name", SPLIT_DATASETS)
def test_split_layouts(tmp_path, photos, name):
    folder, image_dir, split = _write_split_dataset(tmp_path, name, photos)
    ds = load_dataset(DATASETS[name].section, tmp_path)  # read through its CoOp title
    names = dataset_classnames(name)
    assert ds.name == name and ds.classnames == names
    for part in ("train", "val", "test"):
        images = getattr(ds, part)
        assert images.items == [str(image_dir / rel) for rel, _, _ in split[part]]
        assert images.labels == [names[label] for _, label, _ in split[part]]
    assert len(ds.train) == 6 and len(ds.val) == 3 and len(ds.test) == 3


def test_split_errors(tmp_path, photos):
    with pytest.raises(InputError, match=r"expected the folder '.*oxford_pets' \(see the "
                                         r"OxfordPets section of CoOp's DATASETS.md"):
        load_dataset("pets", tmp_path)
    folder, image_dir, split = _write_split_dataset(tmp_path, "oxford_pets", photos)
    (folder / "split_zhou_OxfordPets.json").unlink()
    with pytest.raises(InputError, match=r"expected CoOp's split file split_zhou_OxfordPets.json "
                                         r"at '.*oxford_pets/split_zhou_OxfordPets.json'"):
        load_dataset("oxford_pets", tmp_path)
    folder, image_dir, split = _write_split_dataset(tmp_path, "oxford_pets", photos)
    (image_dir / split["val"][1][0]).unlink()
    with pytest.raises(InputError, match=r"1 image\(s\) listed in .* are missing, the first "
                                         r"being '.*cls1/val_6.jpg'"):
        load_dataset("oxford_pets", tmp_path)
    split["test"].append(["cls0/train_0.jpg", 37, "nothing"])
    _put(photos[0], image_dir / split["val"][1][0])
    (folder / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    with pytest.raises(InputError, match=r"entry 3 of 'test' .* has label 37, outside 0..36"):
        load_dataset("oxford_pets", tmp_path)
    (folder / "split_zhou_OxfordPets.json").write_text(json.dumps({"train": []}))
    with pytest.raises(InputError, match="must hold the lists 'train', 'val' and 'test'"):
        load_dataset("oxford_pets", tmp_path)


def test_name_on_disk_that_disagrees_is_logged_and_label_decides(tmp_path, photos, caplog):
    folder, image_dir, split = _write_split_dataset(tmp_path, "dtd", photos)
    split["train"][0][2] = "stripes"
    (folder / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    ds = load_dataset("dtd", tmp_path)
    assert ds.train.labels[0] == dataset_classnames("dtd")[0] == "banded"
    assert "1 entries of 'train'" in caplog.text


def test_fgvc_aircraft_layout(tmp_path, photos):
    folder = tmp_path / "fgvc_aircraft"
    variants = dataset_classnames("fgvc_aircraft")
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("".join(v + "\n" for v in variants))
    for i, part in enumerate(("train", "val", "test")):
        rows = [(f"{1000 + 10 * i + j}", variants[j * 40]) for j in range(3)]
        for image, _ in rows:
            _put(photos[0], folder / "images" / f"{image}.jpg")
        (folder / f"images_variant_{part}.txt").write_text("".join(f"{a} {b}\n" for a, b in rows))
    ds = load_dataset("FGVCAircraft", tmp_path)
    assert ds.train.labels == [variants[0], variants[40], variants[80]]
    assert ds.test.items[2] == str(folder / "images" / "1022.jpg")
    (folder / "images_variant_val.txt").write_text("1010 Zeppelin NT\n")
    with pytest.raises(InputError, match="line 1 of .* names the variant 'Zeppelin NT'"):
        load_dataset("fgvc_aircraft", tmp_path)
    (folder / "variants.txt").unlink()
    with pytest.raises(InputError,
                       match=r"expected variants.txt at '.*fgvc_aircraft/variants.txt'"):
        load_dataset("fgvc_aircraft", tmp_path)


def _wnid_folders(base: Path, indices, photos, per_class=2):
    wnids = _wnids()
    for i in indices:
        for j in range(per_class):
            _put(photos[(i + j) % len(photos)], base / wnids[i] / f"img_{j}.JPEG")
    (base / "README.txt").parent.mkdir(parents=True, exist_ok=True)
    (base / "README.txt").write_text("not a class")


def _wnids() -> list[str]:
    from zeroshot_plus.data.datasets import _shipped

    wnids = _shipped("imagenet")["wnids"]
    assert len(wnids) == 1000 and wnids == sorted(set(wnids))
    return wnids


def test_imagenet_layout(tmp_path, photos):
    images = tmp_path / "imagenet" / "images"
    _wnid_folders(images / "train", [0, 744, 999], photos, per_class=3)
    _wnid_folders(images / "val", [0, 744], photos)
    names = dataset_classnames("imagenet")
    ds = load_dataset("ImageNet", tmp_path)
    assert ds.classnames == names and ds.val is None
    assert ds.train.labels == [names[0]] * 3 + ["projectile"] * 3 + [names[999]] * 3
    assert ds.test.items[0] == str(images / "val" / "n01440764" / "img_0.JPEG")
    assert few_shot(ds, 1, 1).val is ds.test  # CoOp and GDA validate on ImageNet's test set
    shutil.rmtree(images / "val")
    with pytest.raises(InputError, match=r"expected the validation images at '.*images/val'"):
        load_dataset("imagenet", tmp_path)


def test_imagenet_variants(tmp_path, photos):
    names = dataset_classnames("imagenet")
    v2 = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for label in (0, 836):
        _put(photos[0], v2 / str(label) / "a.jpeg")
    ds = load_dataset("ImageNetV2", tmp_path)
    assert ds.test.labels == [names[0], "sunglass"] and ds.train is None
    _put(photos[0], v2 / "1000" / "a.jpeg")
    with pytest.raises(InputError, match=r"'.*/1000' is not one of the class folders 0 .. 999"):
        load_dataset("imagenet_v2", tmp_path)

    _wnid_folders(tmp_path / "imagenet-sketch" / "images", [5, 7], photos)
    ds = load_dataset("imagenet-sketch", tmp_path)
    assert ds.classnames == names and ds.test.labels == [names[5]] * 2 + [names[7]] * 2

    a = imagenet_indices("imagenet_a")
    _wnid_folders(tmp_path / "imagenet-adversarial" / "imagenet-a", [a[0], a[-1]], photos)
    ds = load_dataset("ImageNet-A", tmp_path)
    assert len(ds.classnames) == 200
    assert ds.test.labels == [names[a[0]]] * 2 + [names[a[-1]]] * 2
    assert set(ds.test.labels) <= set(ds.classnames)
    _wnid_folders(tmp_path / "imagenet-adversarial" / "imagenet-a", [0], photos)  # not in A
    with pytest.raises(InputError, match=r"n01440764' is not a folder of one of the dataset's "
                                         r"200 ImageNet classes"):
        load_dataset("imagenet_a", tmp_path)

    r = imagenet_indices("imagenet_r")
    _wnid_folders(tmp_path / "imagenet-rendition" / "imagenet-r", [r[3]], photos)
    ds = load_dataset("imagenet_r", tmp_path)
    assert ds.test.labels == [names[r[3]]] * 2 and len(ds.classnames) == 200
    with pytest.raises(InputError, match="has no labelled train split"):
        few_shot(ds, 1, 1)


def test_from_torchvision_image_folder(cifar10_test):
    from torchvision.datasets import ImageFolder

    tv = ImageFolder(str(cifar10_test))
    ds = from_torchvision(tv, name="cifar10")
    assert ds.name == "cifar10" and ds.classnames == sorted(p.name for p in cifar10_test.iterdir()
                                                            if p.is_dir())
    assert ds.test.items == [p for p, _ in tv.samples]
    expected = [Path(p).parent.name for p in ds.test.items]
    assert ds.test.labels == expected
    with pytest.raises(InputError, match="repeat a name"):
        from_torchvision(tv, classnames=["plane"] * 10)
    with pytest.raises(InputError, match="labels up to 9, but only 3 class names"):
        from_torchvision(tv, classnames=["a", "b", "c"])
    with pytest.raises(InputError, match="cannot read the file list of a list"):
        from_torchvision([1, 2])


def test_from_torchvision_file_list_datasets(tmp_path):
    class FlowersLike:  # torchvision's Flowers102 / DTD / Food101 keep these two lists
        _image_files = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
        _labels = [1, 0]

    ds = from_torchvision(FlowersLike(), name="Flowers102", train=FlowersLike())
    names = dataset_classnames("oxford_flowers")
    assert ds.name == "oxford_flowers" and ds.classnames == names
    assert ds.test.labels == [names[1], names[0]] and ds.train.items == ds.test.items
    with pytest.raises(InputError, match="carries no class names"):
        from_torchvision(FlowersLike())


# --- few-shot draws ----------------------------------------------------------------------------

def _toy(sizes=(5, 3, 20, 1, 9), val_sizes=(6, 2, 7, 5, 3), name="toy") -> Dataset:
    """Classes c0..c4 with the given train / val sizes, items interleaved across classes."""
    def images(sizes, part):
        pairs = [(f"{part}/c{c}/{j}.jpg", f"c{c}")
                 for c in range(len(sizes)) for j in range(sizes[c])]
        pairs.sort(key=lambda p: (int(p[0].rsplit("/", 1)[1][:-4]), p[1]))  # interleave
        return ImageSet([p for p, _ in pairs], [label for _, label in pairs])

    names = [f"c{c}" for c in range(len(sizes))]
    return Dataset(name, names, test=images(sizes, "test"), train=images(sizes, "train"),
                   val=images(val_sizes, "val"))


def _straight_coop(ds: Dataset, shots: int, seed: int):
    """CoOp's draw written plainly with the global random module."""
    random.seed(seed)
    out = []
    for images, k in ((ds.train, shots), (ds.val, min(shots, 4))):
        order = list(dict.fromkeys(images.labels))
        picked = []
        for label in order:
            members = [p for p, y in zip(images.items, images.labels) if y == label]
            picked += members if len(members) < k else random.sample(members, k)
        out.append(picked)
    return out


def _straight_gda(ds: Dataset, shots: int, seed: int, loop=(1, 2, 4, 8, 16)):
    """GDA's seed-once, shots-loop stream written plainly with the global random module."""
    random.seed(seed)
    order = list(dict.fromkeys(ds.train.labels))
    for k in loop:
        picked = []
        for label in order:
            members = [p for p, y in zip(ds.train.items, ds.train.labels) if y == label]
            picked += (random.sample(members, k) if len(members) >= k
                       else random.choices(members, k=k))
        if k == shots:
            return picked
    raise AssertionError("shots outside GDA's loop")


@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_few_shot_equals_straight_implementations(shots, seed):
    ds = _toy()
    state = random.getstate()
    coop, gda = few_shot(ds, shots, seed, "coop"), few_shot(ds, shots, seed, "gda")
    assert random.getstate() == state  # the global stream is never touched
    train, val = _straight_coop(ds, shots, seed)
    assert coop.train.items == train and coop.val.items == val
    assert gda.train.items == _straight_gda(ds, shots, seed)
    single = few_shot(ds, shots, seed, "gda_single")  # GDA's base-to-new: the first draw
    assert single.train.items == _straight_gda(ds, shots, seed, loop=(shots,))
    assert single.val is ds.val
    assert gda.val is ds.val and gda.test is ds.test and coop.test is ds.test
    for got in (coop, gda):
        assert got.train.labels == [Path(p).parent.name for p in got.train.items]


def test_few_shot_counts_and_small_classes():
    ds = _toy()
    coop = few_shot(ds, 4, 1, "coop")
    counts = {c: coop.train.labels.count(c) for c in ds.classnames}
    assert counts == {"c0": 4, "c1": 3, "c2": 4, "c3": 1, "c4": 4}  # all of a smaller class
    assert {c: coop.val.labels.count(c) for c in ds.classnames} == {
        "c0": 4, "c1": 2, "c2": 4, "c3": 4, "c4": 3}  # min(K, 4) val shots
    assert len(set(coop.train.items)) == len(coop.train.items)
    gda = few_shot(ds, 8, 1, "gda")
    assert all(gda.train.labels.count(c) == 8 for c in ds.classnames)  # repeats fill up
    assert len(set(p for p, y in zip(gda.train.items, gda.train.labels) if y == "c3")) == 1
    assert coop.val.items != ds.val.items
    assert len(few_shot(ds, 16, 1, "coop").val) == 4 + 2 + 4 + 4 + 3


def test_few_shot_is_deterministic_and_seeded():
    ds = _toy()
    for protocol in ("coop", "gda"):
        assert few_shot(ds, 2, 5, protocol).train.items == few_shot(ds, 2, 5, protocol).train.items
        assert few_shot(ds, 2, 5, protocol).train.items != few_shot(ds, 2, 6, protocol).train.items


def test_gda_draw_depends_on_the_earlier_draws():
    ds = _toy()
    # GDA's 1-shot draw is the first from the seed's stream, so it equals CoOp's train draw
    assert few_shot(ds, 1, 3, "gda").train.items == few_shot(ds, 1, 3, "coop").train.items
    # its 4-shot draw follows the 1- and 2-shot draws: a fresh stream gives another sample
    fresh = random.Random(3)
    groups = {c: [p for p, y in zip(ds.train.items, ds.train.labels) if y == c]
              for c in dict.fromkeys(ds.train.labels)}
    first = [p for g in groups.values()
             for p in (fresh.sample(g, 4) if len(g) >= 4 else fresh.choices(g, k=4))]
    assert few_shot(ds, 4, 3, "gda").train.items != first


def test_few_shot_errors():
    ds = _toy()
    with pytest.raises(InputError, match="unknown few-shot protocol 'tip'; use one of coop, "
                                         "gda, gda_single"):
        few_shot(ds, 1, 1, "tip")
    for shots in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="shots must be a positive integer"):
            few_shot(ds, shots, 1)
    with pytest.raises(InputError, match="seed must be an integer"):
        few_shot(ds, 1, "1")


# --- base / new halves -------------------------------------------------------------------------

def test_base_new_halves():
    ds = _toy()  # 5 classes: ceil(5/2) = 3 base, 2 new
    base, new = base_new(ds, "base"), base_new(ds, "new")
    assert base.classnames == ["c0", "c1", "c2"] and new.classnames == ["c3", "c4"]
    for part in ("train", "val", "test"):
        whole, b, n = getattr(ds, part), getattr(base, part), getattr(new, part)
        assert set(b.labels) == {"c0", "c1", "c2"} and set(n.labels) == {"c3", "c4"}
        assert len(b) + len(n) == len(whole)
        assert b.items == [p for p, y in zip(whole.items, whole.labels) if y in base.classnames]
    assert base_new(ds, "all") is ds
    shot = base_new(few_shot(ds, 2, 1), "base")  # CoOp draws first, then keeps the half
    assert set(shot.train.labels) == {"c0", "c1", "c2"} and len(shot.train) == 2 + 2 + 2
    with pytest.raises(InputError, match="unknown class part 'old'; use base, new or all"):
        base_new(ds, "old")


@pytest.mark.parametrize("name", ["caltech101", "oxford_pets", "imagenet"])
def test_base_new_sizes_on_catalogue(name):
    names = dataset_classnames(name)
    empty = ImageSet([], [])
    ds = Dataset(name, names, test=empty)
    base, new = base_new(ds, "base"), base_new(ds, "new")
    assert len(base.classnames) == math.ceil(len(names) / 2)
    assert base.classnames + new.classnames == names
