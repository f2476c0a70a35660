"""Upsampler: a separately trained super-resolution stage, low-res image -> 2x or 4x image.

Trained on pairs from real data: the high-res image y (the run's `resolution`) and its area
downsample x = avgpool_f(y) (f = `factor`). The objective is adversarial plus a reconstruction
term, as in pix2pix (Isola, Zhu, Zhou & Efros, "Image-to-Image Translation with Conditional
Adversarial Networks", CVPR 2017) and SRGAN (Ledig et al., CVPR 2017):
    U loss = adversarial(D(U(x), x)) + recon_weight * mean |U(x) - y|      (L1, pix2pix eq. 4)
    D loss = the run's GAN loss on D(y, x) (real) vs D(U(x), x) (fake)

Upsampler U (x (N, C, h, w) -> (N, C, f h, f w)):
    [x, noise] -> 3x3 conv -> n_blocks residual blocks (3x3 conv, LReLU, 3x3 conv, + skip)
    -> log2(f) times (nearest up x2, 3x3 conv, LReLU)  (resize-convolution: no checkerboard,
       Odena, Dumoulin & Olah, Distill 2016) -> 3x3 conv to C channels, initialized to zero
    output = bicubic_f(x) + that residual
The last conv starts at zero, so an untrained U is exactly bicubic upsampling and training only
has to learn what bicubic misses. One noise map (N, 1, h, w) is concatenated to the input; it
is drawn per image from a seed when sampling (same seed, same image).

Discriminator D: a PatchGAN (Isola et al. 2017) on [y, nearest_f(x)] (the high-res image and
the low-res input it should match, concatenated on channels): 4x4 stride-2 convs with
LReLU(0.2), then a 3x3 conv to one logit per patch: (N, C, H, W) -> (N, (H/2^d) * (W/2^d)),
d = 2 stride-2 convs up to 64 px, 3 above. No batch norm (penalties stay per example); optional
spectral normalization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .conditional import check_images

FACTORS = (2, 4)
LRELU = 0.2


def area_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H / factor, W / factor): the mean of each factor x factor block
    (what F.interpolate(mode="area") does for an integer factor)."""
    return F.avg_pool2d(x, factor)


def bicubic_upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, factor h, factor w), bicubic (a = -0.75), align_corners=False."""
    return F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)


@dataclass
class UpsamplerConfig:
    resolution: int = 64  # OUTPUT size in pixels (square); the input is resolution / factor
    img_channels: int = 1  # 1 (grayscale) or 3 (RGB)
    factor: int = 2  # 2 or 4
    width: int = 64  # feature maps of U; D uses width and 2 * width
    n_blocks: int = 4  # residual blocks of U at the input resolution
    spectral_norm: bool = False  # spectral normalization on every conv of D (Miyato et al. 2018)

    def __post_init__(self) -> None:
        if self.factor not in FACTORS:
            raise ValueError(f"factor must be one of {FACTORS}, got {self.factor}")
        if self.resolution % self.factor:
            raise ValueError(f"resolution {self.resolution} is not divisible by the factor {self.factor}")
        if self.img_channels not in (1, 3):
            raise ValueError(f"img_channels must be 1 or 3, got {self.img_channels}")

    @property
    def in_resolution(self) -> int:
        return self.resolution // self.factor


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(ch, ch, 3, padding=1), nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.conv2(F.leaky_relu(self.conv1(h), LRELU))


class Upsampler(nn.Module):
    def __init__(self, cfg: UpsamplerConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.head = nn.Conv2d(cfg.img_channels + 1, w, 3, padding=1)  # + 1: the noise map
        self.blocks = nn.Sequential(*[_ResBlock(w) for _ in range(cfg.n_blocks)])
        self.ups = nn.ModuleList([nn.Conv2d(w, w, 3, padding=1) for _ in range(int(math.log2(cfg.factor)))])
        self.tail = nn.Conv2d(w, cfg.img_channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # untrained U == bicubic upsampling
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, h, w) in [-1, 1] -> (N, C, f h, f w). `noise` (N, 1, h, w); None = drawn
        from the global RNG (training)."""
        r, c = self.cfg.in_resolution, self.cfg.img_channels
        check_images(x, c, r, "low-res images")
        if noise is None:
            noise = torch.randn(x.shape[0], 1, r, r, device=x.device, dtype=x.dtype)
        h = F.leaky_relu(self.head(torch.cat([x, noise], dim=1)), LRELU)  # (N, width, h, w)
        h = h + self.blocks(h)
        for conv in self.ups:  # (N, width, s, s) -> (N, width, 2s, 2s)
            h = F.leaky_relu(conv(F.interpolate(h, scale_factor=2, mode="nearest")), LRELU)
        return bicubic_upsample(x, self.cfg.factor) + self.tail(h)  # (N, C, f h, f w)


class PatchDiscriminator(nn.Module):
    def __init__(self, cfg: UpsamplerConfig):
        super().__init__()
        self.cfg = cfg
        n_down = 2 if cfg.resolution <= 64 else 3
        layers: list[nn.Module] = []
        ch_in, ch = 2 * cfg.img_channels, cfg.width
        for i in range(n_down):  # (N, ch_in, s, s) -> (N, ch, s/2, s/2)
            layers += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.LeakyReLU(LRELU)]
            ch_in, ch = ch, min(ch * 2, 8 * cfg.width)
        layers += [nn.Conv2d(ch_in, 1, 3, 1, 1)]  # one logit per patch
        self.net = nn.Sequential(*layers)
        if cfg.spectral_norm:
            for m in self.net:
                if isinstance(m, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(m)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """high-res y (N, C, H, W), its low-res input x (N, C, H/f, W/f) -> patch logits (N, P)."""
        r, c, f = self.cfg.resolution, self.cfg.img_channels, self.cfg.factor
        if y.ndim != 4 or y.shape[1:] != (c, r, r):
            raise ValueError(f"high-res images must have shape (N, {c}, {r}, {r}), got {tuple(y.shape)}")
        cond = F.interpolate(x, scale_factor=f, mode="nearest")  # (N, C, H, W)
        return self.net(torch.cat([y, cond], dim=1)).flatten(1)


def noise_for_seeds(seeds: list[int] | range, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """One (1, size, size) standard-normal noise map per seed, (len(seeds), 1, size, size); seed s
    always gives the same map, whatever else is in the batch (drawn on the CPU)."""
    maps = [torch.randn(1, size, size, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(maps).to(device)


@torch.no_grad()
def upsample_seeded(U: Upsampler, low: torch.Tensor, seeds: list[int] | range) -> torch.Tensor:
    """float low-res (N, C, h, w) -> float (N, C, f h, f w); image i uses the noise of seeds[i]."""
    if len(seeds) != low.shape[0]:
        raise ValueError(f"need one seed per image: {low.shape[0]} images, {len(seeds)} seeds")
    return U(low, noise_for_seeds(seeds, U.cfg.in_resolution, low.device))


@torch.no_grad()
def comparison_rows(U: Upsampler, high_u8: torch.Tensor, seeds: list[int] | range) -> torch.Tensor:
    """uint8 high-res (N, C, H, W) -> uint8 (4N, C, H, W): N low-res inputs (area downsample,
    shown nearest-upsampled), then N bicubic upsamples, N upsampler outputs, the N originals."""
    from ..images import to_float, to_uint8

    f = U.cfg.factor
    low = area_downsample(to_float(high_u8), f)
    rows = [F.interpolate(low, scale_factor=f, mode="nearest"), bicubic_upsample(low, f),
            upsample_seeded(U, low, seeds), to_float(high_u8)]
    return torch.cat([to_uint8(r).cpu() for r in rows])
