"""GDA: Gaussian discriminant analysis on CLIP embeddings, ensembled with the zero-shot head.

Wang et al., "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation" (ICLR 2024).
Support embeddings x_n (N, D) with labels y_n, a text head t_c (C, D):

    1. μ_c = mean{x_n : y_n = c}                                  class means
    2. S = Σ_n (x_n − μ_{y_n})(x_n − μ_{y_n})ᵀ,   Σ̂ = S / (N − 1)   pooled within-class scatter
    3. P = D · (S + tr(Σ̂) · I)⁻¹                                   Kubokawa–Srivastava precision
    4. w_c = P μ_c,   b_c = log(1/C) − ½ μ_cᵀ P μ_c                 linear discriminant
    5. logits(x) = s · xᵀt_c + α · (xᵀw_c + b_c)                   ensemble, s = logit_scale
    6. α = the grid value with the best validation accuracy (ties to the smaller α), each
       row scored among the classes that have support samples or validation rows

Scatter, precision, weights and logits are float64 (S from ZᵀZ over float64 blocks, P by
a Cholesky solve); the alpha search evaluates its logits in float32. Without a text side the
logits are xᵀw_c + b_c alone.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import sparse
from scipy.linalg import cho_factor, cho_solve
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from ..data.sources import ImageSource, read_image_source
from ..data.support import augmented_support, sample_shots
from ..encoders.backbone import Backbone
from ..errors import InputError
from .base import (Predictor, check_param, class_columns, is_integer, is_number,
                   label_codes, random_state_of, resolve_text_weights)
from .linalg import add_gram

ALPHA_GRID = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
_ROWS = 1024  # rows per block: 1024 x 1024 x 8 B = 8 MiB in float64, cache-friendly


class GDAClassifier(Predictor):
    """Few-shot CLIP classifier in closed form: GDA with a shared KS precision + zero-shot prior.

    Parameters
    ----------
    backbone, classnames, templates : the text side as in ZeroShotClassifier (prompts
        encoded by ``backbone``); ``classnames`` become ``classes_``, sorted.
    text_weights : precomputed (C, D) text head (any text head: templates, descriptors,
        synonyms), instead of backbone + classnames; ``classnames`` optionally names its rows,
        otherwise the classes are 0..C-1. With no text side at all, this is plain GDA.
        Labels ``y`` are classes, or integers: their positions in ``classes_``, which is what
        scikit-learn's label encoding (cross_val_predict) passes when y holds every class.
    alpha : weight of the GDA term, a number >= 0, or "auto" to choose it from ``alpha_grid``
        on the validation set passed to ``fit``, else by cross-validation on the support set
        (ignored without a text side). alpha = 0 gives the zero-shot classifier. The search
        scores each validation row among the classes that have support samples or validation
        rows: in base-to-new, base images compete with base classes only, as in the reference.
    alpha_grid : candidate values of alpha (the paper's grid by default).
    cv : number of cross-validation folds when alpha is "auto" and no validation set is given.
    n_neighbors, text_copies : statistics of classes without support samples (see below).
    logit_scale : multiplier s of the zero-shot cosine similarities (CLIP's is 100).
    random_state : seed of the cross-validation folds.
    cache : embedding store directory for the prompt embeddings.

    Classes without support samples (base-to-new, METHODS.md §1.3; text side only)
        A class named on the text side but absent from ``y`` gets a synthesised mean: the
        average of its text vector t_u repeated ``text_copies`` times and of the
        ``n_neighbors`` support embeddings most similar to t_u. The scatter of those
        neighbours about t_u (as in the reference) joins the pooled scatter S, and N counts
        them: covariances are pooled, so all classes share one KS precision and seen and
        unseen logits stay comparable in one softmax. (The scatter about t_u is wide along
        the image-text gap, the direction in which the text copies displace the synthesised
        means, so P discounts it.) This fixes the reference code, which hard-codes D = 512,
        averages per-class *precisions*, and runs a Python loop of D x D pinvs; here it is
        one batched top-k, one GEMM over all neighbours and one Cholesky. Without unseen
        classes the fit is exactly steps 1-6. The reference scores base and new classes in
        separate heads; restricting ``decision_function`` to either block of columns gives
        that protocol (the prior log(1/C) is a constant per row).

    Cross-validation (alpha="auto", no validation set)
        Stratified folds over support *images*: pass ``groups`` to ``fit`` (one id per image,
        shared by its augmented views, as ``augmented_support`` returns) so that views of one
        image never fall on both sides. Folds = min(cv, most images of any class). A class
        with fewer images than folds is absent from some training folds and is then
        predicted there like a class without samples. With one image per class the folds
        hold out whole classes (plain K-fold).

    Edge cases
        A class with one sample contributes zero scatter; if no class has two distinct
        samples, S = 0 and tr(Σ̂) is taken as 1 (the largest total variance of unit vectors),
        so P = D·I: nearest class mean. Embeddings are L2-normalised on input.

    Fitted attributes: ``classes_`` (C,), ``n_features_in_`` (D), ``class_counts_`` (C,)
    support samples per class, ``means_`` (C, D) float64, ``precision_`` (D, D) float64,
    ``weights_`` (C, D) and ``bias_`` (C,) float64 (w_c, b_c), ``text_head_`` (C, D) or
    None, ``classnames_`` (C,), ``alpha_``, and ``alpha_grid_`` / ``alpha_scores_``
    (validation accuracy per grid value; None when alpha was not searched).
    """

    _required_fitted = Predictor._required_fitted - {"text_head_"} | {
        "alpha_", "alpha_grid_", "alpha_scores_", "bias_", "class_counts_", "means_",
        "precision_", "weights_"}
    _optional_fitted = frozenset({"text_head_"})  # None: no text side

    def __init__(self, backbone=None, *, classnames=None, templates="openai_imagenet",
                 text_weights=None, alpha="auto", alpha_grid=ALPHA_GRID, cv: int = 5,
                 n_neighbors: int = 64, text_copies: int = 16, logit_scale: float = 100.0,
                 random_state=0, cache=None):
        self.backbone = backbone
        self.classnames = classnames
        self.templates = templates
        self.text_weights = text_weights
        self.alpha = alpha
        self.alpha_grid = alpha_grid
        self.cv = cv
        self.n_neighbors = n_neighbors
        self.text_copies = text_copies
        self.logit_scale = logit_scale
        self.random_state = random_state
        self.cache = cache

    # ------------------------------------------------------------------ fit

    def fit(self, X, y, X_val=None, y_val=None, groups=None):
        """Fit on support embeddings X (N, D) with labels y (N,).

        X_val, y_val : a validation set for choosing alpha (alpha="auto" with a text side).
        groups : (N,) source-image id of each row, for cross-validation folds.
        """
        self._check_params()
        name = type(self).__name__
        text, classes = self._text_side()
        X, y = self._validate_embeddings(X, y, reset=True)
        if text is None:
            classes, codes = np.unique(y, return_inverse=True)
            self.classnames_ = classes
        else:
            if text.shape[1] != X.shape[1]:
                raise InputError(f"{name}: the support embeddings have D={X.shape[1]} but the "
                                 f"text side has D={text.shape[1]}; encode images and texts "
                                 f"with the same backbone.")
            codes = label_codes(y, classes, f"{name}: support label")
        n_classes = len(classes)

        search = text is not None and self.alpha == "auto"
        grid = np.sort(np.asarray(self.alpha_grid, dtype=np.float64))
        cross_validate = search and X_val is None
        if search and not cross_validate:
            X_val, codes_val = self._validation_set(X_val, y_val, classes)
        parts = (self._folds(codes, groups, len(X)) if cross_validate
                 else np.zeros(len(X), np.int64))
        moments = _moments(X, codes, parts, n_classes)               # one pass over the data

        self.means_, self.precision_ = self._gaussians(moments, moments.parts_except(None), X,
                                                       None, text)
        self.weights_ = self.means_ @ self.precision_                  # w_c = P μ_c (rows)
        self.bias_ = (np.log(1.0 / n_classes)
                      - 0.5 * np.einsum("cd,cd->c", self.weights_, self.means_))
        self.classes_ = classes
        self.class_counts_ = np.bincount(codes, minlength=n_classes)
        self.text_head_ = text
        if not search:
            self.alpha_grid_ = self.alpha_scores_ = None
            self.alpha_ = 1.0 if text is None else float(self.alpha)
            return self
        scored = self.class_counts_ > 0
        if not cross_validate:
            scored[codes_val] = True
        columns = np.flatnonzero(scored)
        if cross_validate:
            correct = np.zeros(len(grid))
            for fold in range(moments.n_parts):
                held_out = parts == fold
                means, precision = self._gaussians(moments, moments.parts_except(fold), X,
                                                   ~held_out, text)
                correct += _correct_per_alpha(X[held_out], codes[held_out], text, means,
                                              precision, grid, self.logit_scale, columns)
            scores = correct / len(X)
        else:
            scores = _correct_per_alpha(X_val, codes_val, text, self.means_, self.precision_,
                                        grid, self.logit_scale, columns) / len(X_val)
        self.alpha_grid_, self.alpha_scores_ = grid, scores
        self.alpha_ = float(grid[np.argmax(scores)])  # first maximum = the smallest alpha
        return self

    def _gaussians(self, moments: "_Moments", parts: np.ndarray, X: np.ndarray,
                   train_rows: np.ndarray | None, text: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Steps 1-3 on the given parts -> class means (C, D) and shared precision P (D, D).

        Classes without samples there get synthesised statistics (text side only)."""
        counts, means, scatter = moments.pool(parts)
        n = int(counts.sum())
        unseen = np.flatnonzero(counts == 0)
        if len(unseen):
            k = min(self.n_neighbors, n)
            means[unseen], extra = _synthesise(X, train_rows, text[unseen], k, self.text_copies)
            scatter += extra
            n += len(unseen) * k
        return means, _ks_precision(scatter, n)

    def _validation_set(self, X_val, y_val, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        name = type(self).__name__
        X_val = self._validate_embeddings(X_val, reset=False)
        codes = label_codes(np.asarray(y_val).ravel(), classes, f"{name}: validation label")
        if len(codes) != len(X_val):
            raise InputError(f"{name}: X_val has {len(X_val)} rows but y_val has "
                             f"{len(codes)} labels.")
        return X_val, codes

    def _folds(self, codes: np.ndarray, groups, n: int) -> np.ndarray:
        """Fold id (N,) of each support row; folds are drawn over images (``groups``)."""
        name = type(self).__name__
        if groups is None:
            image, first = np.arange(n), np.arange(n)
        else:
            groups = np.asarray(groups).ravel()
            if len(groups) != n:
                raise InputError(f"{name}: groups has {len(groups)} entries for {n} support rows.")
            _, first, image = np.unique(groups, return_index=True, return_inverse=True)
            if (codes != codes[first][image]).any():
                raise InputError(f"{name}: a group (support image) carries more than one label.")
        image_class = codes[first]
        per_class = np.bincount(image_class)
        n_splits = min(self.cv, int(per_class.max()))
        rng = random_state_of(self.random_state, type(self).__name__)
        if n_splits >= 2:
            splitter = StratifiedKFold(n_splits, shuffle=True, random_state=rng)
        elif len(image_class) >= 2:  # one image per class: held-out classes are "unseen"
            splitter = KFold(min(self.cv, len(image_class)), shuffle=True, random_state=rng)
        else:
            raise InputError(f"{name}: alpha='auto' cannot cross-validate a single support "
                             f"image; pass X_val and y_val, or a number for alpha.")
        fold_of_image = np.empty(len(image_class), np.int64)
        with warnings.catch_warnings():  # "least populated class has fewer members": handled
            warnings.simplefilter("ignore", UserWarning)
            for fold, (_, test) in enumerate(splitter.split(image_class, image_class)):
                fold_of_image[test] = fold
        return fold_of_image[image]

    # ------------------------------------------------------------------ predict

    def logits(self, X) -> np.ndarray:
        """(N, C) float64 logits: s·xᵀT + α(xᵀW + b); without a text side xᵀW + b."""
        check_is_fitted(self)
        X = self._validate_embeddings(X, reset=False).astype(np.float64)
        logits = X @ self.weights_.T
        logits += self.bias_
        if self.text_head_ is not None:
            logits *= self.alpha_
            logits += self.logit_scale * (X @ self.text_head_.T.astype(np.float64))
        return logits

    # ------------------------------------------------------------------ inputs

    def _text_side(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(text head (C, D) in classes_ order, classes_), or (None, None) without a text side."""
        if self.text_weights is None and self.backbone is None and self.classnames is None:
            return None, None
        text, names = resolve_text_weights(type(self).__name__, self.text_weights, self.backbone,
                                           self.classnames, self.templates, self.cache)
        classes, self.classnames_, order = class_columns(names)
        return text[order], classes

    def _check_params(self) -> None:
        alpha = self.alpha
        check_param(self, "alpha", alpha == "auto" if isinstance(alpha, str) else
                    is_number(alpha, 0), "'auto' or a number >= 0")
        grid = np.asarray(self.alpha_grid, dtype=np.float64).ravel()
        check_param(self, "alpha_grid", len(grid) and np.isfinite(grid).all()
                    and (grid >= 0).all(), "non-empty numbers >= 0")
        for param, low in (("cv", 2), ("n_neighbors", 1), ("text_copies", 0)):
            check_param(self, param, is_integer(getattr(self, param), low),
                        f"an integer >= {low}")
        check_param(self, "logit_scale", is_number(self.logit_scale, 0), "a number >= 0")


# ---------------------------------------------------------------------- statistics


@dataclass
class _Moments:
    """Per (part, class) sufficient statistics of the support set; parts are CV folds."""

    counts: np.ndarray   # (F, C) samples
    means: np.ndarray    # (F, C, D) float64; 0 where the count is 0
    scatter: np.ndarray  # (F, D, D) float64: Σ (x − m_{f,y})(x − m_{f,y})ᵀ over part f

    @property
    def n_parts(self) -> int:
        return len(self.counts)

    def parts_except(self, part: int | None) -> np.ndarray:
        keep = np.ones(self.n_parts, bool)
        if part is not None:
            keep[part] = False
        return keep

    def pool(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Counts (C,), means (C, D) and within-class scatter (D, D) of the kept parts.

        Exact pooling (parallel-axis rule): S = Σ_f S_f + Σ_{f,c} n_fc (m_fc − μ_c)(m_fc − μ_c)ᵀ.
        """
        counts_fc, means_fc = self.counts[keep], self.means[keep]
        counts = counts_fc.sum(axis=0)
        means = np.einsum("fc,fcd->cd", counts_fc, means_fc) / np.maximum(counts, 1)[:, None]
        scatter = self.scatter[keep].sum(axis=0)
        if len(counts_fc) > 1:
            spread = ((means_fc - means) * np.sqrt(counts_fc)[..., None]).reshape(-1, means.shape[1])
            scatter += spread.T @ spread
        return counts, means, scatter


def _moments(X: np.ndarray, codes: np.ndarray, parts: np.ndarray, n_classes: int) -> _Moments:
    """One pass over X in float64 blocks: per (part, class) counts, means and scatter.

    Rows are centred at an anchor a (the first row of their part and class) as they stream by:
    Z = X − a, S_a = ZᵀZ, and with δ = mean(Z) the mean is a + δ and the scatter about it is
    S = S_a − n δδᵀ (exact; the anchor keeps the subtraction well conditioned).
    """
    n_parts, dim = int(parts.max()) + 1, X.shape[1]
    cell = parts * n_classes + codes
    counts = np.bincount(cell, minlength=n_parts * n_classes)
    cells_present, first = np.unique(cell, return_index=True)
    anchors = np.zeros((n_parts * n_classes, dim))
    anchors[cells_present] = X[first]
    shifted_sums = np.zeros_like(anchors)
    scatter = np.zeros((n_parts, dim, dim))
    block = np.empty((min(_ROWS, len(X)), dim))
    for part in range(n_parts):
        rows_of_part = np.flatnonzero(parts == part) if n_parts > 1 else slice(None)
        members, cells = X[rows_of_part], cell[rows_of_part]
        for rows in _blocks(len(cells)):
            size = rows.stop - rows.start
            centred = np.subtract(members[rows], anchors[cells[rows]], out=block[:size])
            add_gram(scatter[part], centred)                        # S_a += ZᵀZ
            onehot = sparse.csr_array((np.ones(size), (cells[rows], np.arange(size))),
                                      shape=(len(anchors), size))
            shifted_sums += onehot @ centred
    shift = (shifted_sums / np.maximum(counts, 1)[:, None]).reshape(n_parts, n_classes, dim)
    for part, weighted in enumerate(shift * np.sqrt(counts.reshape(n_parts, n_classes, 1))):
        scatter[part] = np.tril(scatter[part]) + np.tril(scatter[part], -1).T
        scatter[part] -= weighted.T @ weighted
    return _Moments(counts.reshape(n_parts, n_classes),
                    anchors.reshape(n_parts, n_classes, dim) + shift, scatter)


def _ks_precision(scatter: np.ndarray, n: int) -> np.ndarray:
    """P = D·(S + tr(Σ̂)·I)⁻¹ with Σ̂ = S/(n−1), by Cholesky (tr(Σ̂) := 1 when S = 0)."""
    dim = len(scatter)
    trace = np.trace(scatter)
    ridge = trace / (n - 1) if trace > 0 else 1.0
    system = scatter + ridge * np.eye(dim)
    factor = cho_factor(system, lower=True, overwrite_a=True, check_finite=False)
    return dim * cho_solve(factor, np.eye(dim), overwrite_b=True, check_finite=False)


def _synthesise(X: np.ndarray, train_rows: np.ndarray | None, text: np.ndarray, k: int,
                copies: int) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of classes without samples, from their text vectors t_u (U, D).

    Neighbours: the k training rows with the largest x·t_u. Returns the synthesised means
    (U, D) = mean(k neighbours, ``copies`` × t_u) and the summed scatter of the neighbours
    about t_u (D, D), all float64.
    """
    dim = X.shape[1]
    means = np.empty((len(text), dim))
    scatter = np.zeros((dim, dim))
    per_block = max(1, (1 << 24) // max(len(X), 1))  # (block, N) similarity matrix <= 64 MiB
    for start in range(0, len(text), per_block):
        vectors = text[start:start + per_block].astype(np.float64)
        similarity = text[start:start + per_block] @ X.T
        if train_rows is not None:
            similarity[:, ~train_rows] = -np.inf
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        neighbours = X[nearest].astype(np.float64)                       # (block, k, D)
        means[start:start + per_block] = (neighbours.sum(axis=1) + copies * vectors) / (k + copies)
        offsets = (neighbours - vectors[:, None, :]).reshape(-1, dim)
        scatter += offsets.T @ offsets
    return means, scatter


def _correct_per_alpha(X: np.ndarray, codes: np.ndarray, text: np.ndarray, means: np.ndarray,
                       precision: np.ndarray, grid: np.ndarray, scale: float,
                       columns: np.ndarray) -> np.ndarray:
    """Correct predictions of s·xᵀT + α(xᵀW + b) for every α of the grid, the argmax taken
    over the classes ``columns`` (sorted; they include every class of ``codes``).

    Both logit terms come from one GEMM per block (α only scales one), in float32. The GDA
    term is shifted by the class-independent xᵀPμ̄ − ½μ̄ᵀPμ̄ (μ̄: mean of the class means),
    which leaves every argmax unchanged and keeps float32 accurate when all embeddings share
    a large common component: w'_c = Pδ_c, b'_c = log(1/C) − μ̄ᵀPδ_c − ½δ_cᵀPδ_c, δ_c = μ_c − μ̄.
    """
    centre = means.mean(axis=0)
    offsets = means - centre
    weights = offsets @ precision
    bias = (np.log(1.0 / len(means)) - weights @ centre
            - 0.5 * np.einsum("cd,cd->c", weights, offsets)).astype(np.float32)
    if len(columns) < len(means):
        text, weights, bias = text[columns], weights[columns], bias[columns]
        codes = np.searchsorted(columns, codes)
    heads = np.vstack([scale * text, weights.astype(np.float32)]).T   # (D, 2C)
    correct = np.zeros(len(grid))
    for rows in _blocks(len(X)):
        both = X[rows] @ heads
        zero_shot, gda = both[:, :len(text)], both[:, len(text):]
        gda += bias
        logits = np.empty_like(gda)
        for i, alpha in enumerate(grid):
            np.multiply(gda, np.float32(alpha), out=logits)
            logits += zero_shot
            correct[i] += np.count_nonzero(np.argmax(logits, axis=1) == codes[rows])
    return correct


def _blocks(n: int) -> list[slice]:
    return [slice(start, min(start + _ROWS, n)) for start in range(0, n, _ROWS)]


def fit_gda_from_support(backbone: Backbone, support: ImageSource,
                         classnames: Sequence[str] | None = None, *, shots: int | None = None,
                         n_views: int = 10, alpha: float | str = "auto",
                         val: ImageSource | None = None, random_state: int = 0,
                         templates="openai_imagenet", cache: str | os.PathLike | None = None,
                         ) -> GDAClassifier:
    """Fit GDA on a labelled support set of images, as ``zeroshot-plus fit`` does.

    support : labelled images (class sub-folders, a manifest with labels, or an ImageSet).
    classnames : the classes (default: the labels of ``support``, sorted); a class without
        support images is predicted from its text.
    shots : images per class drawn with ``random_state`` (default: all of them).
    n_views : augmented views per support image (``augmented_support``).
    alpha : a number, or "auto": chosen on ``val`` (labelled images), else by cross-validation
        over the support images.
    random_state : seed of the shot sampling, the views and the folds.
    templates, cache : the text side's templates and the embedding store of every encoding.
    """
    images = read_image_source(support)
    if images.labels is None:
        raise InputError(f"support images '{images.source}' carry no labels: use a folder with "
                         f"one sub-folder per class, or a manifest with a label column.")
    if classnames is None:
        classnames = sorted(set(images.labels))
    if shots is not None:
        images = sample_shots(images, shots, random_state)
    views = augmented_support(backbone, images, n_views=n_views, random_state=random_state,
                              cache=cache)
    X_val = y_val = None
    if val is not None:
        val = read_image_source(val)
        if val.labels is None:
            raise InputError(f"validation images '{val.source}' carry no labels.")
        X_val, y_val = backbone.encode_images(val, cache=cache), val.labels
    classifier = GDAClassifier(backbone, classnames=classnames, templates=templates, alpha=alpha,
                               random_state=random_state, cache=cache)
    return classifier.fit(views.X, views.y, X_val=X_val, y_val=y_val, groups=views.groups)
