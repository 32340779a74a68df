"""ComCLIP: compositional image–text matching from sub-images, without training.

Jiang et al., "ComCLIP: Training-Free Compositional Image and Text Matching" (NAACL 2024).
For an image I and a caption s parsed into entities e (with attributes) and relations
(subject, predicate, object):

    1. each entity is grounded in a region R_e: user-supplied boxes (several boxes: their
       union, as the reference's dense-caption regions of one entity), else by ``grounding``:
       "grid": the candidate region (full image, centre, halves, a 2x2 and 3x3 grid) whose
       sub-image is most similar to the entity's words, if it beats the full image by
       ``margin`` (else the full image); "detector": the union of the boxes an
       open-vocabulary detector (OWLv2 / OWL-ViT, ``encoders.detector``) finds for the
       entity's words, up to ``max_boxes`` scoring at least ``box_threshold`` (none: the full
       image); "file": the union of the boxes of a detector output file's labels (GRiT's
       ``{label: [boxes]}``, the reference's route) that refer to the entity, by
       ``label_matcher`` (words, or an LLM; ``text.labels``; none: the full image)
    2. a relation's region is the union of its subject's and object's regions
    3. sub-image i = I with everything outside R_i blacked out (full frame kept), or cropped
       to R_i (``mask_mode="crop"``); v_i = f(sub-image i), t_i = g(its words): the entity's
       "<attributes> <name>", the relation's predicate
    4. s_i = cos(v_i, t_i);  w_i = s_i⁺ / Σ_j s_j⁺ ("sum", the paper's normalisation; s⁺ =
       max(s, 0) guards against the blow-up of a sum near zero, uniform when all s_i ≤ 0)
       or w = softmax(s / τ) ("softmax")
    5. v = f(I) + Σ_i w_i v_i,  score(I, s) = cos(v, g(s))

f and g are unit embeddings (the reference's Winoground path); with ``embeddings="raw"`` they
are the encoders' raw outputs, as in its ComVG, SVO-Probes and Flickr30K scripts: s_i is the
raw dot product, v sums raw image embeddings and only the final cosine normalises.

This covers the reference's three scripts: its ComVG, SVO-Probes and Flickr30K code
(OpenAI CLIP) computes s_i = g(t_i)ᵀ v_i on raw embeddings, v = v_global + Σ s_i/Σs · v_i raw,
and the cosine of v with the caption, which is ``embeddings="raw"`` with ``weighting="sum"``;
the two agree whenever every s_i > 0 (raw CLIP dot products of an image and matching words
are), and where the reference's s/Σs would turn negative or blow up, s⁺ keeps the weights a
convex combination.

Integer boxes: a box [x0, y0, x1, y1] covers the pixels x0 <= x < x1, y0 <= y < y1 (end
exclusive, numpy slices, PIL's ``crop``). A float box (a detector's) becomes
(floor x0, floor y0, ceil x1, ceil y1), clipped to the image. The reference masks with PIL's
``ImageDraw.rectangle``, whose rectangle is inclusive and whose float corners are truncated:
it covers floor(x0) <= x <= floor(x1). For a non-integral x1 that is the same pixels; for an
integral x1 (and y1) PIL covers one more column (row): give x1 + 1 to reproduce it.
``draw_explanation`` draws (x0, y0, x1 - 1, y1 - 1), the box's last pixels.

With no sub-image the score is plain CLIP's cos(f(I), g(s)). The image pipeline encodes the
sub-images in two rounds: each distinct image with, where an entity needs grounding, its
candidate regions; then the regions of the pairs not yet encoded. Each sub-image is encoded
once, and kept in the embedding store (keyed by image content, mask mode and region) when
``cache`` is given; all texts go through one text batch.
"""

from __future__ import annotations

import hashlib
import logging
import numbers
import os
from dataclasses import asdict, dataclass, field
from typing import Container, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw
from sklearn.base import BaseEstimator

from ..choices import COMPONENTS, EMBEDDING_FORMS, GROUNDINGS, MASK_MODES, WEIGHTINGS
from ..data.files import atomic_output
from ..data.images import content_keys, open_image
from ..data.sources import ImageInput, image_name, read_image_source, takes_images
from ..encoders.backbone import Backbone
from ..encoders.pipeline import Picture, View, ViewMaker, encode_views
from ..errors import InputError
from ..text.labels import match_labels
from ..text.parsing import Parse, make_parser
from .base import is_number

log = logging.getLogger(__name__)

_MAX_GRID = 10  # a g x g grid adds g² candidate regions per image to encode
Box = tuple[int, int, int, int]
Region = tuple[Box, ...]   # a union of boxes, in pixels of the original image
Boxes = Sequence[Mapping[str, Sequence[float] | Sequence[Sequence[float]]] | None] | None


@dataclass
class SubImage:
    """One sub-image of a pair: what it shows, where, and how much it counts."""

    kind: str             # "entity" or "relation"
    text: str             # the words it is compared with
    region: list[list[int]]   # its boxes [x0, y0, x1, y1] (pixels, end exclusive)
    source: str           # "user", "proposal", "detector", "file", "full image" or "union"
    similarity: float     # s_i = cos(v_i, t_i)
    weight: float         # w_i
    scores: list[float | None] = field(default_factory=list)  # the detector's, per box
    labels: list[str | None] = field(default_factory=list)    # the file's labels, per box


@dataclass(frozen=True)
class Grounding:
    """Where a sub-image is: its region, how it was found, and per box the detector's score
    or the detector file's label (empty when none has one)."""

    region: Region
    source: str
    scores: tuple[float | None, ...] = ()
    labels: tuple[str | None, ...] = ()


@dataclass
class PairExplanation:
    """Why an image and a caption got their score."""

    image: str
    caption: str
    score: float          # ComCLIP
    clip_score: float     # plain CLIP cos(f(I), g(s))
    entities: list[str]
    relations: list[tuple[str, str, str]]
    subimages: list[SubImage] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class ComCLIPMatcher(BaseEstimator):
    """Score images against captions by CLIP plus weighted sub-images of the caption's parts.

    Parameters
    ----------
    backbone : the Backbone whose encoders are used.
    parser : "rules" (``zeroshot_plus.parsing.parse_caption``) or a callable caption ->
        Parse, e.g. ``zeroshot_plus.parsing.LLMParser(...)``.
    components : which sub-images to add: "entities", "relations"; () gives plain CLIP.
    weighting : "sum" (w_i = s_i⁺/Σs⁺, the paper's) or "softmax" (softmax(s/temperature)).
    temperature : τ of the softmax weighting.
    mask_mode : "blackout" (the paper's: full frame, black outside the region) or "crop".
    grid : grid sizes of the candidate regions (besides the full image, its centre and halves).
    margin : how much a candidate's similarity to an entity must exceed the full image's.
    grounding : how entities without a user box find their region: "grid" (the candidate
        regions, no extra model), "detector" (an open-vocabulary detector queried with the
        entity's words; needs the ``[detect]`` extra) or "file" (the ``boxes`` of each image
        are a detector output file's ``{label: boxes}``, matched to entities).
    detector : with "detector": a ``zeroshot_plus.encoders.detector.Detector``, or the hub id
        or local folder of an OWLv2 / OWL-ViT model (default
        "google/owlv2-base-patch16-ensemble"; offline, a folder written by save_pretrained).
    box_threshold : with "detector": the lowest detector score a box needs.
    max_boxes : with "detector": at most this many boxes per entity (after non-maximum
        suppression), their union its region.
    label_matcher : with "file": "rules" (``text.labels.match_labels``: equal words, else the
        same head noun) or a callable (caption, entity words, labels) -> matching labels,
        e.g. ``zeroshot_plus.text.labels.LLMLabelMatcher(...)``.
    embeddings : "normalized" (unit embeddings, the reference's Winoground path) or "raw" (the
        encoders' raw outputs in s_i and in the sum, its ComVG / SVO / Flickr30K path; the
        candidate search still compares unit vectors). Raw image embeddings are not kept in
        the store, which holds unit vectors.
    cache : embedding store directory for sub-image and text embeddings, and detections.

    Nothing is learnt: ``fit`` checks the parameters and records ``parser_``, the callable
    caption -> Parse in use; the scoring methods work fitted or not. X are images (paths, PIL
    images, a folder or a manifest) and captions are strings, not 2-D arrays.
    """

    def __init__(self, backbone: Backbone | None = None, *, parser="rules",
                 components: Sequence[str] = COMPONENTS, weighting: str = "sum",
                 temperature: float = 0.01, mask_mode: str = "blackout",
                 grid: Sequence[int] = (2, 3), margin: float = 0.0,
                 embeddings: str = "normalized", grounding: str = "grid", detector=None,
                 box_threshold: float = 0.1, max_boxes: int = 3, label_matcher="rules",
                 cache=None):
        self.backbone = backbone
        self.parser = parser
        self.components = components
        self.weighting = weighting
        self.temperature = temperature
        self.mask_mode = mask_mode
        self.grid = grid
        self.margin = margin
        self.embeddings = embeddings
        self.grounding = grounding
        self.detector = detector
        self.box_threshold = box_threshold
        self.max_boxes = max_boxes
        self.label_matcher = label_matcher
        self.cache = cache

    def fit(self, X=None, y=None) -> "ComCLIPMatcher":
        """Check the parameters; X and y are ignored (nothing is learnt)."""
        self._check_params()
        self.parser_ = make_parser(self.parser)
        return self

    def _check_params(self) -> None:
        if not isinstance(self.backbone, Backbone):
            raise InputError("ComCLIPMatcher needs a Backbone (backbone=Backbone(...)).")
        unknown = set(self.components) - set(COMPONENTS)
        if unknown or isinstance(self.components, str):
            raise InputError(f"components must be a subset of {COMPONENTS}, got {self.components!r}.")
        if self.weighting not in WEIGHTINGS:
            raise InputError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}.")
        if self.mask_mode not in MASK_MODES:
            raise InputError(f"mask_mode must be one of {MASK_MODES}, got {self.mask_mode!r}.")
        if self.embeddings not in EMBEDDING_FORMS:
            raise InputError(f"embeddings must be one of {EMBEDDING_FORMS}, got "
                             f"{self.embeddings!r}.")
        if not (is_number(self.temperature, 0) and self.temperature > 0):
            raise InputError(f"temperature must be positive, got {self.temperature!r}.")
        if (not isinstance(self.grid, Sequence) or isinstance(self.grid, str)
                or not all(isinstance(g, numbers.Integral) and 1 <= g <= _MAX_GRID
                           for g in self.grid)):
            raise InputError(f"grid must be a sequence of grid sizes, integers from 1 to "
                             f"{_MAX_GRID}, e.g. (2, 3); got {self.grid!r}.")
        if not (isinstance(self.margin, numbers.Real) and np.isfinite(self.margin)):
            raise InputError(f"margin must be a finite number, got {self.margin!r}.")
        make_parser(self.parser)
        if self.grounding not in GROUNDINGS:
            raise InputError(f"grounding must be one of {GROUNDINGS}, got {self.grounding!r}.")
        if not is_number(self.box_threshold, 0, 1):
            raise InputError(f"box_threshold must be a number from 0 to 1, got "
                             f"{self.box_threshold!r}.")
        if isinstance(self.max_boxes, bool) or not isinstance(self.max_boxes, numbers.Integral) \
                or self.max_boxes < 1:
            raise InputError(f"max_boxes must be an integer >= 1, got {self.max_boxes!r}.")
        if self.label_matcher != "rules" and not callable(self.label_matcher):
            raise InputError(f"label_matcher must be 'rules' or a callable (caption, entity, "
                             f"labels) -> labels, got {self.label_matcher!r}.")
        if self.grounding == "detector":
            self._detector()

    def _detector(self):
        """The Detector of ``detector`` (built once per name; loaded on first detection)."""
        from ..encoders.detector import DEFAULT_DETECTOR, Detector, require_transformers

        if isinstance(self.detector, Detector):
            return self.detector
        if self.detector is not None and not isinstance(self.detector, (str, os.PathLike)):
            raise InputError(f"detector must be a Detector, a hub id or a folder, got "
                             f"{self.detector!r}.")
        require_transformers()
        name = os.fspath(self.detector) if self.detector is not None else DEFAULT_DETECTOR
        built = self.__dict__.get("_built_detector")
        if built is None or built.name != name:
            built = Detector(name, device=self.backbone.device, progress=self.backbone.progress)
            self.__dict__["_built_detector"] = built
        return built

    def __sklearn_tags__(self):
        tags = takes_images(super().__sklearn_tags__())
        tags.requires_fit = False
        return tags

    # ------------------------------------------------------------------ public API

    def decision_function(self, images, captions: Sequence[str], boxes: Boxes = None) -> np.ndarray:
        """(N images, M captions) ComCLIP scores, cosines in [-1, 1].

        images : paths or PIL images (or a folder / manifest); captions : M strings.
        boxes : optional, one per image: None or {entity name or words: (x0, y0, x1, y1)} in
            pixels, or a list of such boxes (the entity's sub-image is their union); entities
            without a box are grounded by ``grounding``. With ``grounding="file"`` the keys
            are a detector's labels ({label: [boxes]}, GRiT's output for the image), matched
            to the entities by ``label_matcher``.
        """
        items, captions = self._inputs(images, captions)
        pairs = np.stack(np.meshgrid(np.arange(len(items)), np.arange(len(captions)),
                                     indexing="ij"), -1).reshape(-1, 2)
        scores, _, _ = self._score(items, captions, pairs, boxes)
        return scores.reshape(len(items), len(captions))

    def predict(self, images, captions: Sequence[str], boxes: Boxes = None) -> np.ndarray:
        """(N,) the best-scoring caption for each image."""
        scores = self.decision_function(images, captions, boxes)
        return np.asarray(list(captions), dtype=object)[scores.argmax(axis=1)]

    def score_pairs(self, images, captions: Sequence[str], boxes: Boxes = None) -> np.ndarray:
        """(P,) scores of image i with caption i (images may repeat; each is encoded once)."""
        items, captions = self._inputs(images, captions)
        if len(items) != len(captions):
            raise InputError(f"score_pairs needs one caption per image: {len(items)} images, "
                             f"{len(captions)} captions.")
        pairs = np.repeat(np.arange(len(items))[:, None], 2, axis=1)
        return self._score(items, captions, pairs, boxes)[0]

    def explain(self, images, captions: Sequence[str], boxes: Boxes = None,
                pairs: Sequence[tuple[int, int]] | None = None) -> list[PairExplanation]:
        """One PairExplanation per (image index, caption index) in ``pairs`` (default: all
        N x M pairs, row-major): parsed entities, regions, similarities, weights, scores."""
        items, captions = self._inputs(images, captions)
        if pairs is None:
            pairs = [(i, j) for i in range(len(items)) for j in range(len(captions))]
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if len(pairs) and ((pairs < 0).any() or pairs[:, 0].max() >= len(items)
                           or pairs[:, 1].max() >= len(captions)):
            raise InputError(f"pairs must index {len(items)} images and {len(captions)} captions.")
        return self._score(items, captions, pairs, boxes, explain=True)[2]

    # ------------------------------------------------------------------ the computation

    def _inputs(self, images, captions) -> tuple[list[ImageInput], list[str]]:
        self._check_params()
        items = list(read_image_source(images).items)
        if isinstance(captions, str):
            captions = [captions]
        captions = [str(c) for c in captions]
        if not captions:
            raise InputError("no captions to match.")
        for i, caption in enumerate(captions):
            if not caption.strip():
                raise InputError(f"caption {i} is empty.")
        return items, captions

    def _parse(self, caption: str) -> tuple[Parse, str]:
        try:
            return make_parser(self.parser)(caption), ""
        except InputError as exc:  # a failed parse falls back to plain CLIP (counted in notes)
            log.warning("parse of '%s' failed (%s); scored by plain CLIP", caption, exc)
            return Parse(caption), f"parse failed: {exc}"

    def _score(self, items: list[ImageInput], captions: list[str], pairs: np.ndarray,
               boxes: Boxes, explain: bool = False):
        """(P,) ComCLIP scores and (P,) CLIP scores of ``pairs`` (image, caption) indices,
        and their explanations when asked."""
        if boxes is not None and len(boxes) != len(items):
            raise InputError(f"boxes must hold one entry (or None) per image: {len(boxes)} "
                             f"for {len(items)} images.")
        used_images = sorted(set(pairs[:, 0].tolist()))
        names = {i: image_name(items[i], i) for i in used_images}
        parses = {j: self._parse(captions[j]) for j in sorted(set(pairs[:, 1].tolist()))}

        # One text batch: captions, entity words, predicates.
        texts = {captions[j] for j in parses}
        for parse, _ in parses.values():
            texts.update(e.text for e in parse.entities)
            texts.update(r.predicate for r in parse.relations)
        texts = sorted(texts)
        text_index = {t: k for k, t in enumerate(texts)}
        text_vectors = self.backbone.encode_texts(texts, cache=self.cache, progress=False)

        # Entities to ground: on a user box, or by the grid or the detector.
        given = {i: boxes[i] if boxes is not None else None for i in used_images}
        file_mode = self.grounding == "file"
        to_ground: dict[int, set[str]] = {}
        if self.components and not file_mode:
            for i, j in pairs.tolist():
                words = _box_words(given[i], names[i])
                for entity in parses[j][0].entities:
                    if entity.text not in words and entity.name not in words:
                        to_ground.setdefault(i, set()).add(entity.text)

        # Round 1: each distinct image (by content), with its candidate regions if searched.
        contents = dict(zip(used_images, content_keys([items[i] for i in used_images])))
        first: dict[str | None, int] = {}  # None: unreadable, which round 1 reports
        picture = {i: first.setdefault(contents[i], i) for i in used_images}
        pictures = sorted(set(picture.values()))
        searched = {picture[i] for i in to_ground} if self.grounding == "grid" else set()
        raw = self.embeddings == "raw"
        encoder = _SubImageEncoder(self.backbone, self.mask_mode, None if raw else self.cache,
                                   contents, raw)
        sizes = encoder.run(items, pictures, _Candidates(
            self.backbone, self.mask_mode, self.grid, [p in searched for p in pictures]))
        size = {i: sizes[picture[i]] for i in used_images}
        full = {i: ((0, 0, *size[i]),) for i in used_images}
        user = {i: _user_boxes(given[i], size[i], names[i]) for i in used_images}
        grounded: dict[tuple[int, str], Grounding] = {}
        if self.components and not file_mode:
            for i, j in pairs.tolist():
                for entity in parses[j][0].entities:
                    region = user[i].get(entity.text, user[i].get(entity.name))
                    if region is not None:
                        grounded[(i, entity.text)] = Grounding(region, "user")
        if self.grounding == "grid":
            for i, words in to_ground.items():
                proposals = _proposals(*size[i], self.grid)
                vectors = encoder.vectors(picture[i], [(box,) for box in proposals])  # row 0: full
                if raw:
                    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
                words = sorted(words)
                similarity = vectors @ text_vectors[[text_index[w] for w in words]].T  # (P, E)
                best = 1 + similarity[1:].argmax(axis=0) if len(proposals) > 1 else np.zeros(len(words), int)
                for e, w in enumerate(words):
                    wins = similarity[best[e], e] - similarity[0, e] > self.margin
                    grounded[(i, w)] = (Grounding((proposals[best[e]],), "proposal") if wins
                                        else Grounding(full[i], "full image"))
        elif self.grounding == "detector" and to_ground:
            queries: dict[int, set[str]] = {}
            for i, words in to_ground.items():
                queries.setdefault(picture[i], set()).update(words)
            shown = sorted(queries)
            found = self._detector().detect(
                [items[p] for p in shown], [sorted(queries[p]) for p in shown],
                [contents[p] for p in shown], max_boxes=self.max_boxes, cache=self.cache)
            detected = dict(zip(shown, found))
            for i, words in to_ground.items():
                for w in words:
                    grounded[(i, w)] = _detected(detected[picture[i]][w], size[i],
                                                 self.box_threshold)

        # Sub-images of each pair: (kind, text, grounding).
        matched: dict[tuple[int, str, str], Grounding] = {}
        plans: list[list[tuple[str, str, Grounding]]] = []
        for i, j in pairs.tolist():
            parse = parses[j][0]
            plan = []
            if file_mode:
                regions = [self._from_file(matched, i, captions[j], e.text, user[i], full[i])
                           for e in parse.entities]
            else:
                regions = [grounded.get((i, e.text), Grounding(full[i], "full image"))
                           for e in parse.entities]
            if "entities" in self.components:
                plan += [("entity", e.text, regions[k]) for k, e in enumerate(parse.entities)]
            if "relations" in self.components:
                plan += [("relation", r.predicate,
                          _union(regions[r.subject], regions[r.object], full[i]))
                         for r in parse.relations]
            plans.append(plan)
        # Round 2: the regions of the pairs that round 1 did not encode.
        wanted: dict[int, dict[Region, None]] = {}
        for (i, _), plan in zip(pairs.tolist(), plans):
            for _, _, where in plan:
                if not encoder.has(picture[i], where.region):
                    wanted.setdefault(picture[i], {})[where.region] = None
        again = sorted(wanted)
        encoder.run(items, again, _Regions(self.backbone, self.mask_mode,
                                           [list(wanted[p]) for p in again]))

        # Vectorised composition over pairs, sub-images padded to K.
        k_max = max((len(p) for p in plans), default=0)
        n_pairs, dim = len(pairs), text_vectors.shape[1]
        global_v = np.stack([encoder.vector(picture[i], full[i]) for i in pairs[:, 0].tolist()]) \
            if n_pairs else np.empty((0, dim), np.float32)
        caption_v = text_vectors[[text_index[captions[j]] for j in pairs[:, 1].tolist()]]
        sub_v = np.zeros((n_pairs, k_max, dim), np.float32)
        sub_t = np.zeros((n_pairs, k_max, dim), np.float32)
        mask = np.zeros((n_pairs, k_max), bool)
        for p, ((i, _), plan) in enumerate(zip(pairs.tolist(), plans)):
            for k, (_, text, where) in enumerate(plan):
                sub_v[p, k] = encoder.vector(picture[i], where.region)
                sub_t[p, k] = text_vectors[text_index[text]]
                mask[p, k] = True
        if raw and mask.any():  # the raw text embeddings of the sub-images' words
            words = sorted({text for plan in plans for _, text, _ in plan})
            raw_text = dict(zip(words, raw_text_embeddings(self.backbone, words)))
            for p, plan in enumerate(plans):
                for k, (_, text, _) in enumerate(plan):
                    sub_t[p, k] = raw_text[text]
        similarity = np.einsum("pkd,pkd->pk", sub_v, sub_t)
        weights = _weights(similarity, mask, self.weighting, self.temperature)
        composite = global_v + np.einsum("pk,pkd->pd", weights, sub_v)
        composite /= np.linalg.norm(composite, axis=1, keepdims=True)
        scores = np.einsum("pd,pd->p", composite, caption_v).astype(np.float64)
        if raw:
            global_v = global_v / np.linalg.norm(global_v, axis=1, keepdims=True)
        clip_scores = np.einsum("pd,pd->p", global_v, caption_v).astype(np.float64)
        explanations = []
        if explain:
            for p, ((i, j), plan) in enumerate(zip(pairs.tolist(), plans)):
                parse, note = parses[j]
                if not plan and not note:
                    note = ("no sub-images (components=())" if not self.components else
                            "no entity in the caption: plain CLIP")
                explanations.append(PairExplanation(
                    names[i], captions[j], float(scores[p]), float(clip_scores[p]),
                    [e.text for e in parse.entities], parse.triplets(),
                    [SubImage(kind, text, [list(b) for b in where.region], where.source,
                              float(similarity[p, k]), float(weights[p, k]),
                              list(where.scores), list(where.labels))
                     for k, (kind, text, where) in enumerate(plan)], note))
        return scores, clip_scores, explanations

    def _from_file(self, matched: dict, i: int, caption: str, entity: str,
                   labelled: dict[str, Region], full: Region) -> Grounding:
        """The union of the boxes of the file's labels that refer to ``entity`` (memoised
        per image, caption and entity); the full image when none does."""
        key = (i, caption, entity)
        if key not in matched:
            matcher = match_labels if self.label_matcher == "rules" else self.label_matcher
            chosen = [label for label in matcher(caption, entity, sorted(labelled))
                      if label in labelled]
            boxes = {box: label for label in chosen for box in labelled[label]}
            matched[key] = (Grounding(tuple(boxes), "file", labels=tuple(boxes.values()))
                            if boxes else Grounding(full, "full image"))
        return matched[key]


def _detected(found: list[tuple[list[float], float]], size: tuple[int, int],
              threshold: float) -> Grounding:
    """A detector's boxes (best first) scoring at least ``threshold``, as integer boxes
    (floor x0, y0; ceil x1, y1; clipped to the image), their union the region; the full
    image when none is left."""
    width, height = size
    boxes: dict[Box, float] = {}
    for (x0, y0, x1, y1), score in found:
        box = (max(0, int(np.floor(x0))), max(0, int(np.floor(y0))),
               min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1))))
        if score >= threshold and box[2] > box[0] and box[3] > box[1]:
            boxes.setdefault(box, score)
    if not boxes:
        return Grounding(((0, 0, width, height),), "full image")
    return Grounding(tuple(boxes), "detector", scores=tuple(boxes.values()))


def _union(a: Grounding, b: Grounding, full: Region) -> Grounding:
    """A relation's grounding: the union of its subject's and object's regions (the full
    image when either is), with each box's score or label."""
    if full in (a.region, b.region):
        return Grounding(full, "full image")
    boxes: dict[Box, tuple] = {}
    for side in (a, b):
        for k, box in enumerate(side.region):
            boxes.setdefault(box, (side.scores[k] if side.scores else None,
                                   side.labels[k] if side.labels else None))
    scores = tuple(v[0] for v in boxes.values())
    labels = tuple(v[1] for v in boxes.values())
    return Grounding(tuple(boxes), "union",
                     scores if any(v is not None for v in scores) else (),
                     labels if any(v is not None for v in labels) else ())


def _weights(similarity: np.ndarray, mask: np.ndarray, weighting: str,
             temperature: float) -> np.ndarray:
    """(P, K) weights of the sub-images (0 where masked), each row summing to 1 or 0."""
    if weighting == "softmax":
        logits = np.where(mask, similarity / temperature, -np.inf)
        logits -= np.where(mask.any(axis=1, keepdims=True), logits.max(axis=1, keepdims=True), 0)
        exp = np.where(mask, np.exp(logits), 0.0)
    else:
        positive = np.where(mask, np.maximum(similarity, 0.0), 0.0)
        exp = np.where(positive.sum(axis=1, keepdims=True) > 0, positive, mask.astype(float))
    total = exp.sum(axis=1, keepdims=True)
    return np.divide(exp, total, out=np.zeros_like(exp, dtype=np.float64), where=total > 0)


def _proposals(width: int, height: int, grid: Sequence[int]) -> list[Box]:
    """Candidate boxes: the full image first, then its centre, halves and grid cells."""
    boxes = [(0, 0, width, height),
             (width // 4, height // 4, width - width // 4, height - height // 4),
             (0, 0, (width + 1) // 2, height), (width // 2, 0, width, height),
             (0, 0, width, (height + 1) // 2), (0, height // 2, width, height)]
    for g in grid:
        xs = np.round(np.linspace(0, width, int(g) + 1)).astype(int)
        ys = np.round(np.linspace(0, height, int(g) + 1)).astype(int)
        boxes += [(int(xs[a]), int(ys[b]), int(xs[a + 1]), int(ys[b + 1]))
                  for b in range(int(g)) for a in range(int(g))]
    valid = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
    return list(dict.fromkeys(valid))


def _box_words(given: Mapping[str, Sequence[float]] | None, name: str) -> set[str]:
    """The entity words that have a user box in image ``name``."""
    if not given:
        return set()
    if not isinstance(given, Mapping):
        raise InputError(f"the boxes of image '{name}' must be a mapping {{entity: (x0, y0, x1, y1)}}.")
    return {str(words).strip().lower() for words in given}


def _user_boxes(given: Mapping[str, Sequence[float] | Sequence[Sequence[float]]] | None,
                size: tuple[int, int], name: str) -> dict[str, Region]:
    """{words: region}: each entity's box, or the union of its boxes, clipped to the image of
    ``size``; an empty box or one outside the image is an InputError."""
    if not given:
        return {}
    _box_words(given, name)
    width, height = size
    out = {}
    for words, value in given.items():
        try:
            boxes = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            boxes = np.empty((0, 0))
        boxes = boxes[None] if boxes.ndim == 1 else boxes
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not len(boxes):
            raise InputError(f"the box of '{words}' in image '{name}' is not four numbers "
                             f"(x0, y0, x1, y1) or a list of such boxes: {value!r}.")
        region = []
        for box in boxes:
            x0, y0, x1, y1 = box.tolist()
            shown = "(" + ", ".join(f"{v:g}" for v in box) + ")"
            if not np.isfinite(box).all() or x1 <= x0 or y1 <= y0:
                raise InputError(f"the box {shown} of '{words}' in image '{name}' is empty "
                                 f"(it needs x0 < x1 and y0 < y1).")
            clipped = (max(0, int(np.floor(x0))), max(0, int(np.floor(y0))),
                       min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1))))
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                raise InputError(f"the box {shown} of '{words}' in image '{name}' lies "
                                 f"outside the image ({width}x{height} pixels).")
            region.append(clipped)
        out[str(words).strip().lower()] = tuple(dict.fromkeys(region))
    return out


class _SubImages(ViewMaker):
    """Sub-images of each image, stored as "comclip-regions" by (content, mask mode, region)."""

    kind = "comclip-regions"
    keyed = True

    def __init__(self, backbone: Backbone, mask_mode: str):
        self.backbone, self.mask_mode = backbone, mask_mode

    def regions(self, position: int, size: tuple[int, int]) -> list[Region]:
        raise NotImplementedError

    def __call__(self, picture: Picture, known: Container[str]) -> list[View]:
        views = []
        for region in self.regions(picture.position, picture.image.size):
            key = region_key(picture.content, self.mask_mode, region)
            views.append(View(key, None if key in known else self.backbone.preprocess(
                render(picture.image, region, self.mask_mode))))
        return views


class _Candidates(_SubImages):
    """The full image; for the images in ``search`` also the candidate regions after it."""

    def __init__(self, backbone: Backbone, mask_mode: str, grid: Sequence[int],
                 search: Sequence[bool]):
        super().__init__(backbone, mask_mode)
        self.grid, self.search = grid, search

    def regions(self, position: int, size: tuple[int, int]) -> list[Region]:
        boxes = _proposals(*size, self.grid) if self.search[position] else [(0, 0, *size)]
        return [(box,) for box in boxes]


class _Regions(_SubImages):
    """Given regions of each image; their keys are known before the image is read."""

    def __init__(self, backbone: Backbone, mask_mode: str, regions: Sequence[list[Region]]):
        super().__init__(backbone, mask_mode)
        self.given = regions

    def keys(self, position: int, content: str | None) -> list[str] | None:
        if content is None:
            return None
        return [region_key(content, self.mask_mode, r) for r in self.given[position]]

    def regions(self, position: int, size: tuple[int, int]) -> list[Region]:
        return self.given[position]


class _SubImageEncoder:
    """Sub-image embeddings of the distinct images, by (image, region), gathered in rounds;
    unit vectors, or the image encoder's raw output with ``raw``."""

    def __init__(self, backbone: Backbone, mask_mode: str, cache, contents: dict[int, str | None],
                 raw: bool = False):
        self.backbone, self.mask_mode, self.cache = backbone, mask_mode, cache
        self.encoder = _RawImages(backbone) if raw else backbone
        self.contents = contents
        self.done: dict[str, np.ndarray] = {}

    def run(self, items: list[ImageInput], pictures: list[int], views: _SubImages
            ) -> dict[int, tuple[int, int] | None]:
        """Encode the views of ``items[p]`` for p in ``pictures`` -> {p: its (width, height)}."""
        sizes = {}
        if not pictures:
            return sizes
        for batch in encode_views(self.encoder, [items[p] for p in pictures], views,
                                  cache=self.cache, progress=False, batch_size=4):
            for image in batch:
                sizes[pictures[image.position]] = image.size
                self.done.update(zip(image.keys, image.embeddings))
        return sizes

    def has(self, i: int, region: Region) -> bool:
        return self._key(i, region) in self.done

    def vector(self, i: int, region: Region) -> np.ndarray:
        return self.done[self._key(i, region)]

    def vectors(self, i: int, regions: Sequence[Region]) -> np.ndarray:
        return np.stack([self.vector(i, r) for r in regions])

    def _key(self, i: int, region: Region) -> str:
        return region_key(self.contents[i], self.mask_mode, region)


class _RawImages:
    """The backbone, with image embeddings as its image encoder outputs them (not normalised)
    for ``encode_views``; everything else is the backbone's."""

    def __init__(self, backbone: Backbone):
        self._backbone = backbone

    def __getattr__(self, name: str):
        return getattr(self._backbone, name)

    def encode_pixels(self, pixels) -> np.ndarray:
        return self._backbone.image_features(pixels).cpu().numpy()


def raw_text_embeddings(backbone: Backbone, texts: Sequence[str]) -> np.ndarray:
    """(N, D) text embeddings as the text tower outputs them (not normalised), for
    ``embeddings="raw"``; ``backbone.batch_size`` texts per pass."""
    import torch

    from ..encoders.text_tower import encode_text_truncated

    tokens = backbone.tokenizer(list(texts))
    parts = []
    with torch.inference_mode(), backbone.autocast():
        for start in range(0, len(tokens), backbone.batch_size):
            chunk = tokens[start:start + backbone.batch_size].to(backbone.device)
            parts.append(encode_text_truncated(backbone.model, chunk).float().cpu().numpy())
    return np.concatenate(parts)


def region_key(content: str, mask_mode: str, region: Region) -> str:
    """Store key of a sub-image: its image's content, the mask mode and the region."""
    blob = f"{content}|{mask_mode}|{region}".encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def render(picture: Image.Image, region: Region, mask_mode: str = "blackout") -> Image.Image:
    """The sub-image of a region (a union of boxes): black outside it, at full size
    ("blackout"), or also cropped to the region's bounding box ("crop")."""
    width, height = picture.size
    if region == ((0, 0, width, height),):
        return picture
    keep = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in region:
        keep[y0:y1, x0:x1] = True
    pixels = np.asarray(picture).copy()
    pixels[~keep] = 0
    out = Image.fromarray(pixels)
    if mask_mode == "crop":
        out = out.crop((min(b[0] for b in region), min(b[1] for b in region),
                        max(b[2] for b in region), max(b[3] for b in region)))
    return out


_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


def draw_explanation(image: ImageInput, explanation: PairExplanation,
                     path: str | os.PathLike) -> None:
    """Write the image as PNG with each sub-image's boxes drawn and labelled with its words
    and weight (relations in thinner lines); an entity's detector boxes also show their
    scores. A box's last pixels are x1 - 1 and y1 - 1: PIL's rectangle is inclusive."""
    picture = open_image(image).copy()
    draw = ImageDraw.Draw(picture)
    line = max(1, round(min(picture.size) / 150))
    for k, sub in enumerate(explanation.subimages):
        colour = _COLOURS[k % len(_COLOURS)]
        for b, (x0, y0, x1, y1) in enumerate(sub.region):
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour,
                           width=line if sub.kind == "entity" else max(1, line // 2))
            if sub.kind == "entity" and b < len(sub.scores) and sub.scores[b] is not None:
                draw.text((x0 + 2, max(y0, y1 - 12)), f"{sub.scores[b]:.2f}", fill=colour)
        x0, y0 = sub.region[0][0], sub.region[0][1]
        draw.text((x0 + 2, y0 + 2 + 10 * (sub.kind == "relation")),
                  f"{sub.text} {sub.weight:.2f}", fill=colour)
    with atomic_output(path, binary=True) as handle:
        picture.save(handle, format="PNG")


# ---------------------------------------------------------------------- evaluation protocols


def winoground_scores(scores: np.ndarray) -> dict[str, float]:
    """Winoground text, image and group scores of (G, 2, 2) scores s[g, image i, caption c]
    (each group's ``decision_function([i0, i1], [c0, c1])``; caption c belongs to image c).

    text: s[0,0] > s[0,1] and s[1,1] > s[1,0] (each image prefers its caption);
    image: s[0,0] > s[1,0] and s[1,1] > s[0,1] (each caption prefers its image); group: both.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 3 or s.shape[1:] != (2, 2):
        raise InputError(f"Winoground scores must have shape (G, 2, 2), got {s.shape}.")
    text = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    image = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    return {"text": float(text.mean()), "image": float(image.mean()),
            "group": float((text & image).mean()), "n": int(len(s))}


def comvg_accuracy(positive: np.ndarray, negative: np.ndarray) -> float:
    """ComVG / SVO-Probes accuracy: the fraction of sentences whose positive image scores
    strictly above the negative one. positive, negative : (N,)."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if positive.shape != negative.shape or positive.ndim != 1 or not len(positive):
        raise InputError(f"positive and negative scores must be two (N,) arrays of one shape, "
                         f"got {positive.shape} and {negative.shape}.")
    return float((positive > negative).mean())
