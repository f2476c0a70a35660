"""Typed, validated configuration for a training run, with a JSON round trip.

One flat dataclass: every field has its meaning and unit beside it. Validation happens in
`__post_init__` and raises `ConfigError` (a ValueError) with one line saying what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_RESOLUTIONS = (28, 32, 64, 128)
LARGE_RESOLUTIONS = (256, 512, 1024)  # progan and upsampler only
MODEL_NAMES = ("vae", "dcgan", "resnet_gan", "vae_gan", "progan", "upsampler")
VAE_FAMILY = ("vae", "vae_gan")  # models with an encoder and a decoder (the "vae" role)
RECON_LOSSES = ("bce", "mse")
GAN_LOSS_NAMES = ("ns", "hinge", "wgan", "wgan-drift")
AUGMENT_POLICIES = ("color", "translation", "cutout")  # DiffAugment (Zhao et al. 2020); see augment.py
PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # see acceleration.py; "auto" is resolved when training starts
LR_DECAYS = ("none", "linear", "cosine")  # learning-rate schedules; see train.lr_factor_at
PROGAN_UPSAMPLES = ("nearest", "bilinear")  # progan G's x2 upsampling between stages
PROGAN_BLOCKS = ("paper", "strided")  # progan's blocks: two 3x3 convs, or one 4x4 stride-2 conv (models/progan.py)
KL_SCHEDULES = ("linear", "cyclical")  # KL weight schedules of the VAE; see vae_tools.kl_weight
FIT_MODES = ("crop", "pad")  # non-square images: center crop, or pad to a square (see data.py)
DATA_STORAGES = ("auto", "ram", "disk")  # where the decoded data set lives while training (see data.py)


def parse_augment(policy: str) -> list[str]:
    """"color,translation" -> ["color", "translation"]; "" -> []; unknown names raise ConfigError."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    bad = [p for p in names if p not in AUGMENT_POLICIES]
    if bad:
        raise ConfigError(f"unknown augment policy {', '.join(bad)!s}; choose from: {', '.join(AUGMENT_POLICIES)}")
    return names


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message says what to change."""


@dataclass
class TrainConfig:
    # what to train, on what
    model: str = "dcgan"  # one of MODEL_NAMES
    data: str = "fashion-mnist:train"  # built-in name, folder, or .npz (see latentforge.data)
    out: str = "runs/run"  # run directory
    resolution: int = 32  # pixels, square; one of SUPPORTED_RESOLUTIONS (progan, upsampler: also LARGE_RESOLUTIONS)
    channels: int | None = None  # 1 or 3; None = the data set's own
    fit: str = "crop"  # non-square images: "crop" (center crop) or "pad" (pad to a square with the border colour)
    data_storage: str = "auto"  # "ram", "disk" (memory-mapped cache, folders only) or "auto" (disk above 1 GiB)

    # optimisation
    steps: int = 2000  # optimizer steps (for GANs: n_critic D steps + one G step)
    batch_size: int = 64  # images per step
    lr: float | None = None  # Adam learning rate; None = 2e-4 for GANs (DCGAN paper), 1e-3 for VAEs
    beta1: float | None = None  # Adam beta1; None = 0.5 for GANs (DCGAN paper), 0.9 for VAEs
    beta2: float = 0.999  # Adam beta2
    seed: int = 0  # seeds weights, data order, noise
    max_minutes: float = 0.0  # training-time budget: stop (with a checkpoint) once the steps took this long; 0 = none
    lr_decay: str = "none"  # every lr times a factor of the step going 1 -> 0 ("linear", "cosine") over lr_decay_steps
    lr_decay_steps: int | None = None  # length of the decay; None = the run's steps, fixed at the start (resume keeps it)

    # GAN training techniques (each off by default: the defaults are the DCGAN recipe)
    loss: str = "ns"  # "ns": non-saturating (Goodfellow 2014); "hinge" (Lim & Ye 2017); "wgan" (Arjovsky 2017)
    gp_weight: float = 0.0  # WGAN-GP gradient penalty weight (Gulrajani et al. 2017 use 10); 0 = off
    r1_gamma: float = 0.0  # R1 penalty gamma on real data (Mescheder et al. 2018); 0 = off
    r1_every: int = 1  # lazy R1: the penalty on one step in r1_every, times r1_every (Karras et al. 2020, 3.1)
    n_critic: int = 1  # D steps per G step; D step i of step s uses data batch s * n_critic + i
    spectral_norm: bool = False  # spectral normalization on every D layer, D without batch norm (Miyato 2018)
    lr_d: float | None = None  # discriminator learning rate (TTUR, Heusel et al. 2017); None = lr
    ema_decay: float = 0.0  # EMA of G's (VAE family: the VAE's) weights (Karras 2018; Yazici 2019), e.g. 0.999; 0 = off
    ema_warmup: bool = False  # decay of step t = min(ema_decay, (1 + t) / (10 + t)) (train.ema_decay_at)
    augment: str = ""  # DiffAugment policy (Zhao et al. 2020), e.g. "color,translation,cutout"; "" = off

    # class conditioning on the data's labels (GAN: conditional BN in G + projection D; VAE: CVAE)
    conditional: bool = False
    aux_class_weight: float = 0.0  # conditional dcgan/resnet_gan: AC-GAN class loss weight (Odena et al. 2017); 0 = off
    # divergence guard (guard.py): only observes a healthy run, which trains identically with it on or off
    guard: bool = True  # on a NaN/inf loss or a collapsed G: roll back to the last good state, lower the lrs, go on
    guard_every: int = 100  # steps between checks (weights finite; GANs: G's sample diversity) and snapshots
    guard_max_retries: int = 3  # recoveries with no passing check in between before stopping with an error
    guard_lr_factor: float = 0.5  # every learning rate is multiplied by this at each recovery; in (0, 1)
    guard_min_diversity: float = 0.25  # collapse: diversity < this x min(best so far, real data's); 0 = no check
    preset: str = "none"  # the preset (presets.py) the values started from; a record only, never re-applied

    # model shape
    z_dim: int | None = None  # latent size; None = 100 for dcgan (paper), 128 for resnet_gan (SN-GAN), 32 for vae
    width: int = 64  # base channel count (DCGAN's ngf = ndf; VAE's first conv)

    # progressive growing (model "progan", Karras et al. 2018) and the upsampler (model "upsampler")
    stage_images: int = 60_000  # progan: real images shown per fade-in phase and per stable phase of a stage
    max_channels: int = 512  # progan: cap on the channels of any stage (the paper's fmap_max)
    progan_upsample: str = "nearest"  # progan: G's x2 upsampling in each block, "nearest" (paper) or "bilinear"
    progan_block: str = "paper"  # progan: "paper" (two 3x3 convs per block) or "strided" (one 4x4 stride-2 conv)
    progan_top_channels: int = 0  # progan: channels of the last (target-resolution) stage; 0 = by the width rule
    progan_d_batch_norm: bool = False  # progan, strided blocks: batch norm in D's blocks (as the DCGAN's D)
    progan_g_batch_norm: bool = False  # progan, strided blocks: batch norm in G before every pixel norm (as the DCGAN's G)
    progan_rgb_top: bool = False  # progan, strided blocks: G's last block makes the image, D's reads it (as the DCGAN's)
    progan_fused_scale: bool = True  # progan, paper blocks: up x2 + conv (G) and conv + pool (D) as one stride-2 conv
    progan_d_width: int = 0  # progan: D's channels at the target resolution (doubled per halving); 0 = --width
    upsample_factor: int = 2  # upsampler: output size / input size, 2 or 4 (resolution = the output size)
    recon_weight: float = 100.0  # upsampler: weight of the L1 reconstruction term (pix2pix uses 100)

    # VAE objective: -ELBO = recon + beta * KL
    recon_loss: str = "bce"  # "bce": Bernoulli likelihood on pixels in [0,1]; "mse": Gaussian, fixed sigma
    gaussian_sigma: float = 0.1  # std of the Gaussian likelihood, in [0,1] pixel units ("mse" only)
    beta: float = 1.0  # weight of the KL term (1 = the ELBO; >1 = beta-VAE, Higgins et al. 2017)
    kl_warmup: int = 0  # steps over which the KL weight rises linearly from 0 to beta (Bowman et al. 2016); 0 = off
    kl_schedule: str = "linear"  # "linear": one warm-up; "cyclical": repeat it every 2 * kl_warmup steps (Fu et al. 2019)
    free_bits: float = 0.0  # nats per latent dimension below which the batch-mean KL is not pushed down (Kingma 2016); 0 = off

    # VAE-GAN (model "vae_gan" only; Larsen et al. 2016, Esser et al. 2021): -ELBO + adversarial + feature matching
    adv_weight: float = 0.1  # weight of the decoder's adversarial loss; with adv_adaptive a factor on the adaptive weight
    adv_adaptive: bool = True  # scale adv_weight by ||grad recon|| / ||grad adv|| at the decoder's last layer (VQGAN eq. 7)
    adv_start: int = 0  # steps of plain VAE training before the discriminator starts
    fm_weight: float = 0.0  # feature matching: weight of the L1 distance of D's features of x and its reconstruction, per pixel

    # bookkeeping
    log_every: int = 50  # steps between metrics.jsonl train lines
    sample_every: int = 500  # steps between sample grids
    checkpoint_every: int = 500  # steps between checkpoints (also written at the end and on Ctrl-C)
    eval_every: int = 0  # steps between in-training FID/KID evaluations; 0 = off
    eval_n: int = 1000  # generated and reference images per in-training evaluation
    eval_ref: str | None = None  # reference data for evaluation; None = the data set's test split or itself
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"

    # speed and scale-out (acceleration.py, distributed.py); the defaults change nothing
    precision: str = "fp32"  # "fp32"; "bf16": autocast to bfloat16; "fp16": autocast + loss scaling (CUDA);
    # "auto": bf16 where the device computes it natively, else fp32 (config.json keeps the choice made)
    compile: bool = False  # torch.compile the trained networks
    channels_last: bool = False  # NHWC memory order for weights and activations
    sync_bn: bool = False  # several processes: batch-norm statistics over the global batch, not per rank

    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the run

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}; choose one of: {', '.join(MODEL_NAMES)}")
        if self.resolution not in SUPPORTED_RESOLUTIONS and not (
                self.model in ("progan", "upsampler") and self.resolution in LARGE_RESOLUTIONS):
            large = f" ({', '.join(map(str, LARGE_RESOLUTIONS))} with progan or upsampler)"
            raise ConfigError(
                f"resolution {self.resolution} is not supported; choose one of {SUPPORTED_RESOLUTIONS}{large}"
            )
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if self.fit not in FIT_MODES:
            raise ConfigError(f"fit must be one of {FIT_MODES}, got {self.fit!r}")
        if self.data_storage not in DATA_STORAGES:
            raise ConfigError(f"data_storage must be one of {DATA_STORAGES}, got {self.data_storage!r}")
        if self.recon_loss not in RECON_LOSSES:
            raise ConfigError(f"recon_loss must be one of {RECON_LOSSES}, got {self.recon_loss!r}")
        for name in ("steps", "batch_size", "width", "log_every", "sample_every", "checkpoint_every", "eval_n"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_minutes < 0:
            raise ConfigError(f"max_minutes must be >= 0, got {self.max_minutes}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.lr is None:
            # progan: the paper's Adam(lr 1e-3, beta1 0)
            self.lr = 2e-4 if self.family == "gan" and self.model != "progan" else 1e-3
        if self.beta1 is None:
            self.beta1 = 0.0 if self.model == "progan" else 0.5 if self.family == "gan" else 0.9
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"Adam betas must lie in [0, 1), got ({self.beta1}, {self.beta2})")
        if self.lr_d is None:
            self.lr_d = self.lr
        if self.lr_decay not in LR_DECAYS:
            raise ConfigError(f"lr_decay must be one of {LR_DECAYS}, got {self.lr_decay!r}")
        if self.lr_decay_steps is not None and self.lr_decay_steps <= 0:
            raise ConfigError(f"lr_decay_steps must be positive, got {self.lr_decay_steps}")
        if self.lr_decay != "none" and self.lr_decay_steps is None:
            self.lr_decay_steps = self.steps  # fixed now: config.json keeps it, a resume with more --steps does not stretch it
        if self.lr_d <= 0:
            raise ConfigError(f"lr_d must be positive, got {self.lr_d}")
        if self.loss not in GAN_LOSS_NAMES:
            raise ConfigError(f"loss must be one of {GAN_LOSS_NAMES}, got {self.loss!r}")
        if self.gp_weight < 0 or self.r1_gamma < 0:
            raise ConfigError(f"gp_weight and r1_gamma must be >= 0, got {self.gp_weight} and {self.r1_gamma}")
        if self.n_critic < 1:
            raise ConfigError(f"n_critic must be >= 1, got {self.n_critic}")
        if self.r1_every < 1:
            raise ConfigError(f"r1_every must be >= 1, got {self.r1_every}")
        if self.r1_every > 1 and self.r1_gamma == 0:
            raise ConfigError(f"r1_every={self.r1_every} spaces out the R1 penalty, which is off; "
                              "set --r1-gamma too (e.g. 10)")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.ema_warmup and self.ema_decay == 0:
            raise ConfigError("ema_warmup ramps the decay of the weights' EMA up to ema_decay; "
                              "set --ema-decay too (e.g. 0.999)")
        parse_augment(self.augment)
        self._check_aux_class()
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision == "fp16" and (self.gp_weight > 0 or self.r1_gamma > 0):
            raise ConfigError("--precision fp16 cannot be combined with --gp-weight or --r1-gamma (the penalties' "
                              "input gradients underflow in float16); use --precision bf16")
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")
        if self.kl_warmup < 0:
            raise ConfigError(f"kl_warmup must be >= 0 steps, got {self.kl_warmup}")
        if self.kl_schedule not in KL_SCHEDULES:
            raise ConfigError(f"kl_schedule must be one of {KL_SCHEDULES}, got {self.kl_schedule!r}")
        if self.kl_schedule == "cyclical" and self.kl_warmup == 0:
            raise ConfigError("kl_schedule 'cyclical' needs the length of a ramp: set kl_warmup > 0 (e.g. 1000 steps)")
        if self.free_bits < 0:
            raise ConfigError(f"free_bits must be >= 0 nats per latent dimension, got {self.free_bits}")
        if self.gaussian_sigma <= 0:
            raise ConfigError(f"gaussian_sigma must be positive, got {self.gaussian_sigma}")
        if self.guard_every <= 0 or self.guard_max_retries < 0:
            raise ConfigError(f"guard_every must be positive and guard_max_retries >= 0, got {self.guard_every} "
                              f"and {self.guard_max_retries}")
        if not 0 < self.guard_lr_factor < 1:
            raise ConfigError(f"guard_lr_factor must lie in (0, 1), got {self.guard_lr_factor}")
        if not 0 <= self.guard_min_diversity < 1:
            raise ConfigError(f"guard_min_diversity must lie in [0, 1), got {self.guard_min_diversity}")
        self._check_vae_gan()
        if self.z_dim is None:
            self.z_dim = (100 if self.model == "dcgan" else 128 if self.model == "resnet_gan"
                          else 512 if self.model == "progan" else 32)
        if self.z_dim <= 0:
            raise ConfigError(f"z_dim must be positive, got {self.z_dim}")
        self._check_progan_upsampler()

    def _check_aux_class(self) -> None:
        if self.aux_class_weight < 0:
            raise ConfigError(f"aux_class_weight must be >= 0, got {self.aux_class_weight}")
        if self.aux_class_weight > 0 and not (self.conditional and self.model in ("dcgan", "resnet_gan")):
            raise ConfigError("aux_class_weight (the AC-GAN class loss) needs a conditional dcgan or resnet_gan: "
                              f"add --conditional (model {self.model!r}, conditional={self.conditional})")

    def _check_progan_upsampler(self) -> None:
        if self.stage_images <= 0:
            raise ConfigError(f"stage_images must be positive, got {self.stage_images}")
        if self.max_channels <= 0:
            raise ConfigError(f"max_channels must be positive, got {self.max_channels}")
        if self.progan_upsample not in PROGAN_UPSAMPLES:
            raise ConfigError(f"progan_upsample must be one of {PROGAN_UPSAMPLES}, got {self.progan_upsample!r}")
        if self.progan_top_channels < 0:
            raise ConfigError(f"progan_top_channels must be >= 0 (0 = by the width rule), got {self.progan_top_channels}")
        if self.progan_d_width < 0:
            raise ConfigError(f"progan_d_width must be >= 0 (0 = --width), got {self.progan_d_width}")
        if self.progan_block not in PROGAN_BLOCKS:
            raise ConfigError(f"progan_block must be one of {PROGAN_BLOCKS}, got {self.progan_block!r}")
        for field in ("progan_d_batch_norm", "progan_g_batch_norm", "progan_rgb_top"):  # strided-only switches
            if getattr(self, field) and self.progan_block != "strided":
                raise ConfigError(f"--{field.replace('_', '-')} needs --progan-block strided")
        if self.progan_rgb_top and self.progan_top_channels:
            raise ConfigError("--progan-rgb-top gives the last stage the image's channels; drop --progan-top-channels")
        if self.progan_block == "strided" and self.progan_upsample != "nearest":
            raise ConfigError("--progan-block strided upsamples by its transposed convs; drop --progan-upsample "
                              f"{self.progan_upsample}")
        if self.upsample_factor not in (2, 4):
            raise ConfigError(f"upsample_factor must be 2 or 4, got {self.upsample_factor}")
        if self.recon_weight < 0:
            raise ConfigError(f"recon_weight must be >= 0, got {self.recon_weight}")
        if self.model == "progan" and self.spectral_norm:
            raise ConfigError("progan uses the equalized learning rate, not spectral norm; drop --spectral-norm")
        if self.model in ("progan", "upsampler") and self.conditional:
            raise ConfigError(f"model {self.model} has no conditional variant; drop --conditional")
        if self.model == "upsampler":
            unsupported = {"ema_decay": self.ema_decay, "augment": self.augment, "eval_every": self.eval_every}
            given = [k for k, v in unsupported.items() if v]
            if given:
                raise ConfigError(f"the upsampler does not support {', '.join(given)}; drop it (compare upsamplers "
                                  "with benchmarks/bench_upsample.py)")

    def _check_vae_gan(self) -> None:
        if self.adv_weight < 0 or self.fm_weight < 0 or self.adv_start < 0:
            raise ConfigError(f"adv_weight, fm_weight and adv_start must be >= 0, got "
                              f"{self.adv_weight}, {self.fm_weight} and {self.adv_start}")
        if self.model != "vae_gan":
            return
        if self.loss not in ("ns", "hinge"):
            raise ConfigError(f"model vae_gan trains its discriminator with loss ns or hinge, got {self.loss!r}")
        if self.precision == "fp16":  # the adaptive weight's torch.autograd.grad would need its own loss scaling
            raise ConfigError("model vae_gan does not support precision fp16; use bf16 (or auto, or fp32)")
        unsupported = {"conditional": self.conditional, "compile": self.compile,
                       "gp_weight": self.gp_weight != 0, "r1_gamma": self.r1_gamma != 0, "n_critic": self.n_critic != 1,
                       "augment": self.augment != ""}
        bad = [name for name, set_ in unsupported.items() if set_]
        if bad:
            raise ConfigError(f"model vae_gan does not support {', '.join(bad)}; leave it at its default "
                              "(its options: loss, spectral_norm, lr_d, adv_weight, adv_adaptive, adv_start, fm_weight, ema_decay)")

    @property
    def family(self) -> str:
        """"vae" for models with an encoder and decoder (vae, vae_gan), "gan" for generators."""
        return "vae" if self.model in VAE_FAMILY else "gan"

    @property
    def ema_roles(self) -> tuple[str, str]:
        """(the network whose weights --ema-decay averages, the role its average is saved as):
        ("G", "G_ema") for generators, ("vae", "vae_ema") for the VAE family (encoder and decoder)."""
        return ("vae", "vae_ema") if self.family == "vae" else ("G", "G_ema")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**d)

    def save(self, path: str | Path, **extra_top_level: Any) -> None:
        """Write config.json atomically: the config's fields at the top level, plus
        `extra_top_level` keys such as data_info (kept apart from the config on reading)."""
        path = Path(path)
        clash = set(extra_top_level) & {f.name for f in dataclasses.fields(self)}
        assert not clash, f"extra keys clash with config fields: {clash}"
        payload = {**self.to_dict(), **extra_top_level}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
        tmp.replace(path)


def read_run_config(run_dir: str | Path) -> tuple[TrainConfig, dict[str, Any]]:
    """Read a run's config.json -> (TrainConfig, the whole JSON payload)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a latentforge run directory (no config.json)")
    payload = json.loads(path.read_text())
    if payload.get("model") == "progan" and "progan_fused_scale" not in payload:
        payload["progan_fused_scale"] = False  # saved before the option: D pooled after its LReLU then
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in payload.items() if k in known}), payload
