"""Training: one visible step function per family, and the loop that drives them.

    gan_step  n_critic discriminator updates, one generator update, then the EMA of G
              (defaults: the DCGAN recipe; the loss, penalties, augmentation are parameters)
    vae_step  one update on the negative ELBO
    vae_gan_step  the VAE on -ELBO + adversarial + feature matching, then its patch discriminator
    train     data -> networks -> loop (log, sample, evaluate, checkpoint) -> run directory

Resume is exact: the data order is a pure function of (seed, step), and the RNG state is saved
with every checkpoint, so a run stopped and resumed at a checkpoint takes the same steps as one
that never stopped. A first Ctrl-C finishes the current step, writes a checkpoint and returns;
a second one aborts at once. The divergence guard (guard.py) watches the loop: on a NaN loss or
a collapsed generator it rolls back to the last good state and lowers the learning rates.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import __version__, acceleration, distributed
from .checkpoint import STATE, WEIGHTS, append_jsonl, load_state, load_weights, save_state, save_weights, truncate_jsonl
from .config import ConfigError, TrainConfig, read_run_config
from .images import save_grid, to_float, to_uint8
from .augment import diff_augment
from .guard import Guard, Problem, TrainingDiverged
from .losses import (GAN_LOSSES, adaptive_adv_weight, aux_class_loss, feature_matching, gradient_penalty,
                     negative_elbo, r1_penalty)
from .models import build_networks, eval_mode
from .models.progan import fade_reals, progan_schedule
from .models.upsampler import area_downsample, comparison_rows
from .models.vae_gan import PatchDiscriminator, decoder_last_layer
from .vae_tools import active_units_row, kl_weight

_NO_LOSS_SCALING = torch.amp.GradScaler("cpu", enabled=False)  # scale(loss) is loss, step(opt) is opt.step()
SAMPLE_GRID_SEEDS = range(64)  # the fixed latents behind every samples/step_XXXXXX.png
EVAL_SEED_OFFSET = 1_000_000  # seeds of the images generated for in-training evaluation


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA if available, else Apple MPS, else CPU; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return dev


def latents_for_seeds(seeds: list[int] | range, z_dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """One standard-normal latent per seed, (len(seeds), z_dim). Seed s always gives the same z,
    whatever else is in the batch and on whatever device the model runs (drawn on the CPU)."""
    zs = [torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(zs).to(device)


def default_eval_ref(data: str) -> str:
    """The held-out split of a built-in data set, else the training data itself."""
    from .data import BUILTIN

    name = data.split(":")[0]
    return f"{name}:test" if name in BUILTIN else data


class BatchOrder:
    """Deterministic batches: epoch e is a permutation seeded by (seed, e); step s is batch
    s mod (N // B) of epoch s // (N // B). No sampler state to save: the step is enough."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < batch_size:
            raise ConfigError(f"the data set has {n} images, fewer than one batch of {batch_size}; lower --batch-size")
        self.n, self.b, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm[k * self.b : (k + 1) * self.b]


# ---------------------------------------------------------------------------- the step functions


@contextlib.contextmanager
def frozen(net: nn.Module) -> Any:
    """Inside: `net`'s parameters do not require gradients; on leaving, those that did, do again.

    For the discriminator in the generator's half of a step: the generator's loss still
    back-propagates through D to the images, but D's weight gradients, which that step would
    throw away, are not computed at all. The generator's gradients are the same to the bit; the
    step is ~10% faster for the DCGAN at 28 px (benchmarks/train.md)."""
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield net
    finally:
        for p in params:
            p.requires_grad_(True)


def _d_penalties(D_of_x: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                 real_logits: torch.Tensor, gp_weight: float, r1_gamma: float, logs: dict[str, float],
                 r1_input: torch.Tensor | None = None) -> torch.Tensor | float:
    """gp_weight * WGAN-GP(D, real, fake) + r1_gamma / 2 * R1(D(real)), the terms that are on;
    their values go into `logs`. R1 differentiates `real_logits` w.r.t. `r1_input` (default: real)."""
    extra: torch.Tensor | float = 0.0
    if gp_weight > 0:
        gp = gradient_penalty(D_of_x, real, fake)
        extra = extra + gp_weight * gp
        logs["loss/gp"] = gp.item()
    if r1_gamma > 0:
        r1 = r1_penalty(real_logits, real if r1_input is None else r1_input)
        extra = extra + r1_gamma / 2 * r1
        logs["loss/r1"] = r1.item()
    return extra


def gan_step(G: nn.Module, D: nn.Module, opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer,
             real: torch.Tensor | Sequence[torch.Tensor], z_dim: int, *, loss: str = "ns", gp_weight: float = 0.0,
             r1_gamma: float = 0.0, augment: str = "", G_ema: nn.Module | None = None,
             ema_decay: float = 0.0, labels: torch.Tensor | Sequence[torch.Tensor] | None = None,
             num_classes: int = 0, aux_weight: float = 0.0,
             scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One GAN step: D update(s) on real vs fake, then G against the new D, then the EMA of G.

    `real` is one batch per D step (a single tensor = one D step; n_critic = the number of batches).
    `loss` names a pair in losses.GAN_LOSSES; `gp_weight` adds the WGAN-GP penalty, `r1_gamma`
    the R1 penalty (times gamma / 2); `augment` is a DiffAugment policy applied to every image D
    sees; `scaler` scales the losses under --precision fp16. With the defaults this is exactly the
    DCGAN step with the non-saturating loss. G and D may be DistributedDataParallel-wrapped.

    Conditional GANs: `labels` holds the (B,) class indices of each real batch (same layout as
    `real`); each fake batch gets classes drawn uniformly from [0, num_classes), which both G
    and D see. The gradient penalty is taken with the real batch's classes. `aux_weight` > 0
    (a D with the AC-GAN class head) adds aux_weight * losses.aux_class_loss: to D's loss on the
    real images and their labels, to G's loss on its images and the classes they were made for.
    """
    d_loss_fn, g_loss_fn = GAN_LOSSES[loss]
    scaler = scaler or _NO_LOSS_SCALING
    reals = [real] if isinstance(real, torch.Tensor) else list(real)
    real_labels = _conditional_labels(labels, len(reals), num_classes)
    aug = (lambda x: diff_augment(x, augment)) if augment else (lambda x: x)  # noqa: E731
    logs: dict[str, float] = {}

    # 1. discriminator, n_critic times: push D(x) up and D(G(z)) down; fake is detached so G gets
    #    no gradient here
    for real_i, c_real in zip(reals, real_labels):
        z = distributed.noise(real_i.shape[0], z_dim, real_i.device)  # (B, z_dim); torch.randn in one process
        c_fake = None if c_real is None else torch.randint(num_classes, (real_i.shape[0],), device=real_i.device)
        fake = G(z, c_fake)  # (B, C, H, W)
        real_in = aug(real_i)
        if r1_gamma > 0:  # R1 differentiates D(x) w.r.t. the (augmented) image D sees
            real_in = real_in.detach().requires_grad_(True)
        fake_in = aug(fake.detach())
        if aux_weight > 0:  # AC-GAN: D also classifies the real images
            real_logits, real_cls = D(real_in, c_real, aux=True)
            aux_D = aux_class_loss(real_cls, c_real)
            logs["loss/aux_D"] = aux_D.item()
        else:
            real_logits, aux_D = D(real_in, c_real), 0.0
        fake_logits = D(fake_in, c_fake)
        loss_D = d_loss_fn(real_logits, fake_logits)
        D_of_x = D if c_real is None else (lambda x: D(x, c_real))  # noqa: B023 - used at once, in this step
        total_D = (loss_D + aux_weight * aux_D
                   + _d_penalties(D_of_x, real_in, fake_in, real_logits, gp_weight, r1_gamma, logs))
        opt_D.zero_grad(set_to_none=True)
        scaler.scale(total_D).backward()  # = total_D.backward() unless --precision fp16
        scaler.step(opt_D)
        scaler.update()

    # 2. generator: fool the just-updated discriminator, on the last D step's fakes; D is frozen:
    #    the gradient flows through it to the images, none is computed for its weights
    with frozen(D), distributed.no_grad_sync(D):
        if aux_weight > 0:  # AC-GAN: G is also scored on D recognizing the classes it was asked for
            gen_logits, gen_cls = D(aug(fake), c_fake, aux=True)
            aux_G = aux_class_loss(gen_cls, c_fake)
            logs["loss/aux_G"] = aux_G.item()
        else:
            gen_logits, aux_G = D(aug(fake), c_fake), 0.0
    loss_G = g_loss_fn(gen_logits) + aux_weight * aux_G
    opt_G.zero_grad(set_to_none=True)
    scaler.scale(loss_G).backward()
    scaler.step(opt_G)
    scaler.update()

    # 3. exponential moving average of G's weights
    if G_ema is not None:
        ema_update(G_ema, G, ema_decay)

    out = {"loss/D": loss_D.item(), "loss/G": loss_G.item()}
    if loss == "ns":  # probabilities only mean something for the sigmoid (non-saturating) loss
        out["D(x)"] = torch.sigmoid(real_logits).mean().item()
        out["D(G(z))"] = torch.sigmoid(fake_logits).mean().item()
    return {**out, **logs}


def _conditional_labels(labels: torch.Tensor | Sequence[torch.Tensor] | None, n_batches: int,
                       num_classes: int) -> list[torch.Tensor | None]:
    """gan_step's `labels` as one entry per D step: all None for an unconditional GAN."""
    if labels is None:
        return [None] * n_batches
    if num_classes <= 0:
        raise ValueError(f"labels were given, so num_classes must be the number of classes, got {num_classes}")
    out = [labels] if isinstance(labels, torch.Tensor) else list(labels)
    if len(out) != n_batches:
        raise ValueError(f"got {len(out)} label batches for {n_batches} image batches")
    return out


def upsampler_step(U: nn.Module, D: nn.Module, opt_U: torch.optim.Optimizer, opt_D: torch.optim.Optimizer,
                   real: torch.Tensor | Sequence[torch.Tensor], factor: int, *, loss: str = "ns",
                   gp_weight: float = 0.0, r1_gamma: float = 0.0, recon_weight: float = 100.0,
                   scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One upsampler step: D update(s) on real pairs vs upsampled pairs, then U on adversarial +
    recon_weight * L1, pix2pix's objective (Isola et al. 2017, eq. 4):
        U* = arg min_U max_D  L_GAN(U, D) + recon_weight * E|y - U(x)|
    `real` is one high-res batch y per D step; its low-res input x is its area downsample by
    `factor`. D sees (image, x) pairs: (y, x) is real, (U(x), x) is fake. The loss names and
    penalties are those of gan_step; U and D may be DistributedDataParallel-wrapped, as there.
    """
    d_loss_fn, g_loss_fn = GAN_LOSSES[loss]
    scaler = scaler or _NO_LOSS_SCALING
    reals = [real] if isinstance(real, torch.Tensor) else list(real)
    logs: dict[str, float] = {}

    # 1. discriminator, n_critic times, on (high-res, low-res) pairs; the upsampled image is detached
    for real_i in reals:
        low = area_downsample(real_i, factor)  # (B, C, H/f, W/f)
        fake = U(low)  # (B, C, H, W)
        real_in = real_i.detach().requires_grad_(True) if r1_gamma > 0 else real_i
        real_logits, fake_logits = D(real_in, low), D(fake.detach(), low)  # (B, patches)
        loss_D = d_loss_fn(real_logits, fake_logits)
        # the penalties on the image, at the fixed low-res input
        total_D = loss_D + _d_penalties(lambda y: D(y, low), real_i, fake, real_logits,  # noqa: B023
                                        gp_weight, r1_gamma, logs, r1_input=real_in)
        opt_D.zero_grad(set_to_none=True)
        scaler.scale(total_D).backward()  # = total_D.backward() unless --precision fp16
        scaler.step(opt_D)
        scaler.update()

    # 2. upsampler: fool the just-updated D and stay close to the real image (L1)
    with frozen(D), distributed.no_grad_sync(D):  # no gradients for D's weights in U's half
        adv = g_loss_fn(D(fake, low))
    l1 = (fake - real_i).abs().mean()
    loss_U = adv + recon_weight * l1
    opt_U.zero_grad(set_to_none=True)
    scaler.scale(loss_U).backward()
    scaler.step(opt_U)
    scaler.update()
    return {"loss/D": loss_D.item(), "loss/U": loss_U.item(), "loss/adv": adv.item(), "loss/l1": l1.item(), **logs}


def set_progan_progress(nets: dict[str, nn.Module], cfg: TrainConfig, step: int) -> tuple[int, float]:
    """Progressive growing: G, D (and G_ema) run step `step` at progan_schedule(step, cfg)."""
    stage, alpha = progan_schedule(step, cfg)
    for net in nets.values():
        net.set_progress(stage, alpha)
    return stage, alpha


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """p_ema <- decay * p_ema + (1 - decay) * p for every parameter; buffers (batch-norm running
    statistics) are copied. Karras et al. 2018 (Progressive GAN); Yazici et al. 2019."""
    for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
        p_ema.mul_(decay).add_(p, alpha=1 - decay)
    for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b)


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The EMA decay of step `step` (0-based): `decay`, or with `warmup` min(decay, (1 + step) / (10 + step)).

    Without a warm-up the average still holds the initial (random) weights with weight decay^t: at
    decay 0.999 that is e^-1 after 1,000 steps, and short runs sample from a lagging average. The
    ramp is the num_updates rule of TensorFlow's tf.train.ExponentialMovingAverage: decay 0.1 at the
    first step, 0.5 at step 8, 0.9 at step 81, 0.999 from step 8,990 on.
    """
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def r1_gamma_at(step: int, cfg: TrainConfig) -> float:
    """The R1 weight gamma of training step `step` (0-based): lazy regularization (Karras et al.
    2020, "Analyzing and Improving the Image Quality of StyleGAN", section 3.1) computes the penalty
    on one step in every k = r1_every, scaled by k, so that its weight per step is unchanged on
    average:  gamma_t = k * gamma if t % k == 0 else 0.  k = 1: every step, gamma."""
    return cfg.r1_gamma * cfg.r1_every if step % cfg.r1_every == 0 else 0.0


def make_ema(G: nn.Module) -> nn.Module:
    """A frozen copy of G (or of a VAE) to hold its exponential moving average (saved as "G_ema." / "vae_ema.")."""
    return copy.deepcopy(G).requires_grad_(False)


def vae_step(vae: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, cfg: TrainConfig,
             labels: torch.Tensor | None = None, scaler: torch.amp.GradScaler | None = None,
             kl_weight: float | None = None) -> dict[str, float]:
    """One step on the negative ELBO (reconstruction + weight * KL), reported per part.
    `labels` (B,): the classes of a conditional VAE (Sohn et al. 2015), None otherwise.
    `kl_weight`: the KL weight of this step (see vae_tools.kl_weight); None = cfg.beta.
    With cfg.free_bits > 0 the KL term is clamped per latent dimension (losses.kl_free_bits)."""
    scaler = scaler or _NO_LOSS_SCALING
    out = vae(real, labels)
    weight = cfg.beta if kl_weight is None else kl_weight
    parts = negative_elbo(out.decoded, real, out.mu, out.logvar, cfg.recon_loss, weight, cfg.gaussian_sigma,
                          free_bits=cfg.free_bits)
    opt.zero_grad(set_to_none=True)
    scaler.scale(parts.total).backward()  # = parts.total.backward() unless --precision fp16
    scaler.step(opt)
    scaler.update()
    return {"loss/total": parts.total.item(), "loss/recon": parts.recon.item(), "loss/kl": parts.kl.item()}


def vae_gan_step(vae: nn.Module, D: PatchDiscriminator, opt_vae: torch.optim.Optimizer, opt_D: torch.optim.Optimizer,
                 real: torch.Tensor, cfg: TrainConfig, step: int) -> dict[str, float]:
    """One VAE-GAN step (Larsen et al. 2016, with VQGAN's patch discriminator and adaptive weight):

    1. the VAE (encoder + decoder) on
           -ELBO + w * [L_G(D(x_rec)) + L_G(D(x_prior))] + fm_weight * C*H*W * FM(x, x_rec)
       x_rec = decode(z ~ q(z|x)), x_prior = decode(z ~ N(0, I)); L_G is the generator half of
       GAN_LOSSES[cfg.loss]; w = adv_weight, times the adaptive weight when adv_adaptive; FM is
       losses.feature_matching on D's hidden features, times the pixel count so that, like the
       pixel likelihood, it is a sum over the image (as latent diffusion's autoencoder weighs LPIPS);
    2. D on real vs both kinds of fakes (detached): D's half of GAN_LOSSES[cfg.loss].
    Before `cfg.adv_start` steps it is exactly vae_step: D is neither used nor updated.
    `loss/total` stays the -ELBO, so that its curve compares with a plain VAE's.
    `vae` and `D` may be DistributedDataParallel-wrapped: each backward starts from their forward
    (which averages the gradients over ranks); decode, to_image and D's features are taken from
    the modules inside, with the same weights. With several processes the adaptive weight is
    the mean of the ranks' (one value for the global batch, as in one process).
    """
    core, D_core = distributed.unwrap(vae), distributed.unwrap(D)
    out = vae(real)  # decoded (B, C, H, W) likelihood parameters; mu, logvar (B, z_dim)
    parts = negative_elbo(out.decoded, real, out.mu, out.logvar, cfg.recon_loss, cfg.beta, cfg.gaussian_sigma)
    logs = {"loss/total": parts.total.item(), "loss/recon": parts.recon.item(), "loss/kl": parts.kl.item()}
    if step < cfg.adv_start:  # warm-up: a plain VAE step
        opt_vae.zero_grad(set_to_none=True)
        parts.total.backward()
        opt_vae.step()
        return logs
    d_loss_fn, g_loss_fn = GAN_LOSSES[cfg.loss]
    B = real.shape[0]

    # 1. the VAE against a frozen D: fool it with reconstructions and with prior samples.
    # decode and forward_features bypass the views' autocast (--precision bf16): opened here, and
    # what comes out is float32 again before any loss
    recon = core.to_image(out.decoded)  # (B, C, H, W) in [-1, 1]
    with acceleration.autocast(cfg.precision, real.device):
        prior = acceleration.float32(core.decode(torch.randn_like(out.mu)))  # (B, C, H, W) in [-1, 1]
    fakes = torch.cat([recon, prior])  # (2B, C, H, W): one D call, one set of batch statistics
    with frozen(D):  # D's weights get no gradient from the VAE's loss
        with acceleration.autocast(cfg.precision, real.device):
            # (2B, 1, g, g) logits and the hidden features
            fake_logits, fake_feats = acceleration.float32(D_core.forward_features(fakes))
        adv = g_loss_fn(fake_logits[:B]) + g_loss_fn(fake_logits[B:])
        w = torch.tensor(cfg.adv_weight, device=real.device)
        if cfg.adv_adaptive and cfg.adv_weight > 0:
            w_ranks = adaptive_adv_weight(parts.recon, adv, decoder_last_layer(core))
            w = w * distributed.mean_over_ranks({"w": w_ranks.item()})["w"]
        total = parts.total + w * adv
        if cfg.fm_weight > 0:
            with torch.no_grad(), acceleration.autocast(cfg.precision, real.device):
                real_feats = acceleration.float32(D_core.forward_features(real)[1])  # the target features
            fm = feature_matching(real_feats, [f[:B] for f in fake_feats]).mean()
            total = total + cfg.fm_weight * real[0].numel() * fm
            logs["loss/fm"] = fm.item()
        opt_vae.zero_grad(set_to_none=True)
        total.backward()
        opt_vae.step()

    # 2. the discriminator: real up, reconstructions and prior samples down (no gradient to the VAE)
    loss_D = d_loss_fn(D(real), D(fakes.detach()))
    opt_D.zero_grad(set_to_none=True)
    loss_D.backward()
    opt_D.step()
    return {**logs, "loss/G": adv.item(), "loss/D": loss_D.item(), "adv_weight": w.item()}


# ---------------------------------------------------------------------------- the loop


@dataclass
class RunState:
    step: int = 0  # optimizer steps completed
    elapsed: float = 0.0  # seconds of training wall time, resumes included
    best_fid: float = math.inf
    best_step: int = -1


def num_classes_of(net: nn.Module) -> int:
    """How many classes a generator / VAE is conditioned on; 0 = unconditional."""
    return int(getattr(getattr(net, "cfg", None), "num_classes", 0))


def cycled_labels(n: int, num_classes: int) -> torch.Tensor | None:
    """The default classes of n conditional samples: image i gets class i mod num_classes
    (so a grid with a multiple of num_classes per row shows one class per column); None
    when unconditional."""
    return torch.arange(n) % num_classes if num_classes else None


@torch.no_grad()
def generate_images(nets: dict[str, nn.Module], cfg: TrainConfig, seeds: list[int] | range,
                    device: torch.device, batch_size: int = 256,
                    labels: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) images for the given seeds, networks in eval mode (restored after).
    Conditional runs: image i gets class labels[i]; labels=None cycles, image i gets class
    i mod num_classes. Unconditional runs take no labels."""
    net = sampling_net(nets, cfg)
    out = []
    seeds = list(seeds)
    k = num_classes_of(net)
    if labels is None:
        labels = cycled_labels(len(seeds), k)
    elif not k:
        raise ValueError("this model is unconditional; it takes no class labels")
    else:
        labels = torch.as_tensor(labels, dtype=torch.long)
        if tuple(labels.shape) != (len(seeds),):
            raise ValueError(f"need one class label per seed ({len(seeds)}), got shape {tuple(labels.shape)}")
    with eval_mode(net):
        for i in range(0, len(seeds), batch_size):
            z = latents_for_seeds(seeds[i : i + batch_size], cfg.z_dim, device)
            c = None if labels is None else labels[i : i + batch_size].to(device)
            x = net(z, c) if cfg.family == "gan" else net.decode(z, c)
            out.append(to_uint8(x).cpu())
    return torch.cat(out)


def sampling_net(nets: dict[str, nn.Module], cfg: TrainConfig) -> nn.Module:
    """The network that samples are drawn from: the moving average (G_ema / vae_ema) when kept, else G / the VAE."""
    trained, averaged = cfg.ema_roles
    return nets.get(averaged, nets[trained])


def _base_lrs(cfg: TrainConfig) -> dict[str, float]:
    assert cfg.lr is not None and cfg.lr_d is not None  # TrainConfig fills both in
    return {"G": cfg.lr, "D": cfg.lr_d, "vae": cfg.lr, "U": cfg.lr}  # G_ema, vae_ema: no optimizer, they follow G, vae


def _make_optimizers(nets: dict[str, nn.Module], cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    lrs = _base_lrs(cfg)
    return {role: torch.optim.Adam(nets[role].parameters(), lr=lrs[role], betas=(cfg.beta1, cfg.beta2))
            for role in nets if role in lrs}


def lr_factor_at(step: int, cfg: TrainConfig) -> float:
    """The factor on every learning rate at training step `step` (0-based), t = step / lr_decay_steps:
        none     1
        linear   1 - t                      (SN-GAN's decay to 0, Miyato et al. 2018)
        cosine   (1 + cos(pi t)) / 2        (Loshchilov & Hutter 2017, without restarts)
    and 0 from t = 1 on. A pure function of the step, so a resumed run continues the same schedule;
    the divergence guard's lowering (its lr_scale) multiplies it."""
    if cfg.lr_decay == "none":
        return 1.0
    assert cfg.lr_decay_steps is not None  # TrainConfig sets it with lr_decay
    t = min(step / cfg.lr_decay_steps, 1.0)
    return 1.0 - t if cfg.lr_decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))


def _set_scheduled_lrs(opts: dict[str, torch.optim.Optimizer], cfg: TrainConfig, factor: float) -> None:
    base = _base_lrs(cfg)
    for role, opt in opts.items():
        for group in opt.param_groups:
            group["lr"] = base[role] * factor


def step_networks(nets: dict[str, nn.Module], trained: Sequence[str], cfg: TrainConfig,
                  device: torch.device) -> dict[str, nn.Module]:
    """The modules the step functions call, sharing every weight with `nets` (which are saved and
    sampled from): each trained network with --channels-last memory, --sync-bn batch norm
    (several processes), under --precision autocast, in DistributedDataParallel (several
    processes), compiled (--compile). With the defaults in one process: `nets` themselves.
    `trained`: the roles with an optimizer (G_ema, which follows G, stays as it is)."""
    out = dict(nets)
    for role in trained:
        if role in nets:
            net = distributed.convert_sync_batchnorm(nets[role]) if cfg.sync_bn and distributed.is_distributed() \
                else nets[role]
            view = acceleration.autocast_view(net, cfg.precision, cfg.channels_last, device)
            if cfg.model == "progan":  # synchronized by the loop's GradAveragingScaler instead of DDP
                distributed.broadcast_parameters(net)
            else:
                view = distributed.ddp(view, device)
            out[role] = acceleration.compile_net(view, cfg.compile)
    return out


class _StopFlag:
    """First SIGINT asks the loop to stop after the current step; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    elapsed: float
    last_metrics: dict[str, float]


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train a model as configured, writing everything into `cfg.out`. See the module docstring."""
    from .data import FIT_MODES, load_images

    run_dir = Path(cfg.out)
    has_run = (run_dir / "config.json").is_file()
    if has_run and not resume:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not has_run:
        raise ConfigError(f"--resume: {run_dir} holds no run to resume (no config.json)")
    if resume:
        saved, _ = read_run_config(run_dir)
        if saved.model != cfg.model or saved.data != cfg.data or saved.resolution != cfg.resolution:
            raise ConfigError(
                f"--resume: {run_dir} was trained as model={saved.model} data={saved.data} res={saved.resolution}; "
                "those cannot change on resume")
        saved.steps, saved.max_minutes = cfg.steps, cfg.max_minutes  # all a resume may change: how far to train
        cfg = saved

    device = distributed.setup(resolve_device(cfg.device))  # under torchrun: join the job, cuda:LOCAL_RANK
    distributed.barrier()  # every rank has checked --out before rank 0 writes into it
    distributed.check_batch_size(cfg.batch_size)
    if not distributed.is_main():  # rank 0 alone logs and writes files
        log, progress = (lambda m: None), False
    if cfg.precision == "auto":  # decided once, here; config.json keeps the choice
        precision, why = acceleration.resolve_precision(cfg, device)
        cfg = dataclasses.replace(cfg, precision=precision)
        log(f"precision auto -> {precision}: {why}")
    acceleration.check(cfg, device)
    torch.manual_seed(cfg.seed)

    data = load_images(cfg.data, res=cfg.resolution, channels=cfg.channels, crop=FIT_MODES[cfg.fit],
                       storage=cfg.data_storage)
    images = data.for_device(device)  # uint8 (N, C, H, W) whole on the device, or read batch by batch from disk
    channels = data.channels
    labels, num_classes = _training_labels(cfg, data, device)  # (N,) int64 and K; None and 0 when unconditional
    nets = {role: net.to(device) for role, net in build_networks(cfg, channels, num_classes).items()}
    if cfg.ema_decay > 0:  # (config.py refuses it for the upsampler)
        nets[cfg.ema_roles[1]] = make_ema(nets[cfg.ema_roles[0]])
    opts = _make_optimizers(nets, cfg)
    order = BatchOrder(len(images), cfg.batch_size, cfg.seed)
    guard = Guard(cfg, nets, opts, images, device) if cfg.guard else None  # before a resume loads the optimizers
    distributed.split_rng(cfg.seed, device)  # several processes: one z stream for all, a stream per rank inside
    scaler = acceleration.grad_scaler(cfg.precision, device)
    if cfg.model == "progan" and distributed.is_distributed():  # see step_networks
        scaler = distributed.GradAveragingScaler(scaler)

    state = RunState()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    if resume and (run_dir / STATE).is_file():
        load_weights(nets, run_dir / WEIGHTS)
        st = load_state(run_dir / STATE)
        for role, opt in opts.items():
            opt.load_state_dict(st["optim"][role])
        distributed.set_rng_state(st, device, cfg.seed, int(st["step"]))
        if guard is not None and "guard" in st:
            guard.load_state_dict(st["guard"])
        if "scaler" in st:
            scaler.load_state_dict(st["scaler"])
        state = RunState(step=int(st["step"]), elapsed=float(st["elapsed"]), best_fid=float(st["best_fid"]),
                         best_step=int(st["best_step"]))
        if distributed.is_main():
            truncate_jsonl(run_dir / "metrics.jsonl", state.step)
        log(f"resuming {run_dir} at step {state.step} of {cfg.steps}")
    if cfg.model == "progan":
        set_progan_progress(nets, cfg, state.step)
    if cfg.lr_decay != "none" and cfg.lr_decay_steps is not None and cfg.steps > cfg.lr_decay_steps:
        log(f"warning: --lr-decay {cfg.lr_decay} ends at step {cfg.lr_decay_steps}; from there on to step {cfg.steps} "
            "every learning rate is 0")
    data_info = {"resolution": cfg.resolution, "channels": channels, "num_images": len(images),
                 "class_names": data.class_names, "skipped": len(data.skipped), "name": data.name}
    if num_classes:
        data_info["num_classes"] = num_classes
    if distributed.is_main():
        cfg.save(run_dir / "config.json", data_info=data_info, latentforge_version=__version__)
    step_nets = step_networks(nets, list(opts), cfg, device)  # what the step functions call

    evaluator = None
    if cfg.eval_every:
        from .metrics.evaluate import InTrainingEvaluator

        evaluator = InTrainingEvaluator(cfg.eval_ref or default_eval_ref(cfg.data), n=cfg.eval_n, seed=cfg.seed)

    def checkpoint() -> None:
        rng = distributed.rng_state(device)  # with several processes a collective: every rank gets here
        if not distributed.is_main():
            return
        save_weights(nets, run_dir / WEIGHTS, metadata={"step": str(state.step), "model": cfg.model})
        st = {"step": state.step, "elapsed": state.elapsed, "best_fid": state.best_fid, "best_step": state.best_step,
              "optim": {role: opt.state_dict() for role, opt in opts.items()}, **rng}
        if guard is not None:
            st["guard"] = guard.state_dict()
        if scaler.is_enabled():
            st["scaler"] = scaler.state_dict()
        save_state(st, run_dir / STATE)

    def recover(problem: Problem) -> None:
        """The guard's answer to a failed step or check: back to the last good state, lower lrs."""
        assert guard is not None
        rec = guard.recover(problem, state.step)
        state.step = rec.step
        if distributed.is_main():
            append_jsonl(run_dir / "metrics.jsonl",
                         {"kind": "guard", "step": state.step, "time": round(state.elapsed, 3), **rec.row})
        checkpoint()
        log(rec.message)
        if rec.gave_up:
            raise TrainingDiverged(rec.message)

    def write_samples() -> None:
        if not distributed.is_main():
            return
        if cfg.model == "upsampler":  # rows: low-res input, bicubic, upsampler, real (the first 8 images)
            grid = comparison_rows(nets["U"], images[:8], SAMPLE_GRID_SEEDS[:8])
        else:
            grid = generate_images(nets, cfg, SAMPLE_GRID_SEEDS, device)
        save_grid(grid, run_dir / "samples" / f"step_{state.step:06d}.png", nrow=sample_grid_nrow(num_classes),
                  upscale=2,
                  metadata={"latentforge": __version__, "model": cfg.model, "run": run_dir.name,
                            "step": state.step, "seeds": "0-63", "synthetic image": "true"})

    def evaluate() -> dict[str, float]:
        assert evaluator is not None
        fake = generate_images(nets, cfg, range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + cfg.eval_n), device)
        res = evaluator(fake)
        row = {"kind": "eval", "step": state.step, "time": round(state.elapsed, 3), **res}
        append_jsonl(run_dir / "metrics.jsonl", row)
        if res["fid"] < state.best_fid:
            state.best_fid, state.best_step = float(res["fid"]), state.step
            save_weights(nets, run_dir / "best" / WEIGHTS, metadata={"step": str(state.step), "fid": str(res["fid"])})
        return res

    for net in nets.values():
        net.train()
    acc: dict[str, float] = {}
    acc_k: dict[str, int] = {}  # steps that reported each key (vae_gan reports its D terms only once D runs)
    acc_t0, acc_step0 = time.perf_counter(), state.step
    last: dict[str, float] = {}
    interrupted = False
    start_step, kl_w = state.step, None  # kl_w: the VAE's KL weight in the latest step
    bar = _progress_bar(progress)  # total and completed are set by add_task below
    with _StopFlag() as stop, bar:
        task = bar.add_task(f"{cfg.model}", total=cfg.steps, completed=state.step, info="")
        if state.step == 0:
            write_samples()
        if guard is not None:
            guard.start(state.step)
        while state.step < cfg.steps:
            if distributed.any_rank(stop.requested):  # all ranks stop at the same step
                interrupted = True
                break
            if cfg.max_minutes and distributed.any_rank(state.elapsed >= cfg.max_minutes * 60):
                log(f"time budget of {cfg.max_minutes:g} min of training reached at step {state.step}; stopping")
                if state.step % cfg.sample_every:
                    write_samples()
                break
            t0 = time.perf_counter()
            if cfg.lr_decay != "none":  # the schedule's factor times the guard's lowering, if any
                _set_scheduled_lrs(opts, cfg, lr_factor_at(state.step, cfg)
                                   * (guard.lr_scale if guard is not None else 1.0))
            if cfg.model == "upsampler":  # pairs from real data: a high-res batch and its area downsample
                idx = [distributed.batch_slice(order.indices(state.step * cfg.n_critic + i)) for i in range(cfg.n_critic)]
                reals = [to_float(images[j]) for j in idx]
                out = upsampler_step(step_nets["U"], step_nets["D"], opts["U"], opts["D"], reals, cfg.upsample_factor,
                                     loss=cfg.loss, gp_weight=cfg.gp_weight, r1_gamma=r1_gamma_at(state.step, cfg),
                                     recon_weight=cfg.recon_weight, scaler=scaler)
            elif cfg.family == "gan":
                # D step i of step s takes batch s * n_critic + i: fresh data, a pure function of the step
                # (several processes: rank r takes slice r of each global batch)
                idx = [distributed.batch_slice(order.indices(state.step * cfg.n_critic + i)) for i in range(cfg.n_critic)]
                reals = [to_float(images[j]) for j in idx]
                if cfg.model == "progan":  # grow: (stage, alpha) from the step; the reals faded to match G
                    stage, alpha = set_progan_progress(nets, cfg, state.step)
                    reals = [fade_reals(r, stage, alpha, cfg.resolution) for r in reals]
                ema_decay = ema_decay_at(state.step, cfg.ema_decay, cfg.ema_warmup)
                out = gan_step(step_nets["G"], step_nets["D"], opts["G"], opts["D"], reals, cfg.z_dim, loss=cfg.loss,
                               gp_weight=cfg.gp_weight, r1_gamma=r1_gamma_at(state.step, cfg), augment=cfg.augment,
                               G_ema=nets.get("G_ema"), ema_decay=ema_decay,
                               labels=None if labels is None else [labels[j] for j in idx], num_classes=num_classes,
                               aux_weight=cfg.aux_class_weight, scaler=scaler)
            elif cfg.model == "vae_gan":  # fp32 or bf16 (config.py refuses fp16)
                real = to_float(images[distributed.batch_slice(order.indices(state.step))])  # (B, C, H, W) in [-1, 1]
                out = vae_gan_step(step_nets["vae"], step_nets["D"], opts["vae"], opts["D"], real, cfg, state.step)
            else:
                idx = distributed.batch_slice(order.indices(state.step))
                real = to_float(images[idx])  # (B, C, H, W) in [-1, 1]
                kl_w = kl_weight(state.step, cfg)
                out = vae_step(step_nets["vae"], opts["vae"], real, cfg, labels=None if labels is None else labels[idx],
                               scaler=scaler, kl_weight=kl_w)
            if "vae_ema" in nets:  # the moving average of encoder and decoder
                ema_update(nets["vae_ema"], nets["vae"], ema_decay_at(state.step, cfg.ema_decay, cfg.ema_warmup))
            out = distributed.mean_over_ranks(out)  # the global batch's losses, the same on every rank
            state.step += 1
            state.elapsed += time.perf_counter() - t0
            problem = guard.inspect(out, state.step) if guard is not None else None
            if problem is not None:
                recover(problem)  # raises TrainingDiverged once the retries are used up
                acc, acc_k, acc_t0, acc_step0 = {}, {}, time.perf_counter(), state.step
                bar.update(task, completed=state.step)
                continue
            for k, v in out.items():
                if not math.isfinite(v):
                    checkpoint()
                    raise FloatingPointError(f"{k} became {v} at step {state.step}; stopped (checkpoint written)")
                acc[k] = acc.get(k, 0.0) + v
                acc_k[k] = acc_k.get(k, 0) + 1

            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                now = time.perf_counter()
                last = {k: v / acc_k[k] for k, v in acc.items()}
                row = {"kind": "train", "step": state.step, "time": round(state.elapsed, 3),
                       "images_per_s": round((state.step - acc_step0) * cfg.batch_size / max(now - acc_t0, 1e-9), 2),
                       **{k: round(v, 6) for k, v in last.items()}}
                if kl_w is not None:
                    row["kl_weight"] = round(kl_w, 6)
                if cfg.lr_decay != "none":  # the learning rate of the step just taken (G's, the VAE's, U's)
                    row["lr"] = float(f"{next(iter(opts.values())).param_groups[0]['lr']:.6g}")
                if cfg.model == "progan":  # where the growing stands, at the step just taken
                    stage, alpha = progan_schedule(state.step - 1, cfg)
                    row.update(stage=stage, alpha=round(alpha, 6))
                if distributed.is_main():
                    append_jsonl(run_dir / "metrics.jsonl", row)
                acc, acc_k, acc_t0, acc_step0 = {}, {}, now, state.step
                bar.update(task, info="  ".join(f"{k} {v:.3g}" for k, v in last.items()))
            if state.step % cfg.sample_every == 0 or state.step == cfg.steps:
                write_samples()
            if evaluator is not None and distributed.is_main() and (state.step % cfg.eval_every == 0
                                                                    or state.step == cfg.steps):
                res = evaluate()
                log(f"step {state.step}: FID {res['fid']:.2f}  KID {res['kid']:.4f}  (n={res['n']})")
            if state.step % cfg.checkpoint_every == 0:
                checkpoint()
            bar.update(task, completed=state.step)
        checkpoint()
    if cfg.family == "vae" and not interrupted and state.step > start_step and distributed.is_main():
        # Burda et al. 2016, on the training images; of the weights that sample and fit-sampler load (the EMA when kept)
        au = active_units_row(sampling_net(nets, cfg), images, cfg.seed, labels=labels)
        append_jsonl(run_dir / "metrics.jsonl", {"kind": "active_units", "step": state.step,
                                                 "time": round(state.elapsed, 3), **au})
        log(f"active units: {au['active_units']} of {au['z_dim']} latent dimensions (on {au['n']} training images)")
    if interrupted:
        log(f"interrupted: checkpoint written at step {state.step}; continue with --resume")
    return TrainResult(run_dir=run_dir, step=state.step, interrupted=interrupted, elapsed=state.elapsed, last_metrics=last)


def _training_labels(cfg: TrainConfig, data: Any, device: torch.device) -> tuple[torch.Tensor | None, int]:
    """The labels a conditional run trains on, on `device`, and the number of classes."""
    if not cfg.conditional:
        return None, 0
    if data.labels is None or not data.class_names:
        raise ConfigError(f"--conditional needs labelled data, and {data.name} has no labels; use a built-in data "
                          "set, a folder with one subfolder per class, or an .npz with a `labels` array")
    k = len(data.class_names)
    if len(data.labels) and int(data.labels.max()) >= k:  # defensive: loaders keep labels < len(class_names)
        raise ConfigError(f"{data.name}: label {int(data.labels.max())} but only {k} class names")
    return data.labels.to(device), k


def sample_grid_nrow(num_classes: int) -> int:
    """Images per row of the training sample grids: 8, or the number of classes when 8 is not a
    multiple of it (<= 16), so each column of a conditional grid shows one class."""
    return num_classes if num_classes and 8 % num_classes and num_classes <= 16 else 8


def _progress_bar(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        disable=not enabled, transient=False,
    )
