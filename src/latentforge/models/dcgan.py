"""DCGAN: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks", ICLR 2016 (arXiv:1511.06434).

Generator: z (N, z_dim) -> a `base` x `base` map by one transposed conv, then stride-2
transposed convs that double the size, batch norm + ReLU between, tanh at the end.
Discriminator: the mirror image, stride-2 convs with LeakyReLU(0.2), batch norm on all but the
first layer, and one last conv that collapses `base` x `base` to a single logit.

Layer arithmetic. A stride-2 transposed conv with kernel 4 and padding 1 maps H -> 2H exactly,
and a stride-2 conv with kernel 4 and padding 1 maps 2H -> H exactly, so
    resolution = base * 2 ** n_up,  base = 7 for 28 px (28 = 7 * 4), 4 otherwise.
The first transposed conv (kernel = base, stride 1, padding 0) maps 1x1 -> base x base, and
the discriminator's last conv (kernel = base) maps base x base -> 1x1. Both networks are built
from the same (base, n_up) pair, so they cannot disagree about the image size.

Spectral normalization (Miyato, Kataoka, Koyama & Yoshida, "Spectral Normalization for
Generative Adversarial Networks", ICLR 2018): with `spectral_norm=True` every conv of the
discriminator divides its weight by an estimate of its largest singular value (one power
iteration per forward in train mode), and the discriminator has no batch norm, as in SN-GAN.
The parametrization keeps its own state (`parametrizations.weight.original`, `._u`, `._v`),
which is saved and loaded with the rest of the state dict.

Class conditioning (`num_classes` > 0; 0 = unconditional, exactly the networks above):
the generator's batch norms become class-conditional (per-class gain and bias; de Vries et
al. 2017, Miyato & Koyama 2018; see conditional.py), and the discriminator becomes a
projection discriminator (Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018,
eq. 3): with phi(x) the flattened features before the last conv (N, ch * base * base) and
psi that last conv (a linear map of phi), logit = psi(phi(x)) + <embed(c), phi(x)>.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .conditional import ConditionalBatchNorm2d, check_aux_classifier, check_aux_request, check_images, check_labels

SUPPORTED = (28, 32, 64, 128)


def layout(resolution: int) -> tuple[int, int]:
    """(base, n_up) with resolution == base * 2**n_up; see the module docstring."""
    if resolution not in SUPPORTED:
        raise ValueError(f"DCGAN supports resolutions {SUPPORTED}, got {resolution}")
    base = 7 if resolution == 28 else 4
    n_up = int(round(math.log2(resolution // base)))
    assert base * 2**n_up == resolution
    return base, n_up


@dataclass
class DCGANConfig:
    resolution: int = 32  # output size in pixels (square)
    img_channels: int = 1  # 1 (grayscale) or 3 (RGB)
    z_dim: int = 100  # latent size (paper: 100)
    width: int = 64  # ngf = ndf: channels of the layer next to the image; doubled per layer inward
    spectral_norm: bool = False  # discriminator: spectral norm on every conv, no batch norm (SN-GAN)
    num_classes: int = 0  # 0 = unconditional; K > 0: conditional BN in G, projection in D
    aux_classifier: bool = False  # conditional only: D also gets an AC-GAN class head (Odena et al. 2017)

    def __post_init__(self) -> None:
        layout(self.resolution)  # raises on an unsupported resolution
        if self.img_channels not in (1, 3):
            raise ValueError(f"img_channels must be 1 or 3, got {self.img_channels}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        check_aux_classifier(self.aux_classifier, self.num_classes)


def init_weights(module: nn.Module) -> None:
    """DCGAN paper, section 4: all weights from N(0, 0.02); batch norm gains from N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:  # (a conditional BN's own has no affine part)
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class LatentProjection(nn.ConvTranspose2d):
    """The generator's first layer, ConvTranspose2d(z_dim, ch, kernel=base) on a 1x1 input, computed
    as the matrix product it is: out[n, c, i, j] = sum_k z[n, k] W[k, c, i, j]. Same parameters and
    state dict as the transposed conv, ~4x faster forward + backward on a CPU (benchmarks/train.md)."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.shape[-2:] != (1, 1):
            return super().forward(x, output_size)
        return (x.flatten(1) @ self.weight.flatten(1)).view(x.shape[0], self.out_channels, *self.kernel_size)


class Collapse(nn.Conv2d):
    """The discriminator's last layer, Conv2d(ch, 1, kernel=base) on a base x base map, computed as
    the dot product it is: out[n] = <x[n], W[0]>. Same parameters and state dict as the conv (spectral
    norm included: self.weight is the parametrized weight)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.kernel_size or self.padding != (0, 0):
            return super().forward(x)
        return (x.flatten(1) @ self.weight.flatten(1).t()).view(x.shape[0], self.out_channels, 1, 1)


class Generator(nn.Module):
    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.cfg = cfg
        base, n_up = layout(cfg.resolution)
        ch = cfg.width * 2 ** (n_up - 1)  # channels at base x base
        k = cfg.num_classes
        norm = (lambda n: ConditionalBatchNorm2d(n, k)) if k else nn.BatchNorm2d  # noqa: E731
        layers: list[nn.Module] = [
            LatentProjection(cfg.z_dim, ch, base, 1, 0, bias=False),  # (N, ch, base, base)
            norm(ch),
            nn.ReLU(True),
        ]
        for _ in range(n_up - 1):  # each block: (N, ch, s, s) -> (N, ch/2, 2s, 2s)
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, cfg.img_channels, 4, 2, 1, bias=False), nn.Tanh()]  # (N, C, res, res)
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """z (N, z_dim), c (N,) int64 class indices (None when unconditional) -> images (N, C, res, res) in [-1, 1]."""
        if z.ndim != 2 or z.shape[1] != self.cfg.z_dim:
            raise ValueError(f"z must have shape (N, {self.cfg.z_dim}), got {tuple(z.shape)}")
        check_labels(c, z.shape[0], self.cfg.num_classes, "DCGAN")
        if c is None:
            return self.net(z[:, :, None, None])
        h = z[:, :, None, None]
        for layer in self.net:  # the same layers, with the class passed to the conditional batch norms
            h = layer(h, c) if isinstance(layer, ConditionalBatchNorm2d) else layer(h)
        return h


class Discriminator(nn.Module):
    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.cfg = cfg
        base, n_up = layout(cfg.resolution)
        ch = cfg.width
        layers: list[nn.Module] = [  # no batch norm on the input layer (paper, section 3)
            nn.Conv2d(cfg.img_channels, ch, 4, 2, 1, bias=False),  # (N, width, res/2, res/2)
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for _ in range(n_up - 1):  # each block: (N, ch, 2s, 2s) -> (N, 2ch, s, s)
            norm = nn.Identity() if cfg.spectral_norm else nn.BatchNorm2d(ch * 2)
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), norm, nn.LeakyReLU(0.2, inplace=True)]
            ch *= 2
        layers += [Collapse(ch, 1, base, 1, 0, bias=False)]  # (N, 1, 1, 1): one logit per image
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)
        # projection (conditional only): one embedding row per class, as long as phi(x) = the last conv's input
        self.embed = nn.Embedding(cfg.num_classes, ch * base * base) if cfg.num_classes else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)
        # AC-GAN head: class logits from the same features phi(x)
        self.aux = nn.Linear(ch * base * base, cfg.num_classes) if cfg.aux_classifier else None
        if cfg.spectral_norm:  # after init: the parametrization wraps the initialized weight
            for m in [*self.net, self.embed, self.aux]:
                if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
                    nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None,
                aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """images (N, C, res, res), c (N,) int64 class indices (None when unconditional) -> logits (N,).
        aux=True (a D built with aux_classifier): (logits (N,), class logits (N, num_classes))."""
        r, ch = self.cfg.resolution, self.cfg.img_channels
        check_images(x, ch, r)
        check_labels(c, x.shape[0], self.cfg.num_classes, "DCGAN")
        check_aux_request(aux, self.aux)
        if self.embed is None:
            return self.net(x).flatten()
        phi = self.net[:-1](x)  # (N, ch, base, base): the features the last conv reads
        logit = self.net[-1](phi).flatten()  # psi(phi(x)), (N,)
        logit = logit + (self.embed(c) * phi.flatten(1)).sum(1)  # + <embed(c), phi(x)>
        return (logit, self.aux(phi.flatten(1))) if aux else logit
