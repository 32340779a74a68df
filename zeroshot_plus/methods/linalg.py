"""Dense float64 kernels shared by the closed-form methods."""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas


def add_gram(lower: np.ndarray, rows: np.ndarray, scale: float = 1.0) -> None:
    """Lower triangle of ``lower`` (p, p) += scale · rowsᵀrows, rows (n, p), in place.

    Both arrays are float64 and C-ordered. One BLAS dsyrk on their Fortran-order views: no
    temporary, half the flops of a GEMM; the strict upper triangle is left untouched.
    """
    blas.dsyrk(scale, rows.T, beta=1.0, c=lower.T, trans=0, lower=0, overwrite_c=1)
