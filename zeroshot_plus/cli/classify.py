"""`embed`, `predict`, `evaluate` and `fit`: images to embeddings, predictions and classifiers.

Each command checks the inputs that are cheap to check (output paths, image sources, class
names) before it imports the library modules that load torch.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ..data.names import name_text, path_text
from ..data.sources import ImageSet, read_image_source
from ..errors import InputError
from ..text.classnames import parse_classnames
from .common import (check_output, encode, finish, load_backbone, log, output, read_images,
                     stream)

if TYPE_CHECKING:
    from ..encoders.backbone import Backbone, EncodeReport
    from ..methods.base import Predictor
    from ..methods.descriptions import DescriptionClassifier
    from ..methods.gda import GDAClassifier


def embed(args: argparse.Namespace) -> int:
    check_output("--out", args.out, ".npz")
    images = read_images(args.images, args.engine, args.ray_address)
    from ..data.embeddings import save_embeddings
    from ..encoders.backbone import EncodeReport

    backbone, report = load_backbone(args), EncodeReport()
    kept, embeddings = encode(args, backbone, images, report)
    names = images.names()
    save_embeddings(args.out, embeddings, [names[i] for i in kept], backbone.fingerprint,
                    None if images.labels is None else [images.labels[i] for i in kept])
    print(f"wrote {len(kept)} embeddings of dimension {embeddings.shape[1] if len(kept) else 0} "
          f"to {args.out}", file=sys.stderr)
    return finish(report, len(images))


def predict(args: argparse.Namespace) -> int:
    check_output("--out", args.out, ".csv", ".jsonl")
    if args.top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {args.top_k}.")
    images = read_images(args.images)
    classnames = parse_classnames(args.classes) if args.classes else None
    from scipy.special import softmax

    from ..encoders.backbone import EncodeReport

    backbone, report = load_backbone(args), EncodeReport()
    classifier = _classifier(args, backbone, classnames)
    k = min(args.top_k, len(classifier.classes_))
    names = [path_text(name) for name in images.names()]
    jsonl = args.out is not None and args.out.lower().endswith(".jsonl")
    with output(args.out) as handle:
        writer = None if jsonl else csv.writer(handle)
        explain = _explain_count(args, classifier)
        if writer is not None:
            writer.writerow(["path"] + [f"{c}{i}" for i in range(1, k + 1) for c in ("label", "prob")]
                            + [f"{c}{i}" for i in range(1, explain + 1)
                               for c in ("descriptor", "similarity")])
        for positions, logits, vectors in _scored(args, backbone, classifier, images, report):
            probabilities = softmax(logits.astype(np.float64), axis=1)
            top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
            reasons = classifier.explain(vectors, explain) if explain else [None] * len(positions)
            for position, row, order, reason in zip(positions, probabilities, top, reasons):
                labels = [name_text(str(classifier.classnames_[j])) for j in order]
                probs = [round(float(row[j]), 6) for j in order]
                why = [] if reason is None else [(d, round(s, 6)) for d, s in
                                                 zip(reason.descriptors, reason.similarities)]
                if jsonl:
                    record = {"path": names[position], "labels": labels, "probs": probs}
                    if reason is not None:
                        record["explanation"] = [{"descriptor": d, "similarity": s} for d, s in why]
                    handle.write(json.dumps(record) + "\n")
                else:
                    cells = [v for pair in why for v in pair]
                    writer.writerow([names[position]] + [v for pair in zip(labels, probs) for v in pair]
                                    + cells + [""] * (2 * explain - len(cells)))
    return finish(report, len(images))


def evaluate(args: argparse.Namespace) -> int:
    check_output("--out", args.out, ".json")
    images = read_images(args.images)
    if images.labels is None:
        raise InputError(f"'{images.source}' carries no labels: use a folder with one "
                         f"sub-folder per class, or a manifest with a label column.")
    from scipy.special import softmax

    from ..encoders.backbone import EncodeReport
    from ..evaluation.metrics import classification_summary
    from ..methods.base import Predictor

    backbone, report = load_backbone(args), EncodeReport()
    classnames = (parse_classnames(args.classes) if args.classes
                  else [str(c) for c in Predictor.load(args.classifier, backbone).classnames_]
                  if args.classifier else sorted(set(images.labels)))
    unknown = sorted(set(images.labels) - set(classnames))
    if unknown:
        raise InputError(f"labels not in the class list: {', '.join(unknown[:10])}"
                         f"{' ...' if len(unknown) > 10 else ''}.")
    classifier = _classifier(args, backbone, classnames)
    index = {str(c): i for i, c in enumerate(classifier.classnames_)}  # label -> column
    explain, names = _explain_count(args, classifier), [path_text(n) for n in images.names()]
    y_true, scores, explanations = [], [], []
    for positions, logits, vectors in _scored(args, backbone, classifier, images, report):
        y_true.extend(index[images.labels[p]] for p in positions)
        scores.append(logits)
        if explain:
            explanations.extend(
                {"path": names[p], "label": images.labels[p], "predicted": str(e.label),
                 "descriptors": e.descriptors, "similarities": [round(s, 6) for s in e.similarities]}
                for p, e in zip(positions, classifier.explain(vectors, explain)))
    status = finish(report, len(images))
    if not scores:
        return status or 2
    logits = np.concatenate(scores)
    if len(classifier.classes_) == 1:
        log.warning("warning: only one class (%s): every image is predicted as it, so the "
                    "accuracies are 100%% by construction; give the other candidate classes "
                    "with --classes.", classifier.classnames_[0])
    probabilities = softmax(logits.astype(np.float64), axis=1)
    summary = classification_summary(np.array(y_true), logits, probabilities,
                                     classifier.classnames_)
    summary.update(method=f"classifier {args.classifier}" if args.classifier else args.method,
                   model=backbone.describe(), templates=args.templates,
                   skipped=[path_text(f.name) for f in report.failures])
    if args.method == "descriptions" and not args.classifier:
        summary.update(descriptors=classifier.report_, **{
            name: getattr(args, name) for name in ("prompt_style", "name_position", "prefix",
                                                   "between", "suffix", "empty_descriptors",
                                                   "aggregation")})
    if args.method == "real" and not args.classifier:
        summary.update(name_type=args.name_type, real_prompts=args.real_prompts)
    if explain:
        summary["explanations"] = explanations
    try:
        _print_summary(summary)
    finally:  # a reader of stdout that has gone (`| head -1`) does not cost the file asked for
        if args.out:
            with output(args.out) as handle:
                json.dump(summary, handle, indent=2)
    return status


def _print_summary(summary: dict) -> None:
    print(f"images: {summary['n_images']}  top-1: {summary['top1']:.2%}  top-5: "
          f"{summary['top5']:.2%}  mean per-class: {summary['mean_per_class_accuracy']:.2%}  "
          f"ECE: {summary['ece']:.4f}")
    for name, accuracy in summary["per_class_accuracy"].items():
        print(f"  {name:<30} {'n/a' if accuracy is None else f'{accuracy:.2%}'}")
    sys.stdout.flush()  # a closed pipe is found here, not when the interpreter exits


def fit(args: argparse.Namespace) -> int:
    check_output("--out", args.out, ".npz")
    support = read_image_source(args.support)
    classnames = parse_classnames(args.classes) if args.classes else None
    classifier = _fit_gda(args, load_backbone(args), support, classnames)
    classifier.save(args.out)
    print(f"wrote a GDA classifier ({len(classifier.classes_)} classes, "
          f"{int(classifier.class_counts_.sum())} support views, alpha {classifier.alpha_:g}) "
          f"to {args.out}", file=sys.stderr)
    return 0


def _classifier(args: argparse.Namespace, backbone: Backbone,
                classnames: list[str] | None) -> Predictor:
    """The --classifier file, or the --method fitted on the options."""
    if args.classifier:
        from ..methods.base import Predictor

        classifier = Predictor.load(args.classifier, backbone)
        names = [str(c) for c in classifier.classnames_]
        if classnames is not None and sorted(classnames) != sorted(names):
            raise InputError(f"--classes differs from the classes of --classifier "
                             f"'{args.classifier}'; leave --classes out.")
        return classifier
    if args.method == "descriptions":
        return _fit_descriptions(args, backbone, classnames)
    if args.method == "gda":
        return _fit_gda(args, backbone, args.support, classnames)
    if args.method == "real":
        from ..methods.real import RealPromptClassifier

        return RealPromptClassifier(backbone, classnames=classnames, synonyms=args.synonyms,
                                    templates=args.templates, name_type=args.name_type,
                                    prompt_style=args.real_prompts, descriptors=args.descriptors,
                                    cache=args.cache).fit()
    if args.method == "tpt":
        from ..methods.tpt import tpt_preset
        from ..text.synonyms import load_synonyms

        options = {"n_views": args.tpt_views, "steps": args.tpt_steps, "lr": args.tpt_lr,
                   "selection_p": args.tpt_select, "ctx_init": args.ctx_init,
                   "ctx_count": args.ctx_count, "diffusion_count": args.diffusion_count,
                   "cosine_p": args.tpt_cosine}
        settings = {name: value for name, value in options.items() if value is not None}
        if args.n_ctx is not None:  # a random context
            settings.update(ctx_init=None, n_ctx=args.n_ctx)
        prompt_names = (load_synonyms(args.synonyms, classnames).prompt_names() if args.synonyms
                        else None)
        return tpt_preset(backbone, classnames, templates=args.templates,
                          diffusion_views=args.diffusion_views, prompt_names=prompt_names,
                          augmix=args.augmix or False, random_state=args.seed,
                          **settings).fit()
    from ..methods.zeroshot import ZeroShotClassifier

    return ZeroShotClassifier(backbone, classnames=classnames, templates=args.templates,
                              cache=args.cache).fit()


def _fit_descriptions(args: argparse.Namespace, backbone: Backbone,
                      classnames: list[str] | None) -> DescriptionClassifier:
    from ..methods.descriptions import DescriptionClassifier

    classifier = DescriptionClassifier(
        backbone, classnames=classnames, descriptors=args.descriptors,
        prompt_style=args.prompt_style, suffix=args.suffix, prefix=args.prefix,
        between=args.between, name_position=args.name_position,
        empty_descriptors=args.empty_descriptors, aggregation=args.aggregation,
        cache=args.cache).fit()
    report = classifier.report_
    log.info("descriptors for %d of %d classes (%s)", report["n_with_descriptors"],
             report["n_classes"], report["source"])
    if report["without_descriptors"]:
        log.warning("%d classes have no descriptors and are scored by %s: %s",
                    len(report["without_descriptors"]),
                    "their name" if args.empty_descriptors == "name" else "the blank descriptor",
                    ", ".join(report["without_descriptors"][:10]))
    return classifier


def _fit_gda(args: argparse.Namespace, backbone: Backbone, support: str | ImageSet,
             classnames: list[str] | None) -> GDAClassifier:
    from ..methods.gda import fit_gda_from_support

    classifier = fit_gda_from_support(backbone, support, classnames, shots=args.shots,
                                      n_views=args.views, alpha=args.alpha, val=args.val,
                                      random_state=args.seed, templates=args.templates,
                                      cache=args.cache)
    n_views = int(classifier.class_counts_.sum())
    log.info("GDA: %d support views of %d images, alpha = %g", n_views, n_views // args.views,
             classifier.alpha_)
    return classifier


def _explain_count(args: argparse.Namespace, classifier: Predictor) -> int:
    """Descriptors per image for --explain (0: not asked)."""
    if args.explain is None:
        return 0
    from ..methods.descriptions import DescriptionClassifier

    if not isinstance(classifier, DescriptionClassifier):  # a --classifier file
        raise InputError("--explain needs --method descriptions.")
    return args.explain


def _scored(args: argparse.Namespace, backbone: Backbone, classifier: Predictor,
            images: ImageSet, report: EncodeReport
            ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(positions, logits, embeddings) batches. TPT tunes on the images themselves, so it
    streams its own logits and there are no embeddings (None)."""
    from ..methods.tpt import TPTClassifier

    if isinstance(classifier, TPTClassifier):
        for positions, logits in classifier.iter_decision_function(
                images, on_error="raise" if args.strict else "skip", report=report):
            yield positions, logits, None
        return
    for positions, vectors in stream(args, backbone, images, report):
        yield positions, classifier.logits(vectors), vectors
