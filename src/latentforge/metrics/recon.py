"""Reconstruction metrics between two image sets of the same shape: MSE, PSNR, SSIM.

Images are float tensors (N, C, H, W) with values in [0, 1] (data range 1). Every function
returns one value per image, shape (N,), float64; `recon_metrics` gives the means.

SSIM follows Wang, Bovik, Sheikh & Simoncelli 2004 ("Image quality assessment: from error
visibility to structural similarity", IEEE TIP), as their reference code and as
skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1): an 11 x 11 Gaussian window with sigma 1.5, K1 = 0.01,
K2 = 0.03, statistics on the windows that lie fully inside the image, averaged over positions
and channels.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11  # pixels, square
SSIM_SIGMA = 1.5  # pixels
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: mean_i (x_i - y_i)^2 over all C*H*W values.  -> (N,)"""
    _check_pair(x, y)
    return (x.double() - y.double()).pow(2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB: 10 log10(data_range^2 / MSE); +inf where x == y.  -> (N,)"""
    return 10 * torch.log10(data_range**2 / mse(x, y))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """1-D Gaussian weights exp(-t^2 / (2 sigma^2)), t = -(size-1)/2 .. (size-1)/2, summing to 1. (size,) float64"""
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA, k1: float = SSIM_K1, k2: float = SSIM_K2) -> torch.Tensor:
    """Mean structural similarity per image (Wang et al. 2004, eq. 13), averaged over channels.  -> (N,)

    With w the Gaussian window and the local statistics mu_x = w * x, sigma_x^2 = w * x^2 - mu_x^2,
    sigma_xy = w * (x y) - mu_x mu_y (valid positions only):
      SSIM = (2 mu_x mu_y + C1) (2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (sigma_x^2 + sigma_y^2 + C2)),
      C1 = (K1 L)^2, C2 = (K2 L)^2, L = data_range.
    """
    _check_pair(x, y)
    n, c, h, w = x.shape
    if min(h, w) < window:
        raise ValueError(f"SSIM needs images of at least {window} x {window} pixels, got {h} x {w}")
    g = gaussian_window(window, sigma)
    kernel = torch.outer(g, g).expand(c, 1, window, window).contiguous()  # (C, 1, win, win), one per channel
    x, y = x.double(), y.double()

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel.to(t.device), groups=c)  # (N, C, H - win + 1, W - win + 1)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov_xy = filt(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


SSIM_PROTOCOL = (f"SSIM (Wang et al. 2004): {SSIM_WINDOW}x{SSIM_WINDOW} Gaussian window, sigma {SSIM_SIGMA}, "
                 f"K1 {SSIM_K1}, K2 {SSIM_K2}, data range 1, valid windows, mean over channels; PSNR on [0,1]")


def recon_metrics(x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Means over images of MSE, PSNR (dB) and SSIM between originals x and reconstructions y in [0, 1]."""
    p = psnr(x, y)
    return {"mse": float(mse(x, y).mean()), "psnr_db": float(p.mean()) if torch.isfinite(p).all() else math.inf,
            "ssim": float(ssim(x, y).mean()), "protocol": SSIM_PROTOCOL}
