"""File names, class names and captions of any bytes: written losslessly, read back identically."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from zeroshot_plus.cli import main
from zeroshot_plus.data.embeddings import load_embeddings, save_embeddings
from zeroshot_plus.data.names import name_text, path_text, text_name, text_path
from zeroshot_plus.data.sources import read_image_source
from zeroshot_plus.data.tables import image_prompts, read_table

# names that are not UTF-8, hold separators, quotes, tabs, newlines, "\r", backslashes, or a
# backslash sequence that looks like an escape
HOSTILE = [b"caf\xe9.png", b"a\xff\xfe,b.png", b'q"uote,\n\tx.png', b"cr\rlf.png",
           b"back\\slash.png", b"lit\\xe9.png", "\u00e9t\u00e9 \u2028.png".encode()]


@pytest.fixture(scope="module")
def model_args(tiny_config) -> list[str]:
    return ["--model", tiny_config, "--pretrained", "none", "--no-progress"]


@pytest.fixture
def hostile_folder(tmp_path, make_image) -> tuple[Path, list[str]]:
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    os.mkdir(os.fsencode(root / "dog") + b"\xe9")   # a class folder that is not UTF-8
    paths = []
    for i, name in enumerate(HOSTILE):
        folder = os.fsencode(root / "cat") if i % 2 else os.fsencode(root / "dog") + b"\xe9"
        path = os.fsdecode(folder + b"/" + name)
        make_image(Path(path), i)
        paths.append(path)
    return root, paths


def test_path_text_is_utf8_and_inverted_exactly():
    for name in HOSTILE + [b"plain/name.jpg", b"\\\\xff", b"\\x41"]:
        path = os.fsdecode(name)
        text = path_text(path)
        text.encode("utf-8")   # strict: no lone surrogates
        assert text_path(text) == path
    assert path_text("plain/name,1.jpg") == "plain/name,1.jpg"
    assert path_text(os.fsdecode(b"caf\xe9")) == "caf\\xe9"
    assert text_path("C:\\data\\n.jpg") == "C:\\data\\n.jpg"   # other backslashes are kept


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predict_output_reads_back_the_same_names(hostile_folder, model_args, suffix, tmp_path):
    root, paths = hostile_folder
    out = tmp_path / f"out{suffix}"
    assert main(["predict", str(root), "--classes", "cat,dog", "--out", str(out),
                 *model_args]) == 0
    raw = out.read_bytes().decode("utf-8")   # strict UTF-8
    if suffix == ".csv":
        with open(out, newline="", encoding="utf-8") as handle:
            written = [row[0] for row in csv.reader(handle)][1:]
    else:
        written = [json.loads(line)["path"] for line in raw.split("\n") if line]
    assert sorted(text_path(w) for w in written) == sorted(paths)
    # the output is itself a manifest: our reader maps it back to the same files
    assert sorted(os.fspath(p) for p in read_image_source(out).items) == sorted(paths)


def test_manifests_prompts_and_embeddings_keep_hostile_names(hostile_folder, tmp_path):
    root, paths = hostile_folder
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["path", "label"]] +
                                     [[path_text(p), "a, \"quoted\"\tlabel"] for p in paths])
    images = read_image_source(manifest)
    assert [os.fspath(p) for p in images.items] == paths
    assert images.labels == ["a, \"quoted\"\tlabel"] * len(paths)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps({"path": path_text(p), "label": "x\ny"}) + "\n"
                             for p in paths), encoding="utf-8")
    assert [os.fspath(r.path) for r in read_table(jsonl, ("label",), what="m")] == paths
    prompts = tmp_path / "p.csv"
    with open(prompts, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([[path_text(p), f"caption,\n\"{i}\""]
                                      for i, p in enumerate(paths)])
    assert image_prompts(prompts, paths) == [f"caption,\n\"{i}\"" for i in range(len(paths))]
    store = tmp_path / "e.npz"
    save_embeddings(store, np.zeros((len(paths), 2), np.float32), paths, "fp")
    assert load_embeddings(store).paths == paths
    assert all(str(p).encode("utf-8") for p in np.load(store)["paths"])


def test_folder_labels_that_are_not_utf8_are_written_as_text(hostile_folder, model_args,
                                                             tmp_path, capsys):
    root, paths = hostile_folder
    assert read_image_source(root).labels.count("dog\\xe9") == 4
    out = tmp_path / "report.json"
    assert main(["evaluate", str(root), "--out", str(out), *model_args]) == 0
    capsys.readouterr()
    report = json.loads(out.read_bytes().decode("utf-8"))
    assert set(report["per_class_accuracy"]) == {"cat", "dog\\xe9"}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_match_output_reads_back_as_the_same_pairs(hostile_folder, model_args, suffix, tmp_path):
    from zeroshot_plus.data.tables import read_pairs

    _, paths = hostile_folder
    captions = [f"a dog, \"chasing\"\n\ta ball {i}\r" for i in range(len(paths))]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": path_text(p), "caption": c}) + "\n"
                             for p, c in zip(paths, captions)), encoding="utf-8")
    assert read_pairs(pairs) == (paths, [c.strip() for c in captions])
    out = tmp_path / f"match{suffix}"
    assert main(["match", str(pairs), "--out", str(out), *model_args]) == 0
    out.read_bytes().decode("utf-8")
    assert read_pairs(out) == read_pairs(pairs)


def test_class_names_from_bytes_match_the_folder_labels(hostile_folder, model_args, tmp_path,
                                                        capsys):
    root, _ = hostile_folder
    out = tmp_path / "p.jsonl"
    classes = os.fsdecode(b"cat,dog\xe9")            # a command line that is not UTF-8
    assert main(["predict", str(root), "--classes", classes, "--out", str(out),
                 *model_args]) == 0
    rows = [json.loads(line) for line in out.read_bytes().decode("utf-8").splitlines()]
    assert {label for row in rows for label in row["labels"]} == {"cat", "dog\\xe9"}
    assert main(["evaluate", str(root), "--classes", classes, *model_args]) == 0
    assert "dog\\xe9" in capsys.readouterr().out


# whitespace at the ends of a name, and backslash sequences that look like its escapes
EDGES = [" a ", "\tlead", "trail\n", " ", "\u3000wide\u00a0", "\\x20lit", "lit\\x5c ",
         "\\", "\\ ", "mid dle", "\x85nel"]


def test_edge_whitespace_is_escaped_and_inverted_exactly():
    for name in EDGES:
        for write, read in ((path_text, text_path), (name_text, text_name)):
            text = write(name)
            assert text == text.strip() and read(text) == name, (name, text)
    assert path_text(" a.jpg") == "\\x20a.jpg" and name_text(" a ") == "\\x20a\\x20"
    assert path_text("\u3000x") == "\\u3000x"
    # names without edge whitespace are written as before
    for name in ["plain", "mid dle", "caf\\xe9", "a\\b"]:
        assert name_text(name) == name
    assert text_name("caf\\xe9") == "caf\\xe9"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_edge_spaces_in_file_and_class_names_round_trip(tmp_path, make_image, model_args,
                                                        suffix, capsys):
    """A class folder " a " holding " 0.png": its manifest (relative paths that begin with a
    space), predict's output read back as a manifest, and evaluate all keep the spaces."""
    root = tmp_path / "imgs"
    paths = [make_image(root / " a " / " 0.png", 0), make_image(root / "b\u3000" / "1.png", 1)]
    labels = [" a ", "b\u3000"]
    manifest = root / f"m{suffix}"
    cells = [(path_text(p.relative_to(root)), name_text(l)) for p, l in zip(paths, labels)]
    if suffix == ".csv":
        with open(manifest, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([["path", "label"], *cells])
    else:
        manifest.write_text("".join(json.dumps({"path": p, "label": l}) + "\n"
                                    for p, l in cells), encoding="utf-8")
    images = read_image_source(manifest)
    assert [os.fspath(p) for p in images.items] == [os.fspath(p) for p in paths]
    assert images.labels == labels == read_image_source(root).labels
    out = tmp_path / f"p{suffix}"
    assert main(["fit", str(root), "--out", str(tmp_path / "g.npz"), "--alpha", "1",
                 *model_args]) == 0
    assert main(["predict", str(manifest), "--classifier", str(tmp_path / "g.npz"), "--out",
                 str(out), *model_args]) == 0
    if suffix == ".csv":
        with open(out, newline="", encoding="utf-8") as handle:
            written = [row[1::2][:2] for row in csv.reader(handle)][1:]
    else:
        written = [json.loads(line)["labels"] for line in out.read_text("utf-8").splitlines()]
    assert all(sorted(text_name(w) for w in row) == labels for row in written)
    assert [os.fspath(p) for p in read_image_source(out).items] == [os.fspath(p) for p in paths]
    capsys.readouterr()
    assert main(["evaluate", str(root), *model_args]) == 0
    assert main(["evaluate", str(manifest), "--classes", "\\x20a\\x20,b\\u3000",
                 *model_args]) == 0
