"""The schema of a saved predictor's contents, checked whenever a file is read (``Predictor.load``,
``saved_backbone``) before anything is built from it: the constructor parameters, the fitted
attributes, their shapes and values.

``_read_saved`` (base) has already found an .npz archive of this format naming a known class.
Every failure is one InputError sentence naming the file and the field.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import InputError

# what a Backbone.describe() holds that load needs, and whether it may be None
_BACKBONE_FIELDS = {"param": False, "model": False, "pretrained": True, "checkpoint": True,
                    "precision": True, "fingerprint": False}


def check_saved(path: Path, klass: type, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Refuse saved contents that ``klass`` could not have written."""
    def fail(field: str, problem: str) -> None:
        raise InputError(f"saved {klass.__name__} '{path}': {field} {problem}.")

    for field in ("params", "fitted"):
        if not isinstance(meta.get(field), dict):
            fail(f"metadata field '{field}'", "is missing or not a mapping")
    backbone = meta.get("backbone")
    if backbone is not None:
        if not isinstance(backbone, dict):
            fail("metadata field 'backbone'", "is not a mapping")
        for field, optional in _BACKBONE_FIELDS.items():
            if field not in backbone:
                fail(f"metadata field 'backbone.{field}'", "is missing")
            if not (isinstance(backbone[field], str) or optional and backbone[field] is None):
                fail(f"metadata field 'backbone.{field}'", f"is {backbone[field]!r}, not a name")
    for key in arrays:
        if not key.startswith(("param:", "fitted:")):
            fail(f"array '{key}'", "is not a parameter or a fitted attribute")

    signature = inspect.signature(klass.__init__).parameters
    params = {**meta["params"], **{k[6:]: v for k, v in arrays.items() if k.startswith("param:")}}
    if backbone is not None:
        params[backbone["param"]] = None
    for name, value in params.items():
        if name == "self" or name not in signature:
            fail(f"parameter '{name}'", f"is not a parameter of {klass.__name__}")
        if isinstance(signature[name].default, float):
            if not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                    and math.isfinite(value)):
                fail(f"parameter '{name}'", f"must be a finite number, got {value!r}")
        _check_finite(fail, f"parameter '{name}'", value)

    fitted = {**meta["fitted"], **{k[7:]: v for k, v in arrays.items() if k.startswith("fitted:")}}
    allowed = klass._required_fitted | klass._optional_fitted
    for name, value in fitted.items():
        if name.startswith("_") or not name.endswith("_") or hasattr(klass, name):
            fail(f"fitted attribute '{name}'", "is not an attribute name a fit sets (a private "
                                               "name, a method's, or without the final '_')")
        if name not in allowed:
            fail(f"fitted attribute '{name}'", f"is not one {klass.__name__} sets")
        _check_finite(fail, f"fitted attribute '{name}'", value)
    for name in sorted(klass._required_fitted - fitted.keys()):
        fail(f"fitted attribute '{name}'", "is missing")
    _check_shapes(fail, fitted, text_optional="text_head_" in klass._optional_fitted)


def _check_finite(fail, field: str, value) -> None:
    """Numbers (JSON reads NaN and Infinity) and numeric arrays must be finite."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufcUS":
            fail(field, f"has an unsupported dtype {value.dtype}")
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            fail(field, "holds non-finite values (NaN or infinity)")
    elif isinstance(value, float) and not math.isfinite(value):
        fail(field, f"is {value}, not a finite number")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_finite(fail, field, item)
    elif isinstance(value, dict):
        for item in value.values():
            _check_finite(fail, field, item)


# The fitted arrays of every predictor: dtype kinds and shape. C is the number of classes
# (len(classes_)), D the number of features (n_features_in_); another letter is a length that
# the arrays naming it share (G: the alpha grid, P: descriptor prompts, S: samples, T: steps), taken to be the most
# common length among them.
_ARRAYS = {
    "text_head_": ("f", "CD"), "class_means_": ("f", "CD"), "means_": ("f", "CD"),
    "weights_": ("f", "CD"), "zeroshot_weights_": ("f", "CD"), "linear_weights_": ("f", "CD"),
    "precision_": ("f", "DD"), "bias_": ("f", "C"), "descriptor_embeddings_": ("f", "PD"),
    "alpha_grid_": ("f", "G"), "alpha_scores_": ("f", "G"),
    "learning_rates_": ("f", "T"), "loss_curve_": ("f", "T"),
    "class_counts_": ("iu", "C"), "counts_": ("iu", "C"), "offsets_": ("iu", "C"),
    "sample_counts_": ("iu", "C"), "samples_": ("iu", "S"), "sample_labels_": ("iu", "S"),
    "descriptors_": ("U", "P"), "prompts_": ("U", "P"), "prompt_names_": ("U", "C"),
}
_MAY_BE_NONE = {"alpha_grid_", "alpha_scores_"}  # text_head_ too where the class allows it
_KINDS = {"f": "float", "iu": "integer", "U": "string"}
# fitted counts: the least value each may take
_COUNTS = {"n_features_in_": 1, "n_iter_": 0, "n_ctx_": 1}


def _check_shapes(fail, fitted: dict, text_optional: bool) -> None:
    """classes_ and classnames_ (C,); every other fitted array the dtype and shape of
    ``_ARRAYS`` with n_features_in_ == D; counts and indices within their ranges."""
    classes = fitted["classes_"]
    if not isinstance(classes, np.ndarray) or classes.ndim != 1 or not len(classes):
        fail("fitted attribute 'classes_'", "is not a non-empty one-dimensional array")
    n_classes = len(classes)
    names = fitted["classnames_"]
    if not isinstance(names, np.ndarray) or names.shape != (n_classes,):
        fail("fitted attribute 'classnames_'", f"does not have the shape ({n_classes},) of "
                                               f"classes_")
    for name, least in _COUNTS.items():
        value = fitted.get(name, least)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            fail(f"fitted attribute '{name}'", f"is {value!r}, not a whole number >= {least}")
    optional = _MAY_BE_NONE | ({"text_head_"} if text_optional else set())
    arrays = {name: value for name, value in fitted.items()
              if name in _ARRAYS and not (value is None and name in optional)}
    for name, value in arrays.items():
        kinds, shape = _ARRAYS[name]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds \
                or value.ndim != len(shape):
            fail(f"fitted attribute '{name}'", f"is not a {len(shape)}-dimensional "
                                               f"{_KINDS[kinds]} array")
    if "n_features_in_" in fitted:
        _check_features(fail, arrays, fitted["n_features_in_"])
    lengths = {"C": n_classes}
    if "n_features_in_" in fitted:
        lengths["D"] = fitted["n_features_in_"]
    sizes: dict[str, Counter] = {}  # another letter's length: the most common among arrays
    for name, value in arrays.items():
        for symbol, size in zip(_ARRAYS[name][1], value.shape):
            sizes.setdefault(symbol, Counter())[size] += 1
    for symbol, counts in sizes.items():
        lengths.setdefault(symbol, counts.most_common(1)[0][0])
    for name, value in arrays.items():
        expected = tuple(lengths[symbol] for symbol in _ARRAYS[name][1])
        if value.shape != expected:
            fail(f"fitted attribute '{name}'", f"has the shape {value.shape}, not {expected} "
                                               f"({_meaning(_ARRAYS[name][1])})")
    _check_ranges(fail, arrays, n_classes, fitted.get("n_iter_"))


def _check_features(fail, arrays: dict, n_features: int) -> None:
    """n_features_in_ against the D columns of the arrays: the file's count is wrong when
    every array agrees on another one."""
    widths = {value.shape[_ARRAYS[name][1].index("D")]: name
              for name, value in arrays.items() if "D" in _ARRAYS[name][1]}
    if len(widths) == 1 and n_features not in widths:
        (width, name), = widths.items()
        fail("fitted attribute 'n_features_in_'", f"is {n_features}, not the {width} columns "
                                                  f"of {name}")


def _meaning(shape: str) -> str:
    words = {"C": "C = len(classes_)", "D": "D = n_features_in_"}
    return ", ".join(words.get(symbol, f"{symbol} shared with the arrays of that length")
                     for symbol in dict.fromkeys(shape))


def _check_ranges(fail, arrays: dict, n_classes: int, n_iter: int | None) -> None:
    """Counts are >= 0, descriptor rows and sample labels index what they point into."""
    for name in ("class_counts_", "sample_counts_", "samples_", "offsets_"):
        if name in arrays and (arrays[name] < 0).any():
            fail(f"fitted attribute '{name}'", "holds negative values")
    if "counts_" in arrays:
        counts, offsets = arrays["counts_"], arrays.get("offsets_")
        rows = len(arrays["descriptors_"]) if "descriptors_" in arrays else None
        if (counts < 1).any():
            fail("fitted attribute 'counts_'", "holds a class without descriptor prompts")
        if offsets is not None and rows is not None and (offsets + counts > rows).any():
            fail("fitted attribute 'offsets_'", f"points past the {rows} descriptor prompts")
    if "sample_labels_" in arrays and (arrays["sample_labels_"] >= n_classes).any():
        fail("fitted attribute 'sample_labels_'", f"holds class indices beyond the "
                                                  f"{n_classes} classes")
    if "learning_rates_" in arrays and n_iter is not None \
            and len(arrays["learning_rates_"]) != n_iter:
        fail("fitted attribute 'learning_rates_'", f"has {len(arrays['learning_rates_'])} "
                                                   f"steps, not n_iter_ = {n_iter}")
