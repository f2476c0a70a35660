"""Model families. One explicit map from the name a user types to the code that builds it."""

from __future__ import annotations

from torch import nn

from ..config import TrainConfig
from .dcgan import DCGANConfig, Discriminator, Generator
from .vae import VAE, VAEConfig, VAEOutput

__all__ = ["build_networks", "DCGANConfig", "Generator", "Discriminator", "VAE", "VAEConfig", "VAEOutput"]


def _build_dcgan(cfg: TrainConfig, channels: int) -> dict[str, nn.Module]:
    mc = DCGANConfig(resolution=cfg.resolution, img_channels=channels, z_dim=cfg.z_dim, width=cfg.width,
                     spectral_norm=cfg.spectral_norm)
    return {"G": Generator(mc), "D": Discriminator(mc)}


def _build_vae(cfg: TrainConfig, channels: int) -> dict[str, nn.Module]:
    mc = VAEConfig(resolution=cfg.resolution, img_channels=channels, z_dim=cfg.z_dim, width=cfg.width,
                   likelihood=cfg.recon_loss)
    return {"vae": VAE(mc)}


# name -> builder of the run's networks, keyed by the prefix their weights carry on disk
MODELS = {"vae": _build_vae, "dcgan": _build_dcgan}


def build_networks(cfg: TrainConfig, channels: int) -> dict[str, nn.Module]:
    """The networks of a run, by role: {"G": ..., "D": ...} for GANs, {"vae": ...} for VAEs."""
    return MODELS[cfg.model](cfg, channels)
