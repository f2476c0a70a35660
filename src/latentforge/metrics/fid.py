"""Fréchet Inception Distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update
Rule Converge to a Local Nash Equilibrium", arXiv:1706.08500).

Each image set is summarised by the mean mu and covariance Sigma of its features; FID is the
Fréchet (2-Wasserstein) distance between the two Gaussians N(mu1, Sigma1) and N(mu2, Sigma2):

    FID = ||mu1 - mu2||^2 + Tr(Sigma1 + Sigma2 - 2 (Sigma1 Sigma2)^(1/2))

Everything is float64. Sigma is the unbiased sample covariance (ddof = 1), as in the reference
TTUR code and pytorch-fid. FID is biased upwards at small n: compare values only at equal n.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> (mu (D,), sigma (D, D)), float64, sigma with ddof = 1."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, method: str = "sqrtm") -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 @ sigma2)), in float64.

    method="sqrtm" (default, the standard): `scipy.linalg.sqrtm(sigma1 @ sigma2)`. When the
    product is singular enough that the square root is not finite, eps * I is added to both
    covariances and the root recomputed (the standard fallback of the TTUR code / pytorch-fid).
    A complex root whose diagonal has an imaginary part above 1e-3 means the computation failed
    and raises ValueError; smaller imaginary parts are numerical noise and dropped.

    method="eigh": the same trace from symmetric eigendecompositions,
    Tr sqrtm(S1 S2) = sum_i sqrt(lambda_i(R S2 R)) with R = S1^(1/2), since S1 S2 = R (R S2) and
    R S2 R have the same eigenvalues, all >= 0 (negative rounding noise is clipped to 0). Several
    times faster than sqrtm at d = 2048 and well defined for singular covariances (n < d); the
    tests check that both agree. Used for the in-training evaluation.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different shapes {mu1.shape} and {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"covariances {sigma1.shape} / {sigma2.shape} do not match the mean {mu1.shape}")
    diff = mu1 - mu2
    if method == "eigh":
        return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))
    if method != "sqrtm":
        raise ValueError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on singular input; handled below
        covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: sqrtm(sigma1 @ sigma2) is not finite (singular product); adding {eps} to the "
                      f"covariance diagonals", RuntimeWarning, stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {imag:.3g} in sqrtm(sigma1 @ sigma2); the covariance "
                             f"estimates are unreliable (too few samples for the feature dimension?)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr sqrtm(sigma1 @ sigma2) for symmetric PSD sigma1, sigma2, via two `numpy.linalg.eigh`."""
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root @ sigma2 @ root
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def fid_from_features(f1: np.ndarray, f2: np.ndarray, method: str = "sqrtm") -> float:
    """FID between two (N, D) feature sets."""
    mu1, s1 = feature_statistics(f1)
    mu2, s2 = feature_statistics(f2)
    return frechet_distance(mu1, s1, mu2, s2, method=method)
