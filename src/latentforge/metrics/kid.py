"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs", arXiv:1801.01401).

KID is the squared maximum mean discrepancy between the two feature distributions with the
cubic polynomial kernel

    k(x, y) = (x . y / d + 1)^3            (d = feature dimension)

estimated without bias on m samples from each side:

    MMD^2 = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
            - 2 sum_{i, j} k(x_i, y_j) / m^2

It is computed on `num_subsets` random subsets of `subset_size` = min(subset_size, n_x, n_y)
images per side (drawn without replacement within a subset, independently per subset, from
`numpy.random.default_rng(seed)`); the result is the mean and the standard deviation (ddof = 0)
of the subset estimates. Being unbiased, KID can be slightly negative for identical
distributions and does not drift with n as FID does, which makes it the better number for small
samples. Float64 throughout.
"""

from __future__ import annotations

import numpy as np

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef: float = 1.0) -> np.ndarray:
    """(x @ y.T / d + coef) ** degree."""
    d = x.shape[1]
    return (x @ y.T / d + coef) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between equal-size samples x, y (m, d) with the cubic polynomial kernel."""
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise ValueError(f"need two samples of equal size >= 2, got {x.shape[0]} and {y.shape[0]}")
    return _mmd2_from_gram(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))


def kid(f1: np.ndarray, f2: np.ndarray, num_subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over `num_subsets` seeded random subsets; see the module docstring."""
    x, y = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {x.shape} and {y.shape}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    m = min(int(subset_size), x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per side, got {x.shape[0]} and {y.shape[0]}")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets, dtype=np.float64)
    nx, ny = x.shape[0], y.shape[0]
    # Small sets (in-training evaluation): one kernel matrix over both sets, then each subset is
    # an index into it. Large sets: kernels per subset (m x m), bounded memory.
    gram = polynomial_kernel(np.concatenate([x, y]), np.concatenate([x, y])) if nx + ny <= _GRAM_MAX else None
    for s in range(num_subsets):
        ix = rng.choice(nx, m, replace=False)
        iy = rng.choice(ny, m, replace=False)
        if gram is None:
            values[s] = mmd2_unbiased(x[ix], y[iy])
        else:
            values[s] = _mmd2_from_gram(gram[np.ix_(ix, ix)], gram[np.ix_(nx + iy, nx + iy)], gram[np.ix_(ix, nx + iy)])
    return float(values.mean()), float(values.std())


_GRAM_MAX = 4096  # (4096)^2 float64 = 128 MB


def _mmd2_from_gram(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    m = k_xx.shape[0]
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def effective_subset_size(n1: int, n2: int, subset_size: int = KID_SUBSET_SIZE) -> int:
    return min(int(subset_size), int(n1), int(n2))
