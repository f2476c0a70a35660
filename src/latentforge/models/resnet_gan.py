"""ResNet GAN in the SN-GAN style: Miyato, Kataoka, Koyama & Yoshida, "Spectral Normalization for
Generative Adversarial Networks", ICLR 2018 (arXiv:1802.05957), Appendix B (Tables 4 and 6),
whose residual blocks are those of Gulrajani et al., "Improved Training of Wasserstein GANs",
NeurIPS 2017 (arXiv:1704.00028), Appendix F. Class conditioning (`num_classes` > 0) follows
Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018 (arXiv:1802.05637).

Generator, z (N, z_dim) -> images (N, C, res, res):
    linear z -> (N, width, base, base)
    n_up x GBlock      BN -> ReLU -> nearest up x2 -> conv3x3 -> BN -> ReLU -> conv3x3
                       + shortcut: nearest up x2 -> conv1x1              (N, width, 2s, 2s)
    BN -> ReLU -> conv3x3 -> tanh                                        (N, C, res, res)
Discriminator, images -> logits (N,), spectral norm on every layer, no batch norm:
    DBlock (first)     conv3x3 -> ReLU -> conv3x3 -> avg-pool x2, + shortcut avg-pool -> conv1x1
    n_up - 1 x DBlock  ReLU -> conv3x3 -> ReLU -> conv3x3 -> avg-pool x2, + shortcut conv1x1 -> avg-pool
    DBlock (no pool)   ReLU -> conv3x3 -> ReLU -> conv3x3, + identity shortcut      (N, width, base, base)
    ReLU -> global sum pooling -> phi(x) (N, width) -> linear -> logit
At 32 px (width 256 in G, 128 in D) this is SN-GAN's CIFAR-10 network up to D's depth (SN-GAN
stops down-sampling at 8x8 and adds a second plain block; here D always goes down to `base`,
as in SN-GAN's 128 px ImageNet network). Layer arithmetic is the DCGAN one (dcgan.layout):
res = base * 2**n_up, base 7 for 28 px and 4 otherwise.

Class conditioning (num_classes > 0; 0 = unconditional):
    G: every batch norm inside the blocks becomes class-conditional (conditional.ConditionalBatchNorm2d:
       per-class gain and bias; de Vries et al. 2017); the last batch norm stays plain, as in
       Miyato & Koyama's code.
    D: projection, logit = linear(phi(x)) + <embed(c), phi(x)> (Miyato & Koyama 2018, eq. 3),
       with a spectrally normalized class embedding (num_classes, width).

Initialization as in SN-GAN's code: Xavier-uniform weights, gain sqrt(2) on the 3x3 convs
inside residual branches and 1 elsewhere, zero biases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .conditional import ConditionalBatchNorm2d, check_aux_classifier, check_aux_request, check_images, check_labels
from .dcgan import layout


@dataclass
class ResNetGANConfig:
    resolution: int = 32  # output size in pixels (square): 28, 32, 64 or 128
    img_channels: int = 1  # 1 (grayscale) or 3 (RGB)
    z_dim: int = 128  # latent size (SN-GAN: 128)
    width: int = 128  # channels of every residual block, in G and D (SN-GAN CIFAR: 256 in G, 128 in D)
    num_classes: int = 0  # 0 = unconditional; K > 0: conditional BN in G, projection in D
    aux_classifier: bool = False  # conditional only: D also gets an AC-GAN class head (Odena et al. 2017)

    def __post_init__(self) -> None:
        layout(self.resolution)  # raises on an unsupported resolution
        if self.img_channels not in (1, 3):
            raise ValueError(f"img_channels must be 1 or 3, got {self.img_channels}")
        if self.z_dim <= 0 or self.width <= 0:
            raise ValueError(f"z_dim and width must be positive, got {self.z_dim} and {self.width}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        check_aux_classifier(self.aux_classifier, self.num_classes)


def _xavier(module: nn.Module, gain: float) -> nn.Module:
    nn.init.xavier_uniform_(module.weight, gain)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")  # (N, C, s, s) -> (N, C, 2s, 2s)


class GBlock(nn.Module):
    """Up-sampling residual block: (N, cin, s, s) -> (N, cout, 2s, 2s)."""

    def __init__(self, cin: int, cout: int, num_classes: int):
        super().__init__()
        norm = (lambda ch: ConditionalBatchNorm2d(ch, num_classes)) if num_classes else nn.BatchNorm2d  # noqa: E731
        self.bn1 = norm(cin)
        self.conv1 = _xavier(nn.Conv2d(cin, cout, 3, 1, 1), math.sqrt(2))
        self.bn2 = norm(cout)
        self.conv2 = _xavier(nn.Conv2d(cout, cout, 3, 1, 1), math.sqrt(2))
        self.shortcut = _xavier(nn.Conv2d(cin, cout, 1, 1, 0), 1.0)  # learnable: the block changes the size

    @staticmethod
    def _norm(bn: nn.Module, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return bn(x, c) if isinstance(bn, ConditionalBatchNorm2d) else bn(x)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(_up(F.relu(self._norm(self.bn1, x, c))))
        h = self.conv2(F.relu(self._norm(self.bn2, h, c)))
        return h + self.shortcut(_up(x))


class DBlock(nn.Module):
    """Residual block of the discriminator: (N, cin, s, s) -> (N, cout, s/2, s/2) with `down`,
    else (N, cout, s, s). `first`: SN-GAN's "optimized" input block (no ReLU on the image,
    pool before the shortcut conv)."""

    def __init__(self, cin: int, cout: int, down: bool, first: bool = False):
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = _xavier(nn.Conv2d(cin, cout, 3, 1, 1), math.sqrt(2))
        self.conv2 = _xavier(nn.Conv2d(cout, cout, 3, 1, 1), math.sqrt(2))
        # a 1x1 conv on the shortcut only where the block changes the shape (as in SN-GAN)
        self.shortcut = _xavier(nn.Conv2d(cin, cout, 1, 1, 0), 1.0) if (down or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        if self.shortcut is None:
            return h + x
        if self.first:
            return h + self.shortcut(F.avg_pool2d(x, 2))
        s = self.shortcut(x)
        return h + (F.avg_pool2d(s, 2) if self.down else s)


class Generator(nn.Module):
    def __init__(self, cfg: ResNetGANConfig):
        super().__init__()
        self.cfg = cfg
        self.base, n_up = layout(cfg.resolution)
        w = cfg.width
        self.fc = _xavier(nn.Linear(cfg.z_dim, w * self.base * self.base), 1.0)  # -> (N, w, base, base)
        self.blocks = nn.ModuleList([GBlock(w, w, cfg.num_classes) for _ in range(n_up)])  # x2 each
        self.bn_out = nn.BatchNorm2d(w)
        self.conv_out = _xavier(nn.Conv2d(w, cfg.img_channels, 3, 1, 1), 1.0)  # (N, C, res, res)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """z (N, z_dim), c (N,) int64 class indices or None -> images (N, C, res, res) in [-1, 1]."""
        if z.ndim != 2 or z.shape[1] != self.cfg.z_dim:
            raise ValueError(f"z must have shape (N, {self.cfg.z_dim}), got {tuple(z.shape)}")
        check_labels(c, z.shape[0], self.cfg.num_classes, "ResNet generator")
        h = self.fc(z).view(-1, self.cfg.width, self.base, self.base)
        for block in self.blocks:
            h = block(h, c)
        return torch.tanh(self.conv_out(F.relu(self.bn_out(h))))


class Discriminator(nn.Module):
    def __init__(self, cfg: ResNetGANConfig):
        super().__init__()
        self.cfg = cfg
        _, n_up = layout(cfg.resolution)
        w = cfg.width
        blocks = [DBlock(cfg.img_channels, w, down=True, first=True)]  # res -> res/2
        blocks += [DBlock(w, w, down=True) for _ in range(n_up - 1)]  # ... -> base
        blocks += [DBlock(w, w, down=False)]  # (N, w, base, base)
        self.blocks = nn.Sequential(*blocks)
        self.linear = _xavier(nn.Linear(w, 1), 1.0)  # psi
        self.embed = _xavier(nn.Embedding(cfg.num_classes, w), 1.0) if cfg.num_classes else None
        self.aux = _xavier(nn.Linear(w, cfg.num_classes), 1.0) if cfg.aux_classifier else None  # AC-GAN head
        for m in self.modules():  # spectral norm on every layer, after init: it wraps the initialized weight
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
                nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None,
                aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """images (N, C, res, res), c (N,) int64 class indices or None -> logits (N,).
        aux=True (a D built with aux_classifier): (logits (N,), class logits (N, num_classes))."""
        r, ch = self.cfg.resolution, self.cfg.img_channels
        check_images(x, ch, r)
        check_labels(c, x.shape[0], self.cfg.num_classes, "ResNet discriminator")
        check_aux_request(aux, self.aux)
        phi = F.relu(self.blocks(x)).sum(dim=(2, 3))  # (N, w): global sum pooling
        logit = self.linear(phi).flatten()  # psi(phi(x)), (N,)
        if self.embed is not None:  # projection: + <embed(c), phi(x)>
            logit = logit + (self.embed(c) * phi).sum(1)
        return (logit, self.aux(phi)) if aux else logit
