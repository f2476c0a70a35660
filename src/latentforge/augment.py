"""Differentiable augmentation: Zhao, Liu, Lin, Zhu & Han, "Differentiable Augmentation for
Data-Efficient GAN Training", NeurIPS 2020 (arXiv:2006.10738), after their DiffAugment code.

The same kind of random transform is applied to real AND generated images before every call of
the discriminator (in its step and in the generator's step). Every transform is differentiable
with respect to the images, so the generator still gets gradients through it.

    color        brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) around the per-pixel channel
                 mean; 3-channel images only), contrast (x U(0.5, 1.5) around the image mean)
    translation  shift by up to 1/8 of the image in x and y, zero padded, by index gathering
    cutout       a square of half the image size set to zero, at a random place

Images are in [-1, 1], so "zero" is mid grey (as in the paper's code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import AUGMENT_POLICIES, parse_augment


def _rand(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    n = x.shape[0]
    x = x + (_rand((n, 1, 1, 1), x, generator) - 0.5)  # brightness
    if x.shape[1] == 3:  # saturation: scale the distance from the grey value of each pixel
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (_rand((n, 1, 1, 1), x, generator) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # contrast
    return (x - mean) * (_rand((n, 1, 1, 1), x, generator) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (n, 1, 1), generator=generator, device=x.device)
    tx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=generator, device=x.device)
    gb, gy, gx = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")
    gy = torch.clamp(gy + ty + 1, 0, h + 1)  # +1: index into the 1-pixel zero padding
    gx = torch.clamp(gx + tx + 1, 0, w + 1)
    x_pad = F.pad(x, [1, 1, 1, 1])  # (N, C, H + 2, W + 2)
    return x_pad.permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2).contiguous()


def cutout(x: torch.Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=generator, device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=generator, device=x.device)
    gb, gy, gx = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(ch, device=x.device),
                                torch.arange(cw, device=x.device), indexing="ij")
    gy = torch.clamp(gy + oy - ch // 2, 0, h - 1)
    gx = torch.clamp(gx + ox - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gy, gx] = 0
    return x * mask.unsqueeze(1)


TRANSFORMS = {"color": color, "translation": translation, "cutout": cutout}
assert set(TRANSFORMS) == set(AUGMENT_POLICIES)


def diff_augment(x: torch.Tensor, policy: str = "color,translation,cutout",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the comma-separated transforms of `policy` in order; "" returns x unchanged.
    x: float (N, C, H, W) in [-1, 1]. Unknown names raise ConfigError."""
    for name in parse_augment(policy):
        x = TRANSFORMS[name](x, generator=generator)
    return x
