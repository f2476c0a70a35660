"""Peak signal-to-noise ratio between two uint8 image sets of the same shape.

    PSNR = 10 log10(255^2 / MSE),  MSE = mean over C, H, W of (a - b)^2 on uint8 values,
per image (the usual super-resolution convention, e.g. Ledig et al. 2017 report the mean over
the test images). Identical images have infinite PSNR; `psnr` caps it at `max_db`.
"""

from __future__ import annotations

import torch

MAX_DB = 100.0  # reported for identical images


def psnr(a_u8: torch.Tensor, b_u8: torch.Tensor, max_db: float = MAX_DB) -> torch.Tensor:
    """uint8 (N, C, H, W) twice -> (N,) float64 PSNR in dB, each at most `max_db`."""
    if a_u8.shape != b_u8.shape or a_u8.dtype != torch.uint8 or b_u8.dtype != torch.uint8:
        raise ValueError(f"psnr needs two uint8 tensors of one shape, got {a_u8.dtype} {tuple(a_u8.shape)} "
                         f"and {b_u8.dtype} {tuple(b_u8.shape)}")
    mse = (a_u8.double() - b_u8.double()).pow(2).flatten(1).mean(1)
    db = 10 * torch.log10(255.0**2 / mse)  # inf where mse == 0
    return db.clamp(max=max_db)
