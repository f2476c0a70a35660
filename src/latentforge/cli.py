"""The `latentforge` command: argument handling only; each command calls the library.

User mistakes (bad flags, missing files, unknown data sets) end with one red line and exit
code 2, never a traceback. Bugs still show their traceback.
"""

from __future__ import annotations

import json
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

    errs: list[type[BaseException]] = [UserError, ConfigError, FileNotFoundError]
    try:
        from .data import DataError

        errs.append(DataError)
    except ImportError:  # pragma: no cover - data module always ships
        pass
    return tuple(errs)


def main() -> None:
    """Entry point: typer reports usage errors itself (exit 2); user errors raised by the
    library become one red line and exit code 2."""
    try:
        app()
    except _user_errors() as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)


# ------------------------------------------------------------------------------------ train


@app.command()
def train(
    model: Optional[str] = typer.Option(None, help="Model: vae or dcgan.  [default: dcgan]"),
    data: Optional[str] = typer.Option(None, help="Built-in data set (fashion-mnist, mnist[:train|:test]), a folder of images, or an .npz file.  [default: fashion-mnist:train]"),
    res: Optional[int] = typer.Option(None, "--res", help="Resolution in pixels: 28, 32, 64 or 128.  [default: 32]"),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps to train, in total (on --resume: how far to continue).  [default: 2000]"),
    out: Path = typer.Option(Path("runs/run"), help="Run directory to create (or to continue with --resume)."),
    batch_size: int = typer.Option(64, help="Images per step."),
    seed: int = typer.Option(0, help="Seed for weights, data order and noise."),
    max_minutes: float = typer.Option(0.0, help="Training-time budget in minutes (time spent in training steps, resumes included): stop with a checkpoint once reached; 0 = none."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint, with its own settings (only --steps may change)."),
    channels: Optional[int] = typer.Option(None, help="1 or 3 image channels; default: the data set's own."),
    z_dim: Optional[int] = typer.Option(None, help="Latent size; default 100 (dcgan) or 32 (vae)."),
    width: int = typer.Option(64, help="Base channel count of the networks."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate; default 2e-4 (GAN) or 1e-3 (VAE)."),
    beta: float = typer.Option(1.0, help="VAE: weight of the KL term (1 = ELBO, >1 = beta-VAE)."),
    recon_loss: str = typer.Option("bce", help="VAE likelihood: bce (Bernoulli) or mse (Gaussian, fixed sigma)."),
    sample_every: int = typer.Option(500, help="Steps between sample grids in RUN/samples/."),
    checkpoint_every: int = typer.Option(500, help="Steps between checkpoints."),
    log_every: int = typer.Option(50, help="Steps between lines of RUN/metrics.jsonl."),
    eval_every: int = typer.Option(0, help="Steps between in-training FID/KID evaluations (0 = off)."),
    eval_n: int = typer.Option(1000, help="Images per in-training evaluation."),
    eval_ref: Optional[str] = typer.Option(None, help="Reference data for evaluation; default: the test split."),
    loss: str = typer.Option("ns", help="GAN loss: ns (non-saturating, Goodfellow et al. 2014), hinge (Lim & Ye 2017; Miyato et al. 2018) or wgan (Arjovsky et al. 2017)."),
    gp_weight: float = typer.Option(0.0, help="WGAN-GP gradient penalty weight (Gulrajani et al. 2017 use 10); 0 = off."),
    r1_gamma: float = typer.Option(0.0, help="R1 penalty gamma on real data (Mescheder et al. 2018); 0 = off."),
    n_critic: int = typer.Option(1, help="Discriminator steps per generator step (Arjovsky et al. 2017 use 5); each takes the next data batch."),
    spectral_norm: bool = typer.Option(False, "--spectral-norm", help="Spectral normalization on every discriminator layer, no batch norm in D (Miyato et al. 2018)."),
    lr_d: Optional[float] = typer.Option(None, help="Discriminator learning rate, two time-scale update rule (Heusel et al. 2017); default: --lr."),
    ema_decay: float = typer.Option(0.0, help="Keep an exponential moving average of G's weights, used for sampling (Karras et al. 2018; Yazici et al. 2019), e.g. 0.999; 0 = off."),
    augment: str = typer.Option("", help="Differentiable augmentation of every image D sees (Zhao et al. 2020): comma-separated from color, translation, cutout; empty = off."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train a model; everything goes into the run directory --out.

    Example: latentforge train --model vae --data fashion-mnist --res 32 --steps 2000 --out runs/vae
    """
    from .config import TrainConfig, read_run_config
    from .train import train as run_training

    if resume:
        cfg, _ = read_run_config(out)  # the run's own settings; a user error if out holds no run
        for flag, given, saved in (("--model", model, cfg.model), ("--data", data, cfg.data), ("--res", res, cfg.resolution)):
            if given is not None and given != saved:
                raise UserError(f"--resume: {out} was trained with {flag} {saved}; it cannot change to {given}")
        if steps is not None:
            cfg.steps = steps
        if max_minutes:
            cfg.max_minutes = max_minutes
    else:
        cfg = TrainConfig(
            model="dcgan" if model is None else model, data="fashion-mnist:train" if data is None else data,
            out=str(out), resolution=32 if res is None else res, channels=channels,
            steps=2000 if steps is None else steps, batch_size=batch_size, lr=lr, seed=seed, z_dim=z_dim, width=width,
            max_minutes=max_minutes, recon_loss=recon_loss, beta=beta, log_every=log_every, sample_every=sample_every,
            checkpoint_every=checkpoint_every, eval_every=eval_every, eval_n=eval_n, eval_ref=eval_ref, device=device,
            loss=loss, gp_weight=gp_weight, r1_gamma=r1_gamma, n_critic=n_critic, spectral_norm=spectral_norm,
            lr_d=lr_d, ema_decay=ema_decay, augment=augment,
        )
    result = run_training(cfg, resume=resume, progress=not quiet, log=lambda m: console.print(m, highlight=False))
    samples = sorted((result.run_dir / "samples").glob("step_*.png"))
    console.print(f"run: {result.run_dir}  step {result.step}  ({result.elapsed:.0f} s of training)", highlight=False)
    if samples:
        console.print(f"latest samples: {samples[-1]}", highlight=False)
    if result.interrupted:
        raise typer.Exit(130)


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
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Generate images from a trained run. Same seed, same images.

    Example: latentforge sample runs/dcgan --n 64 --seed 0 --out grid.png
    """
    from .explore import provenance
    from .images import save_grid, save_png
    from .sample import load

    if out is None and outdir is None:
        raise UserError("give --out GRID.png or --outdir DIR")
    if n <= 0:
        raise UserError(f"--n must be positive, got {n}")
    m = load(run, device=device, checkpoint=checkpoint)
    images = m.sample_tensor(n, seed)
    meta = provenance(m)
    if out is not None:
        save_grid(images, out, nrow=nrow, upscale=scale, metadata={**meta, "seeds": f"{seed}-{seed + n - 1}"})
        console.print(f"wrote {out} ({n} images, seeds {seed}-{seed + n - 1})", highlight=False)
    if outdir is not None:
        for i, img in enumerate(images):
            save_png(img, Path(outdir) / f"seed{seed + i:06d}.png", metadata={**meta, "seed": seed + i})
        console.print(f"wrote {n} images to {outdir}/", highlight=False)


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
    recons = m.reconstruct(originals)
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
    out: Path = typer.Option(Path("data_grid.png"), help="Where to write a grid of 64 images."),
) -> None:
    """Count, classes, resolution, and a sample grid of a data set.

    Example: latentforge data info fashion-mnist:test --out fmnist.png
    """
    import torch

    from .data import describe, load_images
    from .images import save_grid

    d = load_images(data, res=res, channels=channels)
    info = describe(d)
    for k, v in info.items():
        console.print(f"{k}: {v}", highlight=False)
    idx = torch.randperm(len(d.images), generator=torch.Generator().manual_seed(0))[:64]
    save_grid(d.images[idx], out, nrow=8, metadata={"data": d.name, "synthetic image": "false"})
    console.print(f"sample grid: {out}", highlight=False)


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
    n: int = typer.Option(10000, help="Generated images (and at most this many reference images)."),
    metrics: str = typer.Option("fid,kid,pr", help="Comma list of fid, kid, pr, memorization."),
    real: Optional[str] = typer.Option(None, help="With --fake: reference images (data spec or folder)."),
    fake: Optional[str] = typer.Option(None, help="With --real: generated images (folder or .npz)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
    seed: int = typer.Option(0, help="Seed of the generated images and of the reference subset."),
    floor: bool = typer.Option(False, "--floor", help="Also report real-vs-real FID/KID at the same n (the best reachable)."),
    checkpoint: str = typer.Option("latest", help="latest or best."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """FID, KID, precision/recall and memorization under a fixed, stated protocol.

    Example: latentforge eval runs/dcgan --ref fashion-mnist:test --n 10000 --json eval.json
    """
    from .metrics.evaluate import evaluate, evaluate_sets, format_table

    wanted = tuple(m.strip() for m in metrics.split(",") if m.strip())
    allowed = {"fid", "kid", "pr", "memorization"}
    bad = [m for m in wanted if m not in allowed]
    if bad or not wanted:
        raise UserError(f"unknown metric(s) {bad}; choose from {sorted(allowed)}")
    if run is not None and (real or fake):
        raise UserError("give either RUN or --real and --fake, not both")
    if run is None:
        if not (real and fake):
            raise UserError("give a RUN directory, or both --real and --fake")
        from .data import load_images

        # Both at their native size: evaluate_sets brings the fakes to the real images' resolution.
        real_data, fake_data = load_images(real), load_images(fake)
        mem_dir = (json_out.parent if json_out else Path(".")) if "memorization" in wanted else None
        result = evaluate_sets(real_data.images, fake_data.images, metrics=wanted, seed=seed, n=n,
                               real_name=real, fake_name=fake, memorization_dir=mem_dir)
    else:
        from .sample import load
        from .train import default_eval_ref

        m = load(run, device=device, checkpoint=checkpoint)
        ref = ref or default_eval_ref(m.config.data)
        images = m.sample_tensor(n, seed)
        mem_dir = (json_out.parent if json_out else run) if "memorization" in wanted else None
        result = evaluate(images, ref, n=n, metrics=wanted, seed=seed, train_spec=m.config.data,
                          memorization_dir=mem_dir, floor=floor)
        result["run"] = str(run)
        result["checkpoint"] = checkpoint
    print(format_table(result))
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

    register_explore(app)
    register_serve(app)
    register_classifier(app)


_register_extensions()

if __name__ == "__main__":  # pragma: no cover
    main()
