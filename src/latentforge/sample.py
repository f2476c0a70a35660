"""Use a trained run: load(run_dir) -> Model, then sample, encode, decode, reconstruct.

    m = latentforge.load("runs/vae")
    m.sample(16, seed=0)                 # uint8 numpy (16, H, W, C); image i comes from seed 0 + i
    mu, logvar = m.encode(x)             # VAEs: x float (N, C, H, W) in [-1, 1]
    x = m.decode(z)                      # float (N, C, H, W) in [-1, 1]

Loading reads config.json and model.safetensors only: no code is executed from the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from .checkpoint import WEIGHTS, load_weights
from .config import ConfigError, TrainConfig, read_run_config
from .images import to_float, to_hwc_numpy, to_uint8
from .models import build_networks
from .train import generate_images, latents_for_seeds, resolve_device


@dataclass
class Model:
    """A trained generator (GAN) or VAE, in eval mode, ready to use."""

    config: TrainConfig
    info: dict[str, Any]  # config.json's data_info: resolution, channels, class names, ...
    nets: dict[str, nn.Module]
    device: torch.device
    run_dir: Path
    checkpoint: str  # "latest" or "best"

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def channels(self) -> int:
        return int(self.info["channels"])

    @property
    def z_dim(self) -> int:
        return int(self.config.z_dim)

    @property
    def class_names(self) -> list[str] | None:
        return self.info.get("class_names")

    # ------------------------------------------------------------------ generation

    def latents(self, seeds: list[int] | range) -> torch.Tensor:
        """(len(seeds), z_dim) standard-normal latents, one fixed latent per seed."""
        return latents_for_seeds(seeds, self.z_dim, self.device)

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """latents (N, z_dim) -> float images (N, C, H, W) in [-1, 1]."""
        z = z.to(self.device)
        return self.nets["G"](z) if self.family == "gan" else self.nets["vae"].decode(z)

    def sample_tensor(self, n: int, seed: int = 0, batch_size: int = 256, sampler: str = "prior") -> torch.Tensor:
        """uint8 (n, C, H, W) images from seeds seed .. seed + n - 1. `sampler` (VAEs): "prior"
        (z ~ N(0, I)) or "gmm" (a mixture fitted to the training set's latents; see samplers.py)."""
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        if sampler == "prior":
            return generate_images(self.nets, self.config, range(seed, seed + n), self.device, batch_size)
        from .samplers import sampler_latents

        z = sampler_latents(self, range(seed, seed + n), sampler)  # (n, z_dim), latent i from seed + i
        return torch.cat([to_uint8(self.decode(z[i : i + batch_size])).cpu() for i in range(0, n, batch_size)])

    def sample(self, n: int, seed: int = 0, batch_size: int = 256, sampler: str = "prior") -> np.ndarray:
        """uint8 numpy (n, H, W, C) images; image i comes from seed `seed + i`, so the same seed
        always gives the same image. VAEs: sampler="gmm" draws latents from the ex-post mixture."""
        return to_hwc_numpy(self.sample_tensor(n, seed, batch_size, sampler))

    # ------------------------------------------------------------------ VAE only

    def _vae(self) -> nn.Module:
        if self.family != "vae":
            raise ValueError(f"{self.config.model} has no encoder; encode/decode/reconstruct need a VAE run")
        return self.nets["vae"]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float images (N, C, H, W) in [-1, 1] (or uint8) -> (mu, logvar), each (N, z_dim)."""
        if x.dtype == torch.uint8:
            x = to_float(x)
        return self._vae().encode(x.to(self.device))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latents (N, z_dim) -> float images (N, C, H, W) in [-1, 1]."""
        return self._vae().decode(z.to(self.device))

    @torch.no_grad()
    def reconstruct(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> uint8 reconstructions decode(mu(x)) (the posterior mean, no noise)."""
        mu, _ = self.encode(images_u8)
        return to_uint8(self.decode(mu)).cpu()


def load(run_dir: str | Path, device: str = "auto", checkpoint: str = "latest", ema: bool = True) -> Model:
    """Load a run directory. `checkpoint` is "latest" (model.safetensors) or "best"
    (best/model.safetensors, kept by in-training evaluation). For a GAN trained with
    --ema-decay, `ema=True` loads the moving average of the generator (`G_ema.` weights) as
    the model's G; `ema=False` loads the raw generator."""
    run_dir = Path(run_dir)
    cfg, payload = read_run_config(run_dir)
    if checkpoint == "latest":
        path = run_dir / WEIGHTS
    elif checkpoint == "best":
        path = run_dir / "best" / WEIGHTS
    else:
        raise ConfigError(f"checkpoint must be 'latest' or 'best', got {checkpoint!r}")
    if not path.is_file():
        hint = " (train with --eval-every to keep a best checkpoint)" if checkpoint == "best" else ""
        raise ConfigError(f"{run_dir} has no {checkpoint} weights at {path}{hint}")
    info = payload.get("data_info") or {}
    dev = resolve_device(device)
    nets = build_networks(cfg, int(info.get("channels", cfg.channels or 1)))
    if cfg.family == "gan":  # the discriminator is not needed to sample
        with safe_open(str(path), framework="pt") as f:
            has_ema = any(k.startswith("G_ema.") for k in f.keys())
        role = "G_ema" if ema and has_ema else "G"
        load_weights({role: nets["G"]}, path)  # the EMA weights go into a plain generator
        nets = {"G": nets["G"]}
    else:
        load_weights(nets, path, roles=("vae",))
    for net in nets.values():
        net.to(dev).eval()
    return Model(config=cfg, info=info, nets=nets, device=dev, run_dir=run_dir, checkpoint=checkpoint)
