"""Schur-complement tools of "Dissecting CLIP": the SCE diversity score and prompt removal.

n paired samples (prompt t_i, image x_i), mapped by one feature map φ into R^p
(rows Φ_T, Φ_I of shape (n, p)):

    1. C_TT = Φ_TᵀΦ_T/n,  C_TI = Φ_TᵀΦ_I/n,  C_II = Φ_IᵀΦ_I/n      uncentred joint covariance
    2. C_{I←T} = C_TIᵀ (C_TT + λI)⁺ C_TI                             the part the text explains
    3. C_{I|T} = C_II − C_{I←T}                                      Schur complement: the rest
    4. SCE = exp(τ·H_α(λ/τ)), λ = eig C_{I|T}, τ = tr C_{I|T}        Schur complement entropy
    5. Γ* = (C_TT + λI)⁺ C_TI,  φ̃(x) = φ(x) − Γ*ᵀφ(t_c)               remove prompt t_c from x

Feature maps: ``kernel="cosine"`` is φ(u) = u/‖u‖ (p = D); ``kernel="gaussian"`` is the random
Fourier map φ(u) = m^{-1/2}[cos(Ωᵀu); sin(Ωᵀu)] with Ω ~ N(0, σ⁻²)^{D×m} (p = 2m), whose inner
products approximate exp(−‖u−u'‖²/(2σ²)); with ``n_features=None`` the exact Gaussian kernel
is used (dual form). Both maps have ‖φ‖ = 1, so (uncentred) tr C_TT = tr C_II = 1 and the
ridge, given relative to tr C_TT, is in effect an absolute λ on that scale. The top
eigenvectors of C_{I|T} give the "modes" the prompts do not explain (``SCEResult.modes``).

The score is computed exactly in whichever form is smaller: the primal (p × p covariances)
or the dual (n × n Gram matrices K = ΦΦᵀ: with K_TT + nλI = U diag(k + nλ) Uᵀ and the
weights w = k/(k + nλ), the non-zero eigenvalues of C_{I←T} and C_{I|T} are those of
(1/n) diag(√w) UᵀK_IIU diag(√w) and (1/n) diag(√(1−w)) UᵀK_IIU diag(√(1−w))).

Fixes of the reference code (aziksh-ospanov/CLIP-DISSECTION):
- its cosine kernel correlates feature columns (dimensions) across samples; here the kernel
  is the linear kernel on normalised rows, as the paper describes;
- its Gaussian edit draws fresh random frequencies for the edited vectors; here Ω is drawn
  once from ``random_state`` and stored, so fit and transform share it;
- its covariances sum batched outer products (a B × p × p tensor, 6.4 GB at B = 64 and
  p = 5000); here each covariance is a BLAS product ΦᵀΦ in float64, summed in place over
  row blocks, and the solve and eigenvalues work in place on the p × p arrays;
- its ε = 1e-12 is meaningless next to float32 features; here the ridge is explicit,
  relative to tr C_TT, and everything is float64;
- its cosine Γ* comes from column-normalised correlations and is applied to raw features
  (inconsistent coordinates); here Γ* is the ridge regression on unit rows, applied to unit
  rows, so the edit of a reference pair leaves a residual orthogonal to the text features.
"""

from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass
from typing import IO, Callable, Sequence

import numpy as np
from scipy.linalg import blas, cholesky, eigh, lapack, solve_triangular
from scipy.sparse import issparse
from scipy.sparse.linalg import LinearOperator, eigsh
from sklearn.base import (BaseEstimator, ClassNamePrefixFeaturesOutMixin, OneToOneFeatureMixin,
                          TransformerMixin)
from sklearn.utils.validation import check_is_fitted, validate_data

from ..choices import ENTROPIES, KERNELS
from ..data.files import atomic_output
from ..errors import InputError
from ..text.heads import unit_rows
from .base import is_number, random_state_of
from .linalg import add_gram

FORMS = ("auto", "primal", "dual")
_DEGENERATE_DOF = 0.9  # warn when the text features span this share of the n sample directions
_BLOCK = 1024  # rows of features made at a time while summing the covariances
_SIGMA_RANGE = 3.0  # warn when sigma is this many times above or below the median distance


# ---------------------------------------------------------------------- feature maps


Seed = int | np.random.Generator | np.random.RandomState | None


def draw_frequencies(dim: int, n_features: int, sigma: float, random_state: Seed = 0
                     ) -> np.ndarray:
    """Ω (dim, n_features/2) with N(0, σ⁻²) entries: the frequencies of the random Fourier map.

    random_state : an int seeds numpy's ``default_rng`` (so a seed draws the same Ω here, in
        ``sce_score`` and in ``SchurEditor``); a Generator is used as is; None or a RandomState
        go through scikit-learn's ``check_random_state`` (``base.random_state_of``).
    """
    if not isinstance(n_features, numbers.Integral) or n_features < 2 or n_features % 2:
        raise InputError(f"n_features must be an even number >= 2 (cos and sin halves), "
                         f"got {n_features}.")
    if not (is_number(sigma, 0) and sigma > 0):
        raise InputError(f"sigma must be a positive finite number, got {sigma!r}.")
    if isinstance(random_state, numbers.Integral):
        rng = np.random.default_rng(random_state)
    elif isinstance(random_state, np.random.Generator):
        rng = random_state
    else:
        rng = random_state_of(random_state)
    return rng.standard_normal((dim, n_features // 2)) / sigma


def random_fourier_features(X: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """φ(X) = m^{-1/2} [cos(XΩ), sin(XΩ)]: X (n, D), Ω (D, m) -> (n, 2m) float64, unit rows.

    φ(x)ᵀφ(y) = (1/m) Σ_j cos(ω_jᵀ(x − y)) → exp(−‖x − y‖²/(2σ²)) as m grows.
    """
    projection = np.asarray(X, dtype=np.float64) @ omega
    m = omega.shape[1]
    features = np.empty((len(projection), 2 * m))
    np.cos(projection, out=features[:, :m])
    np.sin(projection, out=features[:, m:])
    features /= np.sqrt(m)
    return features


def _gaussian_gram(A: np.ndarray, sigma: float) -> np.ndarray:
    """Exact exp(−‖a_i − a_j‖²/(2σ²)) for the rows of A (n, D) -> (n, n) float64."""
    squared = np.einsum("ij,ij->i", A, A)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2.0 * A @ A.T, 0.0)
    return np.exp(-distances / (2.0 * sigma ** 2))


def _feature_map(omega: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
    """Unit rows (n, D) -> features (n, p): the identity (cosine) or the random Fourier map."""
    return (lambda X: X) if omega is None else (lambda X: random_fourier_features(X, omega))


def _blocks(feature: Callable, X: np.ndarray):
    """φ(X) in blocks of _BLOCK rows: no n × p feature matrix is ever formed."""
    for start in range(0, len(X), _BLOCK):
        yield feature(X[start:start + _BLOCK])


def _second_moment(feature: Callable, X: np.ndarray, center: bool,
                   out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """out (lower triangle; zeros when None) += φ(X)ᵀφ(X)/n, minus the mean's outer product
    when ``center``. Returns (out, mean of φ(X)). One in-place dsyrk per block of rows."""
    total = 0.0
    for phi in _blocks(feature, X):
        if out is None:
            out = np.zeros((phi.shape[1], phi.shape[1]))
        add_gram(out, phi, 1.0 / len(X))
        total = total + phi.sum(axis=0)
    mean = total / len(X)
    if center:
        blas.dsyr(-1.0, mean, a=out.T, lower=0, overwrite_a=1)
    return out, mean


def _cross_moment(feature: Callable, texts: np.ndarray, images: np.ndarray, center: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(C_TI = φ(T)ᵀφ(I)/n (p, p), mean of φ(I)); one in-place dgemm per block of rows."""
    n, c_ti, total_t, total_i = len(texts), None, 0.0, 0.0
    for phi_t, phi_i in zip(_blocks(feature, texts), _blocks(feature, images)):
        if c_ti is None:
            c_ti = np.zeros((phi_t.shape[1], phi_i.shape[1]))
        blas.dgemm(1.0 / n, phi_i.T, phi_t.T, beta=1.0, c=c_ti.T, trans_b=1, overwrite_c=1)
        total_t, total_i = total_t + phi_t.sum(axis=0), total_i + phi_i.sum(axis=0)
    if center:
        blas.dger(-1.0, total_i / n, total_t / n, a=c_ti.T, overwrite_a=1)
    return c_ti, total_i / n


# ---------------------------------------------------------------------- (C + λI)⁺


class _RegularisedInverse:
    """(C + λI)⁺ = FᵀF for a symmetric PSD C (p, p) given by its lower triangle, which is
    overwritten.

    λ clearly above rounding (> p·eps·tr C): Cholesky C + λI = UᵀU, F = U⁻ᵀ. Otherwise the
    eigendecomposition, F = diag((c + λ)^{-1/2}) Vᵀ over the eigenvalues above
    p·eps·max(c + λ) (the pseudo-inverse cut-off of numpy.linalg.pinv).
    """

    def __init__(self, C: np.ndarray, lam: float):
        p = len(C)
        self.lam, self.upper = lam, None
        if lam > p * np.finfo(np.float64).eps * np.trace(C):
            C.flat[:: p + 1] += lam
            # the Fortran view C.T holds the lower triangle as its upper one: no copy
            self.upper = cholesky(C.T, lower=False, overwrite_a=True, check_finite=False)
            return
        values, vectors = eigh(C.T, lower=False, overwrite_a=True, check_finite=False)
        shifted = values + lam
        keep = shifted > p * np.finfo(np.float64).eps * max(shifted.max(), 0.0)
        self.scale = 1.0 / np.sqrt(shifted[keep])
        self.vectors = vectors[:, keep]

    def root(self, B: np.ndarray, overwrite: bool = False) -> np.ndarray:
        """F B; with ``overwrite`` a C-ordered B (p, k) is replaced by the result."""
        if self.upper is None:
            return self.scale[:, None] * (self.vectors.T @ B)
        if overwrite and B.flags.c_contiguous:  # (F B)ᵀ = Bᵀ U⁻¹, solved on the Fortran view
            return blas.dtrsm(1.0, self.upper, B.T, side=1, lower=0, overwrite_b=1).T
        return solve_triangular(self.upper, B, trans="T", check_finite=False)

    def solve(self, B: np.ndarray) -> np.ndarray:
        """(C + λI)⁺ B = Fᵀ(F B)."""
        if self.upper is None:
            return self.vectors @ (self.scale[:, None] * self.root(B))
        return solve_triangular(self.upper, self.root(B), check_finite=False)

    def dof(self) -> float:
        """tr(C (C + λI)⁺) = Σ c/(c + λ): the number of directions C spans, weighted.

        Cholesky: p − λ·tr((C + λI)⁻¹) = p − λ‖U⁻¹‖²_F (the factor is overwritten: call last).
        """
        if self.upper is None:
            return float(np.sum(1.0 - self.lam * self.scale ** 2))
        inverse, _ = lapack.dtrtri(self.upper, lower=0, overwrite_c=1)
        return float(len(inverse) - self.lam * np.einsum("ij,ij->", inverse, inverse))


# ---------------------------------------------------------------------- the score


@dataclass(frozen=True)
class SCEResult:
    """What ``sce_score`` returns.

    score : SCE of the images given the texts, exp(τ·H_α(λ/τ)) over λ = eig C_{I|T}
        (the image generator's own diversity); ``entropy="normalized"`` drops the τ.
    text_score : the same entropy of C_{I←T}, the diversity the prompts explain.
    spectrum, text_spectrum : eigenvalues of C_{I|T} and C_{I←T}, descending, ≥ 0.
    image_trace, residual_trace, explained_trace : tr C_II = tr C_{I|T} + tr C_{I←T}
        (tr C_II = 1 for both feature maps: their rows have unit norm).
    text_dof : tr(C_TT (C_TT + λI)⁺), the number of sample directions the text features span;
        the score degenerates toward 1 as it approaches n_samples.
    mode_scores : (n_samples, n_modes) projection of each image on the top eigenvectors of
        C_{I|T} (signs chosen so that each column sums to > 0): the modes the text misses.
    form : "primal" (p × p covariances) or "dual" (n × n Gram matrices).
    n_features : p, the dimension of the feature map (n_samples for the exact kernel).
    ridge : the absolute λ used (ridge × tr C_TT).
    """

    score: float
    text_score: float
    spectrum: np.ndarray
    text_spectrum: np.ndarray
    image_trace: float
    residual_trace: float
    explained_trace: float
    text_dof: float
    mode_scores: np.ndarray
    form: str
    kernel: str
    n_samples: int
    n_features: int
    sigma: float | None
    ridge: float
    order: float
    entropy: str
    random_state: Seed

    def modes(self, top: int = 50) -> np.ndarray:
        """(n_modes, top) image indices, each mode's most typical images first."""
        return np.argsort(-self.mode_scores, axis=0, kind="stable").T[:, :top]


def spectrum_entropy(eigenvalues: np.ndarray, order: float = 1.0, entropy: str = "reference"
                     ) -> float:
    """exp(τ·H_α(λ/τ)) ("reference") or exp(H_α(λ/τ)) ("normalized") with τ = Σλ.

    H_α is the Rényi entropy of order α (α = 1: Shannon; α = inf: −log max p). The reference
    formula exp(−Σ λ_i log(λ_i/τ)) equals the "reference" value at α = 1.
    """
    if entropy not in ENTROPIES:
        raise InputError(f"entropy must be one of {', '.join(ENTROPIES)}, got '{entropy}'.")
    if not order >= 0:
        raise InputError(f"order must be a number >= 0, got {order}.")
    values = np.maximum(np.asarray(eigenvalues, dtype=np.float64), 0.0)
    total = values.sum()
    if total <= 0:
        return 1.0
    p = values[values > 0] / total
    if order == 1:
        h = -np.sum(p * np.log(p))
    elif np.isinf(order):
        h = -np.log(p.max())
    else:
        h = np.log(np.sum(p ** order)) / (1.0 - order)
    return float(np.exp(total * h if entropy == "reference" else h))


def sce_score(image_embeddings, text_embeddings, kernel: str = "gaussian", sigma: float = 0.5,
              order: float = 1.0, n_features: int | None = 5000, ridge: float = 1e-6,
              random_state: Seed = 0, *, entropy: str = "reference",
              normalize: bool = True, center: bool = False, form: str = "auto",
              n_modes: int = 5) -> SCEResult:
    """Schur complement entropy of images (n, D) given their prompts' embeddings (n, D).

    Rows pair up by position: text_embeddings[i] is the prompt (or caption) of
    image_embeddings[i]. Images made from the same prompt repeat its row.

    kernel : "gaussian" (default; random Fourier features, or the exact kernel when
        ``n_features`` is None) or "cosine" (the linear kernel on unit rows).
    sigma : Gaussian bandwidth. The default 0.5 suits unit-norm CLIP embeddings (distances
        ≤ 2); the reference's 3.5 belongs to raw ViT-B/32 features (``normalize=False``).
    order, entropy : the Rényi order α and the weighting of ``spectrum_entropy``.
    n_features : p = 2m, the dimension of the random Fourier map (the reference's 5000).
    ridge : λ / tr C_TT, added to C_TT before inverting. The default is a numerical floor;
        raise it (1e-3 … 1e-1) to keep the score informative when every prompt is distinct.
    random_state : seed of the random frequencies Ω (the score varies with the draw).
    normalize : L2-normalise the embeddings before the Gaussian map (always, for cosine).
    center : centred covariances. The default (uncentred, as in the paper) always lets the
        text explain the mean direction, so C_{I←T} ≠ 0 even for independent images.
    form : "auto" (the smaller of primal p × p and dual n × n), "primal" or "dual".
    n_modes : how many top eigenvectors of C_{I|T} to project the images on (``mode_scores``).

    Warns (UserWarning) when the text features span almost all n sample directions (the
    score then degenerates toward 1) and when sigma is far from the embeddings' distances.
    """
    images, texts = _check_pairs(image_embeddings, text_embeddings)
    n = len(images)
    if kernel not in KERNELS:
        raise InputError(f"kernel must be one of {', '.join(KERNELS)}, got '{kernel}'.")
    if form not in FORMS:
        raise InputError(f"form must be one of {', '.join(FORMS)}, got '{form}'.")
    if not is_number(ridge, 0):
        raise InputError(f"ridge must be a finite number >= 0, got {ridge!r}.")
    spectrum_entropy(np.ones(1), order, entropy)  # validates order and entropy up front
    exact = kernel == "gaussian" and n_features is None
    if kernel == "cosine" or normalize:
        images, texts = unit_rows(images), unit_rows(texts)
    if kernel == "gaussian":
        _check_sigma(images, sigma)
    if exact and form == "primal":
        raise InputError("the exact Gaussian kernel (n_features=None) has only the dual form; "
                         "give n_features for random Fourier features.")
    omega = (draw_frequencies(images.shape[1], n_features, sigma, random_state)
             if kernel == "gaussian" and not exact else None)
    feature = _feature_map(omega)
    p = n if exact else images.shape[1] if omega is None else 2 * omega.shape[1]
    chosen = form if form != "auto" else ("dual" if n <= p else "primal")
    if chosen == "primal":
        parts = _primal(feature, texts, images, center, ridge, n_modes)
    else:
        if exact:
            k_tt, k_ii = _gaussian_gram(texts, sigma), _gaussian_gram(images, sigma)
        else:
            phi_t, phi_i = feature(texts), feature(images)
            k_tt, k_ii = phi_t @ phi_t.T, phi_i @ phi_i.T
        if center:
            k_tt, k_ii = _double_centre(k_tt), _double_centre(k_ii)
        parts = _dual(k_tt, k_ii, ridge, n_modes)
    residual, explained, image_trace, lam, dof, mode_scores = parts
    if dof >= _DEGENERATE_DOF * n:
        warnings.warn(
            f"the text features span {dof:.0f} of the {n} sample directions, so the prompts "
            f"explain almost all of the image covariance and the SCE degenerates toward 1; "
            f"use prompts that repeat (several images per prompt), fewer random features "
            f"(n_features), a larger sigma, or a larger ridge.", UserWarning, stacklevel=2)
    return SCEResult(
        score=spectrum_entropy(residual, order, entropy),
        text_score=spectrum_entropy(explained, order, entropy),
        spectrum=np.maximum(residual, 0.0), text_spectrum=np.maximum(explained, 0.0),
        image_trace=image_trace, residual_trace=float(residual.sum()),
        explained_trace=float(explained.sum()), text_dof=dof, mode_scores=mode_scores,
        form=chosen, kernel=kernel, n_samples=n, n_features=p,
        sigma=sigma if kernel == "gaussian" else None, ridge=lam, order=order, entropy=entropy,
        random_state=random_state if kernel == "gaussian" and not exact else None)


def _primal(feature: Callable, texts: np.ndarray, images: np.ndarray, center: bool,
            ridge: float, n_modes: int):
    """Eigenvalues of C_{I|T} and C_{I←T} from the p × p covariances; modes from C_{I|T}.

    At most two p × p arrays are alive: C_TT (then its factor, then C_{I←T}) with C_TI
    (then F·C_TI); then C_{I←T} with C_{I|T} = −C_{I←T} + C_II, summed in place.
    """
    c_tt, _ = _second_moment(feature, texts, center)
    c_ti, mean_i = _cross_moment(feature, texts, images, center)
    lam = ridge * np.trace(c_tt)
    inverse = _RegularisedInverse(c_tt, lam)
    root = inverse.root(c_ti, overwrite=True)  # C_{I←T} = (F C_TI)ᵀ(F C_TI)
    del c_ti
    dof = inverse.dof()
    del inverse  # the factor is no longer needed: its memory takes C_{I←T}
    explained = c_tt
    explained.fill(0.0)
    add_gram(explained, root)
    del root
    residual, _ = _second_moment(feature, images, center, out=-explained)  # C_{I|T}
    image_trace = float(np.trace(residual) + np.trace(explained))
    text_values = _eigenvalues(explained)
    del explained
    vectors = _top_eigenpairs(residual, n_modes)[1]
    scores = np.vstack([phi @ vectors for phi in _blocks(feature, images)])
    if center:
        scores -= mean_i @ vectors
    return _eigenvalues(residual), text_values, image_trace, lam, dof, _orient(scores)


def _dual(k_tt: np.ndarray, k_ii: np.ndarray, ridge: float, n_modes: int):
    """The same eigenvalues from the n × n Gram matrices (see the module docstring)."""
    n = len(k_tt)
    lam = ridge * np.trace(k_tt) / n  # tr C_TT = tr K_TT / n
    k, u = eigh(k_tt)
    if lam > 0:
        w = np.maximum(k, 0.0) / (np.maximum(k, 0.0) + n * lam)
    else:
        w = (k > n * np.finfo(np.float64).eps * max(k.max(), 0.0)).astype(np.float64)
    rotated = u.T @ k_ii @ u
    keep, drop = np.sqrt(w), np.sqrt(1.0 - w)
    explained = keep[:, None] * rotated * keep[None, :] / n
    residual = drop[:, None] * rotated * drop[None, :] / n
    values, vectors = _top_eigenpairs(residual, n_modes)
    # primal eigenvector u = Φ_Iᵀ U diag(√(1−w)) v / √(nμ), so Φ_I u = K_II U diag(√(1−w)) v / √(nμ)
    scores = k_ii @ (u @ (drop[:, None] * vectors)) / np.sqrt(n * np.maximum(values, 1e-300))
    return (_eigenvalues(residual), _eigenvalues(explained), float(np.trace(k_ii)) / n, lam,
            float(w.sum()), _orient(scores))


def _top_eigenpairs(M: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenpairs of a symmetric M (its lower triangle), largest first.

    Lanczos (eigsh on BLAS dsymv products) when k ≪ p, else LAPACK on the Fortran view.
    """
    k = min(k, len(M))
    if k == 0:
        return np.empty(0), np.empty((len(M), 0))
    if k < len(M) // 10:
        operator = LinearOperator(M.shape, dtype=np.float64,
                                  matvec=lambda x: blas.dsymv(1.0, M.T, np.ravel(x), lower=0))
        values, vectors = eigsh(operator, k=k, which="LA", v0=np.ones(len(M)))
    else:
        values, vectors = eigh(M.T, lower=False, subset_by_index=[len(M) - k, len(M) - 1])
    order = np.argsort(-values)
    return values[order], vectors[:, order]


def _eigenvalues(M: np.ndarray) -> np.ndarray:
    """All eigenvalues of a symmetric M (its lower triangle, overwritten), descending."""
    return eigh(M.T, lower=False, eigvals_only=True, overwrite_a=True, check_finite=False)[::-1].copy()


def _orient(scores: np.ndarray) -> np.ndarray:
    """Flip each column's sign so that it sums to > 0 (eigenvectors have no sign); a column
    that sums to ~0 (centred features) gets its largest-magnitude entry positive."""
    sums = scores.sum(axis=0)
    balanced = np.abs(sums) <= 1e-8 * np.abs(scores).sum(axis=0)
    largest = scores[np.argmax(np.abs(scores), axis=0), np.arange(scores.shape[1])]
    return scores * np.where(np.where(balanced, largest, sums) < 0, -1.0, 1.0)


def _double_centre(K: np.ndarray) -> np.ndarray:
    """HKH with H = I − 11ᵀ/n: the Gram matrix of centred features."""
    return K - K.mean(axis=0) - K.mean(axis=1)[:, None] + K.mean()


def _check_sigma(images: np.ndarray, sigma: float) -> None:
    """Warn when σ is far from the median distance between (up to 1000) images."""
    if not (is_number(sigma, 0) and sigma > 0):
        raise InputError(f"sigma must be a positive finite number, got {sigma!r}.")
    sample = images[:1000]
    squared = np.einsum("ij,ij->i", sample, sample)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * sample @ sample.T, 0))
    median = float(np.median(distances[np.triu_indices(len(sample), 1)]))
    if median > 0 and not 1 / _SIGMA_RANGE <= sigma / median <= _SIGMA_RANGE:
        shape = "nearly constant" if sigma > median else "nearly the identity"
        warnings.warn(
            f"sigma={sigma:g} is far from the median distance {median:.3g} between the image "
            f"embeddings, so the Gaussian kernel is {shape} and the score says little; use a "
            f"sigma near {median:.2g} (unit-norm embeddings need a much smaller sigma than the "
            f"reference's 3.5 for raw features).", UserWarning, stacklevel=3)


# ---------------------------------------------------------------------- input checks


def _as_embeddings(X, name: str, dim: int | None = None) -> np.ndarray:
    """A finite (n, D) float64 array without zero rows, or an InputError naming ``name``."""
    if issparse(X):
        raise InputError(f"{name} must be a dense (n, D) array, not a sparse matrix.")
    try:
        X = np.asarray(X)
        real = not np.iscomplexobj(X)
        X = X.astype(np.float64 if real else np.complex128, copy=False)
    except ValueError:
        raise InputError(f"{name} must be a numeric (n, D) array.") from None
    except TypeError as exc:  # e.g. an object array holding a dict
        raise TypeError(f"{name} must be a numeric (n, D) array: {exc}.") from None
    if not real:
        raise InputError(f"{name} must be real: Complex data not supported.")
    if X.ndim != 2:
        raise InputError(f"{name} must be a 2-D (n, D) array, got shape {X.shape}: Reshape "
                         f"your data with reshape(1, -1) if it holds one embedding.")
    if not X.size:
        raise InputError(f"{name} is empty: {X.shape[0]} sample(s), {X.shape[1]} feature(s) "
                         f"(shape={X.shape}) while a minimum of 1 is required.")
    if not np.isfinite(X).all():
        row = int(np.argwhere(~np.isfinite(X))[0, 0])
        raise InputError(f"{name} contains NaN or infinite values (row {row}).")
    if dim is not None and X.shape[1] != dim:
        raise InputError(f"{name} has dimension {X.shape[1]}, but {dim} was expected: encode "
                         f"images and texts with the same model.")
    zero = np.flatnonzero(~np.any(X, axis=1))
    if zero.size:
        raise InputError(f"{name} row {int(zero[0])} is all zeros.")
    return X


def _check_pairs(images, texts, image_name: str = "image_embeddings",
                 text_name: str = "text_embeddings") -> tuple[np.ndarray, np.ndarray]:
    images = _as_embeddings(images, image_name)
    if len(images) < 2:
        raise InputError(f"the Schur complement needs at least 2 image-prompt pairs, got "
                         f"{len(images)} (n_samples={len(images)}).")
    texts = _as_embeddings(texts, text_name, dim=images.shape[1])
    if len(images) != len(texts):
        raise InputError(f"{image_name} has {len(images)} rows but {text_name} has "
                         f"{len(texts)}: give one prompt per image.")
    return images, texts


# ---------------------------------------------------------------------- the edit


class SchurEditor(TransformerMixin, BaseEstimator):
    """Remove a prompt's influence from image embeddings: φ̃(x) = φ(x) − Γ*ᵀφ(t_c).

    ``fit(X)`` learns Γ* = (C_TT + λI)⁺ C_TI, the least-squares map from text features to
    image features, from n reference pairs: the rows of X (n, D) and ``texts``, paired by
    position; ``transform(X)`` subtracts what ``prompts`` predict from each row of X (N, D).

    How rows pair up: ``texts[i]`` is the prompt that made image X[i] (or a caption that
    describes it), so ``texts`` has one entry per fit row, in the rows' order; images made
    from the same prompt repeat it. At transform, ``prompts`` is either one prompt removed
    from every row or one per row of the X given to transform, in its order.
    ``fit_transform(X)`` with ``prompts=None`` removes from each fit row its own text (the
    residuals Φ_I − Φ_TΓ*, orthogonal to the text features); ``transform`` needs ``prompts``.
    Fit it, or the Pipeline it is a step of, on the rows its texts describe (cross-validation
    fits on subsets of the rows and breaks the pairing); once fitted it transforms any images.

    Parameters
    ----------
    backbone : Backbone that encodes ``texts`` or ``prompts`` given as strings.
    texts : the reference prompts paired with the fit rows: n strings or an (n, D) array of
        text embeddings.
    prompts : what ``transform`` removes: one string, a (D,) vector, or one per row (N
        strings or (N, D)).
    kernel : "cosine" (default): φ(u) = u/‖u‖, the output stays in CLIP space, (N, D), so
        any Predictor accepts it. "gaussian": random Fourier features; the output lives in
        the (N, n_features) feature space (for kernel methods, not for CLIP text heads).
    sigma, n_features, random_state : the Gaussian map; Ω is drawn once at fit (``omega_``)
        and reused by every transform (random_state as in ``draw_frequencies``).
    ridge : λ / tr C_TT (tr C_TT = 1 for both maps).
    cache : embedding store directory for the text embeddings.

    Fitted attributes: ``gamma_`` (p, p) float64, ``omega_`` (D, m) or None, ``ridge_`` (the
    absolute λ), ``n_features_in_`` (D).
    """

    def __init__(self, backbone=None, *, texts=None, prompts=None, kernel: str = "cosine",
                 sigma: float = 0.5, n_features: int = 5000, ridge: float = 1e-6,
                 random_state: Seed = 0, cache=None):
        self.backbone = backbone
        self.texts = texts
        self.prompts = prompts
        self.kernel = kernel
        self.sigma = sigma
        self.n_features = n_features
        self.ridge = ridge
        self.random_state = random_state
        self.cache = cache

    def fit(self, X, y=None) -> "SchurEditor":
        """Learn Γ* from the rows of X (n, D), each paired with its entry of ``texts``."""
        self._fit(X)
        return self

    def transform(self, X) -> np.ndarray:
        """X (N, D) minus the influence of ``prompts`` -> unit rows, float32: (N, D) for the
        cosine kernel, (N, n_features) for the Gaussian one."""
        check_is_fitted(self)
        images = self._check_X(X, reset=False)
        if self.prompts is None:
            raise InputError("SchurEditor.transform needs the prompts to remove (the prompts "
                             "parameter); fit_transform without them removes each fit row's "
                             "own text.")
        texts = self._encode(self.prompts, "prompts")
        if np.ndim(texts) == 1:
            texts = np.asarray(texts)[None]
        texts = _as_embeddings(texts, "prompts", dim=self.n_features_in_)
        if len(texts) not in (1, len(images)):
            raise InputError(f"prompts has {len(texts)} rows for {len(images)} images: give "
                             f"one prompt for all images or one per image.")
        return self._edit(images, texts)

    def fit_transform(self, X, y=None) -> np.ndarray:
        """``fit(X).transform(X)``; with ``prompts=None`` each row loses its own text."""
        images, texts = self._fit(X)
        return self.transform(X) if self.prompts is not None else self._edit(images, texts)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The input names for the cosine kernel (the output stays in CLIP space);
        "schureditor0", ... for the n_features Gaussian features."""
        check_is_fitted(self)
        if self.omega_ is None:
            return OneToOneFeatureMixin.get_feature_names_out(self, input_features)
        return ClassNamePrefixFeaturesOutMixin.get_feature_names_out(self, input_features)

    @property
    def _n_features_out(self) -> int:
        return 2 * self.omega_.shape[1]

    def _fit(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Learn Γ*; returns the checked images and their texts (n, D) float64."""
        if self.kernel not in KERNELS:
            raise InputError(f"kernel must be one of {', '.join(KERNELS)}, got '{self.kernel}'.")
        if not is_number(self.ridge, 0):
            raise InputError(f"ridge must be a finite number >= 0, got {self.ridge!r}.")
        images = self._check_X(X, reset=True)
        if self.texts is None:
            raise InputError("SchurEditor needs texts, the reference prompts paired with the "
                             "rows of X (n strings or an (n, D) array).")
        images, texts = _check_pairs(images, self._encode(self.texts, "texts"))
        self.omega_ = (draw_frequencies(images.shape[1], self.n_features, self.sigma,
                                        self.random_state)
                       if self.kernel == "gaussian" else None)
        feature = _feature_map(self.omega_)
        c_tt, _ = _second_moment(feature, unit_rows(texts), center=False)
        c_ti, _ = _cross_moment(feature, unit_rows(texts), unit_rows(images), center=False)
        self.ridge_ = self.ridge * float(np.trace(c_tt))
        self.gamma_ = _RegularisedInverse(c_tt, self.ridge_).solve(c_ti)
        return images, texts

    def _check_X(self, X, reset: bool) -> np.ndarray:
        """X as float64 (n, D) (``_as_embeddings``), recording or checking D and column names."""
        images = _as_embeddings(X, "image_embeddings")
        d = images.shape[1]
        if not reset and d != self.n_features_in_:
            raise InputError(f"image_embeddings has dimension {d}, but {self.n_features_in_} "
                             f"was expected (X has {d} features, but SchurEditor is expecting "
                             f"{self.n_features_in_} features as input).")
        validate_data(self, X, reset=reset, skip_check_array=True)
        return images

    def _edit(self, images: np.ndarray, texts: np.ndarray) -> np.ndarray:
        edited = self._features(images) - self._features(texts) @ self.gamma_
        norms = np.linalg.norm(edited, axis=1, keepdims=True)
        if (norms < 1e-12).any():
            raise InputError(f"the edit removed all of image {int(np.argmin(norms))}: its "
                             f"prompt explains it entirely; use a larger ridge.")
        return (edited / norms).astype(np.float32)

    def _features(self, X: np.ndarray) -> np.ndarray:
        return _feature_map(self.omega_)(unit_rows(X))

    def _encode(self, prompts, name: str):
        """Strings -> backbone text embeddings; arrays pass through."""
        if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts
                                        and all(isinstance(p, str) for p in prompts)):
            if self.backbone is None:
                raise InputError(f"{name} are strings but SchurEditor has no backbone to "
                                 f"encode them; pass backbone= or text embeddings.")
            return self.backbone.encode_texts([prompts] if isinstance(prompts, str)
                                              else list(prompts), cache=self.cache)
        return prompts

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


# ---------------------------------------------------------------------- the spectrum plot


def save_spectrum_plot(result: SCEResult, path: str | os.PathLike | IO[bytes], top: int = 100,
                       size: tuple[int, int] = (720, 440)) -> None:
    """A PNG of the top eigenvalues of C_{I|T} and C_{I←T} on a log scale (drawn with PIL),
    written to a binary stream or, atomically, to a file."""
    from PIL import Image, ImageDraw

    series = [(result.spectrum[:top], (200, 60, 40), "C_I|T  image given text (SCE "
               f"{result.score:.3g})"),
              (result.text_spectrum[:top], (40, 90, 200), "C_I<-T explained by text (SCE "
               f"{result.text_score:.3g})")]
    positive = np.concatenate([v[v > 0] for v, _, _ in series])
    high = np.ceil(np.log10(positive.max())) if positive.size else 0.0
    low = max(np.floor(np.log10(positive.min())) if positive.size else -1.0, high - 8)
    low = min(low, high - 1)
    width, height = size
    left, right, top_margin, bottom = 70, 20, 40, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    x_span = max(max(len(v) for v, _, _ in series) - 1, 1)

    def point(i: int, value: float) -> tuple[float, float]:
        y = (np.log10(max(value, 10 ** low)) - low) / (high - low)
        return (left + (width - left - right) * i / x_span,
                height - bottom - (height - top_margin - bottom) * y)

    draw.rectangle([left, top_margin, width - right, height - bottom], outline="black")
    for decade in range(int(low), int(high) + 1):
        _, y = point(0, 10.0 ** decade)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((8, y - 6), f"1e{decade}", fill="black")
    for i in range(0, x_span + 1, max(1, x_span // 10)):
        x, _ = point(i, 1.0)
        draw.line([x, height - bottom, x, height - bottom + 4], fill="black")
        draw.text((x - 6, height - bottom + 8), str(i + 1), fill="black")
    draw.text((left, height - 18), "eigenvalue rank", fill="black")
    draw.text((left, 12), f"Schur complement spectrum: n={result.n_samples}, {result.kernel} "
                          f"kernel, {result.form} form", fill="black")
    for k, (values, colour, label) in enumerate(series):
        points = [point(i, v) for i, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        legend_y = top_margin + 10 + 16 * k
        draw.line([width - right - 330, legend_y + 6, width - right - 310, legend_y + 6],
                  fill=colour, width=3)
        draw.text((width - right - 304, legend_y), label, fill="black")
    if hasattr(path, "write"):
        image.save(path, format="PNG")
        return
    with atomic_output(path, binary=True) as handle:
        image.save(handle, format="PNG")
