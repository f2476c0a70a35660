"""Progressive GAN: Karras, Aila, Laine & Lehtinen, "Progressive Growing of GANs for Improved
Quality, Stability, and Variation", ICLR 2018 (arXiv:1710.10196).

Growing. Training starts at `base` x `base` px (4, or 7 for a 28 px target) and doubles the
resolution stage by stage: stage s works at base * 2**s px, the last stage at the target.
A new stage is faded in: with alpha going 0 -> 1,
    G:  image = lerp(up2(toRGB_{s-1}(h)), toRGB_s(block_s(h)), alpha)
    D:  h     = lerp(fromRGB_{s-1}(avgpool2(x)), block_s(fromRGB_s(x)), alpha)
and the real images are faded the same way (`fade_reals`), so that real and fake match.
The (stage, alpha) of every step is a pure function of the step (`progan_schedule`): resume is
exact by construction. The networks hold it in two buffers, `stage` and `alpha`, which the
training loop sets before every step (`set_progress`) and which are saved with the weights, so a
loaded run generates at the stage it was saved at.

Every layer of every stage exists from step 0 (unused ones get no gradient), so the optimizer
state and the checkpoint layout never change while the networks grow.

Sizes at the boundary. G(z) always returns target-size images: at a lower stage its output is
nearest-upsampled by k = target / stage resolution, so sample grids, evaluation and every
consumer of a generator see one size. D always takes target-size images and, at a lower stage,
reads every k-th pixel. Fed images nearest-upsampled from the stage resolution (G's output,
`fade_reals`), this recovers them exactly, and the input gradients (WGAN-GP, R1) have the norm
they have at the stage resolution (averaging instead would divide them by k).

Layers (paper, section 4 and table 2):
  pixel norm          b = a / sqrt(mean_c(a^2) + 1e-8), after every conv of G (section 4.2)
  equalized lr        weights ~ N(0, 1), multiplied at run time by gain / sqrt(fan_in) (He's
                      constant, gain sqrt(2); 1 for toRGB and D's last layer) (section 4.1)
  minibatch stddev    D's last block gets one more feature map: the standard deviation of each
                      feature over a group of 4 images, averaged to one number (section 3)
  LeakyReLU(0.2) everywhere, nearest-neighbour upsampling (inside G's blocks optionally bilinear;
  the fade's skip path stays nearest, as `fade_reals`), average-pool downsampling, linear
  output (no tanh). Channels: `width` at the target resolution, doubled per halving, capped
  at `max_channels` (the paper's fmap_max, 512); `top_channels` overrides the last stage's.
  `d_width` gives D its own width under the same rule (the paper's D and G are alike).

Blocks (`block`). "paper": G's block is up x2 + two 3x3 convs, D's two 3x3 convs + average pooling,
G's input a dense layer + a 3x3 conv, D's output minibatch stddev + 3x3 conv + two dense layers
(table 2); with `fused_scale` (the default) G's up x2 + first conv and D's second conv + pooling
each run as the one stride-2 conv they equal (the official code's default; D then pools before its
LReLU, the official code's order). "strided": every block is one 4x4 stride-2 conv, transposed in G,
the DCGAN's layer (Radford et al. 2016), with pixel norm and the equalized learning rate as above;
G's input is the dense layer alone, D's output minibatch stddev + one dense layer to the logit. The
4x4 kernels start as the paper's official code fuses its layers
(`upscale2d_conv2d`, `conv2d_downscale2d`): G's as nearest x2 upsampling + a 3x3 conv, D's as a 3x3
conv + 2x2 average pooling (`_fused_3x3`), so the first images are as smooth as the paper's blocks
make them (a 4x4 kernel drawn freely starts as a checkerboard of four independent noise images, and
the generator did not learn its way out of it); trained, the 4x4 kernels are free. One conv per
block instead of two about halves the work per image, which on a CPU decides how many images a run
sees. `d_batch_norm` adds batch norm after every strided D block's conv, as the DCGAN's D has (the
paper's D has no normalization), `g_batch_norm` batch norm in G after the dense layer and every
strided block's conv (before the LReLU and the pixel norm, which stays), as the DCGAN's G has, and
`rgb_top` makes the last stage the DCGAN's outer layers: G's last transposed conv outputs the image
(linear, gain 1, no 1x1 toRGB) and D's last block reads it (no 1x1 fromRGB, no batch norm). Growing,
fade-in and everything above are the same for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PROGAN_BLOCKS, PROGAN_UPSAMPLES, TrainConfig
from .conditional import check_images

RESOLUTIONS = (28, 32, 64, 128, 256, 512, 1024)
LRELU = 0.2  # LeakyReLU slope (paper, table 2)


def stage_resolutions(resolution: int) -> list[int]:
    """Resolution of each stage: base, 2 base, ..., resolution; base = 7 for 28 px, else 4."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"ProGAN supports resolutions {RESOLUTIONS}, got {resolution}")
    r = 7 if resolution == 28 else 4
    out = [r]
    while r < resolution:
        r *= 2
        out.append(r)
    assert out[-1] == resolution
    return out


def progan_schedule(step: int, cfg: TrainConfig) -> tuple[int, float]:
    """(stage, alpha) of step `step` (0-based), from the real images D has seen before it.

    shown = step * batch_size * n_critic; phase = shown // stage_images. Phase 0 is the base
    stage (alpha 1); then every stage s >= 1 has a fade phase (2s - 1: alpha = the fraction of
    the phase done, 0 -> 1) and a stable phase (2s: alpha 1). After the last stage's stable
    phase: the last stage, alpha 1. Paper, section 3 ("fade in ... 800k real images, then
    stabilize ... 800k").
    """
    n_stages = len(stage_resolutions(cfg.resolution))
    shown = step * cfg.batch_size * cfg.n_critic
    phase, into = divmod(shown, cfg.stage_images)
    stage = (phase + 1) // 2
    if stage >= n_stages:
        return n_stages - 1, 1.0
    alpha = into / cfg.stage_images if phase % 2 == 1 else 1.0
    return stage, alpha


def fade_reals(x: torch.Tensor, stage: int, alpha: float, resolution: int) -> torch.Tensor:
    """Real images as D sees them at (stage, alpha): target-size (N, C, R, R) in and out.

    x_s = avgpool_k(x) at the stage resolution (k = R / stage resolution); during a fade
    x_s = lerp(up2(avgpool2(x_s)), x_s, alpha), which matches G's faded output (the paper's
    official code blends the reals this way); then nearest-upsampled by k back to R x R.
    """
    k = resolution // stage_resolutions(resolution)[stage]
    xs = F.avg_pool2d(x, k) if k > 1 else x  # (N, C, r_s, r_s)
    if alpha < 1:
        low = F.interpolate(F.avg_pool2d(xs, 2), scale_factor=2, mode="nearest")
        xs = torch.lerp(low, xs, alpha)
    return F.interpolate(xs, scale_factor=k, mode="nearest") if k > 1 else xs


@dataclass
class ProGANConfig:
    resolution: int = 32  # target size in pixels (square); one of RESOLUTIONS
    img_channels: int = 1  # 1 (grayscale) or 3 (RGB)
    z_dim: int = 512  # latent size (paper: 512)
    width: int = 64  # channels at the target resolution; doubled per halving of the resolution
    max_channels: int = 512  # cap on the channels of any stage (paper's fmap_max)
    mbstd_group: int = 4  # images per minibatch-stddev group (paper's code: 4)
    upsample: str = "nearest"  # G's x2 upsampling inside each block: "nearest" (paper) or "bilinear"
    block: str = "paper"  # "paper": two 3x3 convs per block; "strided": one 4x4 stride-2 (transposed) conv
    top_channels: int = 0  # channels of the last (target-resolution) stage; 0 = by the width rule as the others
    d_batch_norm: bool = False  # strided blocks only: batch norm after every D block's conv, as the DCGAN's D
    g_batch_norm: bool = False  # strided blocks only: batch norm in G before every LReLU + pixel norm, as the DCGAN's G
    rgb_top: bool = False  # strided blocks only: the last stage's G block makes the image, its D block reads it (no 1x1s)
    fused_scale: bool = True  # paper blocks: G's up x2 + conv, D's conv + pool as one stride-2 conv (official code's)
    d_width: int = 0  # D's channels at the target resolution, doubled per halving as G's; 0 = width (as the paper)

    def __post_init__(self) -> None:
        stage_resolutions(self.resolution)  # raises on an unsupported resolution
        if self.upsample not in PROGAN_UPSAMPLES:
            raise ValueError(f"upsample must be one of {PROGAN_UPSAMPLES}, got {self.upsample!r}")
        if self.block not in PROGAN_BLOCKS:
            raise ValueError(f"block must be one of {PROGAN_BLOCKS}, got {self.block!r}")
        if self.top_channels < 0:
            raise ValueError(f"top_channels must be >= 0 (0 = by the width rule), got {self.top_channels}")
        if self.d_width < 0:
            raise ValueError(f"d_width must be >= 0 (0 = width), got {self.d_width}")
        for field in ("d_batch_norm", "g_batch_norm", "rgb_top"):  # switches of the strided blocks only
            if getattr(self, field) and self.block != "strided":
                raise ValueError(f"{field} needs block='strided'")
        if self.rgb_top and self.top_channels:
            raise ValueError("rgb_top sets the last stage's channels to the image's; leave top_channels at 0")
        if self.block == "strided" and self.upsample != "nearest":
            raise ValueError("the strided blocks upsample by their transposed conv; upsample must stay 'nearest'")
        if self.img_channels not in (1, 3):
            raise ValueError(f"img_channels must be 1 or 3, got {self.img_channels}")

    @property
    def n_stages(self) -> int:
        return len(stage_resolutions(self.resolution))

    def channels(self, stage: int, d: bool = False) -> int:
        """Feature maps at stage `stage` (of D with `d`): width (or d_width, where set, for D) *
        2**(stages above it), at most max_channels; the last stage has top_channels where that is set
        (a thin stage at the full resolution, where every channel costs most), or the image's channels
        with rgb_top."""
        if stage == self.n_stages - 1 and (self.top_channels or self.rgb_top):
            return self.img_channels if self.rgb_top else self.top_channels
        width = self.d_width if d and self.d_width else self.width
        return min(width * 2 ** (self.n_stages - 1 - stage), self.max_channels)


# ---------------------------------------------------------------------------- layers


class EqualizedLinear(nn.Module):
    """Linear layer with the equalized learning rate: y = x (W * c)^T + b, W ~ N(0, 1),
    c = gain / sqrt(in_features) applied at run time (Karras et al. 2018, section 4.1)."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)  # He's constant: the std He init would give W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def _fused_3x3(w3: torch.Tensor) -> torch.Tensor:
    """(A, B, 3, 3) -> (A, B, 4, 4): the sum of the 3x3 kernel at its four offsets in a 4x4 kernel.
    A stride-2 transposed conv with it equals nearest x2 upsampling, then a 3x3 conv (kernel
    flipped), and a stride-2 conv with it / 4 equals a 3x3 conv, then 2x2 average pooling; the
    official ProGAN code's `upscale2d_conv2d` and `conv2d_downscale2d` (fused_scale)."""
    w = F.pad(w3, (1, 1, 1, 1))
    return w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]


class EqualizedConv2d(nn.Module):
    """Conv with the equalized learning rate: W ~ N(0, 1) times c = gain / sqrt(in_channels *
    kernel^2) at run time (Karras et al. 2018, section 4.1), stride 1 with "same" padding (odd
    kernel). Or stride 2 with kernel 4 and padding 1, which maps 2r -> r exactly (the strided
    blocks): W starts as a 3x3 N(0, 1) kernel fused with 2x2 average pooling (`_fused_3x3` / 4) and
    is scaled by that 3x3 conv's constant, gain / sqrt(in_channels * 9)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, gain: float = math.sqrt(2),
                 stride: int = 1):
        super().__init__()
        if stride == 1:
            self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
            self.scale = gain / math.sqrt(in_channels * kernel * kernel)
        elif (stride, kernel) == (2, 4):
            self.weight = nn.Parameter(_fused_3x3(torch.randn(out_channels, in_channels, 3, 3)) / 4)
            self.scale = gain / math.sqrt(in_channels * 9)
        else:
            raise ValueError(f"stride 1 (any odd kernel) or stride 2 with kernel 4, got stride {stride} kernel {kernel}")
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.stride = stride
        self.padding = kernel // 2 if stride == 1 else (kernel - stride) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class EqualizedConvTranspose2d(nn.Module):
    """Transposed conv, kernel 4, stride 2, padding 1 (r -> 2r exactly, as the DCGAN's), with the
    equalized learning rate: W starts as a 3x3 N(0, 1) kernel fused with nearest x2 upsampling
    (`_fused_3x3`), so the layer starts as up x2 + that 3x3 conv, and is scaled at run time by the
    3x3 conv's constant, gain / sqrt(in_channels * 9) (He's, for the 9 x in_channels inputs each
    output pixel of the upsampled conv sums)."""

    def __init__(self, in_channels: int, out_channels: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(_fused_3x3(torch.randn(in_channels, out_channels, 3, 3)))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight * self.scale, self.bias, stride=2, padding=1)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """b = a / sqrt(mean over channels of a^2 + eps), per pixel. Karras et al. 2018, eq. in 4.2.
    (N, C, ...) -> same shape."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """(N, C, H, W) -> (N, C + 1, H, W): one more feature map, the same number at every pixel.

    Images are split into groups of g = min(group_size, N) (lowered until it divides N); image i
    belongs to group i mod (N / g), as in the paper's code. Per group: the standard deviation of
    every feature at every pixel over the g images, sqrt(mean((x - mean)^2) + 1e-8), averaged over
    C, H, W. Karras et al. 2018, section 3.
    """
    n, c, h, w = x.shape
    g = min(group_size, n)
    while n % g:
        g -= 1
    y = x.reshape(g, n // g, c, h, w)  # y[j, m] = image j * (n / g) + m
    y = y - y.mean(dim=0, keepdim=True)
    std = (y.pow(2).mean(dim=0) + 1e-8).sqrt()  # (n/g, C, H, W)
    s = std.mean(dim=(1, 2, 3)).repeat(g)  # (n,): image j * (n / g) + m gets group m's value
    return torch.cat([x, s.view(n, 1, 1, 1).expand(n, 1, h, w)], dim=1)


class _Growing(nn.Module):
    """Holds the (stage, alpha) the network runs at, as buffers saved with the weights."""

    def __init__(self, cfg: ProGANConfig):
        super().__init__()
        self.cfg = cfg
        self.resolutions = stage_resolutions(cfg.resolution)
        self.register_buffer("stage", torch.tensor(len(self.resolutions) - 1, dtype=torch.int64))
        self.register_buffer("alpha", torch.tensor(1.0))  # fully grown until told otherwise

    def set_progress(self, stage: int, alpha: float) -> None:
        """Run at stage `stage` (0 = base resolution) with fade-in weight `alpha` in [0, 1]."""
        if not 0 <= stage < len(self.resolutions):
            raise ValueError(f"stage must lie in [0, {len(self.resolutions) - 1}], got {stage}")
        if not 0.0 <= alpha <= 1.0 or (stage == 0 and alpha != 1.0):
            raise ValueError(f"alpha must lie in [0, 1] (and be 1 at stage 0), got {alpha} at stage {stage}")
        self.stage.fill_(stage)
        self.alpha.fill_(alpha)

    def progress(self) -> tuple[int, float]:
        return int(self.stage), float(self.alpha)


def lrelu_pixel_norm(x: torch.Tensor) -> torch.Tensor:
    """pixel_norm(LeakyReLU(x)): what follows every conv of G. Generator.compile_parts swaps in a
    torch.compiled copy, which fuses the pair's elementwise passes (forward and backward)."""
    return pixel_norm(F.leaky_relu(x, LRELU))


class _GInput(nn.Module):
    """z (N, z_dim) -> (N, ch, base, base): pixel norm on z, a dense layer (gain sqrt(2) / base,
    as the official code's sqrt(2)/4 at 4x4), a 3x3 conv (none with the strided blocks); batch norm
    after the dense layer if asked (strided blocks only)."""

    def __init__(self, z_dim: int, ch: int, base: int, conv: bool = True, batch_norm: bool = False):
        super().__init__()
        self.ch, self.base = ch, base
        self.dense = EqualizedLinear(z_dim, ch * base * base, gain=math.sqrt(2) / base)
        self.conv = EqualizedConv2d(ch, ch, 3) if conv else None  # None: the strided block set's dense layer only
        self.norm = nn.BatchNorm2d(ch) if batch_norm else nn.Identity()
        self.act = lrelu_pixel_norm

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm(self.dense(pixel_norm(z)).view(-1, self.ch, self.base, self.base)))
        return h if self.conv is None else self.act(self.conv(h))


class _GBlock(nn.Module):
    """(N, c_in, r, r) -> (N, c_out, 2r, 2r): up x2 (nearest as in the paper, or bilinear: no
    blocky pattern of the lower stage shows through), two 3x3 convs, each + LReLU + pixel norm.
    `fused` (nearest only): up x2 + the first conv computed as the one stride-2 transposed conv they
    equal, with the 4x4 kernel `_fused_3x3` makes of the 3x3 one (the official code's
    `upscale2d_conv2d`): the same function and parameters, without the 4x larger upsampled map."""

    def __init__(self, c_in: int, c_out: int, upsample: str = "nearest", fused: bool = False):
        super().__init__()
        self.conv1, self.conv2 = EqualizedConv2d(c_in, c_out, 3), EqualizedConv2d(c_out, c_out, 3)
        self.upsample = upsample
        self.fused = fused and upsample == "nearest"
        self.act = lrelu_pixel_norm

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.fused:  # conv_transpose2d's kernel is (in, out, k, k) and flipped against conv2d's
            w = _fused_3x3(self.conv1.weight * self.conv1.scale).transpose(0, 1).flip(2, 3)
            h = F.conv_transpose2d(h, w, self.conv1.bias, stride=2, padding=1)
        elif self.upsample == "bilinear":
            h = self.conv1(F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False))
        else:
            h = self.conv1(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.act(self.conv2(self.act(h)))


class _GBlockStrided(nn.Module):
    """(N, c_in, r, r) -> (N, c_out, 2r, 2r): one 4x4 stride-2 transposed conv (the DCGAN's
    layer), batch norm if asked (the DCGAN's G has it after every layer), LReLU, pixel norm."""

    def __init__(self, c_in: int, c_out: int, batch_norm: bool = False):
        super().__init__()
        self.conv = EqualizedConvTranspose2d(c_in, c_out)
        self.norm = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        self.act = lrelu_pixel_norm

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(h)))


class Generator(_Growing):
    def __init__(self, cfg: ProGANConfig):
        super().__init__(cfg)
        n, ch = len(self.resolutions), [cfg.channels(s) for s in range(len(self.resolutions))]
        # blocks[0]: z -> base x base; blocks[s]: stage s-1 -> stage s (doubles the size)
        strided = cfg.block == "strided"
        block = partial(_GBlockStrided, batch_norm=cfg.g_batch_norm) if strided else \
            partial(_GBlock, upsample=cfg.upsample, fused=cfg.fused_scale)
        self.blocks = nn.ModuleList([_GInput(cfg.z_dim, ch[0], self.resolutions[0], conv=not strided,
                                             batch_norm=cfg.g_batch_norm)]
                                    + [block(ch[s - 1], ch[s]) for s in range(1, n)])
        self.to_rgb = nn.ModuleList([EqualizedConv2d(ch[s], cfg.img_channels, 1, gain=1.0) for s in range(n)])
        if cfg.rgb_top:  # the last block is the image's layer, linear as toRGB (gain 1), as the DCGAN's last layer
            self.blocks[-1] = EqualizedConvTranspose2d(ch[-2], cfg.img_channels, gain=1.0)
            self.to_rgb[-1] = nn.Identity()

    def compile_parts(self) -> None:
        """--compile: torch.compile the LReLU + pixel norm after every conv (one compiled function for
        all blocks), which fuses their elementwise passes, forward and backward; the convs stay eager.
        Compiled whole, this network was slower than eager on a CPU (its forward breaks the graph where
        it reads its stage; benchmarks/hires.md, thirteenth round)."""
        act = torch.compile(lrelu_pixel_norm)
        for block in self.blocks:
            if hasattr(block, "act"):
                block.act = act

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """z (N, z_dim) -> images (N, C, res, res), roughly in [-1, 1] (linear output). At a lower
        stage the stage-size image is nearest-upsampled to res. `c` must be None (unconditional)."""
        if c is not None:
            raise ValueError("this ProGAN is unconditional; pass c=None")
        if z.ndim != 2 or z.shape[1] != self.cfg.z_dim:
            raise ValueError(f"z must have shape (N, {self.cfg.z_dim}), got {tuple(z.shape)}")
        stage, alpha = self.progress()
        h = self.blocks[0](z)  # (N, ch0, base, base)
        for s in range(1, stage):
            h = self.blocks[s](h)  # (N, ch_s, r_s, r_s)
        if stage == 0:
            img = self.to_rgb[0](h)
        else:
            img = self.to_rgb[stage](self.blocks[stage](h))  # the new stage: (N, C, r_stage, r_stage)
            if alpha < 1:  # fading in: blend with the previous stage's image, upsampled
                old = F.interpolate(self.to_rgb[stage - 1](h), scale_factor=2, mode="nearest")
                img = torch.lerp(old, img, alpha)
        k = self.cfg.resolution // self.resolutions[stage]
        return F.interpolate(img, scale_factor=k, mode="nearest") if k > 1 else img


class _DBlock(nn.Module):
    """(N, c_in, 2r, 2r) -> (N, c_out, r, r): two 3x3 convs + LReLU, then average pooling x2 (the
    paper's table 2). `fused`: the second conv and the pooling computed as the one stride-2 4x4 conv
    they equal (`_fused_3x3` / 4, the official code's `conv2d_downscale2d`), which pools before the
    LReLU, as the official code does: a quarter of the pixels for the LReLU, no full-size map."""

    def __init__(self, c_in: int, c_out: int, fused: bool = False):
        super().__init__()
        self.conv1, self.conv2 = EqualizedConv2d(c_in, c_in, 3), EqualizedConv2d(c_in, c_out, 3)
        self.fused = fused

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(h), LRELU)
        if self.fused:
            w = _fused_3x3(self.conv2.weight * self.conv2.scale) / 4
            return F.leaky_relu(F.conv2d(h, w, self.conv2.bias, stride=2, padding=1), LRELU)
        return F.avg_pool2d(F.leaky_relu(self.conv2(h), LRELU), 2)


class _DBlockStrided(nn.Module):
    """(N, c_in, 2r, 2r) -> (N, c_out, r, r): one 4x4 stride-2 conv (the DCGAN's layer), batch norm
    if asked (the DCGAN's D has it after every conv but the first), LReLU."""

    def __init__(self, c_in: int, c_out: int, batch_norm: bool = False):
        super().__init__()
        self.conv = EqualizedConv2d(c_in, c_out, 4, stride=2)
        self.norm = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(h)), LRELU)


class _DOutput(nn.Module):
    """(N, ch, base, base) -> logits (N,): minibatch stddev, 3x3 conv, dense, dense to 1 (gain 1)."""

    def __init__(self, ch: int, base: int, group: int):
        super().__init__()
        self.group = group
        self.conv = EqualizedConv2d(ch + 1, ch, 3)
        self.dense = EqualizedLinear(ch * base * base, ch)
        self.out = EqualizedLinear(ch, 1, gain=1.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv(minibatch_stddev(h, self.group)), LRELU)
        h = F.leaky_relu(self.dense(h.flatten(1)), LRELU)
        return self.out(h).flatten()


class _DOutputStrided(nn.Module):
    """(N, ch, base, base) -> logits (N,): minibatch stddev, then one dense layer to 1 (gain 1),
    as the DCGAN's last conv collapses base x base to one logit."""

    def __init__(self, ch: int, base: int, group: int):
        super().__init__()
        self.group = group
        self.out = EqualizedLinear((ch + 1) * base * base, 1, gain=1.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(minibatch_stddev(h, self.group).flatten(1)).flatten()


class Discriminator(_Growing):
    def __init__(self, cfg: ProGANConfig):
        super().__init__(cfg)
        n, ch = len(self.resolutions), [cfg.channels(s, d=True) for s in range(len(self.resolutions))]
        self.from_rgb = nn.ModuleList([EqualizedConv2d(cfg.img_channels, ch[s], 1) for s in range(n)])
        # blocks[0]: base x base -> logit; blocks[s]: stage s -> stage s-1 (halves the size)
        strided = cfg.block == "strided"
        out = _DOutputStrided if strided else _DOutput
        block = partial(_DBlockStrided, batch_norm=cfg.d_batch_norm) if strided else \
            partial(_DBlock, fused=cfg.fused_scale)
        self.blocks = nn.ModuleList([out(ch[0], self.resolutions[0], cfg.mbstd_group)]
                                    + [block(ch[s], ch[s - 1]) for s in range(1, n)])
        if cfg.rgb_top:  # the last block reads the image itself (no batch norm: the DCGAN's first layer has none)
            self.from_rgb[-1] = nn.Identity()
            self.blocks[-1] = _DBlockStrided(cfg.img_channels, ch[-2])

    def compile_parts(self) -> None:
        """--compile: nothing is compiled in D. Its layers sit under the R1 and WGAN-GP penalties'
        double backward, which compiled code cannot take (AOTAutograd refuses it)."""

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """images (N, C, res, res) -> logits (N,). At a lower stage D reads every k-th pixel
        (k = res / stage resolution); see the module docstring. `c` must be None."""
        if c is not None:
            raise ValueError("this ProGAN is unconditional; pass c=None")
        r, chans = self.cfg.resolution, self.cfg.img_channels
        check_images(x, chans, r)
        stage, alpha = self.progress()
        k = r // self.resolutions[stage]
        x = x[:, :, ::k, ::k] if k > 1 else x  # (N, C, r_stage, r_stage)
        top = self.cfg.rgb_top and stage == len(self.resolutions) - 1  # its block reads x itself (no fromRGB)
        h = x if top else F.leaky_relu(self.from_rgb[stage](x), LRELU)
        if stage > 0:
            h = self.blocks[stage](h)  # (N, ch_{s-1}, r_{s-1}, r_{s-1})
            if alpha < 1:  # fading in: blend with the previous stage's input path
                old = F.leaky_relu(self.from_rgb[stage - 1](F.avg_pool2d(x, 2)), LRELU)
                h = torch.lerp(old, h, alpha)
            for s in range(stage - 1, 0, -1):
                h = self.blocks[s](h)
        return self.blocks[0](h)
