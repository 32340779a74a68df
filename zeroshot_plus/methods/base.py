"""The estimator convention of the classifiers, and the Predictor base that carries it.

ZeroShotClassifier, GDAClassifier, DescriptionClassifier, RealPromptClassifier,
RealLinearClassifier and TPTClassifier follow one convention:

- constructor: stores its arguments unchanged; keyword-only after ``backbone``; every
  parameter has a default. ``fit`` checks them with ``check_param``.
- text side: ``backbone`` + ``classnames`` (+ templates / descriptors / synonyms), or a
  precomputed ``text_weights`` (C, D) whose rows ``classnames`` may name (else 0..C-1); TPT
  tunes the backbone's text tower, so it takes the first form only. The fitted head is
  ``text_head_`` (C, D), its rows in ``classes_`` order.
- scale: ``logit_scale`` multiplies cosine similarities; 100 is CLIP's (TPT uses the model's).
- randomness: ``random_state`` None / int / RandomState / Generator through
  ``check_random_state`` (``random_state_of``), 0 by default where results depend on it.
- inputs: X (N, D) embeddings through ``Predictor._validate_embeddings`` (scikit-learn's
  ``validate_data``: lists, integers and float16 become float32); rows are scaled to unit
  norm, and an all-zero row stays zero (cosine 0 with every class: equal logits). ``y`` is
  checked whenever it is given.
- errors: ``InputError``, one sentence that starts with the estimator's name.
- classes: ``classes_`` in ``np.unique`` order, with the columns of ``decision_function``
  and ``predict_proba`` following; ``classnames_`` (C,) names each column. When class names
  repeat (open_clip's ImageNet list names "missile" twice), ``classes_`` are the positions
  0..C-1 of the given list, as CLIP_benchmark labels them, and ``classnames_`` is the list.
- outputs: ``logits`` (N, C); ``decision_function`` the same, for two classes (N,): the margin
  of ``classes_[1]`` over ``classes_[0]``; ``predict_proba`` (N, C), softmax of the logits.
- tags: zero-shot methods learn nothing from y (``target_tags.required`` is False); TPT
  takes images, not arrays.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import sys
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import Tags, check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..choices import saved_runtime
from ..encoders.backbone import Backbone
from ..errors import InputError
from ..data.files import atomic_output
from ..data.sources import ImageSet
from ..text.classnames import parse_classnames
from ..text.templates import class_prompts, load_templates
from ..text.heads import class_weights, l2_normalise, unit_rows
from .saved import check_saved

# Format 2: sorted classes_ with the fitted head always ``text_head_`` (format 1 kept the
# user's class order under per-method names); a format-1 file is refused, not misread.
_FORMAT = "zeroshot_plus.predictor/2"


class Predictor(ClassifierMixin, BaseEstimator):
    """Base of the classifiers that take image embeddings X of shape (N, D) (module docstring:
    the convention).

    Subclasses implement ``fit`` and ``logits`` (N, C); this base gives ``decision_function``
    ((N,) margin for two classes), ``predict_proba`` (softmax of the logits), ``predict``
    (labels from ``classes_``), ``score`` (accuracy), and ``save``/``load`` without pickling
    the backbone.
    """

    registry: ClassVar[dict[str, type["Predictor"]]] = {}
    _learns_from_y: ClassVar[bool] = True  # False: fit learns nothing from y (zero-shot)
    # the fitted attributes a saved file must hold, and those it may hold (``saved``)
    _required_fitted: ClassVar[frozenset[str]] = frozenset(
        {"classes_", "classnames_", "text_head_", "n_features_in_"})
    _optional_fitted: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Predictor.registry[cls.__name__] = cls

    def _validate_embeddings(self, X, y="no_validation", *, reset: bool):
        """X as float32 (N, D) with unit rows (all-zero rows stay zero), or (X, y) checked
        together when y is passed (scikit-learn's convention: a y of None is refused, not
        ignored). Images, NaN, inf, a wrong D or mismatched lengths are one-sentence errors."""
        name = type(self).__name__
        if _holds_images(X):
            raise InputError(f"{name} takes image embeddings (N, D), not images: encode them "
                             f"first with Backbone.encode_images, or put an ImageEmbedder in "
                             f"front, make_pipeline(ImageEmbedder(backbone), {name}(...)).")
        if isinstance(y, str) and y == "no_validation":
            return _unit_or_zero(self._checked(
                lambda: validate_data(self, X, reset=reset, dtype=np.float32)))
        if y is not None:  # a regression target is named as such, before any shape error
            self._checked(lambda: check_classification_targets(y))
        X, y = self._checked(lambda: validate_data(self, X, y, reset=reset, dtype=np.float32))
        return _unit_or_zero(X), y

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

    def _check_fit_data(self, X, y) -> None:
        """Zero-shot ``fit(X, y)``: nothing is learnt from them, but they are checked."""
        if X is not None and y is not None:
            self._validate_embeddings(X, y, reset=False)
        elif X is not None:
            self._validate_embeddings(X, reset=False)

    def _set_text_head(self, head: np.ndarray, names) -> None:
        """The fitted text side: ``head`` (C, D) rows in the order of ``names`` (C,) ->
        ``text_head_`` in ``classes_`` order, ``classes_``, ``classnames_``, ``n_features_in_``."""
        self.classes_, self.classnames_, order = class_columns(names)
        self.text_head_ = head[order]
        self.n_features_in_ = head.shape[1]

    def logits(self, X) -> np.ndarray:
        """(N, C) scores of the classes, two classes included."""
        raise NotImplementedError

    def decision_function(self, X) -> np.ndarray:
        """(N, C) logits; for two classes (N,) the margin of classes_[1] over classes_[0]."""
        logits = self.logits(X)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X) -> np.ndarray:
        """(N, C) class probabilities: softmax of the logits; rows sum to 1."""
        return softmax(self.logits(X).astype(np.float64), axis=1)

    def predict(self, X) -> np.ndarray:
        scores = self.logits(X)  # first: an unfitted predictor raises NotFittedError
        return self.classes_[np.argmax(scores, axis=1)]

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.target_tags.required = self._learns_from_y
        return tags

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
                                    checkpoint=saved["checkpoint"], precision=saved["precision"],
                                    jpeg_draft=saved.get("jpeg_draft", False),
                                    runtime=saved_runtime(saved))
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


def _unit_or_zero(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; an all-zero row stays zero."""
    zero = ~X.any(axis=1)
    if not zero.any():
        return unit_rows(X)
    scaled = X.copy()
    scaled[~zero] = unit_rows(X[~zero])
    return scaled


def class_columns(names) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class names (C,) in a given order -> (classes_, classnames_, order), where column j is
    the class at position order[j]: sorted names, or positions 0..C-1 when names repeat."""
    names = np.asarray(names)
    if len(np.unique(names)) < len(names):
        return np.arange(len(names)), names, np.arange(len(names))
    order = np.argsort(names, kind="stable")
    return names[order], names[order], order


def label_codes(y: np.ndarray, classes: np.ndarray, what: str) -> np.ndarray:
    """Labels -> indices into ``classes``; integer labels for named classes are positions
    (scikit-learn's encoded targets); labels not among them are an InputError."""
    if classes.dtype.kind in "UO" and y.dtype.kind in "iu":
        codes = np.where((y >= 0) & (y < len(classes)), y, -1).astype(np.int64)
    else:
        index = {c: i for i, c in enumerate(classes.tolist())}
        codes = np.fromiter((index.get(v, -1) for v in y.tolist()), dtype=np.int64, count=len(y))
    if (codes < 0).any():
        unknown = sorted({repr(v) for v in y[codes < 0].tolist()})
        known = ", ".join(repr(c) for c in classes.tolist()[:5])
        raise InputError(f"{what}s {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
                         f"are not among the classes of the text side ({known}"
                         f"{', ...' if len(classes) > 5 else ''}).")
    return codes


def check_param(estimator: BaseEstimator, name: str, ok: bool, expected: str) -> None:
    """InputError "<Estimator>: <name> must be <expected>, got <value>." unless ``ok``."""
    if not ok:
        raise InputError(f"{type(estimator).__name__}: {name} must be {expected}, "
                         f"got {getattr(estimator, name)!r}.")


def is_integer(value, low: int) -> bool:
    """Whether ``value`` is an integer (not a bool) >= ``low``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def is_number(value, low: float, high: float = np.inf) -> bool:
    """Whether ``value`` is a finite real number (not a bool) in [low, high]."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and bool(np.isfinite(value)) and low <= value <= high)


def random_state_of(random_state, owner: str | None = None) -> np.random.RandomState:
    """scikit-learn's ``check_random_state`` that also takes a numpy Generator (one draw of it
    seeds the RandomState); anything else is one sentence, prefixed with ``owner``'s name."""
    if isinstance(random_state, np.random.Generator):
        random_state = int(random_state.integers(np.iinfo(np.int32).max))
    if not isinstance(random_state, bool):
        with contextlib.suppress(ValueError):
            return check_random_state(random_state)
    prefix = f"{owner}: " if owner else ""
    raise InputError(f"{prefix}random_state must be None, an int, a numpy Generator or "
                     f"RandomState, got {random_state!r}.")


def seed_of(random_state, owner: str | None = None) -> int:
    """An integer seed for torch and per-image generators: an int ``random_state`` as given,
    else one drawn through ``random_state_of`` (None: fresh)."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(random_state_of(random_state, owner).randint(np.iinfo(np.int32).max))


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
    if isinstance(meta, dict) and meta.get("format") == "zeroshot_plus.predictor/1":
        raise InputError(f"'{path}' was saved by an earlier zeroshot_plus whose classifiers kept "
                         f"the given class order; fit and save it again.")
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT \
            or _saved_class(meta.get("class")) is None:
        raise InputError(f"{not_saved}.")
    check_saved(path, Predictor.registry[meta["class"]], meta, arrays)
    return meta, arrays


def _saved_class(name) -> type[Predictor] | None:
    """The Predictor subclass a saved file names, its module imported on first use (the
    package imports its names lazily, so a new process has registered none yet)."""
    package = sys.modules[__package__.rpartition(".")[0]]
    if isinstance(name, str) and name in package.__all__:
        getattr(package, name)
    return Predictor.registry.get(name)


def given_text_weights(owner: str, text_weights, classnames) -> tuple[np.ndarray, list]:
    """A precomputed text side -> (unit rows (C, D) float32, the class names of its rows:
    ``classnames``, else 0..C-1)."""
    weights = np.asarray(text_weights, dtype=np.float32)
    if weights.ndim != 2 or not np.isfinite(weights).all():
        raise InputError(f"{owner}: text_weights must be a finite (C, D) array, "
                         f"got shape {weights.shape}.")
    if classnames is None:
        return l2_normalise(weights), list(range(len(weights)))
    names = parse_classnames(classnames, repeats=True)
    if len(names) != len(weights):
        raise InputError(f"{owner}: {len(names)} class names for {len(weights)} rows of "
                         f"text_weights.")
    return l2_normalise(weights), names


def resolve_text_weights(owner: str, text_weights, backbone: Backbone | None, classnames,
                         templates, cache) -> tuple[np.ndarray, list]:
    """The text side of a template classifier -> (class weights (C, D) unit rows, the class
    names of its rows, in the given order).

    Either ``text_weights`` (with optional ``classnames`` naming its rows) or a ``backbone``
    with ``classnames`` and ``templates``.
    """
    if text_weights is not None:
        return given_text_weights(owner, text_weights, classnames)
    if backbone is None or classnames is None:
        raise InputError(f"{owner} needs either text_weights, or a backbone and classnames.")
    names = parse_classnames(classnames, repeats=True)
    prompts = class_prompts(names, load_templates(templates))
    return class_weights(backbone, prompts, cache=cache), names
