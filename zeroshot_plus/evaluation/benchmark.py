"""The benchmark runner: methods x protocols x shots x seeds over standard data sets.

``Benchmark(backbone, root, datasets=..., methods=..., protocols=..., out=...).run()``:

1. Plan: every (data set, protocol, method, shots, seed) the options ask for, the protocols
   of ``protocols.PROTOCOL_METHODS``; zero-shot methods run once (shots 0, no seed; TPT with
   the first seed), GDA once per shots x seed. A run whose method lacks an input (a
   descriptor or metrics file, a train split) is not run: it gets a record saying why, and
   one logged line.
2. Embed: each data set's test (and val) images once, through the embedding store (keyed by
   image content, so a second run, or another method, reads them back); GDA's support sets as
   10 augmented views per image (``augmented_support``), stored by (content, seed, view).
   Every method and seed then works on these embeddings; TPT alone reads images again.
3. Record: one JSON line per run in ``OUT/records.jsonl``, flushed and fsynced when written.
   Runs already recorded there are not done again; a torn last line (a killed run) is dropped
   and that run redone.
4. Summarise: ``OUT/summary.csv`` and ``OUT/summary.md`` (mean ± std over seeds of every
   metric, numpy's population std), ``OUT/clip_benchmark/*.json`` (zero-shot results in
   CLIP_benchmark's result shape), and plots (``plots.py``; needs matplotlib).

Protocols (``protocols.PROTOCOLS``): zero-shot and few-shot accuracy on the test set;
base-to-new (the classes' first half is "base": GDA fits on base support images and
synthesises the new classes' statistics from their text; base accuracy is measured over the
base classes' columns on base test images, new accuracy over the new columns on new images,
and their harmonic mean); ImageNet -> variants (fitted on ``imagenet``, tested on the
variants among the data sets, the 200-class ones over their 200 columns; TPT tunes on the
variant's own classes, as its paper does); head/tail (per-class accuracy averaged over the
least frequent 20% of classes by REAL's released frequencies, and over the rest).
Paper settings: GDA's support images are GDA's draws (``few_shot`` with protocol "gda" for
the few-shot protocol, "gda_single" for base-to-new and the variants, as its scripts draw),
and it picks alpha on the data set's validation split (ImageNet's is its test set, as in the
paper); support views are
RandomResizedCrop(scale (0.5, 1), or (0.08, 1) on ImageNet) + flip; TPT uses 63 views, AugMix
outside the ImageNet family and "a photo of a" as its context; descriptions use DCLIP's '.'
suffix on the ImageNet family, and a descriptor file's classes by name, else (as DCLIP reads
its files) by position.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..data import datasets as standard
from ..data.datasets import Dataset, dataset_spec
from ..data.fewshot import base_new, few_shot
from ..data.files import atomic_output
from ..data.sources import ImageSet
from ..data.store import StoreRoot
from ..data.support import augmented_support
from ..distributed import ENGINES, image_embeddings
from ..encoders.backbone import Backbone
from ..encoders.pipeline import EncodeReport
from ..errors import InputError
from ..methods.descriptions import DescriptionClassifier
from ..methods.gda import GDAClassifier
from ..methods.real import RealPromptClassifier
from ..methods.tpt import tpt_preset
from ..methods.zeroshot import ZeroShotClassifier
from ..text.descriptors import load_descriptor_file, match_descriptors
from ..text.heads import class_weights
from ..text.templates import class_prompts
from . import protocols
from .protocols import (PROTOCOL_METHODS, class_frequencies, classification_metrics,
                        harmonic_mean, head_tail_accuracy, label_columns, tail_classes)

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
VARIANTS = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
TPT_TEMPLATE = "a photo of a {}."  # the context TPT starts from (its scripts' ctx_init)
RECORDS = "records.jsonl"
_KEY_FIELDS = ("model", "pretrained", "dataset", "protocol", "method", "shots", "seed")


@dataclass(frozen=True)
class Run:
    """One planned run: ``method`` under ``protocol`` tested on ``dataset``, fitted on
    ``source`` (the same data set except for the variants), with ``shots`` support images per
    class (0: zero-shot) drawn with ``seed`` (None: nothing random)."""

    dataset: str
    protocol: str
    method: str
    shots: int
    seed: int | None
    source: str

    def label(self) -> str:
        shots = f" {self.shots}-shot seed {self.seed}" if self.shots else ""
        return f"{self.method} {self.protocol} on {self.dataset}{shots}"


@dataclass
class BenchmarkReport:
    """What a benchmark run did: runs planned, run now, found already recorded and skipped
    (with the reasons); images encoded and read back from the store; wall-clock seconds of
    the embedding of test and validation sets, and of the whole run; the files written."""

    planned: int = 0
    ran: int = 0
    resumed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    images_encoded: int = 0
    images_from_store: int = 0
    embed_seconds: float = 0.0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)


class Benchmark:
    """Run the papers' protocols over standard data sets on cached embeddings.

    Parameters
    ----------
    backbone : the Backbone that encodes images and prompts.
    root : the folder holding the data sets (``load_dataset(name, root)``); not needed when
        every entry of ``datasets`` is a Dataset.
    datasets : data set names (``dataset_names()``) or Dataset objects.
    methods : among ``protocols.METHODS``.
    protocols : among ``protocols.PROTOCOLS``.
    shots, seeds : support images per class and sampling seeds of the few-shot runs.
    out : output folder (created): records, summaries, plots.
    cache : embedding store directory; default ``out/store``.
    templates : the template style of zeroshot and GDA (``dataset_templates``): "gda"
        (GDA's: CoOp's one template, 7 for the ImageNet family), "coop", "clip" or "real";
        REAL always uses its own ("real").
    descriptors : {data set: descriptor JSON file} for the descriptions method.
    real_metrics : {data set: REAL metrics file} for the real method and head/tail.
    n_views : augmented views per support image (GDA's augment_epoch).
    tpt_views : TPT's augmented views per test image.
    on_error : "skip" (default) leaves unreadable images out and logs them; "raise" stops.
    engine : what embeds the test and validation sets: "local" (default) or "ray" (a Ray
        cluster, ``distributed.image_embeddings``); support views and TPT are local.
    ray_address : with ``engine="ray"``, the cluster to join (default: a local Ray runtime).
    plots : draw the plots (when matplotlib is installed).
    progress : a progress bar over the runs.
    """

    def __init__(self, backbone: Backbone, root: str | os.PathLike | None = None, *,
                 datasets: Sequence[str | Dataset] = (), methods: Sequence[str] = ("zeroshot",),
                 protocols: Sequence[str] = ("zeroshot",), shots: Sequence[int] = (1, 2, 4, 8, 16),
                 seeds: Sequence[int] = (1, 2, 3), out: str | os.PathLike = "benchmark",
                 cache: str | os.PathLike | None = None, templates: str = "gda",
                 descriptors: Mapping[str, str | os.PathLike] | None = None,
                 real_metrics: Mapping[str, str | os.PathLike] | None = None,
                 n_views: int = 10, tpt_views: int = 63, on_error: str = "skip",
                 engine: str = "local", ray_address: str | None = None,
                 plots: bool = True, progress: bool = True):
        self.backbone = backbone
        self.root = root
        self.datasets = datasets
        self.methods = methods
        self.protocols = protocols
        self.shots = shots
        self.seeds = seeds
        self.out = out
        self.cache = cache
        self.templates = templates
        self.descriptors = descriptors
        self.real_metrics = real_metrics
        self.n_views = n_views
        self.tpt_views = tpt_views
        self.on_error = on_error
        self.engine = engine
        self.ray_address = ray_address
        self.plots = plots
        self.progress = progress

    # ------------------------------------------------------------------ the run

    def run(self) -> BenchmarkReport:
        """Plan, run what is not recorded yet, write the summaries; returns the report."""
        start = time.perf_counter()
        self._check()
        out = Path(self.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the output folder '{out}': {exc.strerror}.") from None
        # one store object for the run: each encoding call does not index the store again
        self._store = StoreRoot(self.cache if self.cache is not None else out / "store")
        for name in self._loaded:  # every data set is read before any work: one that is
            self._dataset(name)    # missing stops the run at once
        self._vectors: dict[str, np.ndarray | None] = {}
        self._heads: dict[tuple, np.ndarray] = {}
        self._last_fit: tuple = (None, None, None)  # (what was fitted, its scorer, its fields)
        self._backbone_fields = self.backbone.describe()
        report = self._report = BenchmarkReport()
        records = RecordLog(out / RECORDS)
        plan = self._plan()
        report.planned = len(plan)
        keys = []
        with records, tqdm(total=len(plan), desc="benchmark runs", unit="run",
                           disable=not self.progress) as bar:
            for run in plan:
                try:
                    templates, problem = self._templates(run), None
                except InputError as exc:  # no templates of that style for the data set
                    templates, problem = None, str(exc)
                key = run_key(self._describe(run, templates))
                keys.append(key)
                bar.set_postfix_str(run.label(), refresh=False)
                if key in records.done:
                    report.resumed += 1
                else:
                    self._do(run, templates, key, records, problem)
                bar.update()
        report.outputs = self._write_outputs(out, records.latest(keys))
        report.seconds = time.perf_counter() - start
        return report

    def _do(self, run: Run, templates: list[str] | None, key: tuple, records: RecordLog,
            problem: str | None) -> None:
        """Run one planned run and record it, or record why it was skipped."""
        reason = problem or self._missing(run)
        if reason is None:
            try:
                started, embedding = time.perf_counter(), self._report.embed_seconds
                metrics, extra = self._evaluate(run, templates)
                # the run's own time: without embedding the test and val sets, which it shares
                seconds = time.perf_counter() - started - (self._report.embed_seconds - embedding)
                record = {**self._describe(run, templates), "metrics": metrics, **extra,
                          "seconds": round(seconds, 3)}
                records.append(key, record)
                self._report.ran += 1
                return
            except InputError as exc:
                reason = str(exc)
        log.warning("skipping %s: %s", run.label(), reason)
        self._report.skipped.append((run.label(), reason))
        if records.skipped.get(key) != reason:
            records.append(key, {**self._describe(run, templates), "skipped": reason})

    # ------------------------------------------------------------------ planning

    def _check(self) -> None:
        for name, given, known in (("method", self.methods, protocols.METHODS),
                                   ("protocol", self.protocols, protocols.PROTOCOLS)):
            unknown = [g for g in given if g not in known]
            if unknown:
                raise InputError(f"unknown {name} '{unknown[0]}'; choose among "
                                 f"{', '.join(known)}.")
        for name, values in (("shots", self.shots), ("seeds", self.seeds)):
            if not values or not all(isinstance(v, int) and not isinstance(v, bool)
                                     and v >= (1 if name == "shots" else 0) for v in values):
                raise InputError(f"{name} must be a non-empty list of integers "
                                 f"{'>= 1' if name == 'shots' else '>= 0'}, got {list(values)}.")
        if not self.datasets:
            raise InputError("no data set to benchmark.")
        if self.on_error not in ("skip", "raise"):
            raise InputError(f"on_error must be 'skip' or 'raise', got '{self.on_error}'.")
        if self.engine not in ENGINES:
            raise InputError(f"unknown engine '{self.engine}'; use 'local' or 'ray'.")
        self._loaded: dict[str, Dataset | None] = {  # None: loaded from ``root`` when needed
            d.name if isinstance(d, Dataset) else dataset_spec(d).name:
                d if isinstance(d, Dataset) else None for d in self.datasets}
        names = list(self._loaded)
        if "variants" in self.protocols and (IMAGENET not in names
                                             or not set(VARIANTS) & set(names)):
            raise InputError(f"the variants protocol fits on '{IMAGENET}' and tests on "
                             f"{', '.join(VARIANTS)}: list '{IMAGENET}' and at least one "
                             f"variant among the data sets.")

    def _plan(self) -> list[Run]:
        """Every run the options ask for, grouped by the data set they fit on."""
        names = list(self._loaded)
        runs = []
        for source in names:
            for protocol in self.protocols:
                if protocol == "variants":
                    targets = [v for v in VARIANTS if v in names] if source == IMAGENET else []
                elif source in VARIANTS and protocol in ("fewshot", "base2new"):
                    continue  # test-only sets; the variants protocol fits on ImageNet
                else:
                    targets = [source]
                for method in self.methods:
                    if method not in PROTOCOL_METHODS[protocol]:
                        continue
                    few = method in protocols.FEW_SHOT_METHODS
                    # zero-shot methods run once; TPT's views are drawn with the first seed
                    seeds = self.seeds if few else self.seeds[:1] if method == "tpt" else (None,)
                    for shots in (self.shots if few else (0,)):
                        for seed in seeds:
                            runs.extend(Run(t, protocol, method, shots, seed, source)
                                        for t in targets)
        return runs

    def _missing(self, run: Run) -> str | None:
        """Why ``run`` cannot be done (an input its method or protocol lacks), or None."""
        if run.method == "descriptions" and run.source not in (self.descriptors or {}):
            return f"no descriptor file for '{run.source}' (descriptors={{'{run.source}': FILE}})"
        for needed, name in (("real", run.source), ("headtail", run.dataset)):
            if needed in (run.method, run.protocol) and name not in (self.real_metrics or {}):
                return f"no REAL metrics file for '{name}' (real_metrics={{'{name}': FILE}})"
        if run.shots and self._dataset(run.source).train is None:
            return f"'{run.source}' has no train split to draw support images from"
        return None

    def _templates(self, run: Run) -> list[str] | None:
        """The templates a run's prompts use (None: descriptor prompts)."""
        if run.method == "descriptions":
            return None
        if run.method == "tpt":
            return [TPT_TEMPLATE]
        style = "real" if run.method == "real" else self.templates
        return list(standard.dataset_templates(run.source, style))

    def _describe(self, run: Run, templates: list[str] | None) -> dict:
        described = self._backbone_fields
        return {"dataset": run.dataset, "protocol": run.protocol, "method": run.method,
                "shots": run.shots, "seed": run.seed, "source": run.source,
                "model": described["model"],
                "pretrained": described["checkpoint"] or described["pretrained"],
                "templates": templates}

    # ------------------------------------------------------------------ data

    def _dataset(self, name: str) -> Dataset:
        loaded = self._loaded[name]
        if loaded is None:
            if self.root is None:
                raise InputError(f"data set '{name}' needs a root folder to load it from.")
            loaded = self._loaded[name] = standard.load_dataset(name, self.root)
        return loaded

    def _embed(self, images: ImageSet) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (M, D) of the readable images, their positions (M,)); each image is
        encoded (or read from the store) once per run of the benchmark."""
        keys = [os.fspath(item) for item in images.items]
        todo = [k for k in dict.fromkeys(keys) if k not in self._vectors]
        if todo:
            started = time.perf_counter()
            report = EncodeReport()
            found = dict.fromkeys(todo)
            for positions, vectors in image_embeddings(
                    self.backbone, ImageSet(todo, source=images.source), engine=self.engine,
                    address=self.ray_address, cache=self._store, on_error=self.on_error,
                    report=report):
                found.update(zip((todo[p] for p in positions), vectors))
            self._vectors.update(found)
            self._report.images_encoded += report.n_encoded
            self._report.images_from_store += report.n_cached
            self._report.embed_seconds += time.perf_counter() - started
        rows = [self._vectors[k] for k in keys]
        kept = np.array([i for i, row in enumerate(rows) if row is not None], dtype=np.int64)
        if not len(kept):
            raise InputError(f"no image of '{images.source}' could be read.")
        return np.stack([rows[i] for i in kept]), kept

    def _labelled(self, images: ImageSet, classnames: Sequence[str]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings (M, D), class indices (M,) into ``classnames``, positions (M,))."""
        X, kept = self._embed(images)
        index = {name: i for i, name in enumerate(classnames)}
        return X, np.array([index[images.labels[i]] for i in kept], dtype=np.int64), kept

    def _text_head(self, dataset: Dataset, templates: list[str]) -> np.ndarray:
        """(C, D) template ensemble of the data set's classes, in label order (computed once)."""
        key = (dataset.name, tuple(templates))
        if key not in self._heads:
            self._heads[key] = class_weights(self.backbone,
                                             class_prompts(dataset.classnames, templates),
                                             cache=self._store)
        return self._heads[key]

    # ------------------------------------------------------------------ methods

    def _evaluate(self, run: Run, templates: list[str] | None) -> tuple[dict, dict]:
        """(metrics, other record fields) of one run."""
        source, target = self._dataset(run.source), self._dataset(run.dataset)
        if run.protocol == "base2new":
            return self._base_to_new(run, source, templates)
        extra: dict = {}
        if run.method == "tpt":
            score = self._tpt(run, target)  # tuned on the tested classes, as TPT's paper does
            columns = None
        else:
            # the variants reuse one fit: its runs follow each other in the plan
            fit = (run.source, run.protocol, run.method, run.shots, run.seed)
            if self._last_fit[0] != fit:
                fitted: dict = {}
                self._last_fit = (fit, self._fit(run, source, templates, fitted), fitted)
            score = self._last_fit[1]
            extra.update(self._last_fit[2])
            indices = standard.imagenet_indices(run.dataset) if run.protocol == "variants" else None
            columns = None if indices is None else np.asarray(indices)
            if columns is None and len(target.classnames) != len(source.classnames):
                raise InputError(f"'{run.dataset}' has {len(target.classnames)} classes and "
                                 f"'{run.source}' {len(source.classnames)}, with no class map.")
        logits, y = score(target.test, target.classnames)
        if columns is not None:
            logits = logits[:, columns]
        metrics = classification_metrics(y, logits)
        if run.protocol == "headtail":
            frequencies = _frequencies(self.real_metrics[run.dataset], len(target.classnames))
            metrics.update(head_tail_accuracy(y, logits.argmax(axis=1), tail_classes(frequencies)))
        return metrics, extra

    def _fit(self, run: Run, dataset: Dataset, templates: list[str] | None, extra: dict
             ) -> Callable[[ImageSet, Sequence[str]], tuple[np.ndarray, np.ndarray]]:
        """A feature-level method fitted on ``dataset``; returns the scorer of a labelled
        split -> (logits (M, C) in the fitted data set's label order, class indices (M,))."""
        if run.method == "gda":
            classifier = self._gda(run, dataset, templates, extra)
        elif run.method == "zeroshot":
            classifier = ZeroShotClassifier(text_weights=self._text_head(dataset, templates),
                                            classnames=dataset.classnames).fit()
        elif run.method == "descriptions":
            path = self.descriptors[run.source]
            extra["descriptors"] = os.fspath(path)
            table = load_descriptor_file(path)
            names = _descriptor_classes(table, dataset.classnames)
            classifier = DescriptionClassifier(
                self.backbone, classnames=names, descriptors=table,
                suffix="." if _imagenet_family(dataset.name) else "", cache=self._store).fit()
            columns = label_columns(classifier.classes_, names)
        else:  # real
            path = self.real_metrics[run.source]
            extra["real_metrics"] = os.fspath(path)
            classifier = RealPromptClassifier(self.backbone, classnames=dataset.classnames,
                                              synonyms=path, templates=templates,
                                              cache=self._store).fit()
        if run.method != "descriptions":
            columns = label_columns(classifier.classes_, dataset.classnames)

        def score(images: ImageSet, classnames: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
            X, y, _ = self._labelled(images, classnames)
            return classifier.logits(X)[:, columns], y

        return score

    def _gda(self, run: Run, dataset: Dataset, templates: list[str], extra: dict,
             base: Dataset | None = None) -> GDAClassifier:
        """GDA on ``shots`` x ``seed`` support images of ``dataset`` (of its base classes when
        ``base`` is given: the fewshot data set restricted to them), alpha on the val split."""
        # GDA's few-shot script draws every K from one stream per seed (shots 1, 2, 4, ...),
        # its base-to-new and robustness scripts draw once after seeding
        draw = "gda" if run.protocol == "fewshot" else "gda_single"
        fewshot = few_shot(dataset, run.shots, run.seed, protocol=draw)
        if base is not None:
            fewshot = base_new(fewshot, "base")
        support = fewshot.train
        scale = (0.08, 1.0) if _imagenet_family(dataset.name) else (0.5, 1.0)
        views = augmented_support(self.backbone, support, n_views=self.n_views, scale=scale,
                                  random_state=run.seed, cache=self._store)
        X_val = y_val = None
        if fewshot.val is not None:
            X_val, codes, _ = self._labelled(fewshot.val, dataset.classnames)
            y_val = np.asarray(dataset.classnames, dtype=object)[codes]
        classifier = GDAClassifier(text_weights=self._text_head(dataset, templates),
                                   classnames=dataset.classnames, random_state=run.seed)
        classifier.fit(views.X, views.y, X_val, y_val, groups=views.groups)
        extra.update(alpha=classifier.alpha_, support=[os.fspath(i) for i in support.items])
        return classifier

    def _tpt(self, run: Run, dataset: Dataset
             ) -> Callable[[ImageSet, Sequence[str]], tuple[np.ndarray, np.ndarray]]:
        """TPT on the data set's own classes (AugMix views outside the ImageNet family)."""
        classifier = tpt_preset(self.backbone, dataset.classnames, n_views=self.tpt_views,
                                augmix=not _imagenet_family(dataset.name),
                                random_state=run.seed).fit()
        columns = label_columns(classifier.classes_, dataset.classnames)

        def score(images: ImageSet, classnames: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
            report = EncodeReport()
            parts = list(classifier.iter_decision_function(images, on_error=self.on_error,
                                                           report=report, progress=False))
            positions = np.concatenate([p for p, _ in parts])
            index = {name: i for i, name in enumerate(classnames)}
            y = np.array([index[images.labels[i]] for i in positions], dtype=np.int64)
            return np.concatenate([s for _, s in parts])[:, columns], y

        return score

    def _base_to_new(self, run: Run, dataset: Dataset, templates: list[str]
                     ) -> tuple[dict, dict]:
        """Base and new accuracy over their own columns, and their harmonic mean."""
        extra: dict = {}
        if run.method == "gda":
            classifier = self._gda(run, dataset, templates, extra, base=dataset)
        else:
            classifier = ZeroShotClassifier(text_weights=self._text_head(dataset, templates),
                                            classnames=dataset.classnames).fit()
        columns = label_columns(classifier.classes_, dataset.classnames)
        metrics = {}
        for part in ("base", "new"):
            subset = base_new(dataset, part)
            X, y, _ = self._labelled(subset.test, subset.classnames)
            own = columns[[dataset.classnames.index(name) for name in subset.classnames]]
            logits = classifier.logits(X)[:, own]
            metrics[f"{part}_accuracy"] = classification_metrics(y, logits)["top1"]
        metrics["harmonic_mean"] = harmonic_mean(metrics["base_accuracy"], metrics["new_accuracy"])
        return metrics, extra

    # ------------------------------------------------------------------ outputs

    def _write_outputs(self, out: Path, records: list[dict]) -> list[Path]:
        rows = summarise(records)
        written = [write_summary_csv(rows, out / "summary.csv"),
                   write_summary_markdown(rows, out / "summary.md")]
        written += write_clip_benchmark(records, out / "clip_benchmark")
        if self.plots:
            from .plots import plot_summary

            written += plot_summary(rows, out / "plots")
        return written


def _imagenet_family(name: str) -> bool:
    return name == IMAGENET or name in VARIANTS


def _descriptor_classes(table: Mapping[str, list[str]], classnames: list[str]) -> list[str]:
    """The class of each label, as a descriptor file names it: the data set's own names when
    the file has them all, else (DCLIP's convention: its files list the classes in label
    order, e.g. ImageNet's "newt" as "eft") the file's keys by position."""
    try:
        match_descriptors(table, classnames)
        return classnames
    except InputError:
        if len(table) != len(classnames):
            raise
    log.info("descriptor classes taken by position (the file's key order is label order)")
    return list(table)


def _frequencies(path: str | os.PathLike, n_classes: int) -> np.ndarray:
    source = f"REAL metrics file '{path}'"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise InputError(f"cannot read the {source}: {exc.strerror}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"the {source} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise InputError(f"the {source} must hold a JSON object keyed by class id.")
    return class_frequencies(data, n_classes, source)


# ---------------------------------------------------------------------- records


def run_key(record: Mapping) -> tuple:
    """What identifies a run across invocations: model, weights, data set, protocol, method,
    shots, seed, and the templates its prompts used."""
    return (*(record.get(k) for k in _KEY_FIELDS), json.dumps(record.get("templates")))


class RecordLog:
    """``records.jsonl``: one JSON object per line, appended durably (flush + fsync per line).

    On opening, a last line without its newline (a run killed while writing it) is cut off,
    so that its run is done again; ``done`` holds the keys of runs with metrics, ``skipped``
    the reason of each skipped one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: list[dict] = []
        self.done: set[tuple] = set()
        self.skipped: dict[tuple, str] = {}
        data = self.path.read_bytes() if self.path.is_file() else b""
        whole = data[:data.rfind(b"\n") + 1]
        for number, line in enumerate(whole.decode("utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"'{self.path}' line {number} is not a JSON record; move "
                                 f"the file away to start afresh.") from None
            self._add(run_key(record), record)
        if len(whole) < len(data):
            log.warning("%s: dropping an incomplete last line (an interrupted run); that run "
                        "is done again", self.path)
        try:
            self._stream = open(self.path, "ab")
            self._stream.truncate(len(whole))
        except OSError as exc:
            raise InputError(f"cannot write '{self.path}': {exc.strerror}.") from None

    def _add(self, key: tuple, record: dict) -> None:
        self.records.append(record)
        if "metrics" in record:
            self.done.add(key)
        elif "skipped" in record:
            self.skipped[key] = record["skipped"]

    def append(self, key: tuple, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        self._stream.write(line.encode("utf-8"))
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._add(key, record)

    def latest(self, keys: Iterable[tuple]) -> list[dict]:
        """The last record with metrics of each of ``keys`` (in the order of ``keys``)."""
        last = {run_key(r): r for r in self.records if "metrics" in r}
        return [last[k] for k in dict.fromkeys(keys) if k in last]

    def __enter__(self) -> "RecordLog":
        return self

    def __exit__(self, *exc) -> None:
        self._stream.close()


# ---------------------------------------------------------------------- summaries

GROUP = ("model", "pretrained", "dataset", "protocol", "method", "shots")


def summarise(records: Sequence[Mapping]) -> list[dict]:
    """Per (model, weights, data set, protocol, method, shots), in order of first appearance:
    ``runs`` (the seeds) and, for every metric, ``(mean, std)`` over them (numpy's population
    std, 0 for one seed)."""
    groups: dict[tuple, list[Mapping]] = defaultdict(list)
    for record in records:
        if "metrics" in record:
            groups[tuple(record[k] for k in GROUP)].append(record)
    rows = []
    for group, members in groups.items():
        row = dict(zip(GROUP, group), runs=len(members), metrics={})
        names = dict.fromkeys(m for r in members for m in r["metrics"])
        for name in names:
            values = np.array([r["metrics"][name] for r in members if name in r["metrics"]],
                              dtype=np.float64)
            row["metrics"][name] = (float(values.mean()), float(values.std()))
        rows.append(row)
    return rows


def _metric_names(rows: Sequence[Mapping]) -> list[str]:
    return list(dict.fromkeys(name for row in rows for name in row["metrics"]))


def write_summary_csv(rows: Sequence[Mapping], path: Path) -> Path:
    """One row per summary group: its fields, ``runs``, and ``<metric>_mean``/``_std``."""
    names = _metric_names(rows)
    with atomic_output(path) as stream:
        writer = csv.writer(stream)
        writer.writerow([*GROUP, "runs", *(f"{n}_{s}" for n in names for s in ("mean", "std"))])
        for row in rows:
            values = [v for n in names for v in row["metrics"].get(n, ("", ""))]
            writer.writerow([*(row[k] for k in GROUP), row["runs"], *values])
    return path


def write_summary_markdown(rows: Sequence[Mapping], path: Path) -> Path:
    """A table per protocol, metrics in % as mean ± std over seeds."""
    text = io.StringIO()
    text.write("# Benchmark summary\n\nMetrics in %, mean ± std over seeds (population std).\n")
    for protocol in dict.fromkeys(row["protocol"] for row in rows):
        members = [row for row in rows if row["protocol"] == protocol]
        names = _metric_names(members)
        text.write(f"\n## {protocol}\n\n| model | data set | method | shots | runs | "
                   + " | ".join(names) + " |\n|" + "---|" * (5 + len(names)) + "\n")
        for row in members:
            cells = [_percent(row["metrics"].get(n)) for n in names]
            model = f"{Path(row['model']).name} ({row['pretrained']})"
            text.write(f"| {model} | {row['dataset']} | {row['method']} | {row['shots']} | "
                       f"{row['runs']} | " + " | ".join(cells) + " |\n")
    with atomic_output(path) as stream:
        stream.write(text.getvalue())
    return path


def _percent(value: tuple[float, float] | None) -> str:
    if value is None:
        return ""
    mean, std = value
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def write_clip_benchmark(records: Sequence[Mapping], folder: Path) -> list[Path]:
    """The zero-shot runs of the zeroshot method in CLIP_benchmark's result shape, one file
    per data set: ``{dataset}_{pretrained}_{model}_en_zeroshot_classification.json`` holding
    dataset, model, pretrained, task, metrics {acc1, acc5, mean_per_class_recall} (acc5 null
    below five classes, where CLIP_benchmark writes NaN) and language."""
    written = []
    for record in records:
        if record["protocol"] != "zeroshot" or record["method"] != "zeroshot":
            continue
        folder.mkdir(exist_ok=True)
        metrics = record["metrics"]
        dump = {"dataset": record["dataset"], "model": record["model"],
                "pretrained": record["pretrained"], "task": "zeroshot_classification",
                "metrics": {"acc1": metrics["top1"], "acc5": metrics.get("top5"),
                            "mean_per_class_recall": metrics["mean_per_class_recall"]},
                "language": "en"}
        model, pretrained = (Path(str(record[k])).name.replace("/", "_")
                             for k in ("model", "pretrained"))
        path = folder / f"{record['dataset']}_{pretrained}_{model}_en_zeroshot_classification.json"
        with atomic_output(path) as stream:
            json.dump(dump, stream, indent=1)
        written.append(path)
    return written
