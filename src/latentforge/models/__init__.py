"""Model families. One explicit map from the name a user types to the code that builds it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from . import progan, resnet_gan, upsampler
from .dcgan import DCGANConfig, Discriminator, Generator
from .resnet_gan import ResNetGANConfig
from .vae import VAE, VAEConfig, VAEOutput
from .vae_gan import PatchDConfig, PatchDiscriminator

__all__ = ["build_networks", "eval_mode", "DCGANConfig", "Generator", "Discriminator", "ResNetGANConfig", "VAE",
           "VAEConfig", "VAEOutput", "PatchDConfig", "PatchDiscriminator"]


@contextlib.contextmanager
def eval_mode(net: Any) -> Iterator[Any]:
    """`with eval_mode(net):` runs the block with `net` in eval mode (batch norm on its running
    statistics, no dropout) and puts it back in the mode it was in, also when the block raises.
    Objects without train()/eval() (a VAE-like stand-in) pass through unchanged."""
    was_training = getattr(net, "training", False)
    if hasattr(net, "eval"):
        net.eval()
    try:
        yield net
    finally:
        if hasattr(net, "train"):
            net.train(was_training)


def _build_dcgan(cfg: TrainConfig, channels: int, num_classes: int = 0) -> dict[str, nn.Module]:
    mc = DCGANConfig(resolution=cfg.resolution, img_channels=channels, z_dim=cfg.z_dim, width=cfg.width,
                     spectral_norm=cfg.spectral_norm, num_classes=num_classes,
                     aux_classifier=cfg.aux_class_weight > 0)
    return {"G": Generator(mc), "D": Discriminator(mc)}


def _build_resnet_gan(cfg: TrainConfig, channels: int, num_classes: int = 0) -> dict[str, nn.Module]:
    # D is always spectrally normalized (SN-GAN), so cfg.spectral_norm changes nothing here
    mc = ResNetGANConfig(resolution=cfg.resolution, img_channels=channels, z_dim=cfg.z_dim, width=cfg.width,
                         num_classes=num_classes, aux_classifier=cfg.aux_class_weight > 0)
    return {"G": resnet_gan.Generator(mc), "D": resnet_gan.Discriminator(mc)}


def _build_progan(cfg: TrainConfig, channels: int, num_classes: int = 0) -> dict[str, nn.Module]:
    if num_classes:
        raise ValueError("progan has no conditional variant")
    mc = progan.ProGANConfig(resolution=cfg.resolution, img_channels=channels, z_dim=cfg.z_dim, width=cfg.width,
                             max_channels=cfg.max_channels, upsample=cfg.progan_upsample,
                             block=cfg.progan_block, top_channels=cfg.progan_top_channels,
                             d_batch_norm=cfg.progan_d_batch_norm, g_batch_norm=cfg.progan_g_batch_norm,
                             rgb_top=cfg.progan_rgb_top, fused_scale=cfg.progan_fused_scale,
                             d_width=cfg.progan_d_width)
    return {"G": progan.Generator(mc), "D": progan.Discriminator(mc)}


def _build_upsampler(cfg: TrainConfig, channels: int, num_classes: int = 0) -> dict[str, nn.Module]:
    if num_classes:
        raise ValueError("the upsampler has no conditional variant")
    mc = upsampler.UpsamplerConfig(resolution=cfg.resolution, img_channels=channels, factor=cfg.upsample_factor,
                                   width=cfg.width, spectral_norm=cfg.spectral_norm)
    return {"U": upsampler.Upsampler(mc), "D": upsampler.PatchDiscriminator(mc)}


def _build_vae(cfg: TrainConfig, channels: int, num_classes: int = 0) -> dict[str, nn.Module]:
    mc = VAEConfig(resolution=cfg.resolution, img_channels=channels, z_dim=cfg.z_dim, width=cfg.width,
                   likelihood=cfg.recon_loss, num_classes=num_classes)
    return {"vae": VAE(mc)}


def _build_vae_gan(cfg: TrainConfig, channels: int, num_classes: int = 0) -> dict[str, nn.Module]:
    if num_classes:
        raise ValueError("vae_gan has no conditional variant")
    nets = _build_vae(cfg, channels)  # the same random draws as model "vae": the same initial VAE
    # D comes from its own seeded stream, so the global random stream (the reparameterization
    # noise) also matches model "vae" until the discriminator starts
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        nets["D"] = PatchDiscriminator(PatchDConfig(resolution=cfg.resolution, img_channels=channels,
                                                    width=cfg.width, spectral_norm=cfg.spectral_norm))
    return nets


# name -> builder of the run's networks, keyed by the prefix their weights carry on disk
MODELS = {"vae": _build_vae, "dcgan": _build_dcgan, "resnet_gan": _build_resnet_gan, "vae_gan": _build_vae_gan,
          "progan": _build_progan, "upsampler": _build_upsampler}


def build_networks(cfg: TrainConfig, channels: int, num_classes: int = 0) -> dict[str, nn.Module]:
    """The networks of a run, by role: {"G": ..., "D": ...} for GANs, {"vae": ...} for VAEs,
    {"vae": ..., "D": ...} for the VAE-GAN, {"U": ..., "D": ...} for the upsampler. `num_classes` > 0 builds the class-conditional networks (a run trained with `conditional`)."""
    return MODELS[cfg.model](cfg, channels, num_classes)
