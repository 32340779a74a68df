"""Zero-shot CLIP classification: cosine similarity to a text head, scaled by 100."""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from .base import Predictor, resolve_text_weights


class ZeroShotClassifier(Predictor):
    """Classify image embeddings by their similarity to per-class text embeddings.

    Parameters
    ----------
    backbone : Backbone used to encode the prompts (with ``classnames``).
    classnames : class names (list, comma string or file); they become ``classes_``.
    templates : template set name, template file, or list of templates ("{}" = class name).
    text_weights : precomputed (C, D) class embeddings, instead of backbone + classnames.
    logit_scale : multiplier of the cosine similarities (CLIP's is 100).
    cache : embedding store directory for the prompt embeddings.

    ``fit(X=None, y=None)`` learns nothing from data: it builds ``weights_`` (C, D).
    """

    def __init__(self, backbone=None, classnames=None, templates="openai_imagenet",
                 text_weights=None, logit_scale: float = 100.0, cache=None):
        self.backbone = backbone
        self.classnames = classnames
        self.templates = templates
        self.text_weights = text_weights
        self.logit_scale = logit_scale
        self.cache = cache

    def fit(self, X=None, y=None):
        self.weights_, self.classes_ = resolve_text_weights(
            type(self).__name__, self.text_weights, self.backbone, self.classnames,
            self.templates, self.cache)
        self.n_features_in_ = self.weights_.shape[1]
        if X is not None:
            self._validate_embeddings(X, reset=False)
        return self

    def decision_function(self, X) -> np.ndarray:
        """(N, C) logits: logit_scale * cos(x, w_c)."""
        check_is_fitted(self)
        X = self._validate_embeddings(X, reset=False)
        return self.logit_scale * X @ self.weights_.T
