"""The on-disk embedding store: reuse, resume after a kill, damage, sharing, deduplication."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zeroshot_plus import Backbone, EncodeReport
from zeroshot_plus.data.store import EmbeddingStore, StoreRoot, open_store

REPO_DIR = Path(__file__).resolve().parents[1]


def _unit_rows(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _run(backbone: Backbone, images, cache) -> tuple[np.ndarray, EncodeReport]:
    report = EncodeReport()
    parts = list(backbone.iter_image_embeddings(images, cache=cache, report=report))
    positions = np.concatenate([p for p, _ in parts])
    assert positions.tolist() == sorted(positions.tolist())  # input order
    return np.concatenate([e for _, e in parts]), report


def _shards(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.npz"))


@pytest.fixture
def image_folder(tmp_path, make_image) -> Path:
    folder = tmp_path / "images"
    for i in range(20):
        make_image(folder / f"{i:02d}.png", 100 + i)
    return folder


# ---------------------------------------------------------------------- EmbeddingStore itself


def test_put_get_round_trip_and_persistence(tmp_path):
    store = EmbeddingStore(tmp_path, "fp1", "images")
    assert len(store) == 0 and "a" not in store
    vectors = _unit_rows(3)
    store.put(["a", "b", "c"], vectors)
    store.put(["d"], _unit_rows(1, seed=1))
    assert store.keys() == {"a", "b", "c", "d"}
    np.testing.assert_array_equal(store.get(["c", "a"]), vectors[[2, 0]])
    reopened = EmbeddingStore(tmp_path, "fp1", "images")
    assert reopened.keys() == {"a", "b", "c", "d"}
    got = reopened.get(["d", "b"])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.concatenate([_unit_rows(1, seed=1), vectors[[1]]]))
    # other fingerprints and kinds are separate stores
    assert len(EmbeddingStore(tmp_path, "fp2", "images")) == 0
    assert len(EmbeddingStore(tmp_path, "fp1", "texts")) == 0
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary files left behind


def test_two_stores_on_one_directory_see_each_others_shards(tmp_path):
    first = EmbeddingStore(tmp_path, "fp", "images")
    second = EmbeddingStore(tmp_path, "fp", "images")
    first.put(["from-first"], _unit_rows(1, seed=1))
    second.put(["from-second"], _unit_rows(1, seed=2))
    assert "from-first" not in second and "from-second" not in first
    first.refresh()
    second.refresh()
    assert first.keys() == second.keys() == {"from-first", "from-second"}
    np.testing.assert_array_equal(second.get(["from-first"]), _unit_rows(1, seed=1))
    np.testing.assert_array_equal(first.get(["from-second"]), _unit_rows(1, seed=2))


def test_a_store_root_opens_each_store_once_and_reads_only_new_shards(tmp_path, monkeypatch):
    root = StoreRoot(tmp_path)
    first = open_store(root, "fp", "images")
    first.put(["a"], _unit_rows(1, seed=1))
    EmbeddingStore(tmp_path, "fp", "images").put(["b"], _unit_rows(1, seed=2))  # another writer
    loaded = []
    original = EmbeddingStore._load
    monkeypatch.setattr(EmbeddingStore, "_load",
                        lambda self, shard: loaded.append(shard.name) or original(self, shard))
    again = open_store(root, "fp", "images")
    assert again is first and again.keys() == {"a", "b"}
    assert len(loaded) == 1  # only the other writer's shard was read
    np.testing.assert_array_equal(again.get(["b"]), _unit_rows(1, seed=2))
    assert open_store(root, "fp", "texts") is not first  # each kind its own store
    assert os.fspath(root) == str(tmp_path) and Path(root) / "x" == tmp_path / "x"
    copy = pickle.loads(pickle.dumps(root))
    assert open_store(copy, "fp", "images") is not first
    assert open_store(copy, "fp", "images").keys() == {"a", "b"}


def test_corrupted_shard_is_set_aside(tmp_path):
    store = EmbeddingStore(tmp_path, "fp", "images")
    store.put([f"k{i}" for i in range(16)], _unit_rows(16, d=64))
    store.put(["other"], _unit_rows(1, seed=3))
    shard = next(s for s in _shards(tmp_path) if s.stat().st_size > 2000)
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    shard.write_bytes(bytes(data))
    reopened = EmbeddingStore(tmp_path, "fp", "images")
    assert reopened.keys() == {"other"}
    assert not shard.exists() and shard.with_suffix(".damaged").exists()


def test_rows_that_are_not_unit_vectors_are_not_served(tmp_path):
    store = EmbeddingStore(tmp_path, "fp", "images")
    rows = _unit_rows(3)
    rows[1] *= 2.0
    rows[2, 0] = np.nan
    store.put(["good", "scaled", "nan"], rows)
    assert EmbeddingStore(tmp_path, "fp", "images").keys() == {"good"}


def test_unwritable_store_location(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    from zeroshot_plus import InputError

    with pytest.raises(InputError, match="file"):
        EmbeddingStore(blocker, "fp", "images")


# ---------------------------------------------------------------------- through the Backbone


def test_second_run_encodes_nothing(backbone, image_folder, tmp_path):
    cache = tmp_path / "cache"
    first, report1 = _run(backbone, image_folder, cache)
    assert (report1.n_encoded, report1.n_cached) == (20, 0)
    assert report1.encoder_seconds > 0
    second, report2 = _run(backbone, image_folder, cache)
    assert (report2.n_encoded, report2.n_cached) == (0, 20)
    assert report2.encoder_seconds == 0  # no forward pass at all
    np.testing.assert_array_equal(second, first)
    np.testing.assert_allclose(first, backbone.encode_images(image_folder), atol=1e-6)


def test_fully_cached_run_does_not_load_the_model(backbone, tiny_config, image_folder, tmp_path):
    cache = tmp_path / "cache"
    expected, _ = _run(backbone, image_folder, cache)
    fresh = Backbone(tiny_config, "none", progress=False)
    assert fresh.fingerprint == backbone.fingerprint
    embeddings, report = _run(fresh, image_folder, cache)
    assert report.n_encoded == 0 and fresh._model is None
    np.testing.assert_array_equal(embeddings, expected)


def test_new_images_in_a_cached_folder_are_the_only_ones_encoded(backbone, image_folder,
                                                                  make_image, tmp_path):
    cache = tmp_path / "cache"
    _run(backbone, image_folder, cache)
    for i in range(3):
        make_image(image_folder / f"new{i}.png", 500 + i)
    embeddings, report = _run(backbone, image_folder, cache)
    assert (report.n_encoded, report.n_cached) == (3, 20)
    np.testing.assert_allclose(embeddings, backbone.encode_images(image_folder), atol=1e-6)


def test_other_backbone_does_not_reuse_the_store(backbone, tiny_config, image_folder, tmp_path):
    cache = tmp_path / "cache"
    _run(backbone, image_folder, cache)
    other = Backbone(tiny_config, "none", precision="bf16", progress=False)
    assert other.fingerprint != backbone.fingerprint
    _, report = _run(other, sorted(image_folder.iterdir())[:2], cache)
    assert (report.n_encoded, report.n_cached) == (2, 0)


def test_corrupted_shard_entries_are_recomputed(backbone, image_folder, tmp_path):
    cache = tmp_path / "cache"
    expected, _ = _run(backbone, image_folder, cache)  # 20 images, batch 16: two shards
    shards = _shards(cache)
    assert len(shards) == 2
    victim = max(shards, key=lambda s: s.stat().st_size)
    with np.load(victim) as data:
        n_victim = len(data["keys"])
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 32] = bytes(b ^ 0x5A for b in data[middle:middle + 32])
    victim.write_bytes(bytes(data))
    embeddings, report = _run(backbone, image_folder, cache)
    assert report.n_encoded == n_victim and report.n_cached == 20 - n_victim
    np.testing.assert_allclose(embeddings, expected, atol=1e-6)
    # and the recomputed entries are stored again
    _, report = _run(backbone, image_folder, cache)
    assert report.n_encoded == 0


def test_same_content_under_two_names_is_encoded_once(backbone, make_image, tmp_path):
    folder = tmp_path / "dups"
    original = make_image(folder / "a.png", 7)
    shutil.copy(original, folder / "b_copy.png")
    make_image(folder / "c.png", 8)
    shutil.copy(original, folder / "d_copy.png")
    cache = tmp_path / "cache"
    embeddings, report = _run(backbone, folder, cache)
    assert report.n_encoded == 2 and report.n_encoded + report.n_cached == 4
    np.testing.assert_array_equal(embeddings[0], embeddings[1])
    np.testing.assert_array_equal(embeddings[0], embeddings[3])
    np.testing.assert_allclose(embeddings, backbone.encode_images(folder), atol=1e-6)
    # a renamed file is found in the store by its content
    os.rename(folder / "c.png", folder / "e_renamed.png")
    _, report = _run(backbone, folder, cache)
    assert report.n_encoded == 0


def test_duplicates_of_a_corrupt_file_are_all_reported(backbone, make_image, tmp_path):
    folder = tmp_path / "bad"
    make_image(folder / "good.png", 1)
    (folder / "x.png").write_bytes(b"not an image at all")
    (folder / "y.png").write_bytes(b"not an image at all")
    report = EncodeReport()
    parts = list(backbone.iter_image_embeddings(folder, cache=tmp_path / "cache",
                                                on_error="skip", report=report))
    assert np.concatenate([p for p, _ in parts]).tolist() == [0]
    assert sorted(Path(f.name).name for f in report.failures) == ["x.png", "y.png"]


def test_pil_images_are_cached_by_pixels(backbone, tmp_path):
    images = [Image.new("RGB", (20, 20), (i * 40, 0, 0)) for i in range(3)]
    cache = tmp_path / "cache"
    first, _ = _run(backbone, images, cache)
    again = [Image.new("RGB", (20, 20), (i * 40, 0, 0)) for i in range(3)]
    second, report = _run(backbone, again, cache)
    assert report.n_encoded == 0
    np.testing.assert_array_equal(first, second)


def test_text_cache(backbone, tmp_path):
    cache = tmp_path / "cache"
    texts = ["a photo of a cat.", "a photo of a dog.", "a photo of a cat."]
    first = backbone.encode_texts(texts, cache=cache)
    assert len(EmbeddingStore(cache, backbone.fingerprint, "texts")) == 2
    np.testing.assert_array_equal(backbone.encode_texts(texts, cache=cache), first)
    np.testing.assert_allclose(first, backbone.encode_texts(texts), atol=1e-6)


# ---------------------------------------------------------------------- resume after a kill


def test_killed_run_resumes(backbone, tiny_config, tmp_path):
    n = 200
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png", compress_level=1)
    cache, out = tmp_path / "cache", tmp_path / "out.npz"
    command = [sys.executable, "-m", "zeroshot_plus.cli", "embed", str(folder), "--out", str(out),
               "--cache", str(cache), "--batch-size", "8", "--model", tiny_config,
               "--pretrained", "none", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, cwd=REPO_DIR, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _shards(cache):
            if process.poll() is not None:
                pytest.fail(f"embed exited ({process.returncode}) before writing a shard: "
                            f"{process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no shard written within 120 s")
            time.sleep(0.002)
        assert process.poll() is None, "the run finished before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)  # the CLI and its decoding worker
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()  # outputs appear only when complete
    n_shards = len(_shards(cache))
    assert 1 <= n_shards < n // 8

    resumed, report = _run(backbone, folder, cache)
    assert report.n_cached > 0 and report.n_encoded > 0
    assert report.n_cached + report.n_encoded == n
    assert report.n_cached == 8 * n_shards  # every shard on disk is whole
    assert report.failures == []
    fresh = backbone.encode_images(folder)
    np.testing.assert_allclose(resumed, fresh, atol=1e-6)


# ---------------------------------------------------------------------- a cache never fails a run


def _tamper_dimension(shard: Path, dim: int) -> int:
    """Rewrite a shard with its keys but embeddings of ``dim`` dimensions; its row count."""
    with np.load(shard) as data:
        keys = data["keys"]
    np.savez(shard.with_suffix(""), keys=keys, embeddings=_unit_rows(len(keys), d=dim))
    return len(keys)


@pytest.mark.parametrize("victim", ["larger", "smaller"])
def test_a_shard_of_another_dimension_is_set_aside(backbone, image_folder, tmp_path, caplog,
                                                   victim):
    """The tampered shard holds most rows or fewest: either way it is set aside and its
    images are encoded again."""
    cache = tmp_path / "cache"
    expected, _ = _run(backbone, image_folder, cache)  # shards of 16 and 4 images
    shards = sorted(_shards(cache), key=lambda s: s.stat().st_size)
    shard = shards[-1] if victim == "larger" else shards[0]
    n_victim = _tamper_dimension(shard, expected.shape[1] + 3)
    embeddings, report = _run(backbone, image_folder, cache)
    assert report.n_encoded == n_victim and report.n_cached == 20 - n_victim
    np.testing.assert_allclose(embeddings, expected, atol=1e-6)
    assert shard.with_suffix(".damaged").exists()
    assert "dimensions" in caplog.text


def test_a_text_shard_of_another_dimension_is_set_aside(backbone, tmp_path):
    cache = tmp_path / "cache"
    expected = backbone.encode_texts(["a cat.", "a dog."], cache=cache)
    _tamper_dimension(_shards(cache)[0], expected.shape[1] + 3)
    again = backbone.encode_texts(["a cat.", "a dog.", "a bird."], cache=cache)
    np.testing.assert_allclose(again[:2], expected, atol=1e-6)


def test_a_store_that_cannot_be_created_is_a_warning(backbone, image_folder, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    embeddings, report = _run(backbone, image_folder, blocker / "cache")
    np.testing.assert_allclose(embeddings, backbone.encode_images(image_folder), atol=1e-6)
    assert report.n_encoded == 20
    backbone.encode_texts(["a cat."], cache=blocker / "cache")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2  # one per store: the images' and the texts'
    assert all("without caching" in w and "not a directory" in w for w in warnings)
    assert blocker.read_text() == "x"


def test_a_store_that_cannot_be_written_is_a_warning(tmp_path, caplog):
    """The store's folder becomes a file (ENOTDIR): writing stops after one warning."""
    store = EmbeddingStore(tmp_path / "cache", "fp", "images")
    store.put(["a"], _unit_rows(1))
    shutil.rmtree(store.directory)
    store.directory.write_text("in the way")
    store.put(["b"], _unit_rows(1, seed=1))
    store.put(["c"], _unit_rows(1, seed=2))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "not a directory" in warnings[0]
    assert "b" not in store and "c" not in store


def test_a_full_disk_under_the_cache_does_not_change_the_output(labelled_folder, tiny_config,
                                                                tmp_path):
    """predict with --cache on a 'disk' that holds no shard (RLIMIT_FSIZE in the child): it
    warns once per store, writes its real output, and leaves no temporary file in the cache."""
    command = [sys.executable, "-c",
               "import resource, signal, sys\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))\n"
               "from zeroshot_plus.cli.main import main\n"
               "sys.exit(main(sys.argv[1:]))",
               "predict", str(labelled_folder), "--classes", "cat,dog,fish", "--model",
               tiny_config, "--pretrained", "none", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    plain = subprocess.run(command, cwd=REPO_DIR, env=env, capture_output=True, text=True,
                           timeout=300)
    cache = tmp_path / "cache"
    cached = subprocess.run(command + ["--cache", str(cache)], cwd=REPO_DIR, env=env,
                            capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and cached.returncode == 0, cached.stderr
    assert cached.stdout == plain.stdout and plain.stdout.count("\n") == 13
    warnings = [line for line in cached.stderr.splitlines() if "without caching" in line]
    assert len(warnings) == 2  # once per store: the texts' and the images'
    assert "/texts/" in warnings[0] and "/images/" in warnings[1]
    assert "no space left on device" in cached.stderr and "Traceback" not in cached.stderr
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_a_failed_write_stops_only_that_store(tmp_path, caplog):
    """Caching is turned off per store, not per folder for the rest of the process: a store
    opened on the same root once it can be written again caches as usual."""
    first = EmbeddingStore(tmp_path / "cache", "fp", "images")
    shutil.rmtree(first.directory)
    first.directory.write_text("in the way")
    first.put(["a"], _unit_rows(1))
    assert not first.writable and "a" not in first
    first.directory.unlink()
    second = EmbeddingStore(tmp_path / "cache", "fp", "images")
    second.put(["b"], _unit_rows(1, seed=1))
    assert second.writable and len(_shards(tmp_path / "cache")) == 1
    assert EmbeddingStore(tmp_path / "cache", "fp", "images").keys() == {"b"}


def test_opening_a_store_removes_partial_shards_of_killed_writers(tmp_path):
    store = EmbeddingStore(tmp_path / "cache", "fp", "images")
    marker = tmp_path / "started"
    process = subprocess.Popen([sys.executable, "-c", (
        "import pathlib, time\n"
        "from zeroshot_plus.data.files import atomic_output\n"
        f"with atomic_output({str(store.directory / 'x.npz')!r}, binary=True) as handle:\n"
        "    handle.write(b'half'); handle.flush()\n"
        f"    pathlib.Path({str(marker)!r}).touch()\n"
        "    time.sleep(120)\n")], cwd=REPO_DIR)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    assert len(list(store.directory.glob(".*.partial"))) == 1
    EmbeddingStore(tmp_path / "cache", "fp", "images")
    assert len(list(store.directory.glob(".*.partial"))) == 1  # the writer still runs
    process.kill()
    process.wait(timeout=30)
    EmbeddingStore(tmp_path / "cache", "fp", "images")
    assert list(store.directory.iterdir()) == []
