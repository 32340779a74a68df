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
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_DIR
from zeroshot_plus import Backbone
from zeroshot_plus.cli import main
from zeroshot_plus.data.datasets import (Dataset, dataset_classnames, dataset_templates,
                                          imagenet_indices)
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


def test_resume_after_an_interruption_does_only_the_rest(data_root, tiny_config, tmp_path,
                                                         monkeypatch, caplog):
    out = tmp_path / "out"
    options = dict(datasets=["eurosat"], methods=["zeroshot", "gda"],
                   protocols=["zeroshot", "fewshot"], shots=[1, 2], seeds=[1, 2], out=out,
                   n_views=2, progress=False)
    calls = []
    evaluate = Benchmark._evaluate

    def interrupted(self, run, templates):
        calls.append(run)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return evaluate(self, run, templates)

    monkeypatch.setattr(Benchmark, "_evaluate", interrupted)
    first = Backbone(tiny_config, "none", progress=False, batch_size=16)
    with pytest.raises(KeyboardInterrupt):
        Benchmark(first, data_root, **options).run()
    assert len(records_of(out)) == 2
    monkeypatch.setattr(Benchmark, "_evaluate", evaluate)
    # a run killed while writing its record leaves a torn last line: dropped and redone
    with open(out / "records.jsonl", "a") as stream:
        stream.write('{"dataset": "eurosat", "protocol": "fewshot", "met')
    second = Backbone(tiny_config, "none", progress=False, batch_size=16)
    with caplog.at_level(logging.WARNING):
        report = Benchmark(second, data_root, **options).run()
    assert "incomplete last line" in caplog.text
    assert (report.planned, report.resumed, report.ran) == (5, 2, 3)
    # the test and val images come from the store, not the encoder
    assert report.images_encoded == 0 and report.images_from_store == 50
    records = records_of(out)
    assert len(records) == 5 and len({(r["shots"], r["seed"]) for r in records}) == 5
    third = Benchmark(second, data_root, **options).run()
    assert (third.resumed, third.ran, third.images_from_store) == (5, 0, 0)
    assert len(records_of(out)) == 5


def test_summary_is_the_mean_and_std_over_seeds(data_root, backbone, tmp_path):
    out = tmp_path / "out"
    Benchmark(backbone, data_root, datasets=["eurosat"], methods=["gda"],
              protocols=["fewshot"], shots=[1, 2], seeds=[1, 2, 3], out=out, n_views=1,
              progress=False).run()
    records = records_of(out)
    with open(out / "summary.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["shots"], r["runs"]) for r in rows] == [("1", "3"), ("2", "3")]
    for row in rows:
        for metric in ("top1", "top5", "mean_per_class_recall"):
            values = [r["metrics"][metric] for r in records if r["shots"] == int(row["shots"])]
            assert float(row[f"{metric}_mean"]) == pytest.approx(np.mean(values))
            assert float(row[f"{metric}_std"]) == pytest.approx(np.std(values))
    markdown = (out / "summary.md").read_text()
    values = [r["metrics"]["top1"] for r in records if r["shots"] == 2]
    assert f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}" in markdown


def test_summary_of_records():
    records = [{"model": "m", "pretrained": "p", "dataset": "d", "protocol": "fewshot",
                "method": "gda", "shots": 1, "seed": seed, "metrics": {"top1": value}}
               for seed, value in ((1, 0.5), (2, 0.7), (3, 0.6))]
    records.append({**records[0], "seed": 4, "skipped": "no file", "metrics": None})
    del records[-1]["metrics"]
    (row,) = summarise(records)
    assert row["runs"] == 3
    assert row["metrics"]["top1"] == pytest.approx((0.6, np.std([0.5, 0.7, 0.6])))


def test_base_to_new_arithmetic(data_root, backbone, tmp_path):
    out = tmp_path / "out"
    Benchmark(backbone, data_root, datasets=["eurosat"], methods=["zeroshot", "gda"],
              protocols=["base2new"], shots=[2], seeds=[1], out=out, n_views=1,
              progress=False).run()
    zero_shot, gda = records_of(out)
    from zeroshot_plus.data.datasets import load_dataset

    dataset = load_dataset("eurosat", data_root)
    templates = dataset_templates("eurosat", "gda")
    logits = zero_shot_logits(backbone, dataset.test, dataset.classnames, templates)
    y = np.array([dataset.classnames.index(label) for label in dataset.test.labels])
    base = y < 5  # the first ceil(10 / 2) classes in label order
    base_accuracy = np.mean(logits[base][:, :5].argmax(1) == y[base])
    new_accuracy = np.mean(logits[~base][:, 5:].argmax(1) == y[~base] - 5)
    assert zero_shot["metrics"] == pytest.approx({
        "base_accuracy": base_accuracy, "new_accuracy": new_accuracy,
        "harmonic_mean": 2 * base_accuracy * new_accuracy / (base_accuracy + new_accuracy)})
    assert set(gda["metrics"]) == {"base_accuracy", "new_accuracy", "harmonic_mean"}
    assert gda["metrics"]["harmonic_mean"] == pytest.approx(
        harmonic_mean(gda["metrics"]["base_accuracy"], gda["metrics"]["new_accuracy"]))
    # support images only of the base classes, two each: GDA's base-to-new draw
    from zeroshot_plus.data.fewshot import base_new

    drawn = base_new(few_shot(dataset, 2, 1, protocol="gda_single"), "base").train.items
    assert gda["support"] == [str(p) for p in drawn]
    classes = [Path(p).parent.name for p in gda["support"]]
    assert len(classes) == 10 and len(set(classes)) == 5
    assert set(classes) == {n.replace(" ", "") for n in dataset.classnames[:5]}


@pytest.mark.parametrize("a, b, expected", [(0.5, 0.5, 0.5), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0),
                                            (0.8, 0.4, 0.64 / 1.2)])
def test_harmonic_mean(a, b, expected):
    assert harmonic_mean(a, b) == pytest.approx(expected)


def test_variants_are_scored_over_their_own_classes(backbone, cifar10_test, tmp_path):
    photos = sorted(p for folder in sorted(cifar10_test.iterdir())
                    for p in sorted(folder.iterdir())[:2])
    imagenet_names = dataset_classnames("imagenet")
    templates = dataset_templates("imagenet", "gda")
    logits = zero_shot_logits(backbone, photos, imagenet_names, templates)
    subset = imagenet_indices("imagenet_a")
    # each photo labelled with the ImageNet-A class it scores highest among A's 200
    a_names = dataset_classnames("imagenet_a")
    a_labels = [a_names[j] for j in logits[:, subset].argmax(1)]
    assert not np.isin(logits.argmax(1), subset).all()  # over all 1000 some would be wrong
    imagenet = Dataset("imagenet", imagenet_names, test=ImageSet(photos[:4], imagenet_names[:4]))
    variant = Dataset("imagenet_a", a_names, test=ImageSet(photos, a_labels))
    v2_labels = [imagenet_names[j] for j in logits.argmax(1)]
    v2 = Dataset("imagenet_v2", imagenet_names, test=ImageSet(photos, v2_labels))
    out = tmp_path / "out"
    Benchmark(backbone, datasets=[imagenet, variant, v2], methods=["zeroshot"],
              protocols=["variants"], out=out, progress=False).run()
    records = {r["dataset"]: r for r in records_of(out)}
    assert set(records) == {"imagenet_a", "imagenet_v2"}
    assert records["imagenet_a"]["metrics"]["top1"] == 1.0
    assert records["imagenet_v2"]["metrics"]["top1"] == 1.0
    assert all(r["source"] == "imagenet" and r["protocol"] == "variants"
               for r in records.values())


def test_variants_need_imagenet_and_a_variant(backbone, tmp_path):
    with pytest.raises(ValueError, match="variants protocol fits on 'imagenet'"):
        Benchmark(backbone, "nowhere", datasets=["imagenet_a"], protocols=["variants"],
                  out=tmp_path / "out", progress=False).run()


@pytest.mark.parametrize("n_classes", [3, 10, 47, 101, 1000])
def test_tail_is_the_least_frequent_fifth(n_classes):
    rng = np.random.default_rng(n_classes)
    frequencies = rng.permutation(n_classes) * 7 + 3
    tail = tail_classes(frequencies)
    n_tail = max(1, math.floor(0.2 * n_classes))
    assert tail.sum() == n_tail
    assert frequencies[tail].max() < frequencies[~tail].min()


def test_head_and_tail_accuracy(data_root, backbone, tmp_path):
    from zeroshot_plus.data.datasets import load_dataset

    dataset = load_dataset("eurosat", data_root)
    names = dataset.classnames
    logits = zero_shot_logits(backbone, dataset.test, names, dataset_templates("eurosat", "gda"))
    # the first photo of each class labelled with its prediction: per-class accuracies differ
    labels = [names[logits[i].argmax()] if i % 3 == 0 and i < 15 else label
              for i, label in enumerate(dataset.test.labels)]
    dataset.test = ImageSet(dataset.test.items, labels)
    frequencies = [50, 3, 40, 7, 90, 60, 1, 70, 80, 30]
    metrics_file = tmp_path / "metrics.json"
    metrics_file.write_text(json.dumps({str(i): {"name": n, "actual_freq": f}
                                        for i, (n, f) in enumerate(zip(names, frequencies))}))
    out = tmp_path / "out"
    Benchmark(backbone, datasets=[dataset], methods=["zeroshot"], protocols=["headtail"],
              real_metrics={"eurosat": metrics_file}, out=out, progress=False).run()
    (record,) = records_of(out)
    y = np.array([names.index(label) for label in labels])
    accuracy = np.array([np.mean(logits[y == c].argmax(1) == c) for c in range(10)])
    tail = np.isin(np.arange(10), [6, 1])  # the two least frequent of ten
    assert record["metrics"]["tail_accuracy"] == pytest.approx(np.nanmean(accuracy[tail]))
    assert record["metrics"]["head_accuracy"] == pytest.approx(np.nanmean(accuracy[~tail]))
    assert record["metrics"]["top1"] == pytest.approx(np.mean(logits.argmax(1) == y))


def test_released_real_frequencies(shared_data):
    from zeroshot_plus.evaluation.benchmark import _frequencies

    path = shared_data / "real" / "dtd" / "metrics-LAION400M.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = json.loads(path.read_text())
    frequencies = _frequencies(path, 47)
    assert frequencies.tolist() == [data[str(i)]["relevant_total"] for i in range(47)]
    with pytest.raises(ValueError, match="has 47 class ids; the data set has 10 classes"):
        _frequencies(path, 10)


def test_every_zero_shot_method_and_skips(data_root, backbone, tmp_path, caplog):
    names = dataset_classnames("eurosat")
    descriptors = tmp_path / "descriptors.json"
    descriptors.write_text(json.dumps({n: ["green fields", "has roads"] for n in names}))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({str(i): {"name": n, "most_common_name": n.lower(),
                                            "alternates": {n.lower(): 5}, "actual_freq": 5}
                                   for i, n in enumerate(names)}))
    out = tmp_path / "out"
    options = dict(datasets=["eurosat"], methods=["zeroshot", "descriptions", "real", "tpt"],
                   protocols=["zeroshot"], out=out, tpt_views=2, progress=False)
    with caplog.at_level(logging.WARNING):
        report = Benchmark(backbone, data_root, **options).run()
    assert [label for label, _ in report.skipped] == ["descriptions zeroshot on eurosat",
                                                       "real zeroshot on eurosat"]
    assert caplog.text.count("skipping") == 2
    records = records_of(out)
    assert [(r["method"], "metrics" in r) for r in records] == [
        ("zeroshot", True), ("descriptions", False), ("real", False), ("tpt", True)]
    assert "no descriptor file for 'eurosat'" in records[1]["skipped"]
    assert records[3]["templates"] == ["a photo of a {}."] and records[3]["seed"] == 1
    # again with the same inputs: nothing is recorded twice
    Benchmark(backbone, data_root, **options).run()
    assert len(records_of(out)) == 4
    # with the inputs: the skipped runs are done, the rest are not redone
    report = Benchmark(backbone, data_root, **options, descriptors={"eurosat": descriptors},
                       real_metrics={"eurosat": metrics}).run()
    assert (report.ran, report.resumed, report.skipped) == (2, 2, [])
    done = {r["method"]: r for r in records_of(out)[4:]}
    assert done["descriptions"]["descriptors"] == str(descriptors)
    assert done["real"]["templates"] == dataset_templates("eurosat", "real")
    assert set(done["real"]["metrics"]) == {"top1", "top5", "mean_per_class_recall"}


def test_clip_benchmark_results_and_plots(data_root, backbone, tmp_path):
    out = tmp_path / "out"
    report = Benchmark(backbone, data_root, datasets=["eurosat"], methods=["zeroshot", "gda"],
                       protocols=["zeroshot", "fewshot"], shots=[1, 2], seeds=[1], out=out,
                       n_views=1, progress=False).run()
    (path,) = (out / "clip_benchmark").iterdir()
    assert path.name == "eurosat_none_zsp-tiny.json_en_zeroshot_classification.json"
    result = json.loads(path.read_text())
    assert set(result) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert result["task"] == "zeroshot_classification" and result["language"] == "en"
    metrics = records_of(out)[0]["metrics"]
    assert result["metrics"] == {"acc1": metrics["top1"], "acc5": metrics["top5"],
                                 "mean_per_class_recall": metrics["mean_per_class_recall"]}
    pytest.importorskip("matplotlib")
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == ["methods_fewshot.png", "methods_zeroshot.png", "shots_eurosat.png"]
    assert (out / "plots" / "shots_eurosat.png").read_bytes()[:4] == b"\x89PNG"
    assert set(report.outputs) >= {out / "summary.csv", out / "summary.md", path}


def test_no_plots_without_matplotlib(data_root, backbone, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # its import fails
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        Benchmark(backbone, data_root, datasets=["eurosat"], out=out, progress=False).run()
    assert "matplotlib is not installed, so no plots were drawn" in caplog.text
    assert not (out / "plots").exists() and (out / "summary.md").is_file()


# ---------------------------------------------------------------------- command line


def test_command_line(data_root, tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["benchmark", "--root", str(data_root), "--datasets", "EuroSAT", "--methods",
            "zeroshot,gda", "--protocols", "zeroshot,fewshot", "--shots", "1", "--seeds", "1,2",
            "--views", "1", "--out", str(out), "--model", tiny_config, "--pretrained", "none",
            "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 runs: 3 run now, 0 already recorded, 0 skipped" in printed
    assert (out / "store").is_dir() and len(records_of(out)) == 3
    assert main(argv) == 0
    assert "3 runs: 0 run now, 3 already recorded" in capsys.readouterr().out


HEAVY = ("torch", "open_clip", "torchvision", "scipy", "sklearn")
_PROBE = """
import json, sys
from zeroshot_plus.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


@pytest.mark.parametrize("options, message", [
    (["--datasets", "pets,mnist"], "unknown dataset 'mnist'; known datasets: imagenet, "),
    (["--datasets", "pets", "--methods", "gda,linear"],
     "--methods: unknown name 'linear'; choose among zeroshot, gda, descriptions, real, tpt."),
    (["--datasets", "pets", "--protocols", "fewshot,robustness"],
     "--protocols: unknown name 'robustness'; choose among "),
    (["--datasets", "pets", "--shots", "1,two"],
     "--shots must be a comma list of integers >= 1, got '1,two'."),
    (["--datasets", "pets", "--shots", "0"], "--shots must be a comma list of integers >= 1"),
    (["--datasets", "pets", "--seeds", "-1"], "--seeds must be a comma list of integers >= 0"),
    (["--datasets", "pets", "--descriptors", "dtd=d.json"],
     "--descriptors names 'dtd', which is not among --datasets."),
    (["--datasets", "pets", "--descriptors", "pets=no_such.json"],
     "--descriptors: file 'no_such.json' does not exist."),
    (["--datasets", "pets", "--real-metrics", "oxford_pets"],
     "--real-metrics takes DATASET=FILE, got 'oxford_pets'."),
])
def test_command_line_errors_are_one_sentence(options, message, tmp_path):
    argv = ["benchmark", "--root", str(tmp_path), "--out", str(tmp_path / "out"), *options]
    result = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=REPO_DIR,
                            capture_output=True, text=True, timeout=120)
    assert json.loads(result.stdout) == {"code": 2, "heavy": []}, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"zeroshot-plus: error: {message}")


def test_missing_data_set_folder(tiny_config, tmp_path, capsys):
    argv = ["benchmark", "--root", str(tmp_path), "--datasets", "dtd", "--out",
            str(tmp_path / "out"), "--model", tiny_config, "--pretrained", "none"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"zeroshot-plus: error: dtd: expected the folder '{tmp_path / 'dtd'}' (see "
                   f"the DTD section of CoOp's DATASETS.md for how to lay it out)."]


def test_released_descriptors_are_read_by_position(data_root, backbone, shared_data, tmp_path):
    """DCLIP's EuroSAT file names 4 of the 10 classes otherwise ('lake or sea'); its key order
    is the label order, as DCLIP reads it."""
    path = shared_data / "descriptors" / "descriptors_eurosat.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    from zeroshot_plus import DescriptionClassifier
    from zeroshot_plus.data.datasets import load_dataset

    out = tmp_path / "out"
    Benchmark(backbone, data_root, datasets=["eurosat"], methods=["descriptions"],
              descriptors={"eurosat": path}, out=out, progress=False).run()
    (record,) = records_of(out)
    keys = list(json.loads(path.read_text()))
    dataset = load_dataset("eurosat", data_root)
    classifier = DescriptionClassifier(backbone, descriptors=str(path)).fit()
    predicted = classifier.predict(backbone.encode_images(dataset.test))
    y = [keys[dataset.classnames.index(label)] for label in dataset.test.labels]
    assert record["metrics"]["top1"] == pytest.approx(np.mean(predicted == np.array(y)))


def test_readme_reproduction_commands_parse(tmp_path, monkeypatch):
    """Every `zeroshot-plus benchmark` command of the README names known data sets, methods,
    protocols and numbers (its descriptor files stand in as empty files here)."""
    from zeroshot_plus.cli.parser import build_parser, resolve_options

    text = (REPO_DIR / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)
    commands = [line for block in blocks for line in block.splitlines()
                if line.startswith("zeroshot-plus benchmark")]
    assert len(commands) >= 6
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = command.split()[1:]
        for option, value in zip(argv, argv[1:]):
            if option in ("--descriptors", "--real-metrics"):
                Path(value.partition("=")[2]).touch()
        args = resolve_options(build_parser().parse_args(argv))
        assert args.datasets and args.methods and args.protocols


def test_command_line_interrupted(data_root, tiny_config, tmp_path, monkeypatch, capsys):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Benchmark, "run", interrupted)
    out = tmp_path / "out"
    assert main(["benchmark", "--root", str(data_root), "--datasets", "eurosat", "--out",
                 str(out), "--model", tiny_config, "--pretrained", "none"]) == 130
    assert capsys.readouterr().err == (
        f"zeroshot-plus: interrupted; the finished runs are recorded in {out / 'records.jsonl'} "
        f"and the embeddings kept in the store: run the same command again to do the rest\n")


def test_variants_share_one_fit(backbone, cifar10_test, tmp_path, monkeypatch):
    photos = sorted(p for folder in sorted(cifar10_test.iterdir())
                    for p in sorted(folder.iterdir())[:1])
    names = dataset_classnames("imagenet")
    imagenet = Dataset("imagenet", names, test=ImageSet(photos, names[:10]),
                       train=ImageSet(photos, names[:10]))
    variants = [Dataset(v, dataset_classnames(v),
                        test=ImageSet(photos, dataset_classnames(v)[:10]))
                for v in ("imagenet_v2", "imagenet_a", "imagenet_r")]
    fits = []
    fit = Benchmark._fit
    monkeypatch.setattr(Benchmark, "_fit", lambda self, run, *a: fits.append(run) or
                        fit(self, run, *a))
    out = tmp_path / "out"
    Benchmark(backbone, datasets=[imagenet, *variants], methods=["gda"], protocols=["variants"],
              shots=[1], seeds=[1, 2], out=out, n_views=1, progress=False).run()
    records = records_of(out)
    assert [(r["dataset"], r["seed"]) for r in records] == [
        (v, seed) for seed in (1, 2) for v in ("imagenet_v2", "imagenet_a", "imagenet_r")]
    assert [(r.shots, r.seed) for r in fits] == [(1, 1), (1, 2)]
    assert all(len(r["support"]) == 10 and "alpha" in r for r in records)
