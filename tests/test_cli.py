"""The `zeroshot-plus` command line: errors, help, and end-to-end runs (synthetic and real photos)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import zeroshot_plus.encoders.backbone as backbone_module
import zeroshot_plus.encoders.models as models_module
from zeroshot_plus.cli import build_parser, main

REPO_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model_args(tiny_config) -> list[str]:
    return ["--model", tiny_config, "--pretrained", "none", "--no-progress"]


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("zeroshot-plus: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------- help


COMMON_OPTIONS = ["--model", "--pretrained", "--checkpoint", "--device", "--precision",
                  "--batch-size", "--workers", "--jpeg-draft", "--cache", "--no-progress",
                  "--strict", "--verbose"]
COMMAND_OPTIONS = {
    "embed": ["--out"],
    "predict": ["--classes", "--templates", "--method", "--top-k", "--out"],
    "evaluate": ["--classes", "--templates", "--method", "--out"],
}


@pytest.mark.parametrize("command", sorted(COMMAND_OPTIONS))
def test_help_mentions_every_option(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "IMAGES" in text
    for option in COMMON_OPTIONS + COMMAND_OPTIONS[command]:
        assert option in text, f"{command} --help does not mention {option}"
    # and nothing the parser accepts is left out of the help
    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    for action in commands.choices[command]._actions:
        for option in action.option_strings:
            assert option in text


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert all(command in text for command in COMMAND_OPTIONS)


# ---------------------------------------------------------------------- clear errors


@pytest.fixture
def folder(labelled_folder) -> Path:
    return labelled_folder


def test_missing_folder(model_args, tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    assert main(["embed", str(missing), "--out", str(tmp_path / "e.npz"), *model_args]) == 2
    line = _error_line(capsys)
    assert "no_such_folder" in line and "does not exist" in line
    assert not (tmp_path / "e.npz").exists()


def test_empty_folder(model_args, tmp_path, capsys):
    empty = tmp_path / "empty_folder"
    (empty / "sub").mkdir(parents=True)
    assert main(["predict", str(empty), "--classes", "a,b", *model_args]) == 2
    line = _error_line(capsys)
    assert "empty_folder" in line and "no images" in line


def test_unknown_model_name(folder, tmp_path, capsys):
    start = time.monotonic()
    rc = main(["embed", str(folder), "--out", str(tmp_path / "e.npz"),
               "--model", "ViT-Imaginary-7", "--pretrained", "none", "--no-progress"])
    assert rc == 2 and time.monotonic() - start < 10
    assert "ViT-Imaginary-7" in _error_line(capsys)


def test_missing_model_config(folder, tmp_path, capsys):
    rc = main(["embed", str(folder), "--out", str(tmp_path / "e.npz"),
               "--model", str(tmp_path / "nope.json"), "--pretrained", "none"])
    assert rc == 2 and "nope.json" in _error_line(capsys)


def test_duplicate_classes(folder, model_args, capsys):
    assert main(["predict", str(folder), "--classes", "cat,dog,cat", *model_args]) == 2
    line = _error_line(capsys)
    assert "'cat'" in line and "more than once" in line


def test_duplicate_classes_in_a_file(folder, model_args, tmp_path, capsys):
    classes = tmp_path / "myclasses.txt"
    classes.write_text("cat\ndog\ndog\n")
    assert main(["predict", str(folder), "--classes", str(classes), *model_args]) == 2
    line = _error_line(capsys)
    assert "myclasses.txt" in line and "'dog'" in line


def test_missing_class_file(folder, model_args, tmp_path, capsys):
    assert main(["predict", str(folder), "--classes", str(tmp_path / "absent.txt"),
                 *model_args]) == 2
    assert "absent.txt" in _error_line(capsys)


def test_missing_checkpoint(folder, tiny_config, tmp_path, capsys):
    missing = tmp_path / "weights_here.pt"
    rc = main(["embed", str(folder), "--out", str(tmp_path / "e.npz"), "--model", tiny_config,
               "--checkpoint", str(missing)])
    assert rc == 2
    line = _error_line(capsys)
    assert str(missing) in line and "does not exist" in line


@pytest.mark.parametrize("option, value, words", [("--workers", "-1", "decoding workers"),
                                                   ("--batch-size", "0", "batch size")])
def test_negative_workers_or_empty_batches(folder, model_args, capsys, option, value, words):
    assert main(["predict", str(folder), "--classes", "cat,dog", option, value, *model_args]) == 2
    line = _error_line(capsys)
    assert words in line and value in line


@pytest.mark.parametrize("command", [["evaluate"], ["embed"], ["predict", "--classes", "cat,dog"]])
def test_output_checked_before_any_work(folder, model_args, tmp_path, capsys, monkeypatch, command):
    # a missing output folder is refused before a single image is encoded
    monkeypatch.setattr(backbone_module.Backbone, "encode_pixels",
                        lambda *a: pytest.fail("encoded before checking --out"))
    suffix = ".npz" if command[0] == "embed" else ".json" if command[0] == "evaluate" else ".csv"
    out = tmp_path / "missing" / f"out{suffix}"
    assert main([command[0], str(folder), *command[1:], "--out", str(out), *model_args]) == 2
    assert "output folder" in _error_line(capsys)
    assert main([command[0], str(folder), *command[1:], "--out", str(tmp_path / "out.txt"),
                 *model_args]) == 2
    assert f"must end in {suffix}" in _error_line(capsys)


def test_unknown_template_set(folder, model_args, capsys):
    assert main(["predict", str(folder), "--classes", "cat,dog", "--templates", "fancy_set",
                 *model_args]) == 2
    assert "fancy_set" in _error_line(capsys)


def test_template_without_placeholder(folder, model_args, tmp_path, capsys):
    templates = tmp_path / "my_templates.txt"
    templates.write_text("a photo of a {}.\na photo of something.\n")
    assert main(["predict", str(folder), "--classes", "cat,dog", "--templates", str(templates),
                 *model_args]) == 2
    line = _error_line(capsys)
    assert "my_templates.txt" in line and "{}" in line


def test_unreachable_weights(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(models_module, "_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(models_module, "_weights_cached", lambda cfg, download_dir: False)
    start = time.monotonic()
    rc = main(["predict", str(folder), "--classes", "cat,dog", "--model", "ViT-B-32",
               "--pretrained", "openai", "--no-progress"])
    assert rc == 2 and time.monotonic() - start < 10
    line = _error_line(capsys)
    assert "--checkpoint" in line and "ViT-B-32" in line


@pytest.mark.parametrize("args, message", [
    (["embed", "{folder}", "--out", "{tmp}/e.csv"], "e.csv"),
    (["predict", "{folder}", "--classes", "a,b", "--out", "{tmp}/p.txt"], "p.txt"),
    (["predict", "{folder}", "--classes", "a,b", "--out", "{tmp}/missing_dir/p.csv"], "missing_dir"),
    (["predict", "{folder}", "--classes", "a,b", "--top-k", "0"], "--top-k"),
    (["evaluate", "{folder}", "--classes", "cat,dog"], "fish"),
])
def test_bad_arguments(args, message, folder, model_args, tmp_path, capsys):
    argv = [a.format(folder=folder, tmp=tmp_path) for a in args] + model_args
    assert main(argv) == 2
    assert message in _error_line(capsys)


def test_evaluate_needs_labels(tmp_path, make_image, model_args, capsys):
    for i in range(2):
        make_image(tmp_path / "loose" / f"{i}.png", i)
    assert main(["evaluate", str(tmp_path / "loose"), *model_args]) == 2
    line = _error_line(capsys)
    assert "loose" in line and "no labels" in line


def test_one_class_evaluation_says_its_accuracy_is_meaningless(tmp_path, make_image, model_args,
                                                              capsys, caplog):
    for i in range(2):
        make_image(tmp_path / "set" / "cat" / f"{i}.png", i)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no library warning (scikit-learn's "single label")
        assert main(["evaluate", str(tmp_path / "set"), *model_args]) == 0
    assert "top-1: 100.00%" in capsys.readouterr().out
    warned = [r.getMessage() for r in caplog.records if "warning" in r.getMessage()]
    assert len(warned) == 1 and "only one class (cat)" in warned[0]
    assert "100% by construction" in warned[0] and "--classes" in warned[0]


def test_strict_stops_at_an_unreadable_image(folder, model_args, tmp_path, capsys):
    broken = folder / "dog" / "broken.jpg"
    broken.write_bytes(b"\x00garbage" * 20)
    assert main(["embed", str(folder), "--out", str(tmp_path / "e.npz"), "--strict",
                 *model_args]) == 2
    assert str(broken) in _error_line(capsys)
    assert not (tmp_path / "e.npz").exists()


def test_error_from_a_real_process_is_one_line(folder, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "zeroshot_plus.cli", "predict", str(folder), "--classes", "cat,dog",
         "--model", "ViT-Imaginary-7", "--pretrained", "none"],
        cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("zeroshot-plus: error: ") and "ViT-Imaginary-7" in result.stderr


def test_classifier_file_brings_its_model_and_rejects_another(folder, backbone, tmp_path, capsys):
    from zeroshot_plus import ZeroShotClassifier

    saved = tmp_path / "zs.npz"
    ZeroShotClassifier(backbone, classnames=["cat", "dog"], templates="photo").fit().save(saved)
    out = tmp_path / "p.csv"
    # no --model: the file's model (the tiny test architecture) is used, not the default
    assert main(["predict", str(folder), "--classifier", str(saved), "--out", str(out),
                 "--no-progress"]) == 0
    assert len(list(csv.reader(out.open()))) == 13
    capsys.readouterr()
    assert main(["predict", str(folder), "--classifier", str(saved), "--model", "RN50",
                 "--pretrained", "none", "--no-progress"]) == 2
    line = _error_line(capsys)
    assert "was fitted with" in line and "RN50" in line


def test_tampered_classifier_file_is_one_line(folder, backbone, tmp_path, capsys):
    from zeroshot_plus import ZeroShotClassifier

    saved = tmp_path / "zs.npz"
    ZeroShotClassifier(backbone, classnames=["cat", "dog"], templates="photo").fit().save(saved)
    with np.load(saved, allow_pickle=False) as data:
        meta = json.loads(str(data["__meta__"]))
        arrays = {k: data[k] for k in data.files if k != "__meta__"}
    del meta["backbone"]["model"]
    np.savez(saved, __meta__=np.array(json.dumps(meta)), **arrays)
    for command in (["predict"], ["evaluate"]):
        assert main([*command, str(folder), "--classifier", str(saved), "--no-progress"]) == 2
        assert _error_line(capsys) == (f"zeroshot-plus: error: saved ZeroShotClassifier "
                                       f"'{saved}': metadata field 'backbone.model' is missing.")


def test_classifier_file_with_its_checkpoint_moved(folder, backbone, tiny_config, tmp_path, capsys):
    import shutil

    import torch

    from zeroshot_plus import Backbone, ZeroShotClassifier

    weights = tmp_path / "a" / "tiny.pt"
    weights.parent.mkdir()
    torch.save(backbone.model.state_dict(), weights)
    saved = tmp_path / "zs.npz"
    ZeroShotClassifier(Backbone(tiny_config, checkpoint=weights, progress=False),
                       classnames=["cat", "dog"],
                       templates="photo").fit().save(saved)
    moved = tmp_path / "b" / "tiny.pt"
    moved.parent.mkdir()
    shutil.move(weights, moved)
    argv = ["predict", str(folder), "--classifier", str(saved), "--no-progress"]
    # the recorded path is gone: one sentence naming it
    assert main(argv) == 2
    assert str(weights) in _error_line(capsys)
    # the same weights at their new path pass the fingerprint check
    assert main(argv + ["--checkpoint", str(moved), "--out", str(tmp_path / "p.csv")]) == 0
    assert len(list(csv.reader((tmp_path / "p.csv").open()))) == 13
    # other weights do not
    torch.save({k: v + 1 for k, v in backbone.model.state_dict().items()}, tmp_path / "other.pt")
    capsys.readouterr()
    assert main(argv + ["--checkpoint", str(tmp_path / "other.pt")]) == 2
    assert "was fitted with" in _error_line(capsys)


@pytest.mark.parametrize("command", [["evaluate"], ["embed"], ["predict", "--classes", "cat,dog"],
                                     ["fit"]])
def test_output_that_cannot_be_a_file_is_refused_before_any_work(folder, model_args, tmp_path,
                                                                 capsys, monkeypatch, command):
    monkeypatch.setattr(backbone_module.Backbone, "encode_pixels",
                        lambda *a: pytest.fail("encoded before checking --out"))
    suffix = {"embed": ".npz", "evaluate": ".json", "fit": ".npz"}.get(command[0], ".csv")
    (tmp_path / f"folder{suffix}").mkdir()
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "read_only")
    (tmp_path / "read_only").mkdir()
    for out, words in ((f"folder{suffix}", "is a folder"), (f"a_file/out{suffix}", "is a file"),
                       (f"read_only/out{suffix}", "is not writable")):
        assert main([command[0], str(folder), *command[1:], "--out", str(tmp_path / out),
                     *model_args]) == 2
        line = _error_line(capsys)
        assert words in line and str(tmp_path / out.split("/")[0]) in line


def test_closed_stdout_pipe_still_writes_the_evaluation_file(folder, model_args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "summary.json"
    with subprocess.Popen(
            [sys.executable, "-m", "zeroshot_plus.cli", "evaluate", str(folder), "--out", str(out),
             *model_args],
            cwd=REPO_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        process.stdout.close()  # like `| head -1` gone before the summary is printed
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=120) == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    assert json.loads(out.read_text())["n_images"] == 12


def test_console_script_flushes_output_and_exit_status(folder, model_args, tmp_path):
    # `run` ends the process with os._exit: the CSV and the stderr summary must be complete
    broken = folder / "dog" / "broken.jpg"
    broken.write_bytes(b"\x00garbage" * 20)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "p.csv"
    result = subprocess.run(
        [sys.executable, "-m", "zeroshot_plus.cli", "predict", str(folder), "--classes", "cat,dog",
         "--out", str(out), *model_args],
        cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(list(csv.reader(out.open()))) == 13
    assert result.stderr.splitlines()[-1].strip().startswith(f"{broken}: ")


def test_closed_stdout_pipe_ends_quietly(folder, model_args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with subprocess.Popen(
            [sys.executable, "-m", "zeroshot_plus.cli", "predict", str(folder), "--classes",
             "cat,dog", "--top-k", "1", *model_args],
            cwd=REPO_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        process.stdout.close()  # like `| head -0`: the reader goes away before any row
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=120) == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


# ---------------------------------------------------------------------- synthetic end to end


def test_embed_synthetic_folder(folder, model_args, backbone, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    assert main(["embed", str(folder), "--out", str(out), "--batch-size", "5", *model_args]) == 0
    assert "wrote 12 embeddings" in capsys.readouterr().err
    with np.load(out) as data:
        embeddings, paths, labels = data["embeddings"], data["paths"], data["labels"]
        assert str(data["fingerprint"]) == backbone.fingerprint
    assert embeddings.shape == (12, 32) and embeddings.dtype == np.float32
    expected_paths = sorted(str(p) for p in folder.rglob("*.*"))
    assert sorted(paths.tolist()) == expected_paths
    assert [Path(p).parent.name for p in paths] == labels.tolist()
    np.testing.assert_allclose(embeddings, backbone.encode_images(list(paths)), atol=1e-6)


def test_embed_with_jpeg_draft_records_its_own_fingerprint(folder, model_args, backbone,
                                                           tiny_config, tmp_path):
    out = tmp_path / "emb.npz"
    assert main(["embed", str(folder), "--out", str(out), "--jpeg-draft", *model_args]) == 0
    with np.load(out) as data:
        fingerprint = str(data["fingerprint"])
    assert fingerprint == backbone_module.Backbone(tiny_config, "none", jpeg_draft=True).fingerprint
    assert fingerprint != backbone.fingerprint


def test_classifier_saved_with_jpeg_draft_predicts_with_it(folder, model_args, tiny_config,
                                                          tmp_path):
    from zeroshot_plus import ZeroShotClassifier

    drafted = backbone_module.Backbone(tiny_config, "none", progress=False, jpeg_draft=True)
    saved = tmp_path / "zs.npz"
    ZeroShotClassifier(drafted, classnames=["cat", "dog"]).fit().save(saved)
    # the file's setting is used, as its model is: the fingerprints match
    assert main(["predict", str(folder), "--classifier", str(saved), "--out",
                 str(tmp_path / "p.csv"), *model_args]) == 0


def test_predict_to_stdout_with_cache(folder, model_args, tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = ["predict", str(folder), "--classes", "cat,dog,fish", "--templates", "photo",
            "--cache", str(cache), *model_args]
    assert main(argv) == 0
    first = capsys.readouterr().out
    rows = list(csv.reader(io.StringIO(first)))
    assert rows[0] == ["path", "label1", "prob1", "label2", "prob2", "label3", "prob3"]
    assert len(rows) == 13
    assert main(argv) == 0  # second run: everything from the store, same output
    assert capsys.readouterr().out == first
    assert any(cache.rglob("*.npz"))


def test_several_image_sources(folder, make_image, model_args, tmp_path, capsys):
    extra = make_image(tmp_path / "extra" / "x.png", 50)
    manifest = tmp_path / "more.csv"
    manifest.write_text(f"{extra},fish\n")
    out = tmp_path / "e.npz"
    assert main(["embed", str(folder), str(manifest), "--out", str(out), *model_args]) == 0
    with np.load(out) as data:
        assert len(data["paths"]) == 13 and data["paths"][-1] == str(extra)
        assert data["labels"][-1] == "fish"
    capsys.readouterr()
    # labelled and unlabelled sources together
    assert main(["embed", str(folder), str(extra), "--out", str(out), *model_args]) == 2
    assert "labels" in _error_line(capsys)


def test_progress_bars_do_not_break_output(folder, tiny_config, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(folder), "--classes", "cat,dog", "--templates", "photo",
                 "--model", tiny_config, "--pretrained", "none", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 12


# ---------------------------------------------------------------------- real photos


CLASSES = ["airplane", "cat", "ship", "frog"]
PER_CLASS = 20


@pytest.fixture(scope="module")
def cifar_subset(cifar10_test, tmp_path_factory):
    """A folder of symlinks (20 CIFAR-10 test photos for each of 4 classes) and a CSV manifest."""
    root = tmp_path_factory.mktemp("cifar_subset")
    rows = []
    for label in CLASSES:
        photos = sorted((cifar10_test / label).glob("*.jpg"))[:PER_CLASS]
        if len(photos) < PER_CLASS:
            pytest.skip(f"fewer than {PER_CLASS} photos in {cifar10_test / label}")
        (root / "folder" / label).mkdir(parents=True)
        for photo in photos:
            (root / "folder" / label / photo.name).symlink_to(photo)
            rows.append((str(photo), label))
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    return {"folder": root / "folder", "manifest": manifest, "rows": rows}


@pytest.fixture(scope="module")
def cifar_expected(cifar_subset, backbone):
    """Probabilities computed without the CLI: softmax(100 * cos(image, 'a photo of a {c}.'))."""
    paths = [p for p, _ in cifar_subset["rows"]]
    images = backbone.encode_images(paths).astype(np.float64)
    texts = backbone.encode_texts([f"a photo of a {c}." for c in CLASSES]).astype(np.float64)
    probabilities = _softmax(100 * images @ texts.T)
    return dict(zip(paths, probabilities))


def test_predict_real_photos_csv(cifar_subset, cifar_expected, model_args, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    rc = main(["predict", str(cifar_subset["manifest"]), "--classes", ",".join(CLASSES),
               "--templates", "photo", "--top-k", "3", "--batch-size", "16", "--out", str(out),
               *model_args])
    assert rc == 0
    assert capsys.readouterr().out == ""  # results go to --out
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "label1", "prob1", "label2", "prob2", "label3", "prob3"]
    assert len(rows) == len(cifar_subset["rows"])
    assert [r["path"] for r in rows] == [p for p, _ in cifar_subset["rows"]]
    for row in rows:
        labels = [row[f"label{i}"] for i in (1, 2, 3)]
        probs = [float(row[f"prob{i}"]) for i in (1, 2, 3)]
        assert len(set(labels)) == 3 and set(labels) <= set(CLASSES)
        assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
        expected = cifar_expected[row["path"]]
        assert expected[CLASSES.index(labels[0])] >= expected.max() - 1e-4
        np.testing.assert_allclose(probs, [expected[CLASSES.index(c)] for c in labels], atol=1e-4)


def test_predict_real_photos_jsonl(cifar_subset, cifar_expected, model_args, tmp_path):
    out = tmp_path / "predictions.jsonl"
    rc = main(["predict", str(cifar_subset["folder"]), "--classes", ",".join(CLASSES),
               "--templates", "photo", "--out", str(out), *model_args])
    assert rc == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(cifar_subset["rows"])
    for record in records:
        assert set(record) == {"path", "labels", "probs"}
        assert len(record["labels"]) == len(CLASSES) == len(record["probs"])  # top-5 capped at C
        assert record["probs"] == sorted(record["probs"], reverse=True)
        assert all(0 <= p <= 1 for p in record["probs"])
        assert sum(record["probs"]) == pytest.approx(1.0, abs=1e-5)
        assert Path(record["path"]).parent.name in CLASSES
        expected = cifar_expected[os.readlink(record["path"])]  # the link's target photo
        assert expected[CLASSES.index(record["labels"][0])] >= expected.max() - 1e-4
        np.testing.assert_allclose(record["probs"],
                                   [expected[CLASSES.index(c)] for c in record["labels"]], atol=1e-4)


def test_predict_default_templates(cifar_subset, model_args, tmp_path):
    out = tmp_path / "p.csv"
    assert main(["predict", str(cifar_subset["manifest"]), "--classes", ",".join(CLASSES),
                 "--out", str(out), *model_args]) == 0
    with open(out, newline="") as handle:
        assert len(list(csv.reader(handle))) == len(cifar_subset["rows"]) + 1


def test_evaluate_real_photos(cifar_subset, cifar_expected, model_args, tmp_path, capsys):
    out = tmp_path / "report.json"
    classes = CLASSES + ["truck"]  # a class without images
    rc = main(["evaluate", str(cifar_subset["manifest"]), "--classes", ",".join(classes),
               "--templates", "photo", "--out", str(out), *model_args])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "top-1:" in printed and "top-5:" in printed and "ECE:" in printed
    report = json.loads(out.read_text())
    assert report["n_images"] == len(cifar_subset["rows"])
    assert set(report["per_class_accuracy"]) == set(classes)
    assert report["per_class_accuracy"]["truck"] is None
    assert report["top5"] == 1.0  # 5 classes
    assert 0 <= report["ece"] <= 1
    # Per-class accuracy over the 4 classes, computed without the CLI: with "truck" added, a
    # photo is right only if its class also beats "truck", so no class can do better.
    truth = {p: label for p, label in cifar_subset["rows"]}
    hits = {c: [] for c in CLASSES}
    for path, probabilities in cifar_expected.items():
        hits[truth[path]].append(CLASSES[int(np.argmax(probabilities))] == truth[path])
    per_class_4 = {c: np.mean(h) for c, h in hits.items()}
    # adding "truck" can only turn right answers wrong, never the reverse
    for c in CLASSES:
        assert report["per_class_accuracy"][c] <= per_class_4[c] + 1e-12
    assert printed.count("\n") >= 1 + len(classes)
    assert report["skipped"] == []


def test_evaluate_real_photos_matches_independent_accuracy(cifar_subset, cifar_expected,
                                                            model_args, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["evaluate", str(cifar_subset["folder"]), "--templates", "photo",
                 "--out", str(out), *model_args]) == 0
    report = json.loads(out.read_text())
    sorted_classes = sorted(CLASSES)  # default classes: the labels, sorted
    assert list(report["per_class_accuracy"]) == sorted_classes
    truth = {p: label for p, label in cifar_subset["rows"]}
    correct = {c: 0 for c in CLASSES}
    for path, probabilities in cifar_expected.items():
        correct[truth[path]] += CLASSES[int(np.argmax(probabilities))] == truth[path]
    assert report["top1"] == pytest.approx(sum(correct.values()) / len(truth))
    for c in CLASSES:
        assert report["per_class_accuracy"][c] == pytest.approx(correct[c] / PER_CLASS)
    assert report["top5"] == 1.0
    assert "top-1: {:.2%}".format(report["top1"]) in capsys.readouterr().out


def test_embed_real_photos(cifar_subset, backbone, model_args, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    rc = main(["embed", str(cifar_subset["manifest"]), "--out", str(out), "--batch-size", "32",
               "--cache", str(tmp_path / "cache"), *model_args])
    assert rc == 0
    with np.load(out) as data:
        embeddings, paths, labels = data["embeddings"], data["paths"], data["labels"]
    n = len(cifar_subset["rows"])
    assert embeddings.shape == (n, 32) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert paths.tolist() == [p for p, _ in cifar_subset["rows"]]
    assert labels.tolist() == [label for _, label in cifar_subset["rows"]]
    # CIFAR-10 photos are 32x32 JPEGs; the embedding of one matches encoding it directly
    np.testing.assert_allclose(embeddings[:3], backbone.encode_images(paths[:3].tolist()), atol=1e-6)


def test_corrupt_image_is_skipped_and_listed(cifar_subset, model_args, tmp_path, capsys):
    folder = tmp_path / "with_broken"
    for label in CLASSES[:2]:
        (folder / label).mkdir(parents=True)
        for link in sorted((cifar_subset["folder"] / label).iterdir())[:5]:
            (folder / label / link.name).symlink_to(os.readlink(link))
    broken = folder / CLASSES[1] / "0000_broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xdb" + b"\x13" * 300)
    out = tmp_path / "p.csv"
    rc = main(["predict", str(folder), "--classes", ",".join(CLASSES[:2]), "--templates", "photo",
               "--out", str(out), *model_args])
    assert rc == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image" in err and str(broken) in err
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10
    assert str(broken) not in {r["path"] for r in rows}
    # evaluate and embed skip it the same way
    assert main(["evaluate", str(folder), "--templates", "photo", "--out",
                 str(tmp_path / "r.json"), *model_args]) == 0
    assert str(broken) in capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_images"] == 10 and report["skipped"] == [str(broken)]
    assert main(["embed", str(folder), "--out", str(tmp_path / "e.npz"), *model_args]) == 0
    with np.load(tmp_path / "e.npz") as data:
        assert len(data["paths"]) == 10 and str(broken) not in data["paths"].tolist()


def test_only_unreadable_images(tmp_path, model_args, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"nope")
    assert main(["embed", str(tmp_path / "bad"), "--out", str(tmp_path / "e.npz"),
                 *model_args]) == 2
    err = capsys.readouterr().err
    assert "a.png" in err and "no image could be read" in err


# ---------------------------------------------------------------------- light start


HEAVY = ("torch", "open_clip", "torchvision", "scipy", "sklearn")
_PROBE = """
import json, sys
from zeroshot_plus.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["predict", "--help"], 0),
    (["sce", "--help"], 0),
    (["frequency", "--help"], 0),
    (["predict"], 2),                                                   # argparse: no IMAGES
    (["predict", "{folder}", "--method", "magic"], 2),                  # argparse: bad choice
    (["predict", "{folder}", "--classes", "a,b", "--descriptors", "d.json"], 2),  # unused option
    (["predict", "{folder}", "--method", "gda", "--classes", "a,b"], 2),  # gda without --support
    (["embed", "{tmp}/no_such_folder", "--out", "{tmp}/e.npz"], 2),     # missing IMAGES
    (["predict", "{folder}", "--classes", "a,b", "--out", "{tmp}/p.txt"], 2),  # output suffix
    (["match", "{tmp}/no_such_pairs.csv"], 2),                          # missing pairs file
])
def test_parsing_help_and_argument_errors_load_no_heavy_module(argv, code, folder, tmp_path):
    argv = [a.format(folder=folder, tmp=tmp_path) for a in argv]
    result = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=REPO_DIR,
                            capture_output=True, text=True, timeout=120)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"code": code, "heavy": []}, result.stderr


def test_package_imports_its_names_on_first_use():
    probe = ("import sys, zeroshot_plus\n"
             "light = not any(m in sys.modules for m in %r)\n"
             "names = [getattr(zeroshot_plus, n) for n in zeroshot_plus.__all__]\n"
             "from zeroshot_plus import Backbone, GDAClassifier, sce_score\n"
             "print(light, set(zeroshot_plus.__all__) <= set(dir(zeroshot_plus)), "
             "GDAClassifier.__name__)" % (HEAVY,))
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_DIR, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.split() == ["True", "True", "GDAClassifier"], result.stderr
    import zeroshot_plus

    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        zeroshot_plus.Nothing


# ---------------------------------------------------------------------- options a method ignores


@pytest.mark.parametrize("extra, message", [
    (["--descriptors", "d.json"],
     "--descriptors needs --method descriptions or real; --method zeroshot does not use it."),
    (["--prompt-style", "plain"], "--prompt-style needs --method descriptions"),
    (["--method", "tpt", "--explain"], "--explain needs --method descriptions"),
    (["--method", "real", "--synonyms", "s.json", "--support", "dir"],
     "--support needs --method gda; --method real does not use it."),
    (["--shots", "2"], "--shots needs --method gda"),
    (["--views", "3"], "--views needs --method gda"),
    (["--alpha", "1"], "--alpha needs --method gda"),
    (["--val", "dir"], "--val needs --method gda"),
    (["--seed", "0"], "--seed needs --method gda or tpt; --method zeroshot does not use it."),
    (["--tpt-views", "3"], "--tpt-views needs --method tpt"),
    (["--method", "gda", "--support", "dir", "--tpt-steps", "2"],
     "--tpt-steps needs --method tpt; --method gda does not use it."),
    (["--augmix"], "--augmix needs --method tpt"),
    (["--diffusion-views", "dir"], "--diffusion-views needs --method tpt"),
    (["--synonyms", "s.json"], "--synonyms needs --method real or tpt"),
    (["--method", "descriptions", "--descriptors", "d.json", "--templates", "photo"],
     "--templates needs --method zeroshot, gda, real or tpt; --method descriptions does not "
     "use it."),
    (["--classifier", "c.npz", "--templates", "photo"],
     "--templates cannot be used with --classifier: the classifier file brings its method and "
     "its settings."),
    (["--classifier", "c.npz", "--method", "zeroshot"], "--method cannot be used with --classifier"),
    (["--classifier", "c.npz", "--views", "2"], "--views cannot be used with --classifier"),
    (["--method", "gda", "--support", "dir", "--alpha", "best"],
     "--alpha must be 'auto' or a number, got 'best'."),
    (["--method", "descriptions", "--descriptors", "d.json", "--explain", "0"],
     "--explain must be at least 1, got 0."),
    (["--method", "real"], "--method real needs --synonyms FILE"),
])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_an_option_the_method_does_not_use_is_an_error(command, extra, message, folder,
                                                       model_args, monkeypatch, capsys):
    # refused before any model is built
    monkeypatch.setattr(backbone_module.Backbone, "__init__",
                        lambda *a, **k: pytest.fail("built a backbone"))
    classes = [] if "--classifier" in extra else ["--classes", "cat,dog,fish"]
    assert main([command, str(folder), *classes, *extra, *model_args]) == 2
    assert message in _error_line(capsys)


def test_predict_needs_classes(folder, model_args, capsys):
    assert main(["predict", str(folder), *model_args]) == 2
    assert "predict needs --classes (or --classifier FILE)." in _error_line(capsys)


def test_a_fitted_classifier_loads_in_a_new_process(folder, model_args, tmp_path):
    """The package imports its classes lazily: a new process has registered none of them."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    saved = tmp_path / "gda.npz"
    for argv in (["fit", str(folder), "--views", "1", "--out", str(saved), *model_args],
                 ["predict", str(folder), "--classifier", str(saved), "--no-progress"]):
        result = subprocess.run([sys.executable, "-m", "zeroshot_plus.cli", *argv], cwd=REPO_DIR,
                                env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 13
