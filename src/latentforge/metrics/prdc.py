"""Precision and recall of generative models (Kynkäänniemi et al. 2019, "Improved Precision and
Recall Metric for Assessing Generative Models", arXiv:1904.06991), plus density and coverage
(Naeem et al. 2020, arXiv:2002.09797), which come from the same distances.

The real manifold is the union of balls around each real feature r_i with radius
rad_i = distance to r_i's k-th nearest neighbour among the *other* real features (k = 3 by
default, as in Kynkäänniemi et al.). Likewise for the generated manifold.

    precision = fraction of generated samples that fall inside the real manifold
                (|f_j - r_i| <= rad_i for some i)
    recall    = fraction of real samples that fall inside the generated manifold
    density   = (1 / (k M)) sum_j #{i : |f_j - r_i| <= rad_i}           (can exceed 1)
    coverage  = fraction of real samples whose nearest generated sample is inside their ball

Euclidean distances in float64, computed in row chunks (`chunk` rows x all columns at a time)
so that 10k x 10k x 2048 needs only ~chunk * 10k * 8 bytes at once.
"""

from __future__ import annotations

import numpy as np
import torch

PR_K = 3


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def _chunks(n: int, chunk: int):
    for i in range(0, n, chunk):
        yield i, min(n, i + chunk)


def knn_radii(feats: np.ndarray | torch.Tensor, k: int = PR_K, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row to its k-th nearest *other* row, (N,) float64."""
    x = _as_tensor(feats)
    n = x.shape[0]
    if n <= k:
        raise ValueError(f"need more than k = {k} samples for k-NN radii, got {n}")
    out = torch.empty(n, dtype=torch.float64)
    for i, j in _chunks(n, chunk):
        d = torch.cdist(x[i:j], x)
        d[torch.arange(j - i), torch.arange(i, j)] = float("inf")  # exclude self, even for duplicates
        out[i:j] = d.kthvalue(k, dim=1).values
    return out


def prdc(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = PR_K,
         chunk: int = 1024) -> dict[str, float]:
    """precision, recall (Kynkäänniemi et al.), density, coverage (Naeem et al.); see the module docstring.

    Three passes over pairwise distances: real-real (radii), fake-fake (radii), and one
    fake-real pass that serves all four numbers.
    """
    r, f = _as_tensor(real), _as_tensor(fake)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} and {f.shape[1]}")
    r_rad, f_rad = knn_radii(r, k, chunk), knn_radii(f, k, chunk)
    fake_in_real = torch.zeros(f.shape[0], dtype=torch.int64)  # per fake: real balls containing it
    real_in_fake = torch.zeros(r.shape[0], dtype=torch.bool)  # per real: inside some fake ball
    nearest_fake = torch.full((r.shape[0],), float("inf"), dtype=torch.float64)  # per real
    for i, j in _chunks(f.shape[0], chunk):
        d = torch.cdist(f[i:j], r)  # (fake chunk, real)
        fake_in_real[i:j] = (d <= r_rad[None, :]).sum(dim=1)
        real_in_fake |= (d <= f_rad[i:j, None]).any(dim=0)
        nearest_fake = torch.minimum(nearest_fake, d.min(dim=0).values)
    return {
        "precision": float((fake_in_real > 0).double().mean()),
        "recall": float(real_in_fake.double().mean()),
        "density": float(fake_in_real.double().sum() / (k * f.shape[0])),
        "coverage": float((nearest_fake <= r_rad).double().mean()),
    }


def precision_recall(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = PR_K,
                     chunk: int = 1024) -> tuple[float, float]:
    """(precision, recall) of Kynkäänniemi et al. 2019 with k-NN radii."""
    res = prdc(real, fake, k=k, chunk=chunk)
    return res["precision"], res["recall"]
