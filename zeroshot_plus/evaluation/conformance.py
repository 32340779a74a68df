"""scikit-learn conformance: ``check_estimator`` per estimator, with the checks each one is
expected to fail and why (a true property of the method, one line each).

``ESTIMATORS`` lists (name, factory, expected failures, API checks only); a new estimator is a
new row. Estimators over embedding arrays run every check of ``check_estimator``; image-level
ones (they take images, not arrays) run ``API_CHECKS``: clone, get/set_params, repr, tags and
pickling of the unfitted estimator. ``run_checks`` runs one row; ``benchmarks/conformance.py``
prints the table and tests/test_sklearn_classifiers.py asserts it.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import estimator_checks

from ..encoders.embedder import ImageEmbedder
from ..methods.comclip import ComCLIPMatcher
from ..methods.descriptions import DescriptionClassifier
from ..methods.gda import GDAClassifier
from ..methods.real import RealLinearClassifier, RealPromptClassifier
from ..methods.schur import SchurEditor
from ..methods.tpt import TPTClassifier
from ..methods.zeroshot import ZeroShotClassifier

TEXT_WEIGHTS = np.eye(3)  # a fixed text side: three classes along the first three axes, D = 3

FIXED_D = "a fixed text side fixes n_features_in_ (D = 3); the check feeds X with another D"
FIXED_CLASSES = "a fixed text side fixes the class set: fit on one label still predicts the others"
TEXT_SIDE: dict[str, str] = {
    **{check: FIXED_D for check in (
        "check_estimators_overwrite_params", "check_estimators_fit_returns_self",
        "check_readonly_memmap_input", "check_n_features_in_after_fitting",
        "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_dtype_object",
        "check_classifier_data_not_an_array", "check_classifiers_classes",
        "check_classifiers_train", "check_decision_proba_consistency", "check_fit2d_1sample",
        "check_fit2d_1feature", "check_fit_idempotent", "check_fit_check_is_fitted",
        "check_n_features_in")},
    "check_classifiers_one_label": FIXED_CLASSES,
}
REAL_LINEAR: dict[str, str] = {**TEXT_SIDE, "check_non_transformer_estimators_n_iter": FIXED_D}

PAIRED = ("texts pair with the fit rows: X must have their n rows and dimension D, and the "
          "check feeds other shapes (passes when the texts pair with X)")
ZERO_ROW = ("its integer data has an all-zero row, which has no direction to normalise: "
            "refused, naming the row")
SCHUR = {name: PAIRED for name in (
    "check_fit_score_takes_y", "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters", "check_estimators_fit_returns_self",
    "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_dtype_object", "check_pipeline_consistency",
    "check_estimators_nan_inf", "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_transformer_data_not_an_array", "check_transformer_general",
    "check_transformer_preserve_dtypes", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_fit2d_1feature", "check_dict_unchanged",
    "check_fit_idempotent", "check_fit_check_is_fitted", "check_n_features_in",
    "check_fit2d_predict1d")}
SCHUR["check_estimators_dtypes"] = f"{PAIRED}; and {ZERO_ROW}"


def _schur_editor() -> SchurEditor:
    """As a user builds it: reference texts (30, 8) paired with the fit rows, one prompt to
    remove."""
    texts = np.random.default_rng(0).standard_normal((30, 8))
    return SchurEditor(texts=texts, prompts=texts[0])


def _pickle_unfitted(name: str, estimator: BaseEstimator) -> None:
    copy = pickle.loads(pickle.dumps(estimator))
    assert repr(copy.get_params()) == repr(estimator.get_params()), f"{name}: pickling changed it"


API_CHECKS: tuple[Callable[[str, BaseEstimator], None], ...] = (
    estimator_checks.check_estimator_cloneable, estimator_checks.check_estimator_repr,
    estimator_checks.check_no_attributes_set_in_init,
    estimator_checks.check_parameters_default_constructible,
    estimator_checks.check_get_params_invariance, estimator_checks.check_set_params,
    estimator_checks.check_do_not_raise_errors_in_init_or_set_params,
    estimator_checks.check_estimator_tags_renamed, estimator_checks.check_valid_tag_types,
    estimator_checks.check_mixin_order, _pickle_unfitted,
)

ESTIMATORS: list[tuple[str, Callable[[], BaseEstimator], dict[str, str], bool]] = [
    ("ZeroShotClassifier", lambda: ZeroShotClassifier(text_weights=TEXT_WEIGHTS), TEXT_SIDE,
     False),
    ("GDAClassifier (plain)", lambda: GDAClassifier(), {}, False),
    ("GDAClassifier (text side)", lambda: GDAClassifier(text_weights=TEXT_WEIGHTS), TEXT_SIDE,
     False),
    ("DescriptionClassifier", lambda: DescriptionClassifier(text_weights=TEXT_WEIGHTS),
     TEXT_SIDE, False),
    ("RealPromptClassifier", lambda: RealPromptClassifier(text_weights=TEXT_WEIGHTS), TEXT_SIDE,
     False),
    ("RealLinearClassifier", lambda: RealLinearClassifier(text_weights=TEXT_WEIGHTS, max_iter=5),
     REAL_LINEAR, False),
    ("TPTClassifier", lambda: TPTClassifier(classnames=["cat", "dog"]), {}, True),
    ("SchurEditor", _schur_editor, SCHUR, False),
    ("ImageEmbedder", ImageEmbedder, {}, True),
    ("ComCLIPMatcher", ComCLIPMatcher, {}, True),
]


@dataclass
class Conformance:
    """The outcome of one estimator's checks, by check name."""

    passed: list[str] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)    # failed as expected: reason
    unexpected: dict[str, str] = field(default_factory=dict)  # failed: first line of the error
    not_failing: list[str] = field(default_factory=list)      # expected to fail, but passed

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.not_failing


def run_checks(estimator: BaseEstimator, expected: dict[str, str],
               api_only: bool = False) -> Conformance:
    """Run scikit-learn's checks (or ``API_CHECKS``) on ``estimator``; a check that runs
    several times fails when any run fails."""
    name = type(estimator).__name__
    errors: dict[str, BaseException | None] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checks feed odd data on purpose
        if api_only:
            for check in API_CHECKS:
                try:
                    check(name, estimator)
                    errors[check.__name__] = None
                except Exception as exc:  # a failed check, reported by name
                    errors[check.__name__] = exc
        else:
            for result in estimator_checks.check_estimator(estimator, on_fail=None,
                                                           on_skip=None):
                if result["status"] == "skipped":
                    continue
                failure = result["exception"] if result["status"] == "failed" else None
                errors[result["check_name"]] = errors.get(result["check_name"]) or failure
    outcome = Conformance()
    for check, error in errors.items():
        if error is None:
            (outcome.not_failing if check in expected else outcome.passed).append(check)
        elif check in expected:
            outcome.expected[check] = expected[check]
        else:
            outcome.unexpected[check] = " ".join(str(error).split())[:200] or type(error).__name__
    return outcome
