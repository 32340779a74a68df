"""Zero-shot CLIP classification: cosine similarity to a text head, scaled by ``logit_scale``."""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from .base import Predictor, check_param, is_number, resolve_text_weights


class ZeroShotClassifier(Predictor):
    """Classify image embeddings by their similarity to per-class text embeddings.

    Parameters
    ----------
    backbone : Backbone used to encode the prompts (with ``classnames``).
    classnames : class names (list, comma string or file); they become ``classes_``, sorted.
    templates : template set name, template file, or list of templates ("{}" = class name).
    text_weights : precomputed (C, D) class embeddings, instead of backbone + classnames;
        ``classnames`` optionally names its rows, otherwise the classes are 0..C-1.
    logit_scale : multiplier of the cosine similarities (CLIP's is 100).
    cache : embedding store directory for the prompt embeddings.

    ``fit(X=None, y=None)`` learns nothing from data (X and y are only checked): it builds
    ``text_head_`` (C, D), rows in ``classes_`` order, and ``classnames_`` (C,).
    """

    _learns_from_y = False

    def __init__(self, backbone=None, *, classnames=None, templates="openai_imagenet",
                 text_weights=None, logit_scale: float = 100.0, cache=None):
        self.backbone = backbone
        self.classnames = classnames
        self.templates = templates
        self.text_weights = text_weights
        self.logit_scale = logit_scale
        self.cache = cache

    def fit(self, X=None, y=None):
        check_param(self, "logit_scale", is_number(self.logit_scale, 0), "a number >= 0")
        self._set_text_head(*resolve_text_weights(
            type(self).__name__, self.text_weights, self.backbone, self.classnames,
            self.templates, self.cache))
        self._check_fit_data(X, y)
        return self

    def logits(self, X) -> np.ndarray:
        """(N, C) logits: logit_scale * cos(x, w_c)."""
        check_is_fitted(self)
        X = self._validate_embeddings(X, reset=False)
        return self.logit_scale * X @ self.text_head_.T
