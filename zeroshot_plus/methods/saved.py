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


def _check_shapes(fail, fitted: dict, text_optional: bool) -> None:
    """classes_ and classnames_ (C,); text_head_ a float (C, D) with n_features_in_ == D (or
    None where the class may have no text side)."""
    classes = fitted["classes_"]
    if not isinstance(classes, np.ndarray) or classes.ndim != 1 or not len(classes):
        fail("fitted attribute 'classes_'", "is not a non-empty one-dimensional array")
    n_classes = len(classes)
    names = fitted["classnames_"]
    if not isinstance(names, np.ndarray) or names.shape != (n_classes,):
        fail("fitted attribute 'classnames_'", f"does not have the shape ({n_classes},) of "
                                               f"classes_")
    if "text_head_" not in fitted or (text_optional and fitted["text_head_"] is None):
        return
    head, n_features = fitted["text_head_"], fitted.get("n_features_in_")
    if not isinstance(head, np.ndarray) or head.dtype.kind != "f" or head.ndim != 2 \
            or head.shape[0] != n_classes:
        fail("fitted attribute 'text_head_'", f"is not a float array ({n_classes}, D), one row "
                                              f"per entry of classes_")
    if not isinstance(n_features, int) or isinstance(n_features, bool) \
            or n_features != head.shape[1]:
        fail("fitted attribute 'n_features_in_'", f"is {n_features!r}, not the "
                                                  f"{head.shape[1]} columns of text_head_")
