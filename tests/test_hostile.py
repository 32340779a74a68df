"""Hostile inputs a user can hand over: descriptor, synonym/metrics, class, template and prompt
files, and several runs writing one store. Each is refused in one sentence naming the file
(exit code 2 on the command line), or works; none ends in a traceback or a silently wrong
result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zeroshot_plus import InputError
from zeroshot_plus.cli import main
from zeroshot_plus.data.store import EmbeddingStore
from zeroshot_plus.text.classnames import parse_classnames
from zeroshot_plus.text.descriptors import match_descriptors
from zeroshot_plus.text.synonyms import load_synonyms
from zeroshot_plus.text.templates import load_templates

REPO_DIR = Path(__file__).resolve().parents[1]

LOADERS = {"descriptor file": match_descriptors, "synonym file": load_synonyms,
           "class file": parse_classnames}
GOOD = {"descriptor file": b'{"cat": ["whiskers"], "dog": ["a tail"]}',
        "synonym file": b'{"cat": "kitten", "dog": "puppy"}',
        "class file": b'["cat", "dog"]'}


def _one_sentence(message: str, path: Path) -> None:
    assert str(path) in message and message.endswith(".") and "\n" not in message


def _refused(load, path: Path, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        load(path)
    assert fragment in str(info.value), str(info.value)
    _one_sentence(str(info.value), path)


# ---------------------------------------------------------------------- any JSON file


@pytest.mark.parametrize("what", LOADERS)
@pytest.mark.parametrize("content, fragment", [
    (b"", "is not valid JSON: Expecting value (line 1)"),
    (b"[" * 100_000 + b"]" * 100_000, "nests arrays or objects too deeply"),
    (b'\n["caf\xe9"]', "is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"),
    (b'["\\udcff"]', "holds a string that is not text (a lone surrogate escape"),
    (b'[{"cat": 1, "cat": 2}]', "names 'cat' twice in one object"),
])
def test_a_broken_json_file_is_one_sentence(tmp_path, what, content, fragment):
    path = tmp_path / "f.json"
    path.write_bytes(content)
    _refused(LOADERS[what], path, f"{what} '{path}' {fragment}")


@pytest.mark.parametrize("what", LOADERS)
def test_a_folder_is_not_a_file_and_a_byte_order_mark_is_read(tmp_path, what):
    folder = tmp_path / "x.json"
    folder.mkdir()
    _refused(LOADERS[what], folder, "is a folder, not a file")
    _refused(LOADERS[what], tmp_path / "absent.json", "does not exist")
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD[what])
    assert LOADERS[what](path)


@pytest.mark.parametrize("what, content", [
    ("descriptor file", b'{"cat": ["a"], "dog": ["b"], "cat": ["c"]}'),
    ("synonym file", b'{"cat": "kitten", "cat": "tabby"}'),
])
def test_a_class_named_twice_is_refused_not_overwritten(tmp_path, what, content):
    path = tmp_path / "twice.json"
    path.write_bytes(content)
    _refused(LOADERS[what], path, "names 'cat' twice in one object")


# ---------------------------------------------------------------------- descriptor files


@pytest.mark.parametrize("content, fragment", [
    ({"": ["x"], "dog": ["y"]}, 'has a blank class name ("")'),
    ({" ": ["x"]}, 'has a blank class name (" ")'),
    ({"cat": ["fur", "  "]}, "gives class 'cat' a blank descriptor (item 2)"),
    ({"cat": [["fur"]]}, "class 'cat' maps to [[\"fur\"]]"),
])
def test_descriptor_files_are_checked_item_by_item(tmp_path, content, fragment):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(content))
    _refused(match_descriptors, path, fragment)
    with pytest.raises(InputError, match=r"^the descriptor map "):
        match_descriptors(content)  # the same map given in Python


# ---------------------------------------------------------------------- REAL metrics files


def _row(name="cat", alternates=None, chosen="kitten"):
    return {"name": name, "alternates": {"kitten": 3} if alternates is None else alternates,
            "most_common_name": chosen}


@pytest.mark.parametrize("content, fragment", [
    ({"0": _row(alternates={"kitten": "many"})},
     "the caption count of 'kitten' is \"many\", not a whole number >= 0"),
    ({"0": _row(alternates={"kitten": 1.5})}, "the caption count of 'kitten' is 1.5"),
    ({"0": _row(alternates={"kitten": -2})}, "the caption count of 'kitten' is -2"),
    ({"0": _row(alternates={"kitten": True})}, "the caption count of 'kitten' is true"),
    ({"0": _row(name=["cat"])}, "class id 0 of the synonym file '{path}' has a name that is "
                                "not a string ([\"cat\"])"),
    ({"0": _row(), "00": _row("dog")}, "has class id 0 twice ('0' and '00')"),
    ({"0": _row(), "1": "puppy"}, "mixes REAL metrics rows (objects with a 'name', e.g. '0') "
                                  "with other entries (e.g. '1')"),
])
def test_metrics_files_are_checked_row_by_row(tmp_path, content, fragment):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(content))
    _refused(load_synonyms, path, fragment.format(path=path))


def test_metrics_inf_count_is_one_sentence(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"0": {"name": "cat", "alternates": {"kitten": Infinity}, '
                    '"most_common_name": "kitten"}}')
    _refused(load_synonyms, path, "the caption count of 'kitten' is Infinity")


# ---------------------------------------------------------------------- class and template files


@pytest.mark.parametrize("content, fragment", [
    ('[1, 2]', "item 1 is 1, not a class name (a string)"),
    ('["cat", null]', "item 2 is null, not a class name (a string)"),
    ('["cat", ["dog"]]', "item 2 is [\"dog\"], not a class name (a string)"),
])
def test_json_class_files_hold_strings(tmp_path, content, fragment):
    path = tmp_path / "classes.json"
    path.write_text(content)
    _refused(parse_classnames, path, fragment)


def test_a_class_or_template_file_that_is_not_utf8_is_one_sentence(tmp_path):
    classes, templates = tmp_path / "classes.txt", tmp_path / "templates.txt"
    classes.write_bytes(b"cat\ncaf\xe9\n")
    templates.write_bytes(b"a photo of a {}.\na caf\xe9 {}.\n")
    _refused(parse_classnames, classes, "is not UTF-8 text (byte 0xe9 on line 2)")
    _refused(lambda p: load_templates(str(p)), templates, "is not UTF-8 text (byte 0xe9 on line 2)")


def test_a_template_list_holds_strings():
    with pytest.raises(InputError, match=r"^template 2 of the template list is None, not a "
                                         r"string\.$"):
        load_templates(["a photo of a {}.", None])


# ---------------------------------------------------------------------- on the command line


@pytest.fixture
def model_args(tiny_config) -> list[str]:
    return ["--model", tiny_config, "--pretrained", "none", "--no-progress"]


@pytest.mark.parametrize("option, name, content, fragment", [
    ("--descriptors", "d.json", b'{"cat": ["a"], "cat": ["b"]}', "names 'cat' twice"),
    ("--descriptors", "d.json", b'{"cat": ["caf\xe9"]}', "is not UTF-8 text"),
    ("--classes", "c.json", b'["cat", 3]', "item 2 is 3"),
    ("--classes", "c.txt", b"cat\n\xff\n", "is not UTF-8 text"),
    ("--templates", "t.txt", b"a {}\n\xff {}\n", "is not UTF-8 text"),
])
def test_bad_files_on_the_command_line_exit_2_in_one_sentence(labelled_folder, model_args,
                                                              tmp_path, capsys, option, name,
                                                              content, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    command = ["predict", str(labelled_folder), *model_args, option, str(path)]
    if option == "--descriptors":
        command += ["--method", "descriptions"]
    if option != "--classes":
        command += ["--classes", "cat,dog,fish"]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert fragment in err and str(path) in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


# ---------------------------------------------------------------------- concurrent runs, one store


def test_two_embed_runs_on_one_store_both_succeed_and_the_store_reads_whole(
        backbone, tiny_config, make_image, tmp_path):
    folder, cache = tmp_path / "imgs", tmp_path / "cache"
    for i in range(48):
        make_image(folder / f"{i:02d}.png", i)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = [subprocess.Popen([sys.executable, "-m", "zeroshot_plus.cli", "embed", str(folder),
                              "--out", str(tmp_path / f"{name}.npz"), "--cache", str(cache),
                              "--batch-size", "4", "--model", tiny_config, "--pretrained",
                              "none", "--no-progress"],
                             cwd=REPO_DIR, env=env, stderr=subprocess.PIPE, text=True)
            for name in ("first", "second")]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0 and "Traceback" not in err, err
    first, second = (np.load(tmp_path / f"{name}.npz") for name in ("first", "second"))
    np.testing.assert_array_equal(first["embeddings"], second["embeddings"])
    store = EmbeddingStore(cache, backbone.fingerprint, "images")
    assert len(store) == 48 and not list(cache.rglob("*.partial"))
    assert not list(cache.rglob("*.damaged"))
    np.testing.assert_allclose(backbone.encode_images(folder, cache=cache), first["embeddings"],
                               atol=1e-6)


def test_a_shard_removed_while_a_run_reads_the_store_is_one_sentence(tmp_path):
    store = EmbeddingStore(tmp_path / "cache", "fp", "images")
    rows = np.eye(3, 8, dtype=np.float32)
    store.put(["a", "b", "c"], rows)
    np.testing.assert_array_equal(store.get(["c", "a"]), rows[[2, 0]])
    for shard in store.directory.glob("*.npz"):
        shard.unlink()  # e.g. `rm -rf` on the cache during a run
    with pytest.raises(InputError, match=r"was removed or damaged while this run read the "
                                         r"cache; run again to recompute it\.$"):
        store.get(["a"])
