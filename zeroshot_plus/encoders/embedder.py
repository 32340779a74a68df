"""ImageEmbedder: a scikit-learn transformer from images to CLIP embeddings."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .backbone import Backbone


class ImageEmbedder(TransformerMixin, BaseEstimator):
    """Images (paths or PIL) -> L2-normalised embeddings (N, D), so that
    ``make_pipeline(ImageEmbedder(bb), GDAClassifier(...))`` fits on image paths.

    Parameters
    ----------
    backbone : the Backbone that encodes the images.
    cache : embedding store directory; images already stored are not encoded again.
    """

    def __init__(self, backbone: Backbone, cache=None):
        self.backbone = backbone
        self.cache = cache

    def fit(self, X=None, y=None):
        return self

    def transform(self, X) -> np.ndarray:
        items = X.tolist() if isinstance(X, np.ndarray) else X
        return self.backbone.encode_images(items, cache=self.cache)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.requires_fit = False
        return tags
