"""Model families. One explicit map from the name a user types to the code that builds it."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig
from .dcgan import DCGANConfig, Discriminator, Generator
from .vae import VAE, VAEConfig, VAEOutput
from .vae_gan import PatchDConfig, PatchDiscriminator

__all__ = ["build_networks", "DCGANConfig", "Generator", "Discriminator", "VAE", "VAEConfig", "VAEOutput",
           "PatchDConfig", "PatchDiscriminator"]


def _build_dcgan(cfg: TrainConfig, channels: int) -> dict[str, nn.Module]:
    mc = DCGANConfig(resolution=cfg.resolution, img_channels=channels, z_dim=cfg.z_dim, width=cfg.width,
                     spectral_norm=cfg.spectral_norm)
    return {"G": Generator(mc), "D": Discriminator(mc)}


def _build_vae(cfg: TrainConfig, channels: int) -> dict[str, nn.Module]:
    mc = VAEConfig(resolution=cfg.resolution, img_channels=channels, z_dim=cfg.z_dim, width=cfg.width,
                   likelihood=cfg.recon_loss)
    return {"vae": VAE(mc)}


def _build_vae_gan(cfg: TrainConfig, channels: int) -> dict[str, nn.Module]:
    nets = _build_vae(cfg, channels)  # the same random draws as model "vae": the same initial VAE
    # D comes from its own seeded stream, so the global random stream (the reparameterization
    # noise) also matches model "vae" until the discriminator starts
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        nets["D"] = PatchDiscriminator(PatchDConfig(resolution=cfg.resolution, img_channels=channels,
                                                    width=cfg.width, spectral_norm=cfg.spectral_norm))
    return nets


# name -> builder of the run's networks, keyed by the prefix their weights carry on disk
MODELS = {"vae": _build_vae, "dcgan": _build_dcgan, "vae_gan": _build_vae_gan}


def build_networks(cfg: TrainConfig, channels: int) -> dict[str, nn.Module]:
    """The networks of a run, by role: {"G": ..., "D": ...} for GANs, {"vae": ...} for VAEs,
    {"vae": ..., "D": ...} for the VAE-GAN."""
    return MODELS[cfg.model](cfg, channels)
