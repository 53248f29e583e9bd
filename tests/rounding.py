"""Tolerances for float64 checks against an independent solve: what rounding alone can change.

A fit and its check compute the same quantities in different summation orders (other batch shapes, replayed
blocks, another thread count), so their inputs differ by rounding, and the solve amplifies that by its
conditioning. In float32 the amplified rounding reached 1e-4 (BERT's last-layer refit), so such checks run in
float64, where the bound below is a tight tolerance that no rounding can cross and a wrong formula does.
"""
from __future__ import annotations

import numpy as np

# Relative rounding of the values a fit and its check compute in different orders: a thousand float64 ulps covers
# sums over a few hundred terms carried through four layers (measured on the refit tests: at most one ulp's worth).
ROUNDING = 1e3 * np.finfo(np.float64).eps


def rounding_bound(a, b_plus, b_minus, sol, rounding: float = ROUNDING) -> float:
    """How far rounding alone can move the least-squares solution `sol` of min ||a sol - b||, b = b_plus - b_minus
    (e.g. the dense sum minus the student's residual, whose cancellation the rounding survives), when every entry
    of `a`, `b_plus` and `b_minus` changes by `rounding` relative. To first order (Golub & Van Loan, Matrix
    Computations, Theorem 5.3.1), ||d sol|| <= (||da|| ||sol|| + ||db||) / s_min + ||da|| ||res|| / s_min^2,
    s_min the smallest singular value of `a`, res the residual: the tolerance for each entry of `sol`."""
    s_min = np.linalg.svd(a, compute_uv=False)[-1]
    da = rounding * np.linalg.norm(a)
    db = rounding * (np.linalg.norm(b_plus) + np.linalg.norm(b_minus))
    res = np.linalg.norm(a @ sol - (b_plus - b_minus))
    return float((da * np.linalg.norm(sol) + db) / s_min + da * res / s_min ** 2)
