"""The `latentforge` command: argument handling only; each command calls the library.

User mistakes (bad flags, missing files, unknown data sets) end with one red line and exit
code 2, never a traceback. Bugs still show their traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, sample, evaluate and compare VAEs and GANs on images.\n\n"
    "Example:\n\n  latentforge train --model dcgan --data fashion-mnist --res 32 --steps 2000 --out runs/dcgan\n\n"
    "  latentforge sample runs/dcgan --n 64 --out grid.png",
)
data_app = typer.Typer(no_args_is_help=True, help="Inspect and fetch data sets.")
app.add_typer(data_app, name="data")
console = Console(stderr=True)


class UserError(Exception):
    """Raised by commands for a mistake the user can fix; printed as one line."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .config import ConfigError
    from .guard import TrainingDiverged

    from .data import DataError
    from .metrics.classifier import ClassifierError

    return (UserError, ConfigError, FileNotFoundError, TrainingDiverged, DataError, ClassifierError)


def main() -> None:
    """Entry point: typer reports usage errors itself (exit 2); user errors raised by the
    library become one red line and exit code 2. Under torchrun, a rank that fails says so and
    takes the others down with it (distributed.failure_guard)."""
    from .distributed import failure_guard

    try:
        with failure_guard(expected=_user_errors(), log=lambda m: console.print(m, highlight=False, markup=False)):
            app()
    except _user_errors() as e:
        where = f"rank {os.environ.get('RANK', '?')}: " if os.environ.get("WORLD_SIZE", "1") != "1" else ""
        console.print(f"[bold red]error:[/] {where}{e}", highlight=False)
        sys.exit(2)


# ------------------------------------------------------------------------------------ train

FIT_HELP = ("Non-square images: crop (resize the shorter side, keep the center) or pad (pad to a square with the "
            "image's border colour, keep everything).")
STORAGE_HELP = ("Keep the decoded data set in memory, or memory-map it from the on-disk cache and read one batch "
                "at a time (folders only). Default: on disk when a folder's decoded size exceeds 1 GiB.")


def _storage(data_in_ram: Optional[bool]) -> Optional[str]:
    """--data-in-ram / --data-on-disk / neither -> "ram" / "disk" / None (auto)."""
    return None if data_in_ram is None else ("ram" if data_in_ram else "disk")


@app.command()
def train(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, help="Model: vae, dcgan, resnet_gan (SN-GAN-style ResNet; D always spectrally normalized) vae_gan (a VAE trained against a patch discriminator), progan (progressive growing, Karras et al. 2018) or upsampler (2x/4x super-resolution stage).  [default: dcgan]"),
    data: Optional[str] = typer.Option(None, help="Built-in data set (fashion-mnist, mnist[:train|:test]), a folder of images, or an .npz file.  [default: fashion-mnist:train]"),
    res: Optional[int] = typer.Option(None, "--res", help="Resolution in pixels: 28, 32, 64 or 128; progan and upsampler also 256, 512, 1024 (upsampler: the output size).  [default: 32]"),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps to train, in total (on --resume: how far to continue).  [default: 2000]"),
    out: Path = typer.Option(Path("runs/run"), help="Run directory to create (or to continue with --resume)."),
    batch_size: int = typer.Option(64, help="Images per step (under torchrun: the global batch, split over the processes)."),
    seed: int = typer.Option(0, help="Seed for weights, data order and noise."),
    max_minutes: float = typer.Option(0.0, help="Training-time budget in minutes (time spent in training steps, resumes included): stop with a checkpoint once reached; 0 = none."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint, with its own settings (only --steps may change)."),
    channels: Optional[int] = typer.Option(None, help="1 or 3 image channels; default: the data set's own."),
    fit: Optional[str] = typer.Option(None, help=FIT_HELP + "  [default: crop]"),
    data_in_ram: Optional[bool] = typer.Option(None, "--data-in-ram/--data-on-disk", show_default=False, help=STORAGE_HELP),
    z_dim: Optional[int] = typer.Option(None, help="Latent size; default 100 (dcgan), 128 (resnet_gan) or 32 (vae)."),
    width: int = typer.Option(64, help="Base channel count of the networks (resnet_gan: channels of every residual block)."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate; default 2e-4 (GAN) or 1e-3 (VAE)."),
    beta1: Optional[float] = typer.Option(None, help="Adam beta1; default 0.5 (GAN, DCGAN paper) or 0.9 (VAE). SN-GAN uses 0."),
    beta2: float = typer.Option(0.999, help="Adam beta2 (SN-GAN uses 0.9)."),
    beta: float = typer.Option(1.0, help="VAE: weight of the KL term (1 = ELBO, >1 = beta-VAE)."),
    recon_loss: str = typer.Option("bce", help="VAE likelihood: bce (Bernoulli) or mse (Gaussian, fixed sigma)."),
    kl_warmup: int = typer.Option(0, help="VAE: steps over which the KL weight rises linearly from 0 to --beta (Bowman et al. 2016); 0 = off."),
    kl_schedule: str = typer.Option("linear", help="VAE: linear (one warm-up) or cyclical (repeat the warm-up every 2 x --kl-warmup steps, Fu et al. 2019)."),
    free_bits: float = typer.Option(0.0, help="VAE: free bits in nats per latent dimension: the batch-mean KL of a dimension is not pushed below this (Kingma et al. 2016); 0 = off."),
    sample_every: int = typer.Option(500, help="Steps between sample grids in RUN/samples/."),
    checkpoint_every: int = typer.Option(500, help="Steps between checkpoints."),
    log_every: int = typer.Option(50, help="Steps between lines of RUN/metrics.jsonl."),
    eval_every: int = typer.Option(0, help="Steps between in-training FID/KID evaluations (0 = off)."),
    eval_n: int = typer.Option(1000, help="Images per in-training evaluation."),
    eval_ref: Optional[str] = typer.Option(None, help="Reference data for evaluation; default: the test split."),
    loss: str = typer.Option("ns", help="GAN loss: ns (non-saturating, Goodfellow et al. 2014), hinge (Lim & Ye 2017; Miyato et al. 2018), wgan (Arjovsky et al. 2017) or wgan-drift (wgan + 0.001 E[D(x)^2], Karras et al. 2018)."),
    gp_weight: float = typer.Option(0.0, help="WGAN-GP gradient penalty weight (Gulrajani et al. 2017 use 10); 0 = off."),
    r1_gamma: float = typer.Option(0.0, help="R1 penalty gamma on real data (Mescheder et al. 2018); 0 = off."),
    r1_every: int = typer.Option(1, help="Lazy R1: the penalty on one training step in every N, weighted N times (Karras et al. 2020, section 3.1: N = 16); 1 = every step."),
    n_critic: int = typer.Option(1, help="Discriminator steps per generator step (Arjovsky et al. 2017 use 5); each takes the next data batch."),
    spectral_norm: bool = typer.Option(False, "--spectral-norm", help="Spectral normalization on every discriminator layer, no batch norm in D (Miyato et al. 2018)."),
    lr_d: Optional[float] = typer.Option(None, help="Discriminator learning rate, two time-scale update rule (Heusel et al. 2017); default: --lr."),
    ema_decay: float = typer.Option(0.0, help="Keep an exponential moving average of the weights (G's; a VAE's encoder and decoder), used for sampling and evaluation (Karras et al. 2018; Yazici et al. 2019), e.g. 0.999; 0 = off."),
    ema_warmup: bool = typer.Option(False, "--ema-warmup", help="Ramp the EMA decay up: step t uses min(--ema-decay, (1 + t) / (10 + t)), so the average forgets the initial weights in short runs (the num_updates rule of TensorFlow's ExponentialMovingAverage)."),
    augment: str = typer.Option("", help="Differentiable augmentation of every image D sees (Zhao et al. 2020): comma-separated from color, translation, cutout; empty = off."),
    conditional: bool = typer.Option(False, "--conditional", help="Class-conditional model on the data's labels: conditional batch norm in G and a projection D (Miyato & Koyama 2018), or a conditional VAE (Sohn et al. 2015). Needs labelled data (folders: one subfolder per class)."),
    aux_class_weight: float = typer.Option(0.0, help="Conditional dcgan/resnet_gan: weight of the AC-GAN class loss (Odena et al. 2017): D also classifies real images, G is rewarded when D recognizes the requested class (raises class accuracy, may cost diversity); 0 = off."),
    guard: bool = typer.Option(True, "--guard/--no-guard", help="Divergence guard: on a NaN/inf loss or a collapsed generator, roll back to the last good state, lower the learning rates and go on (see docs/guard.md)."),
    guard_every: int = typer.Option(100, help="Steps between guard checks (weights finite; GANs: sample diversity); each passing check keeps a snapshot in memory."),
    guard_max_retries: int = typer.Option(3, help="Recoveries with no passing check in between before training stops with an error."),
    guard_lr_factor: float = typer.Option(0.5, help="Each recovery multiplies every learning rate by this, in (0, 1)."),
    guard_min_diversity: float = typer.Option(0.25, help="GANs: collapse when the sample diversity falls below this fraction of both its best so far and the real data's; 0 = no collapse check."),
    preset: str = typer.Option("none", help="Start from a named set of settings: fast-cpu, quality or none; flags you give override it. `--preset list` (or `latentforge presets`) shows them."),
    adv_weight: float = typer.Option(0.1, help="vae_gan: weight of the decoder's adversarial loss; with --adv-adaptive, a factor on VQGAN's adaptive weight (Esser et al. 2021)."),
    adv_adaptive: bool = typer.Option(True, "--adv-adaptive/--no-adv-adaptive", help="vae_gan: scale --adv-weight so the adversarial gradient at the decoder's last layer matches the reconstruction gradient's size (VQGAN eq. 7); off: --adv-weight is absolute, against the -ELBO in nats per image."),
    adv_start: int = typer.Option(0, help="vae_gan: steps of plain VAE training before the discriminator starts."),
    fm_weight: float = typer.Option(0.0, help="vae_gan: weight of feature matching, the L1 distance of the discriminator's features of an image and its reconstruction, per pixel (Larsen et al. 2016); 0 = off."),
    stage_images: int = typer.Option(60_000, help="progan: real images shown per fade-in phase and per stable phase of each resolution stage."),
    lr_decay: str = typer.Option("none", help="Learning-rate schedule: none, linear (to 0, as SN-GAN) or cosine (to 0); every learning rate follows it, a pure function of the step (resume continues it)."),
    lr_decay_steps: Optional[int] = typer.Option(None, help="Steps over which --lr-decay goes to 0; default: --steps (fixed when the run starts)."),
    progan_upsample: str = typer.Option("nearest", help="progan: G's x2 upsampling inside each block: nearest (the paper's) or bilinear (no blocky pattern of the lower stages shows through)."),
    progan_top_channels: int = typer.Option(0, help="progan: channels of the last stage (the target resolution), where each channel costs most; 0 = by the --width rule as every other stage."),
    progan_d_width: int = typer.Option(0, help="progan: D's channels at the target resolution, doubled per halving of the resolution up to --max-channels, as G's by --width; 0 = --width (the paper's D is as wide as G)."),
    progan_d_batch_norm: bool = typer.Option(False, "--progan-d-batch-norm/--no-progan-d-batch-norm", help="progan with --progan-block strided: batch norm after the conv of every D block, as the DCGAN's D."),
    progan_rgb_top: bool = typer.Option(False, "--progan-rgb-top/--no-progan-rgb-top", help="progan with --progan-block strided: the last stage's G block outputs the image and its D block reads it (no 1x1 toRGB/fromRGB there), as the DCGAN's outer layers."),
    progan_fused_scale: bool = typer.Option(True, "--progan-fused-scale/--no-progan-fused-scale", help="progan, paper blocks: G's up x2 + first conv and D's second conv + pooling each run as one stride-2 conv (the official code's fused_scale; D then pools before its LReLU): about 1.25x faster at 64 px. --no-progan-fused-scale: the paper's table 2 as the runs before the option."),
    progan_g_batch_norm: bool = typer.Option(False, "--progan-g-batch-norm/--no-progan-g-batch-norm", help="progan with --progan-block strided: batch norm in G after its dense layer and every block's conv (before LReLU and pixel norm), as the DCGAN's G."),
    progan_block: str = typer.Option("paper", help="progan: paper (two 3x3 convs per block, the paper's) or strided (one 4x4 stride-2 conv per block, transposed in G, as the DCGAN's layers: about half the work per image)."),
    max_channels: int = typer.Option(512, help="progan: at most this many channels in any stage (--width doubles per halving of the resolution up to it; the paper's 512). Lower it on a CPU."),
    upsample_factor: int = typer.Option(2, help="upsampler: 2 or 4; --res is the output size, the input is --res / factor."),
    recon_weight: float = typer.Option(100.0, help="upsampler: weight of the L1 term to the real high-res image (pix2pix uses 100)."),
    device: str = typer.Option("auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps. Under torchrun each process uses cuda:LOCAL_RANK (or the CPU)."),
    precision: str = typer.Option("fp32", help="fp32; bf16 (autocast to bfloat16, no loss scaling needed); fp16 (autocast + loss scaling, CUDA only); auto (bf16 where the GPU or CPU computes it natively, else fp32). See docs/DISTRIBUTED.md."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the networks (the first steps compile; slow to compile on a CPU)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Channels-last (NHWC) memory for weights and activations: faster convolutions on GPUs."),
    sync_bn: bool = typer.Option(False, "--sync-bn", help="Under torchrun: batch-norm statistics over the global batch instead of each process's share (then N processes train like one)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train a model; everything goes into the run directory --out.

    Example: latentforge train --model vae --data fashion-mnist --res 32 --steps 2000 --out runs/vae

    On 4 GPUs (--batch-size is the global batch, split over the processes):
    torchrun --nproc-per-node 4 -m latentforge train --model dcgan --batch-size 256 --sync-bn --out runs/d
    """
    from .config import TrainConfig, read_run_config
    from .train import train as run_training

    if preset == "list":
        return presets()
    if resume:
        cfg, _ = read_run_config(out)  # the run's own settings; a user error if out holds no run
        for flag, given, saved in (("--model", model, cfg.model), ("--data", data, cfg.data), ("--res", res, cfg.resolution),
                                   ("--fit", fit, cfg.fit), ("data storage", _storage(data_in_ram), cfg.data_storage)):
            if given is not None and given != saved:
                raise UserError(f"--resume: {out} was trained with {flag} {saved}; it cannot change to {given}")
        if _given(ctx, "preset") and preset != cfg.preset:
            raise UserError(f"--resume: {out} was started with --preset {cfg.preset}; it cannot change to {preset}")
        if steps is not None:
            cfg.steps = steps
        if max_minutes:
            cfg.max_minutes = max_minutes
    else:
        cfg = TrainConfig(
            model="dcgan" if model is None else model, data="fashion-mnist:train" if data is None else data,
            out=str(out), resolution=32 if res is None else res, channels=channels, fit="crop" if fit is None else fit,
            data_storage=_storage(data_in_ram) or "auto",
            steps=2000 if steps is None else steps, batch_size=batch_size, lr=lr, beta1=beta1, beta2=beta2, seed=seed,
            z_dim=z_dim, width=width,
            max_minutes=max_minutes, recon_loss=recon_loss, beta=beta, kl_warmup=kl_warmup, kl_schedule=kl_schedule,
            free_bits=free_bits, log_every=log_every, sample_every=sample_every,
            checkpoint_every=checkpoint_every, eval_every=eval_every, eval_n=eval_n, eval_ref=eval_ref, device=device,
            loss=loss, gp_weight=gp_weight, r1_gamma=r1_gamma, r1_every=r1_every, n_critic=n_critic, spectral_norm=spectral_norm,
            lr_d=lr_d, ema_decay=ema_decay, ema_warmup=ema_warmup, augment=augment, conditional=conditional,
            aux_class_weight=aux_class_weight, guard=guard, guard_every=guard_every, guard_max_retries=guard_max_retries, guard_lr_factor=guard_lr_factor,
            guard_min_diversity=guard_min_diversity,
            adv_weight=adv_weight, adv_adaptive=adv_adaptive, adv_start=adv_start, fm_weight=fm_weight,
            precision=precision, compile=compile_, channels_last=channels_last, sync_bn=sync_bn,
            stage_images=stage_images, max_channels=max_channels, upsample_factor=upsample_factor,
            lr_decay=lr_decay, lr_decay_steps=lr_decay_steps, progan_upsample=progan_upsample, progan_block=progan_block,
            progan_top_channels=progan_top_channels, progan_d_batch_norm=progan_d_batch_norm,
            progan_g_batch_norm=progan_g_batch_norm, progan_rgb_top=progan_rgb_top, progan_fused_scale=progan_fused_scale,
            progan_d_width=progan_d_width,
            recon_weight=recon_weight,
        )
        if preset != "none":
            from .presets import apply_preset

            cfg = apply_preset(cfg, preset, explicit={_FLAG_FIELDS.get(p, p) for p in ctx.params if _given(ctx, p)})
    result = run_training(cfg, resume=resume, progress=not quiet, log=lambda m: console.print(m, highlight=False))
    from .distributed import is_main

    if not is_main():
        return
    samples = sorted((result.run_dir / "samples").glob("step_*.png"))
    console.print(f"run: {result.run_dir}  step {result.step}  ({result.elapsed:.0f} s of training)", highlight=False)
    if samples:
        console.print(f"latest samples: {samples[-1]}", highlight=False)
    if result.interrupted:
        raise typer.Exit(130)


_FLAG_FIELDS = {"res": "resolution", "compile_": "compile"}  # train's parameter names that differ from their TrainConfig field


def _given(ctx: typer.Context, param: str) -> bool:
    """Whether the user set `param` (on the command line or through the environment), not its default."""
    source = ctx.get_parameter_source(param)  # by name: typer may bring its own copy of click's enum
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


@app.command()
def presets() -> None:
    """List the training presets: what each one sets, and where its values come from.

    Example: latentforge presets
    """
    from .presets import describe_presets

    print(describe_presets())


# ------------------------------------------------------------------------------------ sample


@app.command()
def sample(
    run: Path = typer.Argument(..., help="Run directory."),
    n: int = typer.Option(64, help="Number of images."),
    seed: int = typer.Option(0, help="First seed; image i uses seed + i."),
    out: Optional[Path] = typer.Option(None, help="Write one grid PNG here."),
    outdir: Optional[Path] = typer.Option(None, help="Write one PNG per image into this folder."),
    nrow: int = typer.Option(8, help="Images per grid row."),
    scale: int = typer.Option(2, min=1, max=16, help="Enlarge the grid by this factor (nearest neighbour)."),
    checkpoint: str = typer.Option("latest", help="latest or best."),
    upsample: Optional[Path] = typer.Option(None, help="An upsampler run: pass every image through it (2x or 4x); its input size must be this run's resolution."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    classes: Optional[list[str]] = typer.Option(None, "--class", help="Conditional runs: the class (name, any case, or index) of the images; repeat or comma-separate several to cycle through them (image i gets the (i mod k)-th). Default: image i gets class i mod the number of classes."),
    sampler: str = typer.Option("prior", help="VAE runs: where latents come from: prior (N(0, I)) or gmm (a Gaussian mixture fitted to the training set's posterior means, Ghosh et al. 2020; fitted on first use and cached in the run)."),
) -> None:
    """Generate images from a trained run. Same seed, same images.

    Example: latentforge sample runs/dcgan --n 64 --seed 0 --out grid.png

    Conditional run: latentforge sample runs/cgan --class Sneaker --n 16 --out sneakers.png

    Under torchrun the seeds are shared out over the processes (same images as one process):
    torchrun --nproc-per-node 4 -m latentforge sample runs/dcgan --n 50000 --outdir fakes/

    Then upsampled: latentforge sample runs/dcgan32 --n 64 --out big.png --upsample runs/up64
    """
    from . import distributed
    from .explore import provenance
    from .images import save_grid, save_png
    from .sample import load
    from .train import resolve_device

    if out is None and outdir is None:
        raise UserError("give --out GRID.png or --outdir DIR")
    if n <= 0:
        raise UserError(f"--n must be positive, got {n}")
    dev = distributed.setup(resolve_device(device))
    m = load(run, device=str(dev), checkpoint=checkpoint)
    wanted = expand_classes(classes, n)
    labels = m.class_labels(n, wanted)  # None for an unconditional run (which refuses --class)
    up = None
    if upsample is not None:
        from .sample import load_upsampler

        up = load_upsampler(upsample, device=str(dev))
    mine, images = distributed.sample_sharded(m, n, seed, labels=labels, sampler=sampler, upsample=up)  # this process's share
    meta = provenance(m, sampler=sampler if sampler != "prior" else None, upsampler=upsample)
    names = [m.class_names[c] if m.class_names else str(c) for c in labels.tolist()] if labels is not None else None
    if out is not None:
        grid_classes = ",".join(dict.fromkeys(names)) if names else None
        everything = distributed.gather_rows(images)  # all n, in seed order
        if distributed.is_main():
            save_grid(everything, out, nrow=nrow, upscale=scale,
                      metadata={**meta, "seeds": f"{seed}-{seed + n - 1}", **({"classes": grid_classes} if names else {})})
            console.print(f"wrote {out} ({n} images, seeds {seed}-{seed + n - 1}"
                          f"{', classes ' + grid_classes if grid_classes else ''})", highlight=False)
    if outdir is not None:
        for i, img in zip(mine, images):  # each process writes its own share
            extra = {"class": names[i]} if names else {}
            save_png(img, Path(outdir) / f"seed{seed + i:06d}.png", metadata={**meta, "seed": seed + i, **extra})
        distributed.barrier()
        if distributed.is_main():
            console.print(f"wrote {n} images to {outdir}/", highlight=False)


def expand_classes(classes: Optional[list[str]], n: int) -> Optional[str | list[str]]:
    """--class values (repeated and/or comma-separated) -> one class for all n images, or a list
    of n cycling through them; None when --class was not given."""
    if not classes:
        return None
    flat = [c.strip() for value in classes for c in value.split(",") if c.strip()]
    if not flat:
        raise UserError("--class was given without a class name")
    return flat[0] if len(flat) == 1 else [flat[i % len(flat)] for i in range(n)]


@app.command()
def reconstruct(
    run: Path = typer.Argument(..., help="A VAE run directory."),
    data: str = typer.Option("fashion-mnist:test", help="Images to reconstruct (data spec)."),
    n: int = typer.Option(16, help="Number of images."),
    out: Path = typer.Option(Path("recon.png"), help="Output PNG: originals above, reconstructions below."),
    seed: int = typer.Option(0, help="Which images: a seeded choice from the data."),
    checkpoint: str = typer.Option("latest", help="latest or best."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Encode real images with a VAE and decode them again.

    Example: latentforge reconstruct runs/vae --data fashion-mnist:test --n 16 --out recon.png
    """
    import torch

    from .data import load_images
    from .explore import provenance
    from .images import save_grid
    from .sample import load

    m = load(run, device=device, checkpoint=checkpoint)
    if m.family != "vae":
        raise UserError(f"{run} is a {m.config.model} run; reconstruct needs a VAE run")
    d = load_images(data, res=m.resolution, channels=m.channels)
    if n <= 0 or n > len(d.images):
        raise UserError(f"--n must be between 1 and {len(d.images)}, got {n}")
    idx = torch.randperm(len(d.images), generator=torch.Generator().manual_seed(seed))[:n]
    originals = d.images[idx]
    if m.conditional and d.labels is None:
        raise UserError(f"{run} is a conditional VAE: it needs the images' classes, and {data} has no labels")
    recons = m.reconstruct(originals, classes=d.labels[idx] if m.conditional else None)
    row = min(n, 16)
    rows = []
    for i in range(0, n, row):  # alternate a row of originals and the row of their reconstructions
        rows += [originals[i : i + row], recons[i : i + row]]
    save_grid(torch.cat(rows), out, nrow=row, upscale=2,
              metadata=provenance(m, data=data, content="originals above, reconstructions below"))
    mse = ((originals.float() - recons.float()) / 255).pow(2).mean().item()
    console.print(f"wrote {out}: originals above, reconstructions below (pixel MSE {mse:.4f} on [0,1])", highlight=False)


# ------------------------------------------------------------------------------------ data


@data_app.command("info")
def data_info(
    data: str = typer.Argument(..., help="Built-in data set, folder or .npz."),
    res: Optional[int] = typer.Option(None, "--res", help="Resize/crop to this resolution."),
    channels: Optional[int] = typer.Option(None, help="1 or 3."),
    fit: str = typer.Option("crop", help=FIT_HELP),
    data_in_ram: Optional[bool] = typer.Option(None, "--data-in-ram/--data-on-disk", show_default=False, help=STORAGE_HELP),
    out: Path = typer.Option(Path("data_grid.png"), help="Where to write a grid of 64 images."),
) -> None:
    """Count, classes, resolution, and a sample grid of a data set.

    Example: latentforge data info fashion-mnist:test --out fmnist.png
    """
    import torch

    from .data import FIT_MODES, describe, load_images
    from .images import save_grid

    if fit not in FIT_MODES:
        raise UserError(f"--fit must be one of {', '.join(FIT_MODES)}, got {fit!r}")
    d = load_images(data, res=res, channels=channels, crop=FIT_MODES[fit], storage=_storage(data_in_ram) or "auto")
    info = describe(d)
    if d.on_disk:
        info["memmap"] = d.memmap_path
    for k, v in info.items():
        console.print(f"{k}: {v}", highlight=False)
    idx = torch.randperm(len(d.images), generator=torch.Generator().manual_seed(0))[:64]
    save_grid(d.images[idx], out, nrow=8, metadata={"data": d.name, "synthetic image": "false"})
    console.print(f"sample grid: {out}", highlight=False)


@data_app.command("cache")
def data_cache(
    folder: Path = typer.Argument(..., help="A folder of images (labels from first-level subfolders)."),
    res: Optional[int] = typer.Option(None, "--res", help="Resize/crop to this resolution (as train --res); default: native size."),
    channels: Optional[int] = typer.Option(None, help="1 or 3; default: the images' own."),
    fit: str = typer.Option("crop", help=FIT_HELP),
    workers: Optional[int] = typer.Option(None, min=0, help="Decoding processes; default: min(8, CPUs); 0 = this process only."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Build the on-disk (memory-mapped) cache of a folder ahead of training; an interrupted build
    continues where it stopped when run again.

    Example: latentforge data cache ~/photos --res 128 --fit crop
    """
    from .data import FIT_MODES
    from .data_memmap import build_folder_cache

    if fit not in FIT_MODES:
        raise UserError(f"--fit must be one of {', '.join(FIT_MODES)}, got {fit!r}")
    try:
        d = build_folder_cache(folder, res=res, channels=channels, crop=FIT_MODES[fit], workers=workers,
                               progress=not quiet)
    except KeyboardInterrupt:
        console.print("interrupted: the finished chunks are kept; run the same command again to continue", highlight=False)
        raise typer.Exit(130) from None
    size = Path(d.memmap_path or "").stat().st_size
    console.print(f"{len(d)} images {tuple(d.images.shape[1:])}, {len(d.skipped)} skipped, "
                  f"{d.num_classes} classes: {d.memmap_path} ({size / 2**20:.1f} MiB)", highlight=False)


@data_app.command("fetch")
def data_fetch(name: str = typer.Argument(..., help="Built-in data set name, e.g. mnist.")) -> None:
    """Download (or otherwise install) a built-in data set into the cache.

    Example: latentforge data fetch mnist
    """
    from .data import fetch

    path = fetch(name)
    console.print(f"{name}: ready in {path}", highlight=False)


# ------------------------------------------------------------------------------------ eval


@app.command("eval")
def eval_cmd(
    run: Optional[Path] = typer.Argument(None, help="Run directory to evaluate (or use --real/--fake)."),
    ref: Optional[str] = typer.Option(None, help="Reference data; default: the run's test split."),
    n: int = typer.Option(10000, help="Generated images (and at most this many reference images); for the VAE metrics, held-out images of --ref."),
    metrics: Optional[str] = typer.Option(None, help="Comma list of fid, kid, pr, memorization. Default: fid,kid,pr; none when --iwae-k, --recon or --binarize is given."),
    real: Optional[str] = typer.Option(None, help="With --fake: reference images (data spec or folder)."),
    fake: Optional[str] = typer.Option(None, help="With --real: generated images (folder or .npz)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
    seed: int = typer.Option(0, help="Seed of the generated images and of the reference subset."),
    floor: bool = typer.Option(False, "--floor", help="Also report real-vs-real FID/KID at the same n (the best reachable)."),
    checkpoint: str = typer.Option("latest", help="latest or best."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Runs trained with --ema-decay: score the moving average of the weights (G; a VAE's encoder and decoder) (default, what sample uses) or, with --no-ema, the raw weights."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    sampler: str = typer.Option("prior", help="VAE runs: latents of the generated images: prior or gmm (see `latentforge sample --help`)."),
    iwae_k: int = typer.Option(0, help="VAE runs: test log-likelihood by the importance-weighted bound with K samples per image (Burda et al. 2016), on --n held-out images of --ref; 0 = off."),
    recon: bool = typer.Option(False, "--recon", help="VAE runs: reconstruction MSE, PSNR and SSIM on --n held-out images of --ref."),
    binarize: bool = typer.Option(False, "--binarize", help="With --iwae-k on a bce run: binarize the test images (pixel on with probability x, fixed --seed), so the Bernoulli likelihood is a discrete one."),
) -> None:
    """FID, KID, precision/recall and memorization under a fixed, stated protocol; for VAE runs
    also active units, and on request the test log-likelihood and reconstruction metrics.

    Example: latentforge eval runs/dcgan --ref fashion-mnist:test --n 10000 --json eval.json

    Under torchrun the generation and the Inception features are shared out over the processes
    (same numbers as one process): torchrun --nproc-per-node 4 -m latentforge eval runs/dcgan --n 50000

    Example: latentforge eval runs/vae --iwae-k 100 --n 1000 --recon --json vae_eval.json
    """
    from . import distributed
    from .metrics.evaluate import default_extractor, evaluate, evaluate_sets, format_table
    from .train import resolve_device

    vae_only = bool(iwae_k or recon or binarize)
    if metrics is None:
        metrics = "" if vae_only else "fid,kid,pr"
    wanted = tuple(m.strip() for m in metrics.split(",") if m.strip())
    allowed = {"fid", "kid", "pr", "memorization"}
    bad = [m for m in wanted if m not in allowed]
    if bad or not (wanted or vae_only):
        raise UserError(f"unknown metric(s) {bad}; choose from {sorted(allowed)}")
    if run is None and (vae_only or sampler != "prior"):
        raise UserError("--iwae-k, --recon, --binarize and --sampler evaluate a VAE run: give RUN")
    if run is not None and (real or fake):
        raise UserError("give either RUN or --real and --fake, not both")
    if run is None and not (real and fake):
        raise UserError("give a RUN directory, or both --real and --fake")
    # Several processes: rank 0 computes the metrics, every feature extraction is shared out.
    dev = distributed.setup(resolve_device(device))
    extractor = lambda: default_extractor(str(dev))  # noqa: E731 - made on first use, in each process
    if run is None:
        from .data import load_images

        def on_sets(ext):  # type: ignore[no-untyped-def]
            # Both at their native size: evaluate_sets brings the fakes to the real images' resolution.
            real_data, fake_data = load_images(real), load_images(fake)
            mem_dir = (json_out.parent if json_out else Path(".")) if "memorization" in wanted else None
            return evaluate_sets(real_data.images, fake_data.images, metrics=wanted, seed=seed, n=n,
                                 real_name=real, fake_name=fake, memorization_dir=mem_dir, extractor=ext)

        result = distributed.evaluate_on_main(on_sets, extractor)
    else:
        from .sample import load
        from .train import default_eval_ref

        m = load(run, device=str(dev), checkpoint=checkpoint, ema=ema)
        if m.family != "vae" and (vae_only or sampler != "prior"):
            raise UserError(f"{run} is a {m.config.model} run; --iwae-k, --recon, --binarize and --sampler need a VAE run")
        ref = ref or default_eval_ref(m.config.data)
        result = {}
        labels = m.class_labels(n)  # conditional runs: image i asks for class i mod K; None otherwise
        if wanted:
            images = distributed.gather_rows(distributed.sample_sharded(m, n, seed, labels=labels, sampler=sampler)[1])
            mem_dir = (json_out.parent if json_out else run) if "memorization" in wanted else None
            result = distributed.evaluate_on_main(
                lambda ext: evaluate(images, ref, n=n, metrics=wanted, seed=seed, train_spec=m.config.data,
                                     memorization_dir=mem_dir, floor=floor, extractor=ext), extractor)
            if result is not None and m.family == "vae":
                from .samplers import describe_sampler

                result["protocol"]["sampler"] = describe_sampler(m, sampler)
        if not distributed.is_main():  # a process other than rank 0: it did its share
            return
        result["run"] = str(run)
        result["checkpoint"] = checkpoint
        if m.config.ema_decay > 0:
            result["generator" if m.family == "gan" else "weights"] = "ema" if m.ema else "raw"
        if wanted and labels is not None:  # is each image recognized as the class it asked for?
            from .metrics.classifier import class_accuracy, get_classifier

            clf = get_classifier(m.config.data, m.resolution, m.channels, progress=True)
            result["class_accuracy"] = class_accuracy(images[:n], labels, clf)
        if m.family == "vae" and (vae_only or not m.conditional):
            from .vae_tools import evaluate_vae_run

            result["vae"] = evaluate_vae_run(m, ref, n, seed, iwae_k=iwae_k, recon=recon, binarize_images=binarize)
    if result is None:  # a process other than rank 0: it did its share
        return
    if wanted:
        print(format_table(result))
    if "class_accuracy" in result:
        ca = result["class_accuracy"]
        print(f"class accuracy: {ca['accuracy']:.4f} of {ca['n']} images (chance {ca['chance']:.4f}; the judging "
              f"classifier scores {ca['classifier']['held_out_accuracy']:.4f} on held-out real images)")
    if "vae" in result:
        from .vae_tools import format_vae_table

        print(("\n" if wanted else "") + format_vae_table(result["vae"]))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_out}", highlight=False)


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run directories to compare."),
    out: Path = typer.Option(Path("report.html"), help="Output HTML file."),
) -> None:
    """One self-contained HTML page comparing runs: metrics table, curves, samples.

    Example: latentforge compare runs/vae runs/dcgan --out report.html
    """
    from .report import compare as make_report

    try:
        path = make_report(runs, out)
    except ValueError as e:
        raise UserError(str(e)) from None
    console.print(f"wrote {path}", highlight=False)


def _register_extensions() -> None:
    # Commands that live in their own modules (latent exploration, the web server).
    from .cli_classifier import register as register_classifier
    from .cli_explore import register as register_explore
    from .cli_serve import register as register_serve
    from .cli_upsample import register as register_upsample
    from .cli_vae import register as register_vae

    register_explore(app)
    register_serve(app)
    register_vae(app)
    register_upsample(app)
    register_classifier(app)


_register_extensions()

if __name__ == "__main__":  # pragma: no cover
    main()
