"""Convolutional variational autoencoder: Kingma & Welling, "Auto-Encoding Variational Bayes",
ICLR 2014 (arXiv:1312.6114).

encoder  x (N, C, res, res) -> stride-2 convs -> flatten -> linear -> (mu, logvar), each (N, z_dim)
sample   z = mu + exp(logvar / 2) * eps, eps ~ N(0, I)     (the reparameterization trick)
decoder  z -> linear -> (N, ch, base, base) -> stride-2 transposed convs -> (N, C, res, res)

The decoder's raw output parameterizes the likelihood p(x|z) of pixels in [0, 1]:
  likelihood "bce": Bernoulli logits; the decoded image is sigmoid(logits).
  likelihood "mse": the mean of a Gaussian with fixed std; the decoded image is the mean, clamped.
The loss (negative ELBO) lives in latentforge.losses; this file is the network only.

Layer arithmetic is the DCGAN one (see dcgan.py): res = base * 2**n, base = 7 for 28 px, else 4.

Conditional VAE (num_classes = K > 0; 0 = unconditional, exactly the network above): Sohn, Lee &
Yan, "Learning Structured Output Representation using Deep Conditional Generative Models",
NeurIPS 2015. The class c enters both sides as a one-hot vector y:
  encoder  q(z | x, y): y as K extra constant input channels, (N, C + K, res, res)
  decoder  p(x | z, y): [z, y] (N, z_dim + K) into the first linear layer
The prior stays N(0, I), so the loss is unchanged; sampling draws z ~ N(0, I) and picks y.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .conditional import check_images, check_labels
from .dcgan import layout

LIKELIHOODS = ("bce", "mse")


@dataclass
class VAEConfig:
    resolution: int = 32  # image size in pixels (square)
    img_channels: int = 1  # 1 or 3
    z_dim: int = 32  # latent size
    width: int = 64  # channels of the first encoder conv; doubled per layer inward
    likelihood: str = "bce"  # "bce" (Bernoulli) or "mse" (Gaussian with fixed std)
    num_classes: int = 0  # 0 = unconditional; K > 0: conditional VAE, one-hot class into encoder and decoder

    def __post_init__(self) -> None:
        layout(self.resolution)
        if self.img_channels not in (1, 3):
            raise ValueError(f"img_channels must be 1 or 3, got {self.img_channels}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")


@dataclass
class VAEOutput:
    decoded: torch.Tensor  # (N, C, res, res): Bernoulli logits or Gaussian means, in [0, 1] pixel space
    mu: torch.Tensor  # (N, z_dim)
    logvar: torch.Tensor  # (N, z_dim)
    z: torch.Tensor  # (N, z_dim), the reparameterized sample that was decoded


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        base, n = layout(cfg.resolution)
        ch, k = cfg.width, cfg.num_classes
        enc: list[nn.Module] = [nn.Conv2d(cfg.img_channels + k, ch, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(n - 1):  # (N, ch, 2s, 2s) -> (N, 2ch, s, s)
            enc += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, inplace=True)]
            ch *= 2
        self.encoder = nn.Sequential(*enc, nn.Flatten())  # (N, ch * base * base)
        self.to_stats = nn.Linear(ch * base * base, 2 * cfg.z_dim)  # -> (mu, logvar)

        self._top = (ch, base, base)
        self.from_z = nn.Sequential(nn.Linear(cfg.z_dim + k, ch * base * base), nn.ReLU(True))
        dec: list[nn.Module] = []
        for _ in range(n - 1):  # (N, ch, s, s) -> (N, ch/2, 2s, 2s)
            dec += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        dec += [nn.ConvTranspose2d(ch, cfg.img_channels, 4, 2, 1)]  # (N, C, res, res), no activation
        self.decoder = nn.Sequential(*dec)

    def _one_hot(self, c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(c, self.cfg.num_classes).to(like.dtype)  # (N, K)

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """images in [-1, 1] (N, C, res, res), c (N,) int64 classes or None -> (mu, logvar), each (N, z_dim)."""
        check_images(x, self.cfg.img_channels, self.cfg.resolution)
        check_labels(c, x.shape[0], self.cfg.num_classes, "VAE")
        if c is not None:  # one-hot class as K constant channels: (N, C + K, res, res)
            y = self._one_hot(c, x)[:, :, None, None].expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, y], dim=1)
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar

    def decode_raw(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """z (N, z_dim), c (N,) or None -> likelihood parameters (N, C, res, res): logits ("bce") or means ("mse")."""
        if z.ndim != 2 or z.shape[1] != self.cfg.z_dim:
            raise ValueError(f"z must have shape (N, {self.cfg.z_dim}), got {tuple(z.shape)}")
        check_labels(c, z.shape[0], self.cfg.num_classes, "VAE")
        if c is not None:
            z = torch.cat([z, self._one_hot(c, z)], dim=1)  # (N, z_dim + K)
        return self.decoder(self.from_z(z).view(-1, *self._top))

    def to_image(self, decoded: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters -> the expected image, in [-1, 1]."""
        x01 = torch.sigmoid(decoded) if self.cfg.likelihood == "bce" else decoded.clamp(0, 1)
        return x01 * 2 - 1

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """z (N, z_dim) -> images (N, C, res, res) in [-1, 1] (the mean of p(x|z))."""
        return self.to_image(self.decode_raw(z, c))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> VAEOutput:
        mu, logvar = self.encode(x, c)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterization trick
        return VAEOutput(decoded=self.decode_raw(z, c), mu=mu, logvar=logvar, z=z)
