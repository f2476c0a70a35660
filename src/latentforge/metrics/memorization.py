"""Memorization check: are generated images copies of training images?

Space: pixels, at the training data's native resolution, as float in [-1, 1], flattened
(28 x 28 x 1 -> 784 values); distances are Euclidean. Why pixels rather than Inception
features: a copy of a training image is then at distance exactly 0 (up to the uint8 rounding
of the generator output), so copies are unmistakable and the check needs no network; features
would also call two different photos of the same kind of object "close". The price: pixel
distance does not see copies that were shifted or mirrored. Generated images must have the
training images' shape (evaluate() resizes them to the training resolution first).

For each generated image g: d(g) = distance to its nearest training image.
Reference scale: the typical distance of a training image to its nearest *other* training
image, estimated from `n_probe` (default 2000) training images drawn with `seed`, each searched
against the whole training set; `train_nn_median` is the median of those distances.

    g is a near-copy  <=>  d(g) < alpha * train_nn_median,      alpha = 0.5 by default

that is, g is at most half as far from some training image as training images typically are
from each other. The same rule applied to the probed training images themselves
(`train_flag_fraction`) shows how often *real* data is that close to the rest of the set (data
sets contain near-duplicates): a generator's `flagged_fraction` well above that rate is
evidence of memorization; an exact copy has d = 0.

The search runs in float32 on blocks of 1024 generated x 8192 training rows (32 MB), with the
training images kept as uint8 until their block is used, so 10k generated x 60k training images
(even 64 x 64 RGB) fits easily in memory; the reported distances are recomputed exactly in
float64 for the chosen pairs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..images import save_grid

MEMORIZATION_ALPHA = 0.5
MEMORIZATION_PROBES = 2000


def _flat_u8(images_u8: torch.Tensor) -> torch.Tensor:
    if not isinstance(images_u8, torch.Tensor) or images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
        raise TypeError("expected a uint8 (N, C, H, W) tensor")
    return images_u8.reshape(images_u8.shape[0], -1)


def _to_unit(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 rows -> float32 in [-1, 1]."""
    return x_u8.float().div_(127.5).sub_(1.0)


def nearest_neighbours(queries_u8: torch.Tensor, keys_u8: torch.Tensor, exclude: torch.Tensor | None = None,
                       q_chunk: int = 1024, k_chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row: (distance, index) of its nearest key row, rows being flattened uint8
    images read as [-1, 1]. The search uses float32 |q|^2 + |k|^2 - 2 q.k on q_chunk x k_chunk
    blocks (32 MB at the defaults; the keys stay uint8 until their block is used); the returned
    distance is then recomputed exactly in float64 for the chosen pair, because the matmul form
    loses ~1e-2 to cancellation and would blur exact copies (distance 0).
    exclude: (N_queries,) key index each query must not match (itself), or None.
    """
    n_q, n_k = queries_u8.shape[0], keys_u8.shape[0]
    best_d = torch.full((n_q,), float("inf"))
    best_i = torch.zeros(n_q, dtype=torch.int64)
    for i in range(0, n_q, q_chunk):
        q = _to_unit(queries_u8[i:i + q_chunk])
        q_sq = q.pow(2).sum(1)
        rows = torch.arange(q.shape[0])
        for j in range(0, n_k, k_chunk):
            kk = _to_unit(keys_u8[j:j + k_chunk])
            d2 = torch.addmm(q_sq[:, None] + kk.pow(2).sum(1)[None, :], q, kk.T, alpha=-2.0)
            if exclude is not None:
                own = exclude[i:i + q_chunk]
                hit = (own >= j) & (own < j + kk.shape[0])
                d2[rows[hit], own[hit] - j] = float("inf")
            d, idx = d2.min(dim=1)
            better = d < best_d[i:i + q.shape[0]]
            best_d[i:i + q.shape[0]] = torch.where(better, d, best_d[i:i + q.shape[0]])
            best_i[i:i + q.shape[0]] = torch.where(better, idx + j, best_i[i:i + q.shape[0]])
    exact = torch.empty(n_q, dtype=torch.float64)
    for i in range(0, n_q, q_chunk):
        a = queries_u8[i:i + q_chunk].double()
        b = keys_u8[best_i[i:i + q_chunk]].double()
        exact[i:i + q_chunk] = (a - b).norm(dim=1) / 127.5  # the [-1, 1] scale
    return exact, best_i


@dataclass
class MemorizationReport:
    """Result of `memorization()`; `summary()` is the JSON-able part."""

    nn_distance: np.ndarray  # (N_gen,) distance of each generated image to its nearest training image
    nn_index: np.ndarray  # (N_gen,) index of that training image
    train_nn_median: float
    threshold: float
    alpha: float
    flagged: np.ndarray  # (N_gen,) bool
    train_flag_fraction: float
    n_probe: int
    n_train: int
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        d = self.nn_distance
        ratio = d / self.train_nn_median if self.train_nn_median > 0 else np.full_like(d, np.inf)
        return {
            "space": "pixels at native resolution in [-1, 1], Euclidean",
            "rule": f"near-copy if NN distance to training set < {self.alpha} x median train-to-train NN distance",
            "alpha": self.alpha,
            "train_nn_median": float(self.train_nn_median),
            "threshold": float(self.threshold),
            "n_generated": int(d.shape[0]),
            "n_train": int(self.n_train),
            "n_probe": int(self.n_probe),
            "flagged": int(self.flagged.sum()),
            "flagged_fraction": float(self.flagged.mean()) if d.size else 0.0,
            "train_flag_fraction": float(self.train_flag_fraction),
            "exact_copies": int((d < 1e-9).sum()),  # identical uint8 pixels
            "nn_distance_min": float(d.min()) if d.size else float("nan"),
            "nn_distance_median": float(np.median(d)) if d.size else float("nan"),
            "nn_distance_mean": float(d.mean()) if d.size else float("nan"),
            "ratio_median": float(np.median(ratio)) if d.size else float("nan"),
            "ratio_p01": float(np.quantile(ratio, 0.01)) if d.size else float("nan"),
            **self.extra,
        }


def memorization(fake_u8: torch.Tensor, train_u8: torch.Tensor, alpha: float = MEMORIZATION_ALPHA,
                 n_probe: int = MEMORIZATION_PROBES, seed: int = 0) -> MemorizationReport:
    """Nearest-training-image distances of generated images and the near-copy rule of the module docstring."""
    if tuple(fake_u8.shape[1:]) != tuple(train_u8.shape[1:]):
        raise ValueError(f"generated images {tuple(fake_u8.shape[1:])} and training images "
                         f"{tuple(train_u8.shape[1:])} must have the same (C, H, W); resize first")
    if train_u8.shape[0] < 2:
        raise ValueError("need at least 2 training images")
    keys = _flat_u8(train_u8)
    with torch.inference_mode():
        d_gen, i_gen = nearest_neighbours(_flat_u8(fake_u8), keys)
        n_train = keys.shape[0]
        m = min(int(n_probe), n_train)
        probe = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(n_train, m, replace=False)))
        # Each probed training image searched against all training images but itself.
        d_probe, _ = nearest_neighbours(keys[probe], keys, exclude=probe)
    median = float(d_probe.median())
    threshold = alpha * median
    return MemorizationReport(
        nn_distance=d_gen.double().numpy(), nn_index=i_gen.numpy(), train_nn_median=median, threshold=threshold,
        alpha=float(alpha), flagged=(d_gen < threshold).numpy(),
        train_flag_fraction=float((d_probe < threshold).float().mean()), n_probe=m, n_train=n_train,
    )


def save_closest_pairs_png(path: str | os.PathLike[str], fake_u8: torch.Tensor, train_u8: torch.Tensor,
                           report: MemorizationReport, n_pairs: int = 32, pairs_per_row: int = 8,
                           upscale: int = 2) -> Path:
    """Grid of the `n_pairs` generated images closest to the training set, each followed by its
    nearest training image: (generated, training) side by side, `pairs_per_row` pairs a row,
    closest first. Distances go in the PNG's text metadata."""
    order = np.argsort(report.nn_distance, kind="stable")[:n_pairs]
    if order.size == 0:
        raise ValueError("no generated images to show")
    tiles = []
    for g in order:
        tiles.append(fake_u8[int(g)])
        tiles.append(train_u8[int(report.nn_index[g])])
    grid = torch.stack(tiles)
    meta = {
        "layout": "pairs (generated, nearest training image), closest first, row-major",
        "distances": ", ".join(f"{report.nn_distance[g]:.4g}" for g in order),
        "generated_indices": ", ".join(str(int(g)) for g in order),
        "training_indices": ", ".join(str(int(report.nn_index[g])) for g in order),
        "threshold": f"{report.threshold:.6g}",
        "space": "pixels in [-1, 1], Euclidean",
    }
    return save_grid(grid, path, nrow=2 * pairs_per_row, metadata=meta, upscale=upscale)
