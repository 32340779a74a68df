"""The Ray engine (zeroshot_plus.distributed) against the single-process path.

One small local Ray runtime (2 CPUs) serves the module; the tests that need it skip when Ray
is not installed. The phrase counter's tests need no Ray: their reference is SQLite's FTS5.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from zeroshot_plus import Backbone
from zeroshot_plus.cli.main import main
from zeroshot_plus.encoders.pipeline import EncodeReport
from zeroshot_plus.errors import InputError
from zeroshot_plus.text.frequency import CaptionIndex, build_index, mine_frequencies
from zeroshot_plus.text.phrases import PhraseCounter, PhraseCounts, tokens
from zeroshot_plus.text.synonyms import load_synonyms

from conftest import REPO_DIR

# ------------------------------------------------------------------ phrase counting (no Ray)

CAPTIONS = [
    "A BLUE  jay.", "Blue-Jay!", "blue jays", "jay, blue", "blue.jay", "blue_jay", "bluejay",
    "Café au lait", "cafe", "CAFÉ", "e\u0301te\u0301 in summer", "\u00e9t\u00e9",  # NFD, NFC
    "R2-D2 robot", "r2d2", "2 cats and 3 dogs", "12 cats",
    "jay jay jay", "it's O'Neil's", "über Uber ÜBER", "straße strasse",
    "cat\U0001F914 cat", "cat\U0001F600", "İstanbul", "ſtop", "Ærø aero", "", "!!!",
    "the blue, jay", "blue\njay", "a photo of a blue jay and a blue jay",
]
GROUPS = [["blue jay", "jay"], ["cafe", "café au"], ["ete"], ["r2 d2", "d2"], ["uber"],
          ["cat"], ["2 cats"], ["istanbul"], ["strasse", "straße"], ["stop"],
          ["oneil", "o neil", "its"], ["aero", "æro"], ["blue"]]


def test_tokens_follow_fts5_unicode61_rules():
    assert tokens("A BLUE  jay.") == ["a", "blue", "jay"]
    assert tokens("Blue-Jay!") == ["blue", "jay"]            # '-' is a space
    assert tokens("it's O'Neil") == ["its", "oneil"]         # quotes deleted
    assert tokens("e\u0301te\u0301 \u00e9t\u00e9") == ["ete", "ete"]  # diacritics removed
    assert tokens("R2-D2") == ["r2", "d2"]
    assert tokens("cat\U0001F600") == ["cat"]                # an emoji of Unicode 6.1 splits


@pytest.mark.parametrize("require", [None, "blue"])
def test_phrase_counts_equal_the_fts5_index(require):
    index = CaptionIndex()
    index.add(CAPTIONS)
    counter = PhraseCounter(GROUPS, require)
    phrase_counts, group_counts = counter.count(CAPTIONS)
    for phrase, n in zip(counter.phrases_, phrase_counts):
        assert n == index.count(phrase, require), phrase
    for group, n in zip(GROUPS, group_counts):
        assert n == index.count(group, require), group
    if require is None:  # by hand: whole tokens, adjacent, once per caption
        by_phrase = dict(zip(counter.phrases_, phrase_counts))
        assert by_phrase["blue jay"] == 7 and by_phrase["jay"] == 9
        assert by_phrase["cat"] == 2 and by_phrase["2 cats"] == 1 and by_phrase["ete"] == 2


def test_phrase_counts_answer_mine_frequencies_like_the_index():
    table = load_synonyms({"blue jay": ["jay", "bluejay"], "cafe": ["café au", "coffee"]})
    groups = [list(dict.fromkeys([n, *a])) for n, a in zip(table.classes, table.alternates)]
    counter = PhraseCounter(groups)
    counts = PhraseCounts(counter, *counter.count(CAPTIONS), len(CAPTIONS))
    index = CaptionIndex()
    index.add(CAPTIONS)
    assert mine_frequencies(table, counts, progress=False) == mine_frequencies(
        table, index, progress=False)
    assert len(counts) == len(CAPTIONS)


def test_parser_with_engine_options_loads_neither_ray_nor_torch(tmp_path):
    probe = ("import sys\nfrom zeroshot_plus.cli import main\n"
             "code = main(sys.argv[1:])\n"
             "print([m for m in ('ray', 'torch') if m in sys.modules], code)")
    result = subprocess.run(
        [sys.executable, "-c", probe, "embed", str(tmp_path), "--out", str(tmp_path / "e.npz"),
         "--ray-address", "auto"], cwd=REPO_DIR, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["[]", "2"]
    assert "--ray-address needs --engine ray" in result.stderr


def test_without_ray_the_engine_says_how_to_install_it():
    probe = ("import sys\nsys.modules['ray'] = None\n"
             "from zeroshot_plus.distributed import start_ray\n"
             "try:\n    start_ray()\nexcept Exception as exc:\n    print(exc)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_DIR, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip() == ("the Ray engine needs Ray: "
                                     "pip install zeroshot_plus[distributed].")


# ------------------------------------------------------------------ on a Ray runtime


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(cifar10_test, tmp_path_factory) -> list[Path]:
    """Ten CIFAR-10 photos, an unreadable file at position 3, a copy of photo 0 at 6."""
    paths = [sorted((cifar10_test / c).glob("*.jpg"))[i] for c in ("cat", "ship")
             for i in range(5)]
    bad = tmp_path_factory.mktemp("bad") / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    paths.insert(3, bad)
    paths.insert(6, paths[0])
    return paths


@pytest.fixture(scope="module")
def small_batches(tiny_config) -> Backbone:
    bb = Backbone(tiny_config, "none", progress=False, batch_size=4)
    bb.model
    return bb


def _run(backbone, images, engine, cache, on_error="skip"):
    from zeroshot_plus.distributed import image_embeddings

    report = EncodeReport()
    parts = list(image_embeddings(backbone, images, engine=engine, cache=cache,
                                  on_error=on_error, report=report))
    positions = np.concatenate([p for p, _ in parts])
    return positions, np.concatenate([e for _, e in parts]), report


def test_ray_embeddings_equal_local_and_share_the_store(ray_runtime, small_batches, photos,
                                                        tmp_path):
    local = _run(small_batches, photos, "local", tmp_path / "local")
    on_ray = _run(small_batches, photos, "ray", tmp_path / "ray")
    # the same forward passes (4 consecutive images, less those not read) on the same
    # device and thread count: the same numbers, bit for bit
    assert np.array_equal(local[0], on_ray[0]) and np.array_equal(local[1], on_ray[1])
    assert local[0].tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
    for report in (local[2], on_ray[2]):
        assert (report.n_encoded, report.n_cached) == (10, 1)  # the copy is read once
        assert [(f.name, f.reason) for f in report.failures] == [
            (str(photos[3]), "not an image file PIL can identify (corrupt or unsupported "
                             "format).")]
    # a later single-machine run reads everything back from what the Ray run stored
    again = _run(small_batches, photos, "local", tmp_path / "ray")
    assert (again[2].n_encoded, again[2].n_cached) == (0, 11)
    assert np.array_equal(again[1], local[1])
    # and a second Ray run encodes nothing
    resumed = _run(small_batches, photos, "ray", tmp_path / "ray")
    assert (resumed[2].n_encoded, resumed[2].n_cached) == (0, 11)
    assert np.array_equal(resumed[1], local[1])


def test_a_ray_run_stopped_part_way_resumes_without_recomputing(ray_runtime, small_batches,
                                                                photos, tmp_path):
    from zeroshot_plus.data.store import EmbeddingStore

    images = photos[:3] + photos[4:] + [photos[3]]  # the unreadable file last
    with pytest.raises(InputError, match="cannot read image '.*broken.jpg'"):
        _run(small_batches, images, "ray", tmp_path / "c", on_error="raise")
    stored = EmbeddingStore(tmp_path / "c", small_batches.fingerprint, "images")
    assert 1 <= len(stored) <= 10
    resumed = _run(small_batches, images[:-1], "ray", tmp_path / "c")
    assert resumed[2].n_cached == len(stored) + 1  # and the copy of photo 0
    assert resumed[2].n_encoded == 10 - len(stored)
    # the resumed passes hold fewer images than a fresh run's (the stored ones are left
    # out), and a row's float32 rounding depends on the pass it was in: ~1e-7, as when the
    # local path resumes
    local = _run(small_batches, images[:-1], "local", None)
    np.testing.assert_allclose(resumed[1], local[1], rtol=0, atol=1e-6)


def _write_shard(path: Path, photos: list[Path]) -> None:
    """img2dataset's layout: KEY.jpg, KEY.txt (caption), KEY.json per sample."""
    with tarfile.open(path, "w") as tar:
        for i, photo in enumerate(photos):
            for suffix, data in ((".jpg", photo.read_bytes()),
                                 (".txt", f"caption {i} of {photo.parent.name}".encode()),
                                 (".json", json.dumps({"key": f"{i:09d}"}).encode())):
                info = tarfile.TarInfo(f"{i:09d}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_tar_shards_give_the_keys_and_embeddings_of_the_same_files(ray_runtime, small_batches,
                                                                   photos, tmp_path):
    from zeroshot_plus.distributed import scan_images

    readable = [p for p in photos if p.name != "broken.jpg"]
    _write_shard(tmp_path / "a.tar", readable[:5])
    _write_shard(tmp_path / "b.tar", readable[5:])
    scanned = scan_images([tmp_path / "a.tar", tmp_path / "b.tar"])
    assert scanned.names()[:2] == [f"{tmp_path / 'a.tar'}/000000000.jpg",
                                   f"{tmp_path / 'a.tar'}/000000001.jpg"]
    assert scanned.captions[6] == f"caption 1 of {readable[6].parent.name}"
    on_ray = _run(small_batches, scanned, "ray", tmp_path / "c")
    assert (on_ray[2].n_encoded, on_ray[2].n_cached) == (10, 1)
    # the same bytes as files: the same store keys, read back by a local run
    local = _run(small_batches, readable, "local", tmp_path / "c")
    assert (local[2].n_encoded, local[2].n_cached) == (0, 11)
    assert np.array_equal(local[1], on_ray[1])
    with pytest.raises(InputError, match="Ray engine only"):
        _run(small_batches, [tmp_path / "a.tar"], "local", None)


def test_embed_command_on_ray_writes_the_local_file(ray_runtime, tiny_config, photos, tmp_path):
    common = [*map(str, photos), "--model", tiny_config, "--pretrained", "none",
              "--no-progress", "--batch-size", "4"]
    assert main(["embed", *common, "--out", str(tmp_path / "local.npz")]) == 0
    assert main(["embed", *common, "--out", str(tmp_path / "ray.npz"), "--engine", "ray"]) == 0
    with np.load(tmp_path / "local.npz") as local, np.load(tmp_path / "ray.npz") as on_ray:
        assert set(local.files) == set(on_ray.files)
        for name in local.files:
            assert np.array_equal(local[name], on_ray[name]), name


def test_frequency_on_ray_writes_the_fts5_metrics(ray_runtime, tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    quarter = len(CAPTIONS) // 4
    parts = [CAPTIONS[i * quarter:(i + 1) * quarter] for i in range(3)]
    parts.append(CAPTIONS[3 * quarter:])
    files = [tmp_path / n for n in ("a.csv", "b.tsv", "c.jsonl", "d.parquet")]
    import csv

    for path, part in zip(files[:2], parts[:2]):
        sep = "\t" if path.suffix == ".tsv" else ","
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter=sep)
            writer.writerow(["url", "caption"])
            writer.writerows([["u", c] for c in part])
    files[2].write_text("".join(json.dumps({"caption": c}) + "\n" for c in parts[2]),
                        encoding="utf-8")
    pq.write_table(pa.table({"caption": parts[3]}), files[3])
    synonyms = tmp_path / "synonyms.json"
    synonyms.write_text(json.dumps({g[0]: g[1:] or ["blue"] for g in GROUPS}), encoding="utf-8")
    common = ["frequency", "--captions", *map(str, files), "--synonyms", str(synonyms),
              "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "local.json"),
                 "--index", str(tmp_path / "index.sqlite")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray.json"), "--engine", "ray"]) == 0
    local = json.loads((tmp_path / "local.json").read_text())
    assert json.loads((tmp_path / "ray.json").read_text()) == local
    assert capsys.readouterr().err.count(f"in {len(CAPTIONS)} captions") == 2


def test_real_linear_pool_from_shards_on_ray_equals_the_pairs_file(ray_runtime, small_batches,
                                                                   photos, tmp_path):
    from zeroshot_plus.distributed import pool_embeddings

    readable = [p for p in photos if p.name != "broken.jpg"][:6]
    _write_shard(tmp_path / "pool.tar", readable)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image,caption\n" + "".join(
        f"{p},caption {i} of {p.parent.name}\n" for i, p in enumerate(readable)))
    X_ray, captions_ray = pool_embeddings(small_batches, [tmp_path / "pool.tar"],
                                          engine="ray")
    X_local, captions_local = pool_embeddings(small_batches, pairs)
    assert captions_ray == captions_local == [f"caption {i} of {p.parent.name}"
                                              for i, p in enumerate(readable)]
    assert np.array_equal(X_ray, X_local)


def test_benchmark_embeds_on_ray_with_the_same_records(ray_runtime, small_batches, cifar10_test,
                                                       tmp_path):
    from zeroshot_plus.data.datasets import Dataset, dataset_classnames
    from zeroshot_plus.data.sources import ImageSet
    from zeroshot_plus.evaluation.benchmark import Benchmark

    classes = ["cat", "ship", "truck"]  # as EuroSAT's first three classes, on CIFAR-10 photos
    photos = [p for c in classes for p in sorted((cifar10_test / c).glob("*.jpg"))[:3]]
    names = dataset_classnames("eurosat")[:3]
    dataset = Dataset("eurosat", names, test=ImageSet(photos, [n for n in names
                                                                for _ in range(3)]))
    records = []
    for engine in ("local", "ray"):
        out = tmp_path / engine
        report = Benchmark(small_batches, datasets=[dataset], methods=["zeroshot"], out=out,
                           cache=tmp_path / f"store-{engine}", engine=engine, plots=False,
                           progress=False).run()
        assert report.images_encoded == len(photos)
        records.append([json.loads(line) for line in (out / "records.jsonl").read_text()
                        .splitlines()])
    assert [r["metrics"] for r in records[0]] == [r["metrics"] for r in records[1]]
