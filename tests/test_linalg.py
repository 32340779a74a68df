"""The shared dense kernels against numpy."""

from __future__ import annotations

import numpy as np

from zeroshot_plus.methods.linalg import add_gram


def test_add_gram_accumulates_the_lower_triangle_in_place():
    rng = np.random.default_rng(0)
    start = rng.standard_normal((5, 5))
    lower = start.copy()
    blocks = [rng.standard_normal((n, 5)) for n in (7, 1, 12)]
    for rows in blocks:
        add_gram(lower, rows, 0.5)
    rows = np.vstack(blocks)
    expected = start + 0.5 * rows.T @ rows
    np.testing.assert_allclose(np.tril(lower), np.tril(expected), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.triu(lower, 1), np.triu(start, 1))  # untouched
