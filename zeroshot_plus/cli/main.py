"""`zeroshot-plus` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from scipy.special import softmax

from ..encoders.backbone import PRECISIONS, Backbone, EncodeReport
from ..text.descriptors import PROMPT_STYLES
from ..errors import InputError
from ..text.frequency import CAPTION_COLUMN, STRATEGIES, build_index, mine_frequencies
from ..data.images import ImageSet, read_image_source
from ..text.llm import KINDS, generate
from ..evaluation.metrics import classification_summary, recall_at_k
from ..methods.comclip import (COMPONENTS, MASK_MODES, WEIGHTINGS, ComCLIPMatcher,
                              draw_explanation, read_pairs)
from ..methods.descriptions import DescriptionClassifier
from ..methods.gda import GDAClassifier
from ..methods.schur import (ENTROPIES, KERNELS, SchurEditor, save_spectrum_plot,
                             sce_score)
from ..methods.real import RealPromptClassifier
from ..methods.tpt import TPTClassifier
from ..methods.zeroshot import ZeroShotClassifier
from ..methods.base import Predictor, saved_backbone
from ..text.classnames import parse_classnames
from ..text.templates import load_templates
from ..text.synonyms import load_synonyms
from ..data.support import augmented_support, sample_shots

log = logging.getLogger("zeroshot_plus")

METHODS = ("zeroshot", "gda", "real", "descriptions", "tpt")


def _model_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("model")
    group.add_argument("--model",
                       help="open_clip model name (default: ViT-B-32, or the model of "
                            "--classifier), or the path of an open_clip model-config JSON file")
    group.add_argument("--pretrained", metavar="TAG|none",
                       help="open_clip pretrained tag (default: openai, or the weights of "
                            "--classifier); 'none' builds random weights, for smoke tests and "
                            "speed measurements only")
    group.add_argument("--checkpoint", metavar="PATH",
                       help="local weights file (.pt/.bin/.safetensors); use it offline")
    group.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    group.add_argument("--precision", choices=PRECISIONS,
                       help="fp32, or fp16/bf16 autocast (default: fp32 on CPU, fp16 on CUDA)")
    group.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    group.add_argument("--workers", type=int,
                       help="image-decoding processes that run ahead of the encoder; 0 decodes "
                            "in this process, one thread per core (default: 0 on CPU, 4 on CUDA)")
    group.add_argument("--cache", metavar="DIR",
                       help="embedding store: images and prompts already encoded are read back, "
                            "not encoded again")
    group.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    group.add_argument("--strict", action="store_true",
                       help="stop at the first unreadable image (default: skip it and list it at the end)")
    group.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    return parent


def _class_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--classes", metavar="FILE|a,b,c",
                        help="class names: a file (one per line, or a JSON list) or a comma list"
                             + ("; required unless --classifier" if required
                                else "; default: the labels of IMAGES, sorted"))
    parser.add_argument("--templates", default="openai_imagenet", metavar="NAME|FILE",
                        help="prompt templates: openai_imagenet (80, default), simple_imagenet (7), "
                             "photo ('a photo of a {}.'), or a file with one template per line")
    parser.add_argument("--method", default="zeroshot", choices=METHODS,
                        help="classification method (default: zeroshot)")
    parser.add_argument("--classifier", metavar="FILE",
                        help="a classifier written by `zeroshot-plus fit`: its model, classes and "
                             "weights are used (the model options are taken from the file)")
    parser.add_argument("--synonyms", metavar="FILE",
                        help="--method real: a REAL metrics file (most_common_name per class id, "
                             "rows in --classes order) or a JSON map {class: synonym}")
    _description_options(parser)
    _few_shot_options(parser, support=True)
    _tpt_options(parser)


def _description_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("classification by description (--method descriptions)")
    group.add_argument("--descriptors", metavar="FILE",
                       help="JSON {class: [descriptor, ...]}: released DCLIP descriptors, CuPL "
                            "sentences, or `zeroshot-plus describe` output; without --classes "
                            "its keys are the classes")
    group.add_argument("--prompt-style", choices=PROMPT_STYLES, default="menon",
                       help="menon (default): the paper's '{class}, which is/has {descriptor}' "
                            "rule with its quirks; corrected: the same rule on whole words; "
                            "plain: '{class}, {descriptor}'; sentences: each entry is a whole "
                            "prompt (CuPL files)")
    group.add_argument("--explain", type=int, nargs="?", const=3, metavar="N",
                       help="also give the N (default 3) descriptors of the predicted class "
                            "most similar to each image: extra columns of predict, and per "
                            "image in evaluate's --out JSON")


def _tpt_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "test-time prompt tuning (--method tpt)",
        "The context of one prompt is tuned on each image: 'a photo of a {}.' by default, or "
        "the one template of --templates; with --synonyms the prompts use REAL's names.")
    group.add_argument("--tpt-views", type=int, metavar="N",
                       help="augmented views per image (default: 63; 64 with --diffusion-views)")
    group.add_argument("--tpt-steps", type=int, metavar="K",
                       help="AdamW steps per image (default: 1; 4 with --diffusion-views)")
    group.add_argument("--augmix", action="store_true",
                       help="AugMix views (the paper uses them on fine-grained data sets)")
    group.add_argument("--diffusion-views", metavar="DIR",
                       help="DiffTPT: generated variations {stem}_{i}.jpg of each image {stem}.*; "
                            "the views whose logits are the 80%% most similar to the original's "
                            "are kept, then the 30%% most confident of them")


def _few_shot_options(parser: argparse.ArgumentParser, support: bool) -> None:
    group = parser.add_argument_group("few-shot (--method gda)")
    if support:
        group.add_argument("--support", metavar="DIR",
                           help="labelled support images (class sub-folders, or a manifest); "
                                "classes without support images are predicted from their text")
    group.add_argument("--shots", type=int, metavar="K",
                       help="support images per class, sampled with --seed (default: all)")
    group.add_argument("--views", type=int, default=10,
                       help="augmented views per support image (default: 10)")
    group.add_argument("--alpha", default="auto", metavar="auto|NUMBER",
                       help="weight of the GDA term against the zero-shot logits; auto (default): "
                            "chosen on --val, else by 5-fold cross-validation on the support")
    group.add_argument("--val", metavar="IMAGES", help="labelled images to choose alpha on")
    group.add_argument("--seed", type=int, default=0,
                       help="seed of the shot sampling, the views and the folds (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeroshot-plus",
        description="Adapt a frozen CLIP model to your task without training it. IMAGES is a "
                    "folder (class sub-folders give labels), a CSV/JSONL manifest (path[,label]) "
                    "or image files.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model = _model_options()

    embed = commands.add_parser("embed", parents=[model], help="write image embeddings to a file",
                                description="Encode images and write their embeddings (.npz: "
                                            "embeddings (N, D) float32, paths, labels).")
    embed.add_argument("images", nargs="+", metavar="IMAGES")
    embed.add_argument("--out", required=True, metavar="FILE.npz", help="output file")

    predict = commands.add_parser("predict", parents=[model], help="predict a class for each image",
                                  description="Classify images; one row per image with the top-k "
                                              "labels and their probabilities.")
    predict.add_argument("images", nargs="+", metavar="IMAGES")
    _class_options(predict, required=True)
    predict.add_argument("--top-k", type=int, default=5, help="labels per image (default: 5)")
    predict.add_argument("--out", metavar="FILE.csv|FILE.jsonl",
                         help="output file (default: CSV on stdout)")

    evaluate = commands.add_parser("evaluate", parents=[model], help="accuracy on a labelled set",
                                   description="Classify a labelled set and report top-1/top-5 "
                                               "accuracy, per-class accuracy and ECE.")
    evaluate.add_argument("images", nargs="+", metavar="IMAGES")
    _class_options(evaluate, required=False)
    evaluate.add_argument("--out", metavar="FILE.json", help="also write the full report as JSON")

    fit = commands.add_parser("fit", parents=[model], help="fit a few-shot classifier to a file",
                              description="Fit GDA on labelled support images and write the "
                                          "classifier (.npz) that `predict --classifier` reuses.")
    fit.add_argument("support", metavar="SUPPORT",
                     help="labelled support images (class sub-folders, or a manifest)")
    fit.add_argument("--classes", metavar="FILE|a,b,c",
                     help="class names (default: the labels of SUPPORT, sorted); classes "
                          "without support images are predicted from their text")
    fit.add_argument("--templates", default="openai_imagenet", metavar="NAME|FILE",
                     help="prompt templates of the zero-shot part (default: openai_imagenet)")
    fit.add_argument("--out", required=True, metavar="FILE.npz", help="classifier file")
    _few_shot_options(fit, support=False)

    frequency = commands.add_parser(
        "frequency", help="count synonyms in captions; write a REAL metrics file",
        description="Count how many captions mention each candidate synonym of each class "
                    "(whole-word phrase match, case-insensitive, with an SQLite FTS5 index built "
                    "once and reused) and write a REAL metrics file whose most_common_name "
                    "`--method real --synonyms` uses.")
    frequency.add_argument("--captions", nargs="+", required=True, metavar="FILE",
                           help="caption files: .txt (one per line), .csv/.tsv (a --column), "
                                ".parquet (needs pyarrow)")
    frequency.add_argument("--synonyms", required=True, metavar="FILE",
                           help="candidate synonyms: JSON {class: [synonym, ...]} or a REAL "
                                "metrics file (its alternates are counted again)")
    frequency.add_argument("--classes", metavar="FILE|a,b,c",
                           help="class names in label order (default: the keys of --synonyms)")
    frequency.add_argument("--out", required=True, metavar="FILE.json", help="metrics file")
    frequency.add_argument("--index", metavar="FILE",
                           help="the caption index (default: FIRST_CAPTION_FILE.fts5.sqlite)")
    frequency.add_argument("--column", default=CAPTION_COLUMN,
                           help=f"caption column of CSV/Parquet files (default: {CAPTION_COLUMN})")
    frequency.add_argument("--require", metavar="PHRASE",
                           help="count only captions that also contain this phrase (e.g. satellite)")
    frequency.add_argument("--strategy", choices=STRATEGIES, default="relaxed",
                           help="relaxed (default): the most frequent synonym that is not a "
                                "word subset of the class name; max: the most frequent")
    frequency.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    frequency.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    frequency.set_defaults(cache=None)

    sce = commands.add_parser(
        "sce", parents=[model], help="diversity of generated images given their prompts (SCE)",
        description="Score a text-to-image model's own diversity: the Schur complement entropy "
                    "(SCE) of the images' kernel covariance after removing the part their "
                    "prompts explain. Prints the score (and the text-explained one).")
    sce.add_argument("images", nargs="+", metavar="IMAGES")
    _prompt_option(sce)
    sce.add_argument("--kernel", choices=KERNELS, default="gaussian",
                     help="gaussian (default; random Fourier features) or cosine")
    sce.add_argument("--sigma", type=float, default=0.5,
                     help="Gaussian bandwidth on unit-norm embeddings (default: 0.5)")
    sce.add_argument("--features", type=int, default=5000, metavar="P",
                     help="random Fourier features (even; default: 5000); 0: the exact kernel")
    sce.add_argument("--ridge", type=float, default=1e-6,
                     help="ridge added to the text covariance, relative to its trace "
                          "(default: 1e-6); raise it when every prompt is distinct")
    sce.add_argument("--order", type=float, default=1.0,
                     help="Renyi order of the entropy (default: 1, Shannon)")
    sce.add_argument("--entropy", choices=ENTROPIES, default="reference",
                     help="reference: exp(trace x entropy), as in the paper (default); "
                          "normalized: the plain Vendi score of the spectrum")
    sce.add_argument("--center", action="store_true", help="centred covariances")
    sce.add_argument("--seed", type=int, default=0, help="seed of the random features (default: 0)")
    sce.add_argument("--plot", metavar="FILE.png", help="also draw the eigenvalue spectrum")
    sce.add_argument("--out", metavar="FILE.json", help="also write the result as JSON")

    edit = commands.add_parser(
        "edit", parents=[model], help="remove prompts' influence from image embeddings",
        description="Fit the Schur-complement map from prompts to images on IMAGES (or "
                    "--embeddings) and their --prompts, then subtract from each embedding what "
                    "its prompt (or --remove TEXT) explains. Writes the `embed` .npz format.")
    edit.add_argument("images", nargs="*", metavar="IMAGES")
    edit.add_argument("--embeddings", metavar="FILE.npz",
                      help="embeddings written by `zeroshot-plus embed`, instead of IMAGES")
    _prompt_option(edit)
    edit.add_argument("--remove", metavar="TEXT",
                      help="remove this text from every image (default: each image's own prompt)")
    edit.add_argument("--ridge", type=float, default=1e-6,
                      help="ridge added to the text covariance, relative to its trace "
                           "(default: 1e-6)")
    edit.add_argument("--out", required=True, metavar="FILE.npz", help="output file")

    describe = commands.add_parser(
        "describe", help="write descriptors, synonyms or sentences per class with an LLM",
        description="Ask an OpenAI-compatible chat endpoint for descriptors (classification "
                    "by description), synonyms (REAL) or CuPL-style sentences, per class, and "
                    "write them as JSON {class: [...]}. Answers are cached one file per class: "
                    "an interrupted run resumes, and nothing is asked twice.")
    describe.add_argument("--classes", required=True, metavar="FILE|a,b,c",
                          help="class names: a file (one per line, or a JSON list) or a comma list")
    describe.add_argument("--out", required=True, metavar="FILE.json", help="output file")
    describe.add_argument("--kind", choices=KINDS, default="descriptors",
                          help="what to ask for (default: descriptors)")
    describe.add_argument("--context", metavar="TEXT",
                          help="words that tell the LLM what the classes are, e.g. 'a type of bird'")
    describe.add_argument("--items", type=int, metavar="N",
                          help="items to ask for per class (default: 8 descriptors, 5 synonyms, "
                               "10 sentences)")
    describe.add_argument("--base-url", metavar="URL",
                          help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else OpenAI)")
    describe.add_argument("--model", metavar="NAME",
                          help="LLM model name (default: $ZEROSHOT_PLUS_LLM_MODEL)")
    describe.add_argument("--api-key", metavar="KEY",
                          help="API key (default: $OPENAI_API_KEY; a --base-url server may need none)")
    describe.add_argument("--cache", metavar="DIR",
                          help="answer cache (default: ~/.cache/zeroshot_plus/llm)")
    describe.add_argument("--concurrency", type=int, default=4,
                          help="requests in flight at once (default: 4)")
    describe.add_argument("--attempts", type=int, default=6,
                          help="requests per class before giving up on it (default: 6)")
    describe.add_argument("--timeout", type=float, default=60.0,
                          help="seconds per request (default: 60)")
    describe.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    describe.add_argument("-v", "--verbose", action="store_true", help="log retries")

    match = commands.add_parser(
        "match", parents=[model], help="image-caption matching scores (ComCLIP)",
        description="Score each image-caption pair of PAIRS.csv (rows image,caption; relative "
                    "paths are relative to the CSV) with ComCLIP: CLIP plus weighted sub-images "
                    "of the caption's entities and relations. Writes one row per pair: image, "
                    "caption, ComCLIP score, plain CLIP score.")
    match.add_argument("pairs", metavar="PAIRS.csv")
    match.add_argument("--out", metavar="FILE.csv|FILE.jsonl",
                       help="output file (default: CSV on stdout); JSONL rows carry the "
                            "explanation (entities, regions, weights)")
    match.add_argument("--retrieval", action="store_true",
                       help="also score every distinct image against every distinct caption and "
                            "print image-to-text and text-to-image recall@1/5 (rows = matches)")
    match.add_argument("--explain-dir", metavar="DIR",
                       help="write each pair's regions drawn on its image as DIR/pairN.png")
    match.add_argument("--parser", choices=("rules", "llm"), default="rules",
                       help="caption parser: rules (default, offline) or llm (an OpenAI-"
                            "compatible endpoint from OPENAI_BASE_URL / OPENAI_API_KEY / "
                            "ZEROSHOT_PLUS_LLM_MODEL; answers cached)")
    match.add_argument("--components", default=",".join(COMPONENTS), metavar="LIST",
                       help="sub-images to add: entities,relations (default); '' = plain CLIP")
    match.add_argument("--weighting", choices=WEIGHTINGS, default="sum",
                       help="sum (default: the paper's s_i / sum s) or softmax")
    match.add_argument("--mask-mode", choices=MASK_MODES, default="blackout",
                       help="blackout (default: the paper's full frame, black outside the "
                            "region) or crop")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="zeroshot-plus: %(message)s")
    try:
        return {"embed": _embed, "sce": _sce, "edit": _edit, "predict": _predict, "evaluate": _evaluate,
                "fit": _fit, "frequency": _frequency, "describe": _describe,
                "match": _match}[args.command](args)
    except InputError as exc:
        print(f"zeroshot-plus: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `zeroshot-plus predict ... | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("zeroshot-plus: interrupted; embeddings written so far are kept in the --cache "
              "store" if args.cache else "zeroshot-plus: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------- helpers


def _backbone(args) -> Backbone:
    """The run's Backbone; with --classifier, the file's model unless the options name one
    (a checkpoint's path may differ between machines; a wrong model fails the fingerprint
    check when the classifier is loaded)."""
    saved = saved_backbone(args.classifier) if getattr(args, "classifier", None) else None
    saved = saved or {"model": "ViT-B-32", "pretrained": "openai", "checkpoint": None,
                      "precision": None}
    return Backbone(args.model or saved["model"], args.pretrained or saved["pretrained"],
                    checkpoint=args.checkpoint or saved["checkpoint"], device=args.device,
                    precision=args.precision or saved["precision"], batch_size=args.batch_size,
                    num_workers=args.workers, progress=not args.no_progress)


def _images(args) -> ImageSet:
    sources = [read_image_source(s) for s in args.images]
    if len(sources) == 1:
        return sources[0]
    labelled = [s.labels is not None for s in sources]
    if any(labelled) and not all(labelled):
        raise InputError("some IMAGES sources carry labels and some do not; give only labelled "
                         "sources or only unlabelled ones.")
    return ImageSet([i for s in sources for i in s.items],
                    [lab for s in sources for lab in s.labels] if all(labelled) else None,
                    source=", ".join(s.source for s in sources))


def _stream(args, backbone: Backbone, images: ImageSet, report: EncodeReport
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, embeddings) batches of the readable images, in input order."""
    yield from backbone.iter_image_embeddings(images, cache=args.cache, report=report,
                                              on_error="raise" if args.strict else "skip")


def _scored(args, backbone: Backbone, classifier: Predictor, images: ImageSet,
            report: EncodeReport) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(positions, logits, embeddings) batches. TPT tunes on the images themselves, so it
    streams its own logits and there are no embeddings (None)."""
    if isinstance(classifier, TPTClassifier):
        for positions, logits in classifier.iter_decision_function(
                images, on_error="raise" if args.strict else "skip", report=report):
            yield positions, logits, None
        return
    for positions, vectors in _stream(args, backbone, images, report):
        yield positions, classifier.decision_function(vectors), vectors


def _finish(report: EncodeReport, total: int) -> int:
    forward = (f" ({report.encoder_seconds:.2f} s in the image encoder's forward passes)"
               if report.encoder_seconds else "")
    log.info("%d images: %d encoded%s, %d read from the store, %d skipped",
             total, report.n_encoded, forward, report.n_cached, len(report.failures))
    if report.failures:
        print(f"zeroshot-plus: skipped {len(report.failures)} unreadable image(s):", file=sys.stderr)
        for failure in report.failures:
            print(f"  {failure.name}: {failure.reason}", file=sys.stderr)
    if total and len(report.failures) == total:
        print("zeroshot-plus: error: no image could be read.", file=sys.stderr)
        return 2
    return 0


def _check_output(option: str, path: str | None, *suffixes: str) -> None:
    """Refuse, before any work, an output path with another suffix or no folder to go in."""
    if path is None:
        return
    if not path.lower().endswith(suffixes):
        raise InputError(f"{option} '{path}' must end in {' or '.join(suffixes)}.")
    if not Path(path).resolve().parent.is_dir():
        raise InputError(f"output folder '{Path(path).parent}' does not exist.")


@contextmanager
def _atomic_output(path: str | None, binary: bool = False):
    """A stream to ``path`` that appears only once complete (stdout when path is None)."""
    if path is None:
        yield sys.stdout
        return
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"output folder '{target.parent}' does not exist.")
    temporary = target.with_name(f".{target.name}.partial")
    try:
        with (open(temporary, "wb") if binary
              else open(temporary, "w", newline="", encoding="utf-8")) as handle:
            yield handle
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _classifier(args, backbone: Backbone, classnames: list[str] | None) -> Predictor:
    if args.classifier:
        classifier = Predictor.load(args.classifier, backbone)
        if classnames is not None and classnames != [str(c) for c in classifier.classes_]:
            raise InputError(f"--classes differs from the classes of --classifier "
                             f"'{args.classifier}'; leave --classes out.")
        return classifier
    if args.method == "descriptions":
        return _fit_descriptions(args, backbone, classnames)
    if classnames is None:
        raise InputError("predict needs --classes (or --classifier FILE).")
    if args.method == "gda":
        return _fit_gda(args, backbone, classnames)
    if args.method == "real":
        if not args.synonyms:
            raise InputError("--method real needs --synonyms FILE (a REAL metrics file or a "
                             "{class: synonym} map).")
        return RealPromptClassifier(backbone, classnames, synonyms=args.synonyms,
                                    templates=args.templates, cache=args.cache).fit()
    if args.method == "tpt":
        return _fit_tpt(args, backbone, classnames)
    return ZeroShotClassifier(backbone, classnames, templates=args.templates, cache=args.cache).fit()


def _fit_descriptions(args, backbone: Backbone, classnames: list[str] | None
                      ) -> DescriptionClassifier:
    if not args.descriptors:
        raise InputError("--method descriptions needs --descriptors FILE (JSON {class: "
                         "[descriptor, ...]}).")
    classifier = DescriptionClassifier(backbone, classnames, args.descriptors,
                                       prompt_style=args.prompt_style, cache=args.cache).fit()
    report = classifier.report_
    log.info("descriptors for %d of %d classes (%s)", report["n_with_descriptors"],
             report["n_classes"], report["source"])
    if report["without_descriptors"]:
        log.warning("%d classes have no descriptors and are scored by their name: %s",
                    len(report["without_descriptors"]), ", ".join(report["without_descriptors"][:10]))
    return classifier


def _explain_count(args, classifier: Predictor) -> int:
    """Descriptors per image for --explain (0: not asked)."""
    if args.explain is None:
        return 0
    if not isinstance(classifier, DescriptionClassifier):
        raise InputError("--explain needs --method descriptions.")
    if args.explain < 1:
        raise InputError(f"--explain must be at least 1, got {args.explain}.")
    return args.explain


_TPT_BATCH = 4  # images tuned together in one batched pass


def _fit_tpt(args, backbone: Backbone, classnames: list[str]) -> TPTClassifier:
    """TPT on 'a photo of a {}.' or the one template of --templates; DiffTPT's settings
    (64 views, 4 steps, 30% selection) with --diffusion-views."""
    ctx_init = "a photo of a"
    if args.templates != "openai_imagenet":  # the shared default: TPT's own prompt
        templates = load_templates(args.templates)
        if len(templates) != 1:
            raise InputError(f"--method tpt tunes one prompt, but --templates '{args.templates}' "
                             f"holds {len(templates)}; give one template (e.g. photo).")
        ctx_init = templates[0]
    diffusion = args.diffusion_views is not None
    prompt_names = (load_synonyms(args.synonyms, classnames).prompt_names() if args.synonyms
                    else None)
    return TPTClassifier(
        backbone, classnames, prompt_names=prompt_names, ctx_init=ctx_init,
        n_views=args.tpt_views if args.tpt_views is not None else (64 if diffusion else 63),
        steps=args.tpt_steps if args.tpt_steps is not None else (4 if diffusion else 1),
        selection_p=0.3 if diffusion else 0.1, augmix=args.augmix, batch_images=_TPT_BATCH,
        random_state=args.seed, diffusion_views=args.diffusion_views).fit()


def _fit_gda(args, backbone: Backbone, classnames: list[str]) -> GDAClassifier:
    """K shots per class -> augmented views -> GDAClassifier (alpha on --val, else by CV)."""
    if not args.support:
        raise InputError("--method gda needs --support DIR (labelled support images).")
    support = read_image_source(args.support)
    if args.shots is not None:
        support = sample_shots(support, args.shots, args.seed)
    views = augmented_support(backbone, support, n_views=args.views, random_state=args.seed,
                              cache=args.cache)
    X_val = y_val = None
    if args.val:
        val = read_image_source(args.val)
        if val.labels is None:
            raise InputError(f"--val '{args.val}' carries no labels.")
        X_val, y_val = backbone.encode_images(val, cache=args.cache), val.labels
    try:
        alpha = args.alpha if args.alpha == "auto" else float(args.alpha)
    except ValueError:
        raise InputError(f"--alpha must be 'auto' or a number, got '{args.alpha}'.") from None
    classifier = GDAClassifier(backbone, classnames, templates=args.templates, alpha=alpha,
                               random_state=args.seed, cache=args.cache)
    classifier.fit(views.X, views.y, X_val=X_val, y_val=y_val, groups=views.groups)
    log.info("GDA: %d support views of %d images, alpha = %g", len(views.X), len(support),
             classifier.alpha_)
    return classifier


# ---------------------------------------------------------------------- commands


def _embed(args) -> int:
    _check_output("--out", args.out, ".npz")
    backbone, images, report = _backbone(args), _images(args), EncodeReport()
    names = images.names()
    positions, parts = [], []
    for batch_positions, vectors in _stream(args, backbone, images, report):
        positions.append(batch_positions)
        parts.append(vectors)
    kept = np.concatenate(positions) if positions else np.empty(0, np.int64)
    arrays = {"embeddings": np.concatenate(parts) if parts else np.empty((0, 0), np.float32),
              "paths": np.array([names[i] for i in kept]),
              "fingerprint": np.array(backbone.fingerprint)}
    if images.labels is not None:
        arrays["labels"] = np.array([images.labels[i] for i in kept])
    with _atomic_output(args.out, binary=True) as handle:
        np.savez(handle, **arrays)
    print(f"wrote {len(kept)} embeddings of dimension {arrays['embeddings'].shape[1] if len(kept) else 0} "
          f"to {args.out}", file=sys.stderr)
    return _finish(report, len(images))


def _predict(args) -> int:
    _check_output("--out", args.out, ".csv", ".jsonl")
    if args.top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {args.top_k}.")
    backbone, images, report = _backbone(args), _images(args), EncodeReport()
    classnames = parse_classnames(args.classes) if args.classes else None
    classifier = _classifier(args, backbone, classnames)
    k = min(args.top_k, len(classifier.classes_))
    names = images.names()
    jsonl = args.out is not None and args.out.lower().endswith(".jsonl")
    with _atomic_output(args.out) as handle:
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
                labels = [str(classifier.classes_[j]) for j in order]
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
    return _finish(report, len(images))


def _evaluate(args) -> int:
    _check_output("--out", args.out, ".json")
    backbone, images, report = _backbone(args), _images(args), EncodeReport()
    if images.labels is None:
        raise InputError(f"'{images.source}' carries no labels: use a folder with one "
                         f"sub-folder per class, or a manifest with a label column.")
    classnames = (parse_classnames(args.classes) if args.classes
                  else [str(c) for c in Predictor.load(args.classifier, backbone).classes_]
                  if args.classifier else sorted(set(images.labels)))
    unknown = sorted(set(images.labels) - set(classnames))
    if unknown:
        raise InputError(f"labels not in the class list: {', '.join(unknown[:10])}"
                         f"{' ...' if len(unknown) > 10 else ''}.")
    classifier = _classifier(args, backbone, classnames)
    index = {c: i for i, c in enumerate(classnames)}
    explain, names = _explain_count(args, classifier), images.names()
    y_true, scores, explanations = [], [], []
    for positions, logits, vectors in _scored(args, backbone, classifier, images, report):
        y_true.extend(index[images.labels[p]] for p in positions)
        scores.append(logits)
        if explain:
            explanations.extend(
                {"path": names[p], "label": images.labels[p], "predicted": str(e.label),
                 "descriptors": e.descriptors, "similarities": [round(s, 6) for s in e.similarities]}
                for p, e in zip(positions, classifier.explain(vectors, explain)))
    status = _finish(report, len(images))
    if not scores:
        return status or 2
    logits = np.concatenate(scores)
    probabilities = softmax(logits.astype(np.float64), axis=1)
    summary = classification_summary(np.array(y_true), logits, probabilities, classifier.classes_)
    summary.update(method=f"classifier {args.classifier}" if args.classifier else args.method,
                   model=backbone.describe(), templates=args.templates,
                   skipped=[f.name for f in report.failures])
    if args.method == "descriptions" and not args.classifier:
        summary.update(descriptors=classifier.report_, prompt_style=args.prompt_style)
    if explain:
        summary["explanations"] = explanations
    print(f"images: {summary['n_images']}  top-1: {summary['top1']:.2%}  top-5: "
          f"{summary['top5']:.2%}  mean per-class: {summary['mean_per_class_accuracy']:.2%}  "
          f"ECE: {summary['ece']:.4f}")
    for name, accuracy in summary["per_class_accuracy"].items():
        print(f"  {name:<30} {'n/a' if accuracy is None else f'{accuracy:.2%}'}")
    if args.out:
        with _atomic_output(args.out) as handle:
            json.dump(summary, handle, indent=2)
    return status


def _fit(args) -> int:
    _check_output("--out", args.out, ".npz")
    backbone = _backbone(args)
    classnames = (parse_classnames(args.classes) if args.classes
                  else sorted(set(read_image_source(args.support).labels or [])))
    if not classnames:
        raise InputError(f"support images '{args.support}' carry no labels: use a folder with "
                         f"one sub-folder per class, or a manifest with a label column.")
    classifier = _fit_gda(args, backbone, classnames)
    classifier.save(args.out)
    print(f"wrote a GDA classifier ({len(classifier.classes_)} classes, "
          f"{int(classifier.class_counts_.sum())} support views, alpha {classifier.alpha_:g}) "
          f"to {args.out}", file=sys.stderr)
    return 0


def _frequency(args) -> int:
    _check_output("--out", args.out, ".json")
    table = load_synonyms(args.synonyms, args.classes)
    index = args.index or f"{args.captions[0]}.fts5.sqlite"
    with build_index(args.captions, index, column=args.column,
                     progress=not args.no_progress) as captions:
        metrics = mine_frequencies(table, captions, require=args.require,
                                   strategy=args.strategy, progress=not args.no_progress)
        n_captions = len(captions)
    with _atomic_output(args.out) as handle:
        json.dump(metrics, handle, indent=1)
    changed = sum(m["most_common_name"] != m["name"] for m in metrics.values())
    print(f"counted {sum(len(m['alternates']) for m in metrics.values())} synonyms of "
          f"{len(metrics)} classes in {n_captions} captions; {changed} classes take a synonym; "
          f"wrote {args.out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------- Schur complement


def _prompt_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True, metavar="FILE.csv",
                        help="CSV path,prompt: the prompt of each image (a header row is "
                             "optional; relative paths are relative to the CSV)")


def _read_prompts(path: str) -> dict[Path, str]:
    """path,prompt rows -> {resolved image path: prompt}."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --prompts '{path}': {exc}.") from None
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    column = 1
    if rows and rows[0][0].strip().lower() == "path":
        header = [c.strip().lower() for c in rows.pop(0)]
        if "prompt" not in header:
            raise InputError(f"--prompts '{path}' has a header without a 'prompt' column.")
        column = header.index("prompt")
    prompts = {}
    for number, row in enumerate(rows, 1):
        if len(row) <= column or not row[column].strip():
            raise InputError(f"--prompts '{path}' data row {number} has no prompt.")
        image = Path(row[0].strip())
        prompts[(image if image.is_absolute() else Path(path).parent / image).resolve()] = row[column].strip()
    if not prompts:
        raise InputError(f"--prompts '{path}' lists no images.")
    return prompts


def _prompts_of(names: Sequence[str], args) -> list[str]:
    """The --prompts entry of each image name, or an error naming the first image without."""
    table = _read_prompts(args.prompts)
    missing = [name for name in names if Path(name).resolve() not in table]
    if missing:
        raise InputError(f"{len(missing)} image(s) have no prompt in --prompts "
                         f"'{args.prompts}', e.g. '{missing[0]}'.")
    return [table[Path(name).resolve()] for name in names]


def _encode_with_prompts(args, backbone: Backbone) -> tuple[np.ndarray, list[str], ImageSet, int]:
    """IMAGES -> (embeddings (N, D) of the readable images, their names, the image set,
    the exit status of `_finish`)."""
    images, report = _images(args), EncodeReport()
    names = images.names()
    positions, parts = [], []
    for batch_positions, vectors in _stream(args, backbone, images, report):
        positions.append(batch_positions)
        parts.append(vectors)
    status = _finish(report, len(images))
    kept = np.concatenate(positions) if positions else np.empty(0, np.int64)
    vectors = np.concatenate(parts) if parts else np.empty((0, 0), np.float32)
    return vectors, [names[i] for i in kept], images, status


def _encode_prompts(args, backbone: Backbone, prompts: list[str]) -> np.ndarray:
    """(N, D) text embeddings, each distinct prompt encoded once."""
    unique, index = np.unique(prompts, return_inverse=True)
    return backbone.encode_texts(list(unique), cache=args.cache)[index]


@contextmanager
def _warnings_to_stderr():
    """Library warnings as one 'zeroshot-plus: warning:' line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        print(f"zeroshot-plus: warning: {warning.message}", file=sys.stderr)


def _sce(args) -> int:
    _check_output("--plot", args.plot, ".png")
    _check_output("--out", args.out, ".json")
    backbone = _backbone(args)
    images, names, _, status = _encode_with_prompts(args, backbone)
    if not names:
        return status
    prompts = _prompts_of(names, args)
    texts = _encode_prompts(args, backbone, prompts)
    with _warnings_to_stderr():
        result = sce_score(images, texts, kernel=args.kernel, sigma=args.sigma,
                           order=args.order, n_features=args.features or None, ridge=args.ridge,
                           random_state=args.seed, entropy=args.entropy, center=args.center)
    features = (f"{result.n_features} random features, sigma {args.sigma:g}, seed {args.seed}"
                if args.kernel == "gaussian" and args.features else
                f"exact kernel, sigma {args.sigma:g}" if args.kernel == "gaussian" else
                f"{result.n_features} dimensions")
    print(f"SCE: {result.score:.4f}  text-explained: {result.text_score:.4f}  "
          f"({result.n_samples} images, {len(set(prompts))} distinct prompts; "
          f"{args.kernel} kernel, {features}; {result.form} form; "
          f"explained share of the trace {result.explained_trace / result.image_trace:.1%})")
    if args.plot:
        with _atomic_output(args.plot, binary=True) as handle:
            save_spectrum_plot(result, handle)
    if args.out:
        report = {k: v.tolist() if isinstance(v, np.ndarray) else v
                  for k, v in vars(result).items() if k != "mode_scores"}
        report.update(model=backbone.describe(), images=names)
        with _atomic_output(args.out) as handle:
            json.dump(report, handle, indent=2)
    return status


def _edit(args) -> int:
    _check_output("--out", args.out, ".npz")
    if bool(args.images) == bool(args.embeddings):
        raise InputError("edit needs either IMAGES or --embeddings FILE.npz (one of the two).")
    backbone = _backbone(args)
    labels, status = None, 0
    if args.embeddings:
        try:
            with np.load(args.embeddings, allow_pickle=False) as data:
                images, names = data["embeddings"], [str(p) for p in data["paths"]]
                fingerprint = str(data["fingerprint"])
                labels = data["labels"] if "labels" in data.files else None
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"--embeddings '{args.embeddings}' is not a file written by "
                             f"`zeroshot-plus embed` ({exc}).") from None
        if fingerprint != backbone.fingerprint:
            raise InputError(f"--embeddings '{args.embeddings}' was made with another model "
                             f"than {backbone!r}; give the model options used by `embed`.")
    else:
        images, names, image_set, status = _encode_with_prompts(args, backbone)
        if not names:
            return status
        if image_set.labels is not None:
            position = {name: i for i, name in enumerate(image_set.names())}
            labels = np.array([image_set.labels[position[name]] for name in names])
    texts = _encode_prompts(args, backbone, _prompts_of(names, args))
    editor = SchurEditor(backbone, ridge=args.ridge, cache=args.cache)
    edited = editor.fit_transform(texts, images, prompts=args.remove)
    arrays = {"embeddings": edited, "paths": np.array(names),
              "fingerprint": np.array(backbone.fingerprint)}
    if labels is not None:
        arrays["labels"] = labels
    with _atomic_output(args.out, binary=True) as handle:
        np.savez(handle, **arrays)
    print(f"wrote {len(edited)} edited embeddings (removed "
          f"{repr(args.remove) if args.remove else 'each image' + chr(39) + 's prompt'}) to "
          f"{args.out}", file=sys.stderr)
    return status


def _describe(args) -> int:
    _check_output("--out", args.out, ".json")
    try:
        table = generate(parse_classnames(args.classes), args.kind, base_url=args.base_url,
                         model=args.model, api_key=args.api_key, cache_dir=args.cache,
                         n_items=args.items, context=args.context, concurrency=args.concurrency,
                         max_attempts=args.attempts, timeout=args.timeout,
                         progress=not args.no_progress)
    except KeyboardInterrupt:
        print("zeroshot-plus: interrupted; the answers received so far are cached, and the same "
              "command resumes from them", file=sys.stderr)
        return 130
    with _atomic_output(args.out) as handle:
        json.dump(table, handle, indent=1, ensure_ascii=False)
    print(f"wrote {args.kind} for {len(table)} classes to {args.out}", file=sys.stderr)
    return 0



def _match(args) -> int:
    _check_output("--out", args.out, ".csv", ".jsonl")
    if args.explain_dir is not None and not Path(args.explain_dir).is_dir():
        raise InputError(f"--explain-dir '{args.explain_dir}' is not an existing folder.")
    images, captions = read_pairs(args.pairs)
    if args.parser == "llm":
        from ..text.parsing import LLMParser
        parser = LLMParser()
    else:
        parser = "rules"
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    matcher = ComCLIPMatcher(_backbone(args), parser=parser, components=components,
                             weighting=args.weighting, mask_mode=args.mask_mode,
                             cache=args.cache).fit()
    explanations = matcher.explain(images, captions, pairs=[(i, i) for i in range(len(images))])
    jsonl = args.out is not None and args.out.lower().endswith(".jsonl")
    with _atomic_output(args.out) as handle:
        writer = None if jsonl else csv.writer(handle)
        if writer is not None:
            writer.writerow(["image", "caption", "score", "clip_score"])
        for explanation in explanations:
            if jsonl:
                handle.write(json.dumps(explanation.to_dict()) + "\n")
            else:
                writer.writerow([explanation.image, explanation.caption,
                                 round(explanation.score, 6), round(explanation.clip_score, 6)])
    if args.explain_dir is not None:
        for row, (image, explanation) in enumerate(zip(images, explanations), 1):
            draw_explanation(image, explanation, Path(args.explain_dir) / f"pair{row}.png")
    if args.retrieval:
        unique_images, unique_captions = list(dict.fromkeys(images)), list(dict.fromkeys(captions))
        relevant = np.zeros((len(unique_images), len(unique_captions)), bool)
        relevant[[unique_images.index(i) for i in images],
                 [unique_captions.index(c) for c in captions]] = True
        plain = ComCLIPMatcher(matcher.backbone, components=(), cache=args.cache)
        for name, scorer in (("ComCLIP", matcher), ("CLIP", plain)):
            scores = scorer.decision_function(unique_images, unique_captions)
            print(f"{name}: image-to-text R@1 {recall_at_k(scores, relevant, 1):.2%} R@5 "
                  f"{recall_at_k(scores, relevant, 5):.2%}  text-to-image R@1 "
                  f"{recall_at_k(scores.T, relevant.T, 1):.2%} R@5 "
                  f"{recall_at_k(scores.T, relevant.T, 5):.2%}", file=sys.stderr)
    return 0


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def _keep_freed_memory() -> None:
    """Let glibc's allocator keep freed memory for reuse in this process.

    By default, blocks above the mmap threshold (128 KiB, rising to at most 32 MiB) are mapped
    fresh from the system for every request and unmapped when freed. The encoder's activations
    (10-40 MiB per layer and batch) would be faulted in page by page on every batch: measured
    with ViT-B-32 on a CPU, that made the memory-bound steps (GELU, copies) about three times
    slower inside ``predict`` than in a warm loop. The command owns its process, so it trades a
    flat, higher RSS for that time. Other C libraries have no ``mallopt``; nothing changes there.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def run() -> None:
    """The console script: ``main``, then end the process without the interpreter's teardown.

    Every output file is closed (and renamed into place) before ``main`` returns, so after
    flushing the streams nothing is left to do; freeing the objects of torch, scipy and
    scikit-learn would add about 0.5 s, a sixth of a ``predict`` answered from the store.
    """
    _keep_freed_memory()
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: the output has nowhere to go
            pass
    os._exit(code)

