"""Class conditioning shared verbatim by the GAN generators and discriminators.

    ConditionalBatchNorm2d   batch norm whose gain and bias are looked up per class
                             (de Vries et al. 2017, "Modulating early visual processing by
                             language"; Miyato & Koyama 2018, "cGANs with Projection Discriminator")
    check_labels             the contract of a class-label argument `c`
    check_images             the contract of an image batch `x` (every network's input check)
    check_aux_classifier     an AC-GAN class head (Odena et al. 2017) needs a conditional D
    check_aux_request        D(x, c, aux=True) needs a D built with that head

The projection discriminator itself (Miyato & Koyama 2018, eq. 3) is one line in each
discriminator's forward: logit = psi(phi(x)) + <embed(c), phi(x)>, with phi(x) that
discriminator's last features; see dcgan.py and resnet_gan.py. With `aux_classifier` the same
phi(x) also feeds a linear class head (AC-GAN, Odena et al. 2017, "Conditional Image Synthesis
with Auxiliary Classifier GANs"): D(x, c, aux=True) returns (logits, class logits); the training
step adds a cross-entropy on them (train.gan_step's aux_weight).
"""

from __future__ import annotations

import torch
from torch import nn


def check_images(x: torch.Tensor, channels: int, res: int, what: str = "images") -> None:
    """`x` must be a (N, channels, res, res) batch; the error names the shape that came."""
    if x.ndim != 4 or x.shape[1:] != (channels, res, res):
        raise ValueError(f"{what} must have shape (N, {channels}, {res}, {res}), got {tuple(x.shape)}")


def check_labels(c: torch.Tensor | None, n: int, num_classes: int, who: str) -> None:
    """`c` must be None for an unconditional network (num_classes == 0), and an int64 (n,)
    tensor of class indices in [0, num_classes) for a conditional one (the range is checked
    on the CPU only, to keep a GPU forward free of host syncs)."""
    if num_classes == 0:
        if c is not None:
            raise ValueError(f"this {who} is unconditional (num_classes=0); pass c=None")
        return
    if c is None:
        raise ValueError(f"this {who} is class-conditional ({num_classes} classes); pass c, "
                         "an int64 (N,) tensor of class indices")
    if c.dtype != torch.long or tuple(c.shape) != (n,):
        raise ValueError(f"c must be an int64 tensor of shape ({n},), got {c.dtype} {tuple(c.shape)}")
    if n and c.device.type == "cpu" and (int(c.min()) < 0 or int(c.max()) >= num_classes):  # no GPU sync
        raise ValueError(f"class indices must lie in [0, {num_classes}), got {c.min().item()}..{c.max().item()}")


def check_aux_classifier(aux_classifier: bool, num_classes: int) -> None:
    """An AC-GAN class head predicts the data's classes: it needs num_classes > 0."""
    if aux_classifier and num_classes == 0:
        raise ValueError("aux_classifier needs a class-conditional discriminator (num_classes > 0)")


def check_aux_request(aux: bool, head: nn.Module | None) -> None:
    """D(x, c, aux=True) is only possible for a D that has the AC-GAN class head."""
    if aux and head is None:
        raise ValueError("this discriminator has no auxiliary class head; build it with aux_classifier=True")


class ConditionalBatchNorm2d(nn.Module):
    """y = BN(x) * gain[c] + bias[c]: batch statistics shared by all classes, the affine part
    per class. (N, C, H, W), (N,) -> (N, C, H, W). Gains start at 1 and biases at 0, so at
    initialization this is plain batch norm with the default affine part."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(c)[:, :, None, None] + self.bias(c)[:, :, None, None]
