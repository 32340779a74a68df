"""ImageEmbedder: a scikit-learn transformer from images to CLIP embeddings."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin

from ..data.sources import takes_images
from ..errors import InputError
from .backbone import Backbone


class ImageEmbedder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Images (paths or PIL) -> L2-normalised embeddings (N, D), so that
    ``make_pipeline(ImageEmbedder(bb), GDAClassifier(...))`` fits on image paths.

    Parameters
    ----------
    backbone : the Backbone that encodes the images.
    cache : embedding store directory; images already stored are not encoded again.
    progress : show a progress bar while encoding; off by default, as scikit-learn
        estimators are quiet inside a Pipeline.

    Nothing is learnt: ``fit`` returns self and ``transform`` works unfitted. The output
    columns are named "imageembedder0" ... "imageembedder{D-1}" (``get_feature_names_out``).
    """

    def __init__(self, backbone: Backbone | None = None, *, cache=None, progress: bool = False):
        self.backbone = backbone
        self.cache = cache
        self.progress = progress

    def fit(self, X=None, y=None) -> "ImageEmbedder":
        return self

    def transform(self, X) -> np.ndarray:
        """Images (N,) -> (N, D) float32 unit rows."""
        items = X.tolist() if isinstance(X, np.ndarray) else X
        return self._backbone().encode_images(items, cache=self.cache, progress=self.progress)

    @property
    def _n_features_out(self) -> int:
        return self._backbone().embed_dim

    def _backbone(self) -> Backbone:
        if not isinstance(self.backbone, Backbone):
            raise InputError("ImageEmbedder needs a Backbone (backbone=Backbone(...)).")
        return self.backbone

    def __sklearn_tags__(self):
        tags = takes_images(super().__sklearn_tags__())
        tags.requires_fit = False
        tags.transformer_tags.preserves_dtype = []
        return tags
