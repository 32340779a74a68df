"""Classification by description: score each class by its descriptors, not just its name.

Menon & Vondrick, "Visual Classification via Description from Large Language Models"
(ICLR 2023); METHODS.md §2. Class k has descriptors d_k1 .. d_kn (from an LLM):

    1. s_kj = prompt(k, d_kj)                   "tench, which is a freshwater fish" (§2.1)
    2. e_kj = g(s_kj) / ‖g(s_kj)‖               all prompts of all classes, one encoding pass
    3. S_k(x) = (1/n_k) Σ_j xᵀ e_kj             mean similarity to the class's descriptors
    4. predict argmax_k S_k(x); explain by the e_kj with the largest xᵀ e_kj

The mean is linear, so step 3 is S_k(x) = xᵀ m_k with m_k = (1/n_k) Σ_j e_kj, the *unnormalised*
mean descriptor embedding: ``fit`` forms every m_k with one segment sum (``np.add.reduceat``)
and prediction is one (N, D) x (D, C) product, with no Python loop over classes and no
(N, descriptors) similarity matrix (benchmarks/descriptions.py compares this with the
per-class loop of the reference code and with a similarity-matrix segment mean).

The reference's other aggregations (``aggregate_similarity``): "sum", Σ_j xᵀ e_kj = n_k xᵀ m_k,
is the same product scaled per class; "max", max_j xᵀ e_kj, is not linear, so it is computed
on blocks of images (one (B, P) similarity block and a segment maximum, ``np.maximum.reduceat``,
per block), never an (N, P) matrix.

Scale: the reference code uses none (raw mean cosine; its top-5 is a softmax of S, and the
argmax does not depend on a scale). Here ``logit_scale`` multiplies S, 100 by default (CLIP's
own) so that ``predict_proba`` gives usable probabilities; logit_scale=1 is the reference's.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ..text.classnames import display_name, parse_classnames
from ..text.descriptors import (AGGREGATIONS, EMPTY_DESCRIPTORS, NAME_POSITIONS,
                                check_prompt_style, descriptor_prompts, match_descriptors)
from ..errors import InputError
from .base import (Predictor, check_param, class_columns, given_text_weights, is_integer,
                   is_number)
from ..text.heads import l2_normalise

_ROWS = 1024  # image rows per block in explain() and in the "max" aggregation


class Explanation(NamedTuple):
    """Why one image got its label: the label's descriptors with the highest similarity."""

    label: object
    descriptors: list[str]
    similarities: list[float]


class DescriptionClassifier(Predictor):
    """Zero-shot classifier scoring each class by its similarities to its descriptors.

    Parameters
    ----------
    backbone : Backbone that encodes the descriptor prompts.
    classnames : class names (list, comma string or file); default: the keys of
        ``descriptors`` in file order. They become ``classes_``, sorted.
    descriptors : ``{class: [descriptor, ...]}`` as a dict or the path of a JSON file (the
        released DCLIP descriptors, CuPL sentence files, or ``zeroshot-plus describe``).
    prompt_style : "menon" (the paper's rule with its quirks), "corrected", "plain"
        ("{class}, {descriptor}") or "sentences" (each entry is a whole prompt, for CuPL
        files); see ``zeroshot_plus.descriptors``.
    suffix : text after each descriptor prompt and after a bare class-name prompt (the
        reference's ``after_text`` and ``label_after_text``: "." for ImageNet in its last
        version, "" elsewhere).
    prefix, between : text before the class name (the reference's ``before_text``, "") and
        between the class name and the descriptor clause (``between_text``, ", ").
    name_position : where the class name goes (the reference's ``category_name_inclusion``):
        "prepend" (prefix + name + between + clause + suffix), "append" (clause + between +
        name, no prefix or suffix, as the reference) or "none" (the clause alone); not used
        by "sentences".
    empty_descriptors : a class with no descriptors is scored by its bare name ("name", see
        below), or by the single descriptor "" ("blank": the reference's ``[""]``, i.e. the
        prompt "k, which has " in the "menon" style).
    aggregation : "mean" (the paper), "max" or "sum" of a class's descriptor similarities
        (the reference's ``aggregate_similarity``); S_k(x) below is this aggregate.
    allow_missing : classes absent from ``descriptors`` are classified by their name instead
        of raising InputError.
    text_weights : a precomputed (C, D) text head instead of backbone + descriptors (e.g. a
        saved ``text_head_``); classes are then scored by cosine, ``classnames`` optionally
        names its rows (else 0..C-1), and ``explain`` is not available.
    logit_scale : multiplier of S_k (the reference uses 1; see above).
    cache : embedding store directory for the prompt embeddings.

    A class with no descriptors (an empty list, or missing with ``allow_missing``) is scored
    by its bare name ``display_name(name) + suffix``, the reference's "CLIP-standard" prompt,
    unless ``empty_descriptors="blank"``.

    Fitted attributes: ``classes_`` and ``classnames_`` (C,), ``prompts_`` and
    ``descriptors_`` (P,) str, ``descriptor_embeddings_`` (P, D) float32 (class-contiguous,
    in the descriptors' class order), ``counts_`` and ``offsets_`` (C,) int (column k owns
    rows offsets_[k] : offsets_[k] + counts_[k]), ``class_means_`` (C, D) the unnormalised
    means m_k, ``text_head_`` (C, D) and ``report_`` (dict: which classes have descriptors,
    see ``DescriptorMatch.report``).

    ``text_head_`` = m_k / ‖m_k‖ is the descriptor ensemble as a text head, for use wherever
    a (C, D) head is taken, e.g. ``GDAClassifier(text_weights=clf.text_head_,
    classnames=clf.classes_)``. Its cosine differs from S_k by the per-class factor ‖m_k‖
    (<= 1, smaller for more diverse descriptors): with the mean, S_k(x) = ‖m_k‖ · cos(x,
    text_head_k), so the two rank classes alike when all classes have equally spread
    descriptors. With "sentences" the text head is exactly CuPL's class weight (§2.4). It is
    the mean ensemble whatever the ``aggregation``.
    """

    _required_fitted = Predictor._required_fitted | {"class_means_"}
    _optional_fitted = frozenset({"counts_", "descriptor_embeddings_", "descriptors_", "offsets_",
                                  "prompts_", "report_"})
    _learns_from_y = False

    def __init__(self, backbone=None, *, classnames=None, descriptors=None,
                 prompt_style: str = "menon", suffix: str = "", prefix: str = "",
                 between: str = ", ", name_position: str = "prepend",
                 empty_descriptors: str = "name", aggregation: str = "mean",
                 allow_missing: bool = False, text_weights=None, logit_scale: float = 100.0,
                 cache=None):
        self.backbone = backbone
        self.classnames = classnames
        self.descriptors = descriptors
        self.prompt_style = prompt_style
        self.suffix = suffix
        self.prefix = prefix
        self.between = between
        self.name_position = name_position
        self.empty_descriptors = empty_descriptors
        self.aggregation = aggregation
        self.allow_missing = allow_missing
        self.text_weights = text_weights
        self.logit_scale = logit_scale
        self.cache = cache

    def fit(self, X=None, y=None):
        """Build and encode the descriptor prompts; X and y are only checked (zero-shot)."""
        name = type(self).__name__
        check_param(self, "logit_scale", is_number(self.logit_scale, 0), "a number >= 0")
        check_param(self, "aggregation", self.aggregation in AGGREGATIONS, _one_of(AGGREGATIONS))
        if self.text_weights is not None:
            if self.aggregation != "mean":
                raise InputError(f"{name}: aggregation '{self.aggregation}' needs the "
                                 f"descriptors' embeddings; text_weights have one row per "
                                 f"class, so only 'mean' applies.")
            head, names = given_text_weights(name, self.text_weights, self.classnames)
            self._set_text_head(head, names)
            self.class_means_ = self.text_head_
            self._check_fit_data(X, y)
            return self
        check_prompt_style(self.prompt_style)
        check_param(self, "name_position", self.name_position in NAME_POSITIONS,
                    _one_of(NAME_POSITIONS))
        check_param(self, "empty_descriptors", self.empty_descriptors in EMPTY_DESCRIPTORS,
                    _one_of(EMPTY_DESCRIPTORS))
        for param in ("suffix", "prefix", "between"):
            check_param(self, param, isinstance(getattr(self, param), str), "a string")
        if self.backbone is None or self.descriptors is None:
            raise InputError(f"{name} needs either text_weights, or a backbone and descriptors.")
        names = (None if self.classnames is None
                 else parse_classnames(self.classnames, repeats=True))
        match = match_descriptors(self.descriptors, names, allow_missing=self.allow_missing)
        prompts, shown = [], []
        for classname, items in zip(match.classnames, match.descriptors):
            if not items and self.empty_descriptors == "blank":
                items = [""]
            if items:
                prompts.append(descriptor_prompts(
                    classname, items, self.prompt_style, self.suffix, prefix=self.prefix,
                    between=self.between, position=self.name_position))
                shown.append(items)
            else:  # no descriptors: the class name alone
                prompts.append([display_name(classname) + self.suffix])
                shown.append([display_name(classname)])
        counts = np.array([len(p) for p in prompts], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.prompts_ = np.array([p for group in prompts for p in group])
        self.descriptors_ = np.array([d for group in shown for d in group])
        self.descriptor_embeddings_ = self.backbone.encode_texts(self.prompts_.tolist(),
                                                                 cache=self.cache)
        sums = np.add.reduceat(self.descriptor_embeddings_.astype(np.float64), offsets, axis=0)
        means = (sums / counts[:, None]).astype(np.float32)
        self._set_text_head(l2_normalise(means), match.classnames)
        order = class_columns(match.classnames)[2]
        self.class_means_, self.counts_, self.offsets_ = means[order], counts[order], offsets[order]
        self.report_ = match.report()
        self._check_fit_data(X, y)
        return self

    def logits(self, X) -> np.ndarray:
        """(N, C) logits: logit_scale * S_k(x), the mean (or ``aggregation``) of the
        similarities to class k's descriptors."""
        check_is_fitted(self)
        X = self._validate_embeddings(X, reset=False)
        if self.aggregation == "mean":
            return self.logit_scale * (X @ self.class_means_.T)
        if not hasattr(self, "descriptor_embeddings_"):
            raise InputError(f"{type(self).__name__}: aggregation '{self.aggregation}' needs "
                             f"descriptors, not text_weights.")
        if self.aggregation == "sum":
            return self.logit_scale * ((X @ self.class_means_.T) * self.counts_.astype(np.float32))
        return self.logit_scale * self._max_similarities(X)

    def _max_similarities(self, X: np.ndarray) -> np.ndarray:
        """(N, C) max_j xᵀ e_kj, one (B, P) block of images at a time."""
        order = np.argsort(self.offsets_, kind="stable")   # columns in prompt-row order
        starts = self.offsets_[order]
        scores = np.empty((len(X), len(order)), dtype=np.float32)
        for start in range(0, len(X), _ROWS):
            block = X[start:start + _ROWS] @ self.descriptor_embeddings_.T
            scores[start:start + _ROWS, order] = np.maximum.reduceat(block, starts, axis=1)
        return scores

    def explain(self, X, top: int = 3) -> list[Explanation]:
        """Per image, the predicted label and its ``top`` descriptors by similarity xᵀe_kj.

        These are the descriptors that raised the label's score most (with the mean, each
        adds xᵀe_kj / n_k; with the max, the first is the one that sets the score).
        A class with fewer descriptors gives fewer; a class without any shows its name.
        """
        if not is_integer(top, 1):
            raise InputError(f"{type(self).__name__}: top must be an integer >= 1, got {top!r}.")
        predicted = np.argmax(self.logits(X), axis=1)
        if not hasattr(self, "descriptors_"):
            raise InputError(f"{type(self).__name__}: explain needs descriptors, not "
                             f"text_weights.")
        X = self._validate_embeddings(X, reset=False)
        width = int(min(top, self.counts_.max()))
        slots = np.arange(int(self.counts_.max()))
        rows = self.offsets_[predicted][:, None] + slots                  # (N, L) prompt rows
        valid = slots < self.counts_[predicted][:, None]
        rows = np.where(valid, rows, 0)
        best = np.empty((len(X), width), dtype=np.int64)
        sims = np.empty((len(X), width), dtype=np.float32)
        for start in range(0, len(X), _ROWS):
            block = slice(start, start + _ROWS)
            s = np.einsum("nd,nld->nl", X[block], self.descriptor_embeddings_[rows[block]])
            s[~valid[block]] = -np.inf
            order = np.argsort(-s, axis=1, kind="stable")[:, :width]
            best[block] = np.take_along_axis(rows[block], order, axis=1)
            sims[block] = np.take_along_axis(s, order, axis=1)
        return [Explanation(self.classes_[k].item(), self.descriptors_[b[np.isfinite(v)]].tolist(),
                            v[np.isfinite(v)].tolist())
                for k, b, v in zip(predicted, best, sims)]


def _one_of(values: tuple[str, ...]) -> str:
    """The phrase "'a', 'b' or 'c'" that check_param's message expects."""
    quoted = [f"'{v}'" for v in values]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"
