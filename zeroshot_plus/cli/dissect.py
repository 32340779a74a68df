"""`sce`, `edit` and `match`: what prompts explain in images, and image-caption matching."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.files import read_json, write_error
from ..data.names import path_text
from ..data.sources import ImageSet
from ..data.tables import image_prompts, read_pairs
from ..errors import InputError
from .common import (check_output, encode, finish, load_backbone, output, read_images,
                     warnings_to_stderr)

if TYPE_CHECKING:
    from ..encoders.backbone import Backbone


def sce(args: argparse.Namespace) -> int:
    check_output("--plot", args.plot, ".png")
    check_output("--out", args.out, ".json")
    images = read_images(args.images)
    prompts = image_prompts(args.prompts, images.names(), what="--prompts")
    from ..methods.schur import save_spectrum_plot, sce_score

    backbone = load_backbone(args)
    kept, vectors, status = _encode(args, backbone, images)
    if not len(kept):
        return status
    prompts = [prompts[i] for i in kept]
    texts = backbone.encode_texts(prompts, cache=args.cache)  # each distinct prompt once
    with warnings_to_stderr():
        result = sce_score(vectors, texts, kernel=args.kernel, sigma=args.sigma,
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
        with output(args.plot, binary=True) as handle:
            save_spectrum_plot(result, handle)
    if args.out:
        report = {k: v.tolist() if isinstance(v, np.ndarray) else v
                  for k, v in vars(result).items() if k != "mode_scores"}
        names = images.names()
        report.update(model=backbone.describe(), images=[path_text(names[i]) for i in kept])
        with output(args.out) as handle:
            json.dump(report, handle, indent=2)
    return status


def edit(args: argparse.Namespace) -> int:
    check_output("--out", args.out, ".npz")
    if bool(args.images) == bool(args.embeddings):
        raise InputError("edit needs either IMAGES or --embeddings FILE.npz (one of the two).")
    from ..data.embeddings import load_embeddings, save_embeddings

    if args.embeddings:
        loaded = load_embeddings(args.embeddings)
        names, vectors, labels = loaded.paths, loaded.embeddings, loaded.labels
    else:
        images = read_images(args.images)
        names = images.names()
    prompts = image_prompts(args.prompts, names, what="--prompts")
    from ..methods.schur import SchurEditor

    backbone, status = load_backbone(args), 0
    if args.embeddings and loaded.fingerprint != backbone.fingerprint:
        raise InputError(f"--embeddings '{args.embeddings}' was made with another model than "
                         f"{backbone!r}; give the model options used by `embed`.")
    if not args.embeddings:
        kept, vectors, status = _encode(args, backbone, images)
        if not len(kept):
            return status
        names, prompts = [names[i] for i in kept], [prompts[i] for i in kept]
        labels = None if images.labels is None else [images.labels[i] for i in kept]
    texts = backbone.encode_texts(prompts, cache=args.cache)  # each distinct prompt once
    editor = SchurEditor(backbone, texts=texts, prompts=args.remove, ridge=args.ridge,
                         cache=args.cache)
    edited = editor.fit_transform(vectors)
    save_embeddings(args.out, edited, names, backbone.fingerprint, labels)
    print(f"wrote {len(edited)} edited embeddings (removed "
          f"{repr(args.remove) if args.remove else 'each image' + chr(39) + 's prompt'}) to "
          f"{args.out}", file=sys.stderr)
    return status


def match(args: argparse.Namespace) -> int:
    check_output("--out", args.out, ".csv", ".jsonl")
    if args.explain_dir is not None and Path(args.explain_dir).exists() \
            and not Path(args.explain_dir).is_dir():
        raise InputError(f"--explain-dir '{args.explain_dir}' is a file, not a folder.")
    images, captions = read_pairs(args.pairs)  # a bad pairs file is refused before torch loads
    if args.rerank_top is not None and not args.retrieval:
        raise InputError("--rerank-top needs --retrieval.")
    grounding = _grounding_options(args)
    boxes = _read_boxes(args.boxes, images) if args.boxes else None
    from ..evaluation.protocols import distinct, rerank_recall, top_candidates
    from ..methods.comclip import ComCLIPMatcher, draw_explanation

    parser = _caption_parser(args)
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    if args.label_matcher == "llm":
        grounding["label_matcher"] = _llm_client(args, "LLMLabelMatcher")
    matcher = ComCLIPMatcher(load_backbone(args), parser=parser, components=components,
                             weighting=args.weighting, mask_mode=args.mask_mode,
                             embeddings=args.embeddings, cache=args.cache, **grounding).fit()
    explanations = matcher.explain(images, captions, boxes,
                                   pairs=[(i, i) for i in range(len(images))])
    jsonl = args.out is not None and args.out.lower().endswith(".jsonl")
    with output(args.out) as handle:
        writer = None if jsonl else csv.writer(handle)
        if writer is not None:
            writer.writerow(["image", "caption", "score", "clip_score"])
        for explanation in explanations:
            if jsonl:
                record = explanation.to_dict()
                handle.write(json.dumps({**record, "image": path_text(record["image"])}) + "\n")
            else:
                writer.writerow([path_text(explanation.image), explanation.caption,
                                 round(explanation.score, 6), round(explanation.clip_score, 6)])
    if args.explain_dir is not None:
        try:
            Path(args.explain_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(args.explain_dir, exc) from None
        for row, (image, explanation) in enumerate(zip(images, explanations), 1):
            draw_explanation(image, explanation, Path(args.explain_dir) / f"pair{row}.png")
    if args.retrieval:
        plain = ComCLIPMatcher(matcher.backbone, components=(), cache=args.cache)
        rows, columns = list(distinct(images)), list(distinct(captions))
        by_image = dict(zip(images, boxes)) if boxes is not None else {}
        row_boxes = [by_image[i] for i in rows] if boxes is not None else None
        clip = plain.decision_function(rows, columns)
        if args.rerank_top is None:
            _print_recall("ComCLIP", matcher.decision_function(rows, columns, row_boxes),
                          images, captions)
        else:  # ComCLIP scores only each caption's CLIP candidates
            pairs = np.array([(i, j) for j, best in
                              enumerate(top_candidates(clip, args.rerank_top)) for i in best])
            rescores = np.full(clip.shape, np.nan)
            rescores[pairs[:, 0], pairs[:, 1]] = matcher.score_pairs(
                [rows[i] for i in pairs[:, 0]], [columns[j] for j in pairs[:, 1]],
                None if row_boxes is None else [row_boxes[i] for i in pairs[:, 0]])
            recall = rerank_recall(clip, rescores, images, captions, top=args.rerank_top)
            print(f"ComCLIP re-ranking CLIP's top {args.rerank_top}: text-to-image "
                  f"R@1 {recall[1]:.2%} R@5 {recall[5]:.2%}", file=sys.stderr)
        _print_recall("CLIP", clip, images, captions)
    return 0


def _print_recall(name: str, scores: np.ndarray, images: list[str], captions: list[str]) -> None:
    from ..evaluation.protocols import retrieval_recall

    recall = retrieval_recall(scores, images, captions, ks=(1, 5))
    i2t, t2i = recall["image_to_text"], recall["text_to_image"]
    print(f"{name}: image-to-text R@1 {i2t[1]:.2%} R@5 {i2t[5]:.2%}  text-to-image "
          f"R@1 {t2i[1]:.2%} R@5 {t2i[5]:.2%}", file=sys.stderr)


def _grounding_options(args: argparse.Namespace) -> dict:
    """ComCLIPMatcher's grounding parameters from match's options, checked before torch loads."""
    if args.grounding != "detector":
        for option, value in (("--detector", args.detector),
                              ("--box-threshold", args.box_threshold),
                              ("--max-boxes", args.max_boxes)):
            if value is not None:
                raise InputError(f"{option} is used only with --grounding detector.")
    if args.label_matcher is not None and args.grounding != "file":
        raise InputError("--label-matcher is used only with --grounding file.")
    if args.grounding == "file" and not args.boxes:
        raise InputError("--grounding file needs --boxes: the detector's output file, or a "
                         "folder of one JSON {label: [boxes]} per image.")
    options = {"grounding": args.grounding}
    if args.grounding == "detector":
        from importlib.util import find_spec

        if find_spec("transformers") is None:
            raise InputError("--grounding detector needs Hugging Face transformers; install "
                             "it with pip install 'zeroshot_plus[detect]'.")
        options.update({k: v for k, v in (("detector", args.detector),
                                          ("box_threshold", args.box_threshold),
                                          ("max_boxes", args.max_boxes)) if v is not None})
    return options


def _read_boxes(path: str, images: list[str]) -> list[dict | None]:
    """--boxes FILE.json -> one {entity: box(es)} (or None) per pair's image; the file's image
    names are resolved like the pairs file's, relative to the file. --boxes DIR -> each
    image's DIR/<stem>.json (GRiT's layout), None where there is none."""
    if os.path.isdir(path):
        files = {image: Path(path) / f"{Path(image).stem}.json" for image in dict.fromkeys(images)}
        read = {image: read_json(file, "--boxes file") if file.is_file() else None
                for image, file in files.items()}
        for image, boxes in read.items():
            if boxes is not None and not isinstance(boxes, dict):
                raise InputError(f"--boxes file '{files[image]}' must be a JSON object "
                                 f"{{label: boxes}}.")
        return [read[image] for image in images]
    table = read_json(path, "--boxes file")
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise InputError(f"--boxes '{path}' must be a JSON object {{image: {{entity: box}}}}.")

    def key(image: str | Path) -> str:
        return os.path.normcase(os.path.abspath(image))

    base = Path(path).parent
    given = {key(name if os.path.isabs(name) else base / name): boxes
             for name, boxes in table.items()}
    unknown = set(given) - {key(image) for image in images}
    if unknown:
        name = next(n for n in table if key(n if os.path.isabs(n) else base / n) in unknown)
        raise InputError(f"--boxes '{path}' gives boxes for '{name}', which is not an image "
                         f"of the pairs file.")
    return [given.get(key(image)) for image in images]


def _caption_parser(args: argparse.Namespace) -> object:
    """"rules", or the LLM parser of match's --parser llm options (checked here, before
    torch loads)."""
    given = [option for option, value in (("--base-url", args.base_url),
                                          ("--api-key", args.api_key),
                                          ("--llm-model", args.llm_model)) if value is not None]
    if args.parser != "llm":
        if given and args.label_matcher != "llm":
            raise InputError(f"{given[0]} is used only with --parser llm or --label-matcher llm.")
        return "rules"
    return _llm_client(args, "LLMParser")


def _llm_client(args: argparse.Namespace, kind: str) -> object:
    """The LLMParser or LLMLabelMatcher of match's LLM options (answers cached in
    DIR/llm with --cache DIR)."""
    option = "--parser llm" if kind == "LLMParser" else "--label-matcher llm"
    if not (args.llm_model or os.environ.get("ZEROSHOT_PLUS_LLM_MODEL")):
        raise InputError(f"{option} needs the LLM's model name: give --llm-model or "
                         "ZEROSHOT_PLUS_LLM_MODEL (e.g. gpt-4o-mini, or the name your server "
                         "serves).")
    if kind == "LLMParser":
        from ..text.parsing import LLMParser as client
    else:
        from ..text.labels import LLMLabelMatcher as client

    return client(base_url=args.base_url, model=args.llm_model, api_key=args.api_key,
                  cache_dir=None if args.cache is None else Path(args.cache) / "llm")


def _encode(args: argparse.Namespace, backbone: Backbone, images: ImageSet
            ) -> tuple[np.ndarray, np.ndarray, int]:
    """(positions of the readable images, their embeddings (N, D), the exit status)."""
    from ..encoders.backbone import EncodeReport

    report = EncodeReport()
    kept, vectors = encode(args, backbone, images, report)
    return kept, vectors, finish(report, len(images))

