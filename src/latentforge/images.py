"""Image conversions at the edges of the library, grids, and PNG files with provenance.

Inside the library images are float tensors in [-1, 1], shape (N, C, H, W).
uint8 appears only at the edges: data caches, files, and what `sample()` hands a user.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from PIL import Image, PngImagePlugin


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) in [0, 255] -> float32 in [-1, 1]."""
    if images_u8.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 tensor, got {images_u8.dtype}")
    return images_u8.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float (N, C, H, W) in [-1, 1] -> uint8 in [0, 255] (rounded, clamped)."""
    return ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round_().to(torch.uint8)


def to_hwc_numpy(images_u8: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) tensor -> uint8 numpy (N, H, W, C), what PIL and users expect."""
    return images_u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def make_grid(images_u8: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: int = 255) -> torch.Tensor:
    """Tile uint8 (N, C, H, W) into one uint8 (C, H', W') image; nrow = images per row."""
    if images_u8.ndim != 4:
        raise ValueError(f"make_grid expects (N, C, H, W), got shape {tuple(images_u8.shape)}")
    n, c, h, w = images_u8.shape
    if n == 0:
        raise ValueError("make_grid got no images")
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = torch.full(
        (c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), pad_value, dtype=torch.uint8
    )
    for i in range(n):
        r, k = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, y : y + h, x : x + w] = images_u8[i]
    return grid


def to_pil(image_u8: torch.Tensor) -> Image.Image:
    """uint8 (C, H, W) with C in {1, 3, 4} -> PIL image."""
    arr = image_u8.permute(1, 2, 0).cpu().numpy()
    if arr.shape[2] == 1:
        return Image.fromarray(arr[:, :, 0], mode="L")
    return Image.fromarray(arr)


def save_png(image_u8: torch.Tensor, path: str | os.PathLike, metadata: Mapping[str, object] | None = None,
             upscale: int = 1) -> Path:
    """Write a uint8 (C, H, W) image as PNG, atomically, with text metadata chunks.

    `upscale` enlarges with nearest-neighbour so small images stay crisp when viewed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = to_pil(image_u8)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(str(key), str(value))
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)
    return path


def save_grid(images_u8: torch.Tensor, path: str | os.PathLike, nrow: int | None = None,
              metadata: Mapping[str, object] | None = None, upscale: int = 1) -> Path:
    """Tile uint8 (N, C, H, W) images into a grid and write it as PNG."""
    return save_png(make_grid(images_u8, nrow=nrow), path, metadata=metadata, upscale=upscale)


def read_png_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Text chunks of a PNG file (what `save_png` wrote as metadata)."""
    with Image.open(path) as img:
        return dict(getattr(img, "text", {}) or {})
