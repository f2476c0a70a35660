"""CLI commands for VAE runs: `register(app)` adds them to a Typer app.

    fit-sampler RUN --k 10     fit (again) the Gaussian-mixture latent sampler of a VAE run and cache it

Argument handling only: the work is in latentforge.samplers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import typer


def fit_sampler(
    run: Path = typer.Argument(..., help="A VAE run directory."),
    k: int = typer.Option(10, help="Mixture components (Ghosh et al. 2020 use 10)."),
    n: int = typer.Option(10000, help="Training images whose posterior means are fitted (a seeded choice; at most all of them)."),
    seed: int = typer.Option(0, help="Seed of the image choice and of the k-means++ initialisation."),
    checkpoint: str = typer.Option("latest", help="latest or best: the weights to fit the sampler to."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Runs trained with --ema-decay: fit it to the moving average of the VAE (default, what sample and eval use) or, with --no-ema, to the raw weights."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Fit the gmm latent sampler of a VAE run (ex-post density estimation, Ghosh et al. 2020):
    a full-covariance Gaussian mixture on the posterior means of the training images, saved as
    gmm_sampler.safetensors + gmm_sampler.json beside the weights. `sample --sampler gmm` then uses it.

    Example: latentforge fit-sampler runs/vae --k 10
    """
    from .cli import UserError, console
    from .sample import load
    from .samplers import GMM_INFO, fit_sampler as fit, sampler_dir

    m = load(run, device=device, checkpoint=checkpoint, ema=ema)
    if m.family != "vae":
        raise UserError(f"{run} is a {m.config.model} run; fit-sampler needs a VAE run")
    fit(m, k=k, n=n, seed=seed, log=lambda msg: console.print(msg, highlight=False))
    console.print(f"wrote {sampler_dir(m) / GMM_INFO} and its .safetensors", highlight=False)


COMMANDS: dict[str, Callable[..., None]] = {"fit-sampler": fit_sampler}


def register(app: typer.Typer) -> None:
    """Add the commands above to `app`. Idempotent: a command name already registered is left alone."""
    have = {c.name or (c.callback.__name__ if c.callback else None) for c in app.registered_commands}
    for name, fn in COMMANDS.items():
        if name not in have:
            app.command(name)(fn)
