"""Use a trained run: load(run_dir) -> Model, then sample, encode, decode, reconstruct.

    m = latentforge.load("runs/vae")
    m.sample(16, seed=0)                 # uint8 numpy (16, H, W, C); image i comes from seed 0 + i
    mu, logvar = m.encode(x)             # VAEs: x float (N, C, H, W) in [-1, 1]
    x = m.decode(z)                      # float (N, C, H, W) in [-1, 1]

Class-conditional runs (trained with --conditional) take `classes`: a class name (any case) or
index for every image, or a list with one per image; without it, image i gets class i mod K.

    m = latentforge.load("runs/cgan")
    m.sample(16, seed=0, classes="Sneaker")      # 16 sneakers
    m.class_labels(4, ["sneaker", 0, "Bag", 9])  # tensor([7, 0, 8, 9]): the classes behind an output

An upsampler run (model "upsampler") enlarges images 2x or 4x, after a generator or on its own:

    up = latentforge.sample.load_upsampler("runs/up")   # a trained upsampler run
    m.sample(16, seed=0, upsample=up)    # generate, then upsample (noise seeded per image)
    up.upsample(images_u8)               # uint8 (N, C, h, w) -> uint8 (N, C, f h, f w)

Loading reads config.json and model.safetensors only: no code is executed from the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from .checkpoint import WEIGHTS, load_weights
from .config import ConfigError, TrainConfig, read_run_config
from .images import to_float, to_hwc_numpy, to_uint8
from .models import build_networks
from .train import cycled_labels, generate_images, latents_for_seeds, num_classes_of, resolve_device

ClassSpec = Union[str, int]  # a class name (case-insensitive) or index


@dataclass
class Model:
    """A trained generator (GAN) or VAE, in eval mode, ready to use."""

    config: TrainConfig
    info: dict[str, Any]  # config.json's data_info: resolution, channels, class names, ...
    nets: dict[str, nn.Module]
    device: torch.device
    run_dir: Path
    checkpoint: str  # "latest" or "best"
    ema: bool = False  # the weights are the training's moving average (G_ema. / vae_ema.), not the raw ones
    trained_steps: int | None = None  # the step the weights were saved at (their metadata); None if not recorded

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
        """The training data's class names (label i is class_names[i]); None when unlabelled."""
        return self.info.get("class_names")

    @property
    def num_classes(self) -> int:
        """Number of classes the model is conditioned on; 0 = unconditional."""
        return num_classes_of(self.nets["G"] if self.family == "gan" else self.nets["vae"])

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    # ------------------------------------------------------------------ classes

    def class_index(self, cls: ClassSpec) -> int:
        """A class name (case-insensitive) or index -> the class index; a clear error otherwise."""
        k, names = self.num_classes, list(self.class_names or [])
        known = f"{', '.join(names)} (or an index 0-{k - 1})" if names else f"indices 0-{k - 1}"
        if isinstance(cls, str):
            key = cls.strip().lower()
            matches = [i for i, name in enumerate(names[:k]) if name.lower() == key]
            if matches:
                return matches[0]
            if not key.isdigit():
                raise ConfigError(f"unknown class {cls!r}; this model's classes are: {known}")
            cls = int(key)
        if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)):
            raise ConfigError(f"a class must be a name or an index, got {cls!r}")
        if not 0 <= int(cls) < k:
            raise ConfigError(f"class index {cls} is out of range; this model's classes are: {known}")
        return int(cls)

    def class_labels(self, n: int, classes: ClassSpec | Sequence[ClassSpec] | None = None) -> torch.Tensor | None:
        """The (n,) int64 class indices n generated images get: `classes` one name/index for all,
        or a list of n; None cycles (image i gets class i mod num_classes). None for an
        unconditional model, which refuses `classes`."""
        if not self.conditional:
            if classes is not None:
                names = f" (its data's classes are {', '.join(self.class_names)})" if self.class_names else ""
                raise ConfigError(f"{self.run_dir} is unconditional: it was trained without --conditional{names}, "
                                  "so classes cannot steer it; leave the classes out")
            return None
        if classes is None:
            return cycled_labels(n, self.num_classes)
        if isinstance(classes, torch.Tensor):
            classes = classes.tolist()
        if isinstance(classes, (str, int, np.integer)):
            return torch.full((n,), self.class_index(classes), dtype=torch.long)
        seq = list(classes)
        if len(seq) != n:
            raise ConfigError(f"got {len(seq)} classes for {n} images; give one class for all, or one per image")
        return torch.tensor([self.class_index(c) for c in seq], dtype=torch.long)

    # ------------------------------------------------------------------ generation

    def latents(self, seeds: list[int] | range) -> torch.Tensor:
        """(len(seeds), z_dim) standard-normal latents, one fixed latent per seed."""
        return latents_for_seeds(seeds, self.z_dim, self.device)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, classes: ClassSpec | Sequence[ClassSpec] | None = None) -> torch.Tensor:
        """latents (N, z_dim) -> float images (N, C, H, W) in [-1, 1]. Conditional models: image
        i gets `classes` (see class_labels; None cycles through the classes)."""
        z = z.to(self.device)
        c = self.class_labels(len(z), classes)
        c = None if c is None else c.to(self.device)
        return self.nets["G"](z, c) if self.family == "gan" else self.nets["vae"].decode(z, c)

    def sample_tensor(self, n: int, seed: int = 0, batch_size: int = 256,
                      classes: ClassSpec | Sequence[ClassSpec] | None = None, sampler: str = "prior",
                      upsample: "UpsamplerModel | None" = None) -> torch.Tensor:
        """uint8 (n, C, H, W) images from seeds seed .. seed + n - 1 (and `classes`, conditional models).
        `sampler` (VAEs): "prior" (z ~ N(0, I)) or "gmm" (a mixture fitted to the training set's
        latents; see samplers.py; unconditional VAEs only). With `upsample`, each image then goes
        through that upsampler, its noise seeded by the image's seed: (n, C, f H, f W)."""
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        if upsample is not None:
            check_chain(self, upsample)
        if sampler == "prior":
            images = generate_images(self.nets, self.config, range(seed, seed + n), self.device, batch_size,
                                     labels=self.class_labels(n, classes))
        else:
            if self.conditional:
                raise ValueError(f"the {sampler} sampler is fitted to an unconditional VAE's latents; this run is "
                                 "conditional: use the prior sampler")
            from .samplers import sampler_latents

            z = sampler_latents(self, range(seed, seed + n), sampler)  # (n, z_dim), latent i from seed + i
            images = torch.cat([to_uint8(self.decode(z[i : i + batch_size])).cpu() for i in range(0, n, batch_size)])
        if upsample is None:
            return images
        return torch.cat([upsample.upsample(images[i : i + batch_size], seeds=range(seed + i, seed + i + batch_size))
                          for i in range(0, n, batch_size)])

    def sample(self, n: int, seed: int = 0, batch_size: int = 256,
               classes: ClassSpec | Sequence[ClassSpec] | None = None, sampler: str = "prior",
               upsample: "UpsamplerModel | None" = None) -> np.ndarray:
        """uint8 numpy (n, H, W, C) images; image i comes from seed `seed + i`, so the same seed
        always gives the same image. Conditional models: image i has class class_labels(n, classes)[i]
        (a name or index for all, a list of n, or None: class i mod num_classes). VAEs:
        sampler="gmm" draws latents from the ex-post mixture. `upsample`: see sample_tensor."""
        return to_hwc_numpy(self.sample_tensor(n, seed, batch_size, classes, sampler, upsample))

    # ------------------------------------------------------------------ VAE only

    def _vae(self) -> nn.Module:
        if self.family != "vae":
            raise ValueError(f"{self.config.model} has no encoder; encode/decode/reconstruct need a VAE run")
        return self.nets["vae"]

    @torch.no_grad()
    def encode(self, x: torch.Tensor, classes: ClassSpec | Sequence[ClassSpec] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """float images (N, C, H, W) in [-1, 1] (or uint8) -> (mu, logvar), each (N, z_dim).
        A conditional VAE needs the images' `classes` (one for all, or one per image)."""
        vae = self._vae()
        if x.dtype == torch.uint8:
            x = to_float(x)
        if self.conditional and classes is None:
            raise ConfigError("this VAE is class-conditional: encoding needs the images' classes "
                              f"(one of {', '.join(self.class_names or [])}, or one per image)")
        c = self.class_labels(len(x), classes)
        return vae.encode(x.to(self.device), None if c is None else c.to(self.device))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, classes: ClassSpec | Sequence[ClassSpec] | None = None) -> torch.Tensor:
        """latents (N, z_dim) -> float images (N, C, H, W) in [-1, 1]. Conditional VAE: decoded as
        `classes` (None cycles through the classes)."""
        vae = self._vae()
        c = self.class_labels(len(z), classes)
        return vae.decode(z.to(self.device), None if c is None else c.to(self.device))

    @torch.no_grad()
    def reconstruct(self, images_u8: torch.Tensor, classes: ClassSpec | Sequence[ClassSpec] | None = None
                    ) -> torch.Tensor:
        """uint8 (N, C, H, W) -> uint8 reconstructions decode(mu(x)) (the posterior mean, no noise).
        A conditional VAE needs the images' `classes`, used for encoding and decoding."""
        mu, _ = self.encode(images_u8, classes)
        return to_uint8(self.decode(mu, classes)).cpu()


@dataclass
class UpsamplerModel:
    """A trained upsampler (model "upsampler"), in eval mode: low-res (h = resolution / factor)
    images -> images `factor` times larger."""

    config: TrainConfig
    info: dict[str, Any]
    net: nn.Module
    device: torch.device
    run_dir: Path

    @property
    def factor(self) -> int:
        return int(self.config.upsample_factor)

    @property
    def resolution(self) -> int:
        """The output size."""
        return self.config.resolution

    @property
    def in_resolution(self) -> int:
        return self.config.resolution // self.factor

    @property
    def channels(self) -> int:
        return int(self.info["channels"])

    @torch.no_grad()
    def upsample(self, images_u8: torch.Tensor, seeds: list[int] | range | None = None) -> torch.Tensor:
        """uint8 (N, C, h, w) -> uint8 (N, C, f h, f w); image i uses the noise of seeds[i]
        (default 0 .. N-1): the same image and seed always give the same output."""
        from .models.upsampler import upsample_seeded

        n, c, h, w = images_u8.shape
        if (c, h, w) != (self.channels, self.in_resolution, self.in_resolution):
            raise ConfigError(f"{self.run_dir} upsamples {self.channels}-channel {self.in_resolution} px images; "
                              f"got {c}-channel {h}x{w}")
        seeds = range(n) if seeds is None else list(seeds)[:n]
        return to_uint8(upsample_seeded(self.net, to_float(images_u8.to(self.device)), seeds)).cpu()


def check_chain(model: Model, up: UpsamplerModel) -> None:
    """Raise ConfigError unless `model`'s images are what `up` takes: same channels, and
    model resolution * factor == the upsampler's resolution."""
    if model.resolution * up.factor != up.resolution or model.channels != up.channels:
        raise ConfigError(
            f"cannot chain {model.run_dir} ({model.resolution} px, {model.channels} channel(s)) into {up.run_dir}, "
            f"which takes {up.in_resolution} px, {up.channels} channel(s) (x{up.factor} -> {up.resolution} px); "
            "train the upsampler with --res = the run's resolution times --upsample-factor")


def load_upsampler(run_dir: str | Path, device: str = "auto", checkpoint: str = "latest") -> UpsamplerModel:
    """Load an upsampler run directory (see `load` for `checkpoint`)."""
    run_dir = Path(run_dir)
    cfg, payload = read_run_config(run_dir)
    if cfg.model != "upsampler":
        raise ConfigError(f"{run_dir} is a {cfg.model} run, not an upsampler; train one with --model upsampler")
    path = run_dir / WEIGHTS if checkpoint == "latest" else run_dir / "best" / WEIGHTS
    if checkpoint not in ("latest", "best") or not path.is_file():
        raise ConfigError(f"{run_dir} has no {checkpoint!r} weights at {path}")
    info = payload.get("data_info") or {}
    dev = resolve_device(device)
    net = build_networks(cfg, int(info.get("channels", cfg.channels or 1)))["U"]
    load_weights({"U": net}, path)
    return UpsamplerModel(config=cfg, info=info, net=net.to(dev).eval(), device=dev, run_dir=run_dir)


def load(run_dir: str | Path, device: str = "auto", checkpoint: str = "latest", ema: bool = True) -> Model:
    """Load a run directory. `checkpoint` is "latest" (model.safetensors) or "best"
    (best/model.safetensors, kept by in-training evaluation). For a GAN trained with
    --ema-decay, `ema=True` loads the moving average of the generator (`G_ema.` weights) as
    the model's G, of a VAE run the moving average of its encoder and decoder (`vae_ema.`) as
    its VAE; `ema=False` loads the raw weights."""
    run_dir = Path(run_dir)
    cfg, payload = read_run_config(run_dir)
    if cfg.model == "upsampler":
        raise ConfigError(f"{run_dir} is an upsampler run: it needs low-res images (latentforge upsample {run_dir}, "
                          f"or sample ANOTHER_RUN --upsample {run_dir}; in Python: load_upsampler)")
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
    num_classes = int(info.get("num_classes") or 0) if cfg.conditional else 0
    if cfg.conditional and not num_classes:
        raise ConfigError(f"{run_dir}/config.json says conditional but its data_info has no num_classes")
    nets = build_networks(cfg, int(info.get("channels", cfg.channels or 1)), num_classes)
    trained, averaged = cfg.ema_roles
    with safe_open(str(path), framework="pt") as f:
        has_ema = any(k.startswith(averaged + ".") for k in f.keys())
        step = (f.metadata() or {}).get("step")
    role = averaged if ema and has_ema else trained
    # the EMA weights go into a plain generator / VAE; the discriminator is not needed to sample
    load_weights({role: nets[trained]}, path)
    nets = {trained: nets[trained]}
    for net in nets.values():
        net.to(dev).eval()
    return Model(config=cfg, info=info, nets=nets, device=dev, run_dir=run_dir, checkpoint=checkpoint,
                 ema=role == averaged, trained_steps=int(step) if step is not None and step.isdigit() else None)
