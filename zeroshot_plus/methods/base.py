"""The shared Predictor base: scikit-learn classifier conventions over image embeddings."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ..encoders.backbone import Backbone
from ..errors import InputError
from ..data.files import atomic_output
from ..data.sources import ImageSet
from ..text.classnames import parse_classnames
from ..text.templates import class_prompts, load_templates
from ..text.heads import class_weights, l2_normalise, unit_rows

_FORMAT = "zeroshot_plus.predictor/1"


class Predictor(ClassifierMixin, BaseEstimator):
    """Base of the classifiers that take L2-normalised image embeddings X of shape (N, D).

    Subclasses implement ``fit`` and ``decision_function``; this base gives ``predict_proba``
    (softmax of the logits), ``predict`` (labels from ``classes_``), ``score`` (accuracy),
    and ``save``/``load`` without pickling the backbone.
    """

    registry: ClassVar[dict[str, type["Predictor"]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Predictor.registry[cls.__name__] = cls

    def _validate_embeddings(self, X, y="no_validation", *, reset: bool):
        """X as float32 (N, D) with unit rows, or (X, y) checked together when y is passed
        (scikit-learn's convention: a y of None is refused, not ignored).
        Images, NaN, inf, zero rows, a wrong D or mismatched lengths are one-sentence errors."""
        name = type(self).__name__
        if _holds_images(X):
            raise InputError(f"{name} takes image embeddings (N, D), not images: encode them "
                             f"first with Backbone.encode_images, or put an ImageEmbedder in "
                             f"front, make_pipeline(ImageEmbedder(backbone), {name}(...)).")
        if isinstance(y, str) and y == "no_validation":
            return unit_rows(self._checked(
                lambda: validate_data(self, X, reset=reset, dtype=np.float32)), name)
        X, y = self._checked(lambda: validate_data(self, X, y, reset=reset, dtype=np.float32))
        return unit_rows(X, name), y

    def _checked(self, validate):
        """Run a scikit-learn validation; its ValueError becomes one InputError sentence."""
        try:
            return validate()
        except InputError:
            raise
        except ValueError as exc:
            lines = str(exc).splitlines()
            advice = [line for line in lines[1:] if line.startswith("Reshape your data")]
            message = " ".join([lines[0].rstrip(":") + ("." if advice else ""), *advice])
            raise InputError(f"{type(self).__name__}: {message}") from None

    def decision_function(self, X) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, X) -> np.ndarray:
        """(N, C) class probabilities: softmax of the logits; rows sum to 1."""
        return softmax(self.decision_function(X).astype(np.float64), axis=1)

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)  # first: an unfitted predictor raises NotFittedError
        return self.classes_[np.argmax(scores, axis=1)]

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted predictor to one .npz file (arrays + JSON metadata, no pickle).

        A backbone parameter is recorded by name, weights and fingerprint, not stored.
        """
        check_is_fitted(self)
        arrays, params = {}, {}
        meta = {"format": _FORMAT, "class": type(self).__name__, "backbone": None}
        for name, value in self.get_params(deep=False).items():
            if isinstance(value, Backbone):
                meta["backbone"] = {"param": name, **value.describe()}
            elif isinstance(value, np.ndarray):
                arrays[f"param:{name}"] = value
            else:
                params[name] = value
        fitted = {}
        for name, value in vars(self).items():
            if not name.endswith("_") or name.startswith("_"):
                continue
            if isinstance(value, np.ndarray):
                arrays[f"fitted:{name}"] = value
            else:
                fitted[name] = value
        meta.update(params=params, fitted=fitted)
        try:
            blob = json.dumps(meta)
        except TypeError as exc:
            raise InputError(f"cannot save {type(self).__name__}: a parameter is not "
                             f"JSON-serialisable ({exc}).") from None
        with atomic_output(path, binary=True) as handle:
            np.savez(handle, __meta__=np.array(blob), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, backbone: Backbone | None = None) -> "Predictor":
        """Read a predictor written by ``save``.

        ``backbone``: the Backbone to attach; it must have the saved fingerprint. When None, a
        Backbone is rebuilt from the saved model name and weights (loaded on first use).
        """
        path = Path(path)
        meta, arrays = _read_saved(path)
        klass = Predictor.registry[meta["class"]]
        if not issubclass(klass, cls):
            raise InputError(f"'{path}' holds a {meta['class']}, not a {cls.__name__}.")
        params = dict(meta["params"])
        params.update({k[6:]: v for k, v in arrays.items() if k.startswith("param:")})
        saved = meta["backbone"]
        if saved is not None:
            if backbone is None:
                backbone = Backbone(saved["model"], saved["pretrained"],
                                    checkpoint=saved["checkpoint"], precision=saved["precision"])
            if backbone.fingerprint != saved["fingerprint"]:
                raise InputError(f"'{path}' was fitted with {saved['model']} "
                                 f"({saved['checkpoint'] or saved['pretrained']}), which is not "
                                 f"the backbone given ({backbone!r}).")
            params[saved["param"]] = backbone
        predictor = klass(**params)
        for name, value in meta["fitted"].items():
            setattr(predictor, name, value)
        for key, value in arrays.items():
            if key.startswith("fitted:"):
                setattr(predictor, key[7:], value)
        return predictor


def _holds_images(X) -> bool:
    """Whether X is an image source (a path, a PIL image, a list of them) rather than numbers."""
    if isinstance(X, (list, tuple)) and X:
        X = X[0]
    return isinstance(X, (str, os.PathLike, Image.Image, ImageSet))


def saved_backbone(path: str | os.PathLike) -> dict | None:
    """What a saved predictor records about its backbone (``Backbone.describe()``), if any."""
    return _read_saved(Path(path))[0]["backbone"]


def _read_saved(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    if not path.is_file():
        raise InputError(f"predictor file '{path}' does not exist.")
    not_saved = (f"'{path}' is not a predictor file written by save() (an .npz archive with "
                 f"its metadata)")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a single .npy array
            raise ValueError(path)
        with data:
            meta = json.loads(str(data["__meta__"]))
            arrays = {k: data[k] for k in data.files if k != "__meta__"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        raise InputError(f"{not_saved}.") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT \
            or meta.get("class") not in Predictor.registry:
        raise InputError(f"{not_saved}.")
    return meta, arrays


def resolve_text_weights(owner: str, text_weights, backbone: Backbone | None, classnames,
                         templates, cache) -> tuple[np.ndarray, np.ndarray]:
    """The text side of a classifier -> (class weights (C, D) unit rows, classes_ (C,)).

    Either ``text_weights`` (with optional ``classnames`` naming its rows) or a ``backbone``
    with ``classnames`` and ``templates``.
    """
    names = None if classnames is None else parse_classnames(classnames)
    if text_weights is not None:
        weights = np.asarray(text_weights, dtype=np.float32)
        if weights.ndim != 2 or not np.isfinite(weights).all():
            raise InputError(f"{owner}: text_weights must be a finite (C, D) array, "
                             f"got shape {weights.shape}.")
        if names is not None and len(names) != len(weights):
            raise InputError(f"{owner}: {len(names)} class names for {len(weights)} rows of "
                             f"text_weights.")
        classes = np.array(names) if names is not None else np.arange(len(weights))
        return l2_normalise(weights), classes
    if backbone is None or names is None:
        raise InputError(f"{owner} needs either text_weights, or a backbone and classnames.")
    prompts = class_prompts(names, load_templates(templates))
    return class_weights(backbone, prompts, cache=cache), np.array(names)
