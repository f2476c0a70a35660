"""VAE-GAN: a VAE whose decoder is also trained against a patch discriminator.

Larsen, Sønderby, Larochelle & Winther, "Autoencoding beyond pixels using a learned similarity
metric", ICML 2016 (arXiv:1512.09300): the decoder of a VAE doubles as a GAN generator, and the
discriminator's hidden features give a similarity measure between an image and its
reconstruction (feature matching). The discriminator here is a PatchGAN (Isola, Zhu, Zhou &
Efros, "Image-to-Image Translation with Conditional Adversarial Networks", CVPR 2017): a few
strided convs ending in a map of logits, one per overlapping image patch, as in the image
autoencoders of Esser, Rombach & Ommer, "Taming Transformers for High-Resolution Image
Synthesis" (VQGAN), CVPR 2021.

The generator is the VAE of vae.py, unchanged (role "vae"): sampling, encoding, decoding and
reconstruction work exactly as for model "vae". This file adds the discriminator (role "D"):

    x (N, C, res, res)
      -> conv 4x4 stride 2, LeakyReLU(0.2)                       (N, w,  res/2, res/2)
      -> [conv 4x4 stride 2, norm, LeakyReLU(0.2)] * (n - 1)      (N, w * 2**(n-1), res/2**n, ...)
      -> conv 4x4 stride 1, norm, LeakyReLU(0.2)                  (N, w * 2**n, res/2**n - 1, ...)
      -> conv 4x4 stride 1 -> logits                              (N, 1, res/2**n - 2, ...)

n = 2 strided convs at 28 and 32 px, 3 at 64 and 128 px (`patch_grid` gives the logit map's size:
5x5 at 28 px, 6x6 at 32 and 64 px, 14x14 at 128 px). "norm" is batch norm (Isola et al.), or
nothing with `spectral_norm=True`, where every conv is spectrally normalized (Miyato et al.
2018). `forward_features` also returns the output of every hidden block: the features that
the feature-matching loss compares (Larsen et al. 2016, section 2.2).

The training objective (in train.vae_gan_step) and its loss terms (in losses.py) live elsewhere;
this file is the network only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .conditional import check_images
from .dcgan import init_weights, layout
from .vae import VAE


def n_strided(resolution: int) -> int:
    """Stride-2 convs of the patch discriminator: 2 at 28/32 px, 3 at 64/128 px."""
    layout(resolution)  # raises on an unsupported resolution
    return 2 if resolution <= 32 else 3


def patch_grid(resolution: int) -> int:
    """Side of the discriminator's logit map: res / 2**n after the strided convs, then two
    4x4 stride-1 padding-1 convs, each of which shrinks the side by one."""
    return resolution // 2 ** n_strided(resolution) - 2


@dataclass
class PatchDConfig:
    resolution: int = 32  # image size in pixels (square)
    img_channels: int = 1  # 1 or 3
    width: int = 64  # channels of the first conv; doubled per conv inward
    spectral_norm: bool = False  # spectral norm on every conv and no batch norm (Miyato et al. 2018)

    def __post_init__(self) -> None:
        layout(self.resolution)
        if self.img_channels not in (1, 3):
            raise ValueError(f"img_channels must be 1 or 3, got {self.img_channels}")


class PatchDiscriminator(nn.Module):
    def __init__(self, cfg: PatchDConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.width

        def norm(c: int) -> nn.Module:
            return nn.Identity() if cfg.spectral_norm else nn.BatchNorm2d(c)

        blocks: list[nn.Module] = [  # no norm on the input layer (Isola et al., as in DCGAN)
            nn.Sequential(nn.Conv2d(cfg.img_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2))]
        for _ in range(n_strided(cfg.resolution) - 1):  # (N, ch, 2s, 2s) -> (N, 2ch, s, s)
            blocks.append(nn.Sequential(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), norm(ch * 2), nn.LeakyReLU(0.2)))
            ch *= 2
        # (N, ch, s, s) -> (N, 2ch, s - 1, s - 1): widens the receptive field without halving the map
        blocks.append(nn.Sequential(nn.Conv2d(ch, ch * 2, 4, 1, 1, bias=False), norm(ch * 2), nn.LeakyReLU(0.2)))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(ch * 2, 1, 4, 1, 1)  # (N, 1, s - 2, s - 2): one logit per patch
        self.apply(init_weights)
        if cfg.spectral_norm:  # after init: the parametrization wraps the initialized weight
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(m)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """images (N, C, res, res) in [-1, 1] -> (logits (N, 1, g, g), [each hidden block's output]),
        g = patch_grid(res)."""
        r, c = self.cfg.resolution, self.cfg.img_channels
        check_images(x, c, r)
        feats = []
        h = x
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        return self.head(h), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """images (N, C, res, res) in [-1, 1] -> patch logits (N, 1, g, g)."""
        return self.forward_features(x)[0]


def decoder_last_layer(vae: VAE) -> torch.Tensor:
    """The weight of the VAE decoder's last conv: where the adaptive adversarial weight compares
    the gradients of the reconstruction and adversarial losses (Esser et al. 2021, eq. 7)."""
    last = vae.decoder[-1]
    assert isinstance(last, nn.ConvTranspose2d), type(last)
    return last.weight
