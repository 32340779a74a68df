"""The parser of the `zeroshot-plus` command line, and the check of what each method uses.

Importing this module loads no torch, open_clip, scipy or scikit-learn: the choices come from
light modules, so `--help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import math
import os

from ..choices import (AUGMIX_MODES, COMPONENTS, CTX_COUNTS, EMBEDDING_FORMS, ENTROPIES,
                       GROUNDINGS, KERNELS, MASK_MODES, PRECISIONS, RUNTIMES,
                       WEIGHTINGS)
from ..data.datasets import dataset_spec
from ..errors import InputError
from ..evaluation.protocols import METHODS as BENCHMARK_METHODS, PROTOCOLS
from ..text.descriptors import AGGREGATIONS, EMPTY_DESCRIPTORS, NAME_POSITIONS, PROMPT_STYLES
from ..text.frequency import CAPTION_COLUMN, STRATEGIES
from ..text.llm import KINDS
from ..text.synonyms import NAME_TYPES, REAL_PROMPT_STYLES

METHODS = ("zeroshot", "gda", "real", "descriptions", "tpt")
TEMPLATE_STYLES = ("gda", "coop", "clip", "real")


def _count(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got '{text}'")
    return value


def _fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got '{text}'") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got '{text}'")
    return value


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
    group.add_argument("--runtime", choices=RUNTIMES,
                       help="what runs the image tower: torch (default; a --classifier fitted "
                            "with onnxruntime-int8 keeps it); on the CPU in fp32, openvino or "
                            "onnxruntime (compiled "
                            "once into DIR/compiled with --cache DIR, else "
                            "~/.cache/zeroshot_plus/compiled; checked against torch, same "
                            "embeddings within float rounding), or onnxruntime-int8 (faster, not "
                            "exact, stored apart)")
    group.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    group.add_argument("--workers", type=int,
                       help="image-decoding processes that run ahead of the encoder; 0 decodes "
                            "in this process, one idle-priority thread a batch ahead (default: 0 "
                            "on CPU, 4 on CUDA)")
    group.add_argument("--jpeg-draft", action="store_true",
                       help="decode large JPEGs at a reduced size (PIL draft mode): faster, but "
                            "embeddings differ slightly from open_clip's preprocessing "
                            "(default: off, or as recorded in --classifier)")
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
    parser.add_argument("--templates", metavar="NAME|FILE",
                        help="prompt templates: openai_imagenet (80, default), simple_imagenet (7), "
                             "photo ('a photo of a {}.'), or a file with one template per line")
    parser.add_argument("--method", choices=METHODS,
                        help="classification method (default: zeroshot)")
    parser.add_argument("--classifier", metavar="FILE",
                        help="a classifier written by `zeroshot-plus fit`: its model, classes and "
                             "weights are used (the model options are taken from the file)")
    parser.add_argument("--synonyms", metavar="FILE",
                        help="--method real: a REAL metrics file (most_common_name per class id, "
                             "rows in --classes order) or a JSON map {class: synonym}")
    _real_options(parser)
    _description_options(parser)
    _few_shot_options(parser, support=True)
    _tpt_options(parser)


def _description_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("classification by description (--method descriptions)")
    group.add_argument("--descriptors", metavar="FILE",
                       help="JSON {class: [descriptor, ...]}: released DCLIP descriptors, CuPL "
                            "sentences, or `zeroshot-plus describe` output; without --classes "
                            "its keys are the classes (also --method real with --real-prompts)")
    group.add_argument("--prompt-style", choices=PROMPT_STYLES,
                       help="menon (default): the paper's '{class}, which is/has {descriptor}' "
                            "rule with its quirks; corrected: the same rule on whole words; "
                            "plain: '{class}, {descriptor}'; sentences: each entry is a whole "
                            "prompt (CuPL files)")
    group.add_argument("--name-position", choices=NAME_POSITIONS,
                       help="where the class name goes: prepend (default: PREFIX class BETWEEN "
                            "clause SUFFIX), append (clause BETWEEN class, as the reference's "
                            "append mode) or none (the clause alone)")
    group.add_argument("--prefix", metavar="TEXT",
                       help="text before the class name (default: none)")
    group.add_argument("--between", metavar="TEXT",
                       help="text between the class name and the descriptor (default: ', ')")
    group.add_argument("--suffix", metavar="TEXT",
                       help="text after each descriptor prompt and after a bare class name; "
                            "'.' is the reference's setting for ImageNet (default: none)")
    group.add_argument("--empty-descriptors", choices=EMPTY_DESCRIPTORS,
                       help="a class with no descriptors is scored by its name (default), or by "
                            "the one descriptor '' (blank: the reference's 'k, which has ')")
    group.add_argument("--aggregation", choices=AGGREGATIONS,
                       help="how a class's descriptor similarities make its score: mean "
                            "(default, the paper), max or sum")
    group.add_argument("--explain", type=int, nargs="?", const=3, metavar="N",
                       help="also give the N (default 3) descriptors of the predicted class "
                            "most similar to each image: extra columns of predict, and per "
                            "image in evaluate's --out JSON")


def _real_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("REAL-Prompt (--method real)")
    group.add_argument("--name-type", choices=NAME_TYPES,
                       help="names in the prompts: most_common_name (default), name (the class "
                            "names), or alternates (every synonym, averaged into one weight)")
    group.add_argument("--real-prompts", choices=REAL_PROMPT_STYLES,
                       help="templates (default: --templates filled with the names); dclip or "
                            "cupl: the --descriptors prompts or CuPL sentences with each class "
                            "name replaced by its chosen name")


def _tpt_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "test-time prompt tuning (--method tpt)",
        "The context of one prompt is tuned on each image: 'a photo of a {}.' by default, or "
        "the one template of --templates; with --synonyms the prompts use REAL's names.")
    group.add_argument("--tpt-views", type=int, metavar="N",
                       help="augmented views per image (default: 63; 64 with --diffusion-views)")
    group.add_argument("--tpt-steps", type=int, metavar="K",
                       help="AdamW steps per image (default: 1; 4 with --diffusion-views)")
    group.add_argument("--tpt-lr", type=float, metavar="LR",
                       help="AdamW learning rate (default: 5e-3)")
    group.add_argument("--tpt-select", type=float, metavar="P",
                       help="fraction of the views kept by confidence selection (default: 0.1; "
                            "0.3 with --diffusion-views)")
    group.add_argument("--augmix", nargs="?", const="torchvision", choices=AUGMIX_MODES,
                       help="AugMix views (the paper uses them on fine-grained data sets): "
                            "torchvision (the flag alone: torchvision's AugMix at severity 1, "
                            "geometric operations at magnitude 0) or reference (TPT's own "
                            "operations at levels U(0.1, 1), mixed as normalised tensors)")
    group.add_argument("--ctx-init", metavar="WORDS|FILE",
                       help="initial context: words ('a_photo_of_a' or 'a photo of a', the "
                            "default), or a CoOp checkpoint whose learned context (state_dict "
                            "'ctx') starts the tuning, as TPT's --load")
    group.add_argument("--ctx-count", choices=CTX_COUNTS,
                       help="context vectors of --ctx-init words: tokens (default: every BPE "
                            "token is tuned) or words (the reference: one per word)")
    group.add_argument("--n-ctx", type=int, metavar="N",
                       help="a random initial context of N vectors instead of words")
    group.add_argument("--diffusion-views", metavar="DIR",
                       help="DiffTPT: generated variations {stem}_{i}.jpg of each image "
                            "CLASS/{stem}.*, in DIR or in DIR/CLASS; the views whose logits are "
                            "the 80%% most similar to the original's are kept, then the 30%% "
                            "most confident of them")
    group.add_argument("--diffusion-count", type=int, metavar="N",
                       help="generated views read per image, the first N by i (default: 63, "
                            "DiffTPT's)")
    group.add_argument("--tpt-cosine", type=float, metavar="P",
                       help="DiffTPT: fraction of the generated and augmented views kept by "
                            "the logit-cosine filter (default: 0.8)")


def _few_shot_options(parser: argparse.ArgumentParser, support: bool) -> None:
    group = parser.add_argument_group("few-shot (--method gda)")
    if support:
        group.add_argument("--support", metavar="DIR",
                           help="labelled support images (class sub-folders, or a manifest); "
                                "classes without support images are predicted from their text")
    group.add_argument("--shots", type=int, metavar="K",
                       help="support images per class, sampled with --seed (default: all)")
    group.add_argument("--views", type=int,
                       help="augmented views per support image (default: 10)")
    group.add_argument("--alpha", metavar="auto|NUMBER",
                       help="weight of the GDA term against the zero-shot logits; auto (default): "
                            "chosen on --val, else by 5-fold cross-validation on the support")
    group.add_argument("--val", metavar="IMAGES", help="labelled images to choose alpha on")
    group.add_argument("--seed", type=int,
                       help="seed of the shot sampling, the views and the folds"
                            + (", or of TPT's views" if support else "") + " (default: 0)")


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
    _engine_options(embed, "IMAGES may also be WebDataset .tar shards (img2dataset's "
                           "KEY.jpg + KEY.txt), read by the Ray engine only")

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
    fit.add_argument("--templates", metavar="NAME|FILE",
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
                                ".parquet (needs pyarrow), .jsonl (a --column field)")
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
    _engine_options(frequency, "one Ray task per caption file")
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
    describe.add_argument("--items", type=_count, metavar="N",
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
    describe.add_argument("--concurrency", type=_count, default=4,
                          help="requests in flight at once (default: 4)")
    describe.add_argument("--attempts", type=_count, default=6,
                          help="requests per class before giving up on it (default: 6)")
    describe.add_argument("--timeout", type=_seconds, default=60.0,
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
                       help="write each pair's regions drawn on its image as DIR/pairN.png "
                            "(DIR is created if missing)")
    match.add_argument("--parser", choices=("rules", "llm"), default="rules",
                       help="caption parser: rules (default, offline) or llm (an OpenAI-"
                            "compatible endpoint; answers cached in DIR/llm with --cache DIR, "
                            "else in ~/.cache/zeroshot_plus/llm)")
    match.add_argument("--base-url", metavar="URL",
                       help="with --parser llm or --label-matcher llm: OpenAI-compatible "
                            "endpoint (default: $OPENAI_BASE_URL, else OpenAI)")
    match.add_argument("--api-key", metavar="KEY",
                       help="with --parser llm or --label-matcher llm: API key (default: "
                            "$OPENAI_API_KEY; a --base-url server may need none)")
    match.add_argument("--llm-model", metavar="NAME",
                       help="with --parser llm or --label-matcher llm: LLM model name (default: "
                            "$ZEROSHOT_PLUS_LLM_MODEL)")
    match.add_argument("--components", default=",".join(COMPONENTS), metavar="LIST",
                       help="sub-images to add: entities,relations (default); '' = plain CLIP")
    match.add_argument("--weighting", choices=WEIGHTINGS, default="sum",
                       help="sum (default: the paper's s_i / sum s) or softmax")
    match.add_argument("--mask-mode", choices=MASK_MODES, default="blackout",
                       help="blackout (default: the paper's full frame, black outside the "
                            "region) or crop")
    match.add_argument("--embeddings", choices=EMBEDDING_FORMS, default="normalized",
                       help="normalized (default: unit embeddings, the reference's Winoground "
                            "path) or raw (raw encoder outputs in the weights and the sum, its "
                            "ComVG / SVO / Flickr30K path)")
    match.add_argument("--boxes", metavar="FILE.json|DIR",
                       help="entity boxes per image: JSON {image: {entity: [x0, y0, x1, y1] or "
                            "a list of such boxes (their union)}}, images named as in PAIRS.csv "
                            "(relative paths relative to FILE.json), or a folder of one JSON "
                            "{entity: boxes} per image named <image stem>.json (GRiT's output "
                            "layout); entities without a box are grounded by --grounding. With "
                            "--grounding file the keys are a detector's labels")
    match.add_argument("--grounding", choices=GROUNDINGS, default="grid",
                       help="how entities find their region: grid (default: the most similar "
                            "of fixed candidate regions), detector (an open-vocabulary detector "
                            "queried with the entity's words; needs zeroshot_plus[detect]) or "
                            "file (the --boxes labels of a detector's output, GRiT's "
                            "{label: [boxes]}, matched to entities)")
    match.add_argument("--detector", metavar="ID|PATH",
                       help="with --grounding detector: Hugging Face id of an OWLv2 / OWL-ViT "
                            "model (default: google/owlv2-base-patch16-ensemble), or its folder "
                            "(save_pretrained) to work offline")
    match.add_argument("--box-threshold", type=_fraction, metavar="S",
                       help="with --grounding detector: lowest score of a kept box (default: 0.1)")
    match.add_argument("--max-boxes", type=_count, metavar="N",
                       help="with --grounding detector: boxes per entity, their union its "
                            "region (default: 3)")
    match.add_argument("--label-matcher", choices=("rules", "llm"),
                       help="with --grounding file: how labels are matched to entities: rules "
                            "(default: equal words, else the same head noun) or llm (the "
                            "--base-url / --api-key / --llm-model endpoint; answers cached "
                            "like --parser llm's)")
    match.add_argument("--rerank-top", type=_count, metavar="N",
                       help="with --retrieval: ComCLIP re-ranks CLIP's N best images per "
                            "caption (the paper's Flickr30K protocol: 10) instead of scoring "
                            "every pair; prints text-to-image R@1/5")
    _benchmark_parser(commands, model)
    return parser


def _benchmark_parser(commands, model: argparse.ArgumentParser) -> None:
    benchmark = commands.add_parser(
        "benchmark", parents=[model], help="run the papers' protocols over standard data sets",
        description="Run methods x protocols x shots x seeds over standard data sets: each data "
                    "set is embedded once into the store (--cache, default OUT/store), every "
                    "method and seed reuses the embeddings, and finished runs are not redone "
                    "when the command is run again. Writes OUT/records.jsonl (one record per "
                    "run), OUT/summary.md and OUT/summary.csv (mean and std over seeds), "
                    "OUT/clip_benchmark/*.json and OUT/plots/*.png.")
    benchmark.add_argument("--root", required=True, metavar="DATA",
                           help="folder holding the data sets in the CoOp layout")
    benchmark.add_argument("--datasets", required=True, metavar="a,b",
                           help="data sets to run on (comma list)")
    benchmark.add_argument("--methods", default="zeroshot", metavar="a,b",
                           help=f"methods: {', '.join(BENCHMARK_METHODS)} (default: zeroshot)")
    benchmark.add_argument("--protocols", default="zeroshot", metavar="a,b",
                           help=f"protocols: {', '.join(PROTOCOLS)} (default: zeroshot)")
    benchmark.add_argument("--shots", default="1,2,4,8,16", metavar="K,K",
                           help="support images per class of the few-shot runs "
                                "(default: 1,2,4,8,16)")
    benchmark.add_argument("--seeds", default="1,2,3", metavar="S,S",
                           help="sampling seeds of the few-shot runs (default: 1,2,3)")
    benchmark.add_argument("--out", required=True, metavar="DIR", help="output folder")
    benchmark.add_argument("--templates", choices=TEMPLATE_STYLES, default="gda",
                           help="templates of zeroshot and gda: gda (default; CoOp's one prompt "
                                "per data set, 7 for the ImageNet family), coop (CoOp's one "
                                "prompt), clip (the CLIP paper's ensembles) or real (REAL's); "
                                "real always uses its own")
    benchmark.add_argument("--descriptors", action="append", metavar="DATASET=FILE",
                           help="--methods descriptions: the descriptor JSON of a data set "
                                "(repeat the option for several)")
    benchmark.add_argument("--real-metrics", action="append", metavar="DATASET=FILE",
                           help="--methods real and --protocols headtail: the REAL metrics file "
                                "of a data set (repeat the option for several)")
    benchmark.add_argument("--views", type=_count, default=10,
                           help="augmented views per support image (default: 10)")
    benchmark.add_argument("--tpt-views", type=_count, default=63, metavar="N",
                           help="TPT's augmented views per test image (default: 63)")
    _engine_options(benchmark, "ray embeds the test and validation sets on the cluster; "
                               "support views and TPT's views are encoded here")


def _engine_options(parser: argparse.ArgumentParser, note: str) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help=f"local (default): this process; ray: a Ray cluster (needs the "
                            f"distributed extra); {note}")
    group.add_argument("--ray-address", metavar="ADDRESS",
                       help="--engine ray: the cluster to join, e.g. auto or ray://HOST:10001 "
                            "(default: start a local Ray runtime)")


def _prompt_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True, metavar="FILE.csv",
                        help="CSV path,prompt (a header row is optional) or JSONL: the prompt "
                             "of each image; relative paths are relative to the file")


# option -> the methods that use it; any other method, or --classifier, refuses it
_METHOD_OPTIONS = {
    "--templates": ("zeroshot", "gda", "real", "tpt"),
    "--synonyms": ("real", "tpt"),
    "--descriptors": ("descriptions", "real"), "--prompt-style": ("descriptions",),
    "--explain": ("descriptions",), "--name-position": ("descriptions",),
    "--prefix": ("descriptions",), "--between": ("descriptions",), "--suffix": ("descriptions",),
    "--empty-descriptors": ("descriptions",), "--aggregation": ("descriptions",),
    "--name-type": ("real",), "--real-prompts": ("real",),
    "--support": ("gda",), "--shots": ("gda",), "--views": ("gda",), "--alpha": ("gda",),
    "--val": ("gda",), "--seed": ("gda", "tpt"),
    "--tpt-views": ("tpt",), "--tpt-steps": ("tpt",), "--tpt-lr": ("tpt",),
    "--tpt-select": ("tpt",), "--augmix": ("tpt",), "--ctx-init": ("tpt",),
    "--ctx-count": ("tpt",), "--n-ctx": ("tpt",), "--diffusion-views": ("tpt",),
    "--diffusion-count": ("tpt",), "--tpt-cosine": ("tpt",),
}
_TEMPLATE_METHODS = ("zeroshot", "gda", "real")  # and `fit`, whose GDA has a zero-shot part
# what each method cannot do without
_NEEDS = {"gda": ("support", "--method gda needs --support DIR (labelled support images)."),
          "real": ("synonyms", "--method real needs --synonyms FILE (a REAL metrics file or a "
                               "{class: synonym} map)."),
          "descriptions": ("descriptors", "--method descriptions needs --descriptors FILE (JSON "
                                          "{class: [descriptor, ...]}).")}
# what an option left out means (argparse's default is None, to tell it was given)
_DEFAULTS = {"method": "zeroshot", "prompt_style": "menon", "views": 10, "alpha": "auto",
             "seed": 0, "name_position": "prepend", "prefix": "", "between": ", ", "suffix": "",
             "empty_descriptors": "name", "aggregation": "mean",
             "name_type": "most_common_name", "real_prompts": "templates"}


def resolve_options(args: argparse.Namespace) -> argparse.Namespace:
    """Refuse, with one sentence, an option that the chosen method (or the --classifier file)
    does not use and a method without what it needs; then fill in the defaults."""
    if hasattr(args, "method"):  # predict and evaluate
        _check_method_options(args)
    if args.command == "benchmark":
        _check_benchmark(args)
    for name, value in _DEFAULTS.items():
        if getattr(args, name, "") is None:
            setattr(args, name, value)
    if (getattr(args, "templates", "") is None and not getattr(args, "classifier", None)
            and getattr(args, "method", "zeroshot") in _TEMPLATE_METHODS):
        args.templates = "openai_imagenet"  # TPT's own default is its one prompt
    if getattr(args, "alpha", "auto") != "auto":
        try:
            args.alpha = float(args.alpha)
        except ValueError:
            raise InputError(f"--alpha must be 'auto' or a number, got '{args.alpha}'.") from None
    if getattr(args, "explain", None) is not None and args.explain < 1:
        raise InputError(f"--explain must be at least 1, got {args.explain}.")
    if getattr(args, "ray_address", None) and args.engine != "ray":
        raise InputError("--ray-address needs --engine ray.")
    if getattr(args, "engine", "local") == "ray" and getattr(args, "index", None):
        raise InputError("--index names the local engine's FTS5 index; --engine ray counts "
                         "without one.")
    return args


def _check_real_options(args: argparse.Namespace) -> None:
    """--real-prompts dclip/cupl and --descriptors go together, with one name per class."""
    style = args.real_prompts or _DEFAULTS["real_prompts"]
    if style == "templates" and args.descriptors is not None:
        raise InputError("--descriptors with --method real needs --real-prompts dclip or cupl.")
    if style != "templates" and args.descriptors is None:
        raise InputError(f"--real-prompts {style} needs --descriptors FILE (the "
                         f"{'DCLIP descriptors' if style == 'dclip' else 'CuPL sentences'}).")
    if style != "templates" and args.name_type == "alternates":
        raise InputError(f"--real-prompts {style} replaces each class name by one name: use "
                         f"--name-type most_common_name or name, not alternates.")


def _check_method_options(args: argparse.Namespace) -> None:
    values = {option: getattr(args, option[2:].replace("-", "_")) for option in _METHOD_OPTIONS}
    given = [option for option, value in values.items()
             if value is not None and value is not False]  # 0 is given; False: a flag left out
    if args.classifier:
        # --explain stays: it explains what a saved descriptions classifier predicts
        refused = ["--method"] * (args.method is not None) + [
            option for option in given if option != "--explain"]
        if refused:
            raise InputError(f"{refused[0]} cannot be used with --classifier: the classifier "
                             f"file brings its method and its settings.")
        return
    method = args.method or _DEFAULTS["method"]
    for option in given:
        if method not in _METHOD_OPTIONS[option]:
            users = " or ".join(", ".join(_METHOD_OPTIONS[option]).rsplit(", ", 1))
            raise InputError(f"{option} needs --method {users}; --method {method} does not "
                             f"use it.")
    if method in _NEEDS and getattr(args, _NEEDS[method][0]) is None:
        raise InputError(_NEEDS[method][1])
    contexts = [option for option in ("--templates", "--ctx-init", "--n-ctx")
                if getattr(args, option[2:].replace("-", "_")) is not None]
    if method == "tpt" and len(contexts) > 1:
        raise InputError(f"{contexts[0]} and {contexts[1]} both set TPT's initial context; "
                         f"give one of them.")
    for option in ("--diffusion-count", "--tpt-cosine"):
        if getattr(args, option[2:].replace("-", "_")) is not None and args.diffusion_views is None:
            raise InputError(f"{option} needs --diffusion-views DIR.")
    if method == "real":
        _check_real_options(args)
    if args.command == "predict" and args.classes is None and method != "descriptions":
        raise InputError("predict needs --classes (or --classifier FILE).")


def _check_benchmark(args: argparse.Namespace) -> None:
    """The benchmark's lists as Python values, each name and number checked."""
    args.datasets = list(dict.fromkeys(  # canonical names; an unknown one is one sentence
        dataset_spec(name).name for name in _names("--datasets", args.datasets, None)))
    args.methods = _names("--methods", args.methods, BENCHMARK_METHODS)
    args.protocols = _names("--protocols", args.protocols, PROTOCOLS)
    args.shots = _integers("--shots", args.shots, 1)
    args.seeds = _integers("--seeds", args.seeds, 0)
    for option in ("--descriptors", "--real-metrics"):
        name = option[2:].replace("-", "_")
        setattr(args, name, _dataset_files(option, getattr(args, name) or [], args.datasets))


def _names(option: str, text: str, known) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError(f"{option} names nothing; give a comma list.")
    for name in names:
        if known is not None and name not in known:
            raise InputError(f"{option}: unknown name '{name}'; choose among {', '.join(known)}.")
    return list(dict.fromkeys(names))


def _integers(option: str, text: str, low: int) -> list[int]:
    values = []
    for item in text.split(","):
        try:
            value = int(item)
        except ValueError:
            value = None
        if value is None or value < low:
            raise InputError(f"{option} must be a comma list of integers >= {low}, got '{text}'.")
        values.append(value)
    return list(dict.fromkeys(values))


def _dataset_files(option: str, pairs: list[str], datasets: list[str]) -> dict[str, str]:
    files = {}
    for pair in pairs:
        name, _, path = pair.partition("=")
        if not path:
            raise InputError(f"{option} takes DATASET=FILE, got '{pair}'.")
        name = dataset_spec(name).name
        if name not in datasets:
            raise InputError(f"{option} names '{name}', which is not among --datasets.")
        if not os.path.isfile(path):
            raise InputError(f"{option}: file '{path}' does not exist.")
        files[name] = path
    return files
