"""CLI commands for exploring a run and generating fast: `register(app)` adds them to a Typer app.

    generate RUN --seeds 0-63 --out grid.png       one grid; or --outdir DIR for one PNG per seed (resumable)
    interpolate RUN --seeds 3,17,42 --out walk.gif  a looping latent walk (.gif, .png strip, .mp4)
    edit RUN --seed 5 --direction Sneaker-Sandal    latent arithmetic along a class direction (VAE)
    vary RUN --image x.png --out vary.png           variations of a real image (VAE)
    project RUN --image x.png --out proj.png        find a GAN latent for a real image
    info IMAGE.png                                  the provenance an image carries
    export RUN --format onnx --out g.onnx           standalone generator / decoder

Argument handling only: each command parses, calls latentforge.explore / latentforge.export,
and reports. Mistakes a user can fix raise latentforge.cli.UserError (one line, exit code 2).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

CHECKPOINT_HELP = "latest or best."
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps."


def _user_error(msg: str) -> Exception:
    from .cli import UserError  # imported late: cli.py imports this module to register the commands

    return UserError(msg)


@contextmanager
def _as_user_errors() -> Iterator[None]:
    """ValueErrors raised by the library for bad arguments -> UserError (one line, exit 2)."""
    try:
        yield
    except ValueError as e:
        from .config import ConfigError

        if isinstance(e, ConfigError):
            raise
        try:
            from .data import DataError

            if isinstance(e, DataError):
                raise
        except ImportError:  # pragma: no cover
            pass
        raise _user_error(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _say(msg: str) -> None:
    from .cli import console

    console.print(msg, highlight=False)


def _load(run: Path, checkpoint: str, device: str) -> Any:
    from .sample import load

    return load(run, device=device, checkpoint=checkpoint)


def _seeds(text: str) -> list[int]:
    from .explore import parse_seeds

    try:
        return parse_seeds(text)
    except ValueError as e:
        raise _user_error(f"--seeds: {e}") from None


def _strengths(text: str, steps: int) -> list[float]:
    """"-2..2" (with --steps k) or "-2,0,1.5" -> the strengths."""
    if steps < 1:
        raise _user_error(f"--steps must be at least 1, got {steps}")
    t = text.strip()
    try:
        if ".." in t:
            lo_s, hi_s = t.split("..", 1)
            lo, hi = float(lo_s), float(hi_s)
            if steps == 1:
                return [(lo + hi) / 2]
            return [lo + (hi - lo) * i / (steps - 1) for i in range(steps)]
        return [float(v) for v in t.split(",") if v.strip()]
    except ValueError:
        raise _user_error(f"--strength must be LOW..HIGH (e.g. -2..2) or a comma list (e.g. -1,0,1), got {text!r}") \
            from None


# ------------------------------------------------------------------------------------ commands


def generate(
    run: Path = typer.Argument(..., help="Run directory."),
    seeds: Optional[str] = typer.Option(None, help="Seeds, e.g. 0-63, 3,17,42 or 0-3,9."),
    n: Optional[int] = typer.Option(None, "--n", help="Instead of --seeds: N images from seeds --seed .. --seed + N - 1."),
    seed: int = typer.Option(0, help="First seed with --n."),
    truncation: float = typer.Option(1.0, help="GAN: truncation psi in [0, 1] (0 = the mean image). VAE: temperature."),
    out: Optional[Path] = typer.Option(None, help="Write one grid PNG here."),
    outdir: Optional[Path] = typer.Option(None, help="Write one seedNNNNNN.png per seed here; a re-run resumes."),
    nrow: int = typer.Option(8, help="Images per grid row."),
    batch_size: int = typer.Option(256, help="Images generated per batch."),
    workers: Optional[int] = typer.Option(None, help="--outdir: threads encoding PNGs (0 = none); default: the cores torch leaves free."),
    upscale: int = typer.Option(1, "--scale", help="--out: enlarge the grid this many times (nearest neighbour)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    checkpoint: str = typer.Option("latest", help=CHECKPOINT_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    classes: Optional[list[str]] = typer.Option(None, "--class", help="Conditional runs: the class (name or index) of the images; repeat or comma-separate several to cycle through them. Default: image i gets class i mod the number of classes."),
) -> None:
    """Generate images from seeds, with truncation: one grid (--out) or many files (--outdir, resumable).

    Example: latentforge generate runs/dcgan --seeds 0-63 --truncation 0.7 --out grid.png
    """
    from .cli import expand_classes
    from .explore import bulk_generate, format_seeds, generate_from_seeds, provenance
    from .images import save_grid

    if (out is None) == (outdir is None):
        raise _user_error("give exactly one of --out GRID.png or --outdir DIR")
    if (seeds is None) == (n is None):
        raise _user_error("give exactly one of --seeds (e.g. 0-63) or --n N")
    if n is not None and n <= 0:
        raise _user_error(f"--n must be positive, got {n}")
    if seed < 0:
        raise _user_error(f"--seed must be >= 0, got {seed}")
    if batch_size <= 0 or (workers is not None and workers < 0) or upscale < 1 or nrow < 1:
        raise _user_error("--batch-size, --nrow and --scale must be positive and --workers >= 0")
    seed_list = _seeds(seeds) if seeds is not None else list(range(seed, seed + (n or 0)))
    m = _load(run, checkpoint, device)
    wanted = expand_classes(classes, len(seed_list))
    with _as_user_errors():
        labels = m.class_labels(len(seed_list), wanted)  # refuses --class on an unconditional run
        if out is not None:
            if len(seed_list) > 4096:
                raise ValueError(f"{len(seed_list)} images are too many for one grid; use --outdir for bulk generation")
            images = generate_from_seeds(m, seed_list, truncation, batch_size=batch_size, classes=labels)
            shown = None if labels is None else ",".join(dict.fromkeys(
                m.class_names[c] if m.class_names else str(c) for c in labels.tolist()))
            save_grid(images, out, nrow=nrow, upscale=upscale,
                      metadata=provenance(m, seeds=format_seeds(seed_list), truncation=truncation, classes=shown))
            _say(f"wrote {out} ({len(seed_list)} images, seeds {format_seeds(seed_list)}, truncation {truncation:g})")
            return
        assert outdir is not None
        res = bulk_generate(m, None, outdir, batch_size=batch_size, truncation=truncation, progress=not quiet,
                            workers=workers, seeds=seed_list, classes=labels)
    _say(f"{outdir}: wrote {res.written} images ({res.images_per_s:.0f}/s), {res.skipped} already there, "
         f"{res.total} in all")


def interpolate(
    run: Path = typer.Argument(..., help="Run directory."),
    seeds: str = typer.Option(..., help="Seeds to visit in order, e.g. 3,17,42 (at least 2; exactly 4 with --grid)."),
    frames: int = typer.Option(48, help="Frames in all."),
    out: Path = typer.Option(Path("walk.gif"), help="Output: .gif (animated), .png (a strip of frames) or .mp4 (needs imageio-ffmpeg)."),
    mode: str = typer.Option("slerp", help="slerp (spherical, keeps latents typical) or lerp (straight line)."),
    loop: bool = typer.Option(True, "--loop/--no-loop", help="Return to the first seed at the end."),
    grid: int = typer.Option(0, help="Instead of a walk: a GRID x GRID PNG between 4 corner seeds (TL, TR, BL, BR)."),
    fps: float = typer.Option(24.0, help="Frames per second (.gif, .mp4)."),
    truncation: float = typer.Option(1.0, help="GAN: truncation psi in [0, 1]. VAE: temperature."),
    upscale: int = typer.Option(1, "--scale", help="Enlarge frames this many times (nearest neighbour)."),
    checkpoint: str = typer.Option("latest", help=CHECKPOINT_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Walk through the latent space from seed to seed: an animated GIF, a PNG strip, or an MP4.

    Example: latentforge interpolate runs/dcgan --seeds 3,17,42 --frames 48 --out walk.gif
    """
    from .explore import format_seeds, interpolation_grid, interpolation_path, provenance, write_animation
    from .images import save_grid

    seed_list = _seeds(seeds)
    if upscale < 1:
        raise _user_error(f"--scale must be >= 1, got {upscale}")
    if out.suffix.lower() not in (".gif", ".png", ".mp4"):
        raise _user_error(f"--out must end in .gif, .png or .mp4, got {out.name}")
    if grid and out.suffix.lower() != ".png":
        raise _user_error("--grid writes a PNG; give --out NAME.png")
    m = _load(run, checkpoint, device)
    meta = provenance(m, seeds=format_seeds(seed_list) if len(seed_list) > 1 else seed_list[0], truncation=truncation,
                      interpolation=mode)
    with _as_user_errors():
        if grid:
            images = interpolation_grid(m, seed_list, size=grid, mode=mode, truncation=truncation)
            save_grid(images, out, nrow=grid, upscale=upscale, metadata={**meta, "content": f"{grid}x{grid} grid "
                      "between corner seeds top-left, top-right, bottom-left, bottom-right"})
            _say(f"wrote {out} ({grid}x{grid} grid, {mode})")
            return
        images = interpolation_path(m, seed_list, frames=frames, mode=mode, loop=loop, truncation=truncation)
        write_animation(images, out, fps=fps, upscale=upscale, metadata={**meta, "frames": frames, "loop": loop})
    _say(f"wrote {out} ({frames} frames, {mode}, seeds {format_seeds(seed_list)}{', looping' if loop else ''})")


def edit(
    run: Path = typer.Argument(..., help="A VAE run directory (a GAN has no encoder to find class directions)."),
    seed: int = typer.Option(..., help="Seed of the image to edit."),
    direction: str = typer.Option(..., help="A-B: from class B toward class A, e.g. Sneaker-Sandal."),
    strength: str = typer.Option("-2..2", help="LOW..HIGH (with --steps) or a comma list of strengths."),
    steps: int = typer.Option(7, help="Images in the row with LOW..HIGH."),
    out: Path = typer.Option(Path("row.png"), help="Output PNG: one row, one image per strength."),
    data: Optional[str] = typer.Option(None, help="Labelled data for the class means; default: the run's own data."),
    truncation: float = typer.Option(1.0, help="Temperature (VAE) / truncation of the seed's latent."),
    upscale: int = typer.Option(1, "--scale", help="Enlarge the row this many times (nearest neighbour)."),
    checkpoint: str = typer.Option("latest", help=CHECKPOINT_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Latent arithmetic: move a seed's image along mean(class A) - mean(class B).

    Example: latentforge edit runs/vae --seed 5 --direction "Sneaker-Sandal" --strength -2..2 --steps 7 --out row.png
    """
    from .explore import edit_row, provenance
    from .explore import direction as class_direction
    from .images import save_grid

    s = _strengths(strength, steps)
    if not s:
        raise _user_error("--strength gave no strengths")
    if upscale < 1:
        raise _user_error(f"--scale must be >= 1, got {upscale}")
    m = _load(run, checkpoint, device)
    with _as_user_errors():
        d = class_direction(m, direction, data=data)
        row = edit_row(m, seed, d, strengths=s, truncation=truncation)
    save_grid(row, out, nrow=len(s), upscale=upscale,
              metadata=provenance(m, seed=seed, direction=direction, strengths=",".join(f"{v:.3g}" for v in s),
                                  truncation=truncation))
    _say(f"wrote {out}: seed {seed} along {direction!r} at strengths {', '.join(f'{v:.3g}' for v in s)}")


def vary(
    run: Path = typer.Argument(..., help="A VAE run directory."),
    image: Path = typer.Option(..., help="The real image (any size: resized and converted to the model's)."),
    n: int = typer.Option(16, help="Number of variations."),
    spread: float = typer.Option(1.0, help="z = mu + spread * sigma * eps: 0 = the reconstruction, 1 = the posterior."),
    seed: int = typer.Option(0, help="Seed of the noise eps."),
    out: Path = typer.Option(Path("vary.png"), help="Output PNG: the input first, then the variations."),
    nrow: int = typer.Option(8, help="Images per grid row."),
    upscale: int = typer.Option(1, "--scale", help="Enlarge the grid this many times (nearest neighbour)."),
    checkpoint: str = typer.Option("latest", help=CHECKPOINT_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Variations of a real image: encode, sample around its posterior, decode (VAE runs).

    Example: latentforge vary runs/vae --image shoe.png --n 16 --out vary.png
    """
    import torch

    from .explore import prepare_image, provenance
    from .explore import vary as make_variations
    from .images import save_grid

    if n <= 0 or nrow < 1 or upscale < 1:
        raise _user_error("--n, --nrow and --scale must be positive")
    m = _load(run, checkpoint, device)
    with _as_user_errors():
        x = prepare_image(m, image)
        images = make_variations(m, x, n=n, spread=spread, seed=seed)
    save_grid(torch.cat([x, images]), out, nrow=nrow, upscale=upscale,
              metadata={**provenance(m, seed=seed, source=image.name, spread=spread),
                        "content": "the input image first, then the variations"})
    _say(f"wrote {out}: {image.name} then {n} variations (spread {spread:g})")


def project(
    run: Path = typer.Argument(..., help="Run directory (meant for GANs; VAEs work too)."),
    image: Path = typer.Option(..., help="The real image to find a latent for."),
    steps: int = typer.Option(300, help="Optimization steps."),
    lr: float = typer.Option(0.05, help="Adam learning rate on z."),
    starts: int = typer.Option(16, help="Random seeds scored to pick the starting latent."),
    feature_weight: Optional[float] = typer.Option(None, help="Weight of the feature loss (0 = pixel MSE only); default: the library's."),
    seed: int = typer.Option(0, help="First seed of the starting candidates."),
    out: Path = typer.Option(Path("proj.png"), help="Output PNG: the target, then its projection."),
    upscale: int = typer.Option(1, "--scale", help="Enlarge the pair this many times (nearest neighbour)."),
    checkpoint: str = typer.Option("latest", help=CHECKPOINT_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Find the latent whose generated image best matches a real image; prints the reconstruction error.

    Example: latentforge project runs/dcgan --image shoe.png --steps 300 --out proj.png
    """
    import torch

    from .explore import prepare_image, provenance
    from .explore import project as run_projection
    from .images import save_grid

    if upscale < 1:
        raise _user_error(f"--scale must be >= 1, got {upscale}")
    m = _load(run, checkpoint, device)
    kw: dict[str, Any] = {} if feature_weight is None else {"feature_weight": feature_weight}
    with _as_user_errors():
        target = prepare_image(m, image)
        z, img, rep = run_projection(m, target, steps=steps, lr=lr, starts=starts, seed=seed, **kw)
    latent = ",".join(f"{v:.6g}" for v in z.flatten().tolist())
    save_grid(torch.cat([target, img]), out, nrow=2, upscale=upscale,
              metadata={**provenance(m, source=image.name, steps=steps, latent=latent,
                                     psnr=f"{rep['psnr']:.2f} dB"),
                        "content": "the target image, then its projection G(z)"})
    print(f"loss {rep['initial_loss']:.4g} -> {rep['final_loss']:.4g}   "
          f"MSE {rep['initial_mse']:.4g} -> {rep['mse']:.4g}   "
          f"PSNR {rep['initial_psnr']:.2f} -> {rep['psnr']:.2f} dB   "
          f"(start seed {rep['start_seed']}, {rep['steps']} steps, features: {rep['features']})")
    _say(f"wrote {out}: the target, then its projection (latent in the PNG metadata)")


def info(image: Path = typer.Argument(..., help="A PNG or GIF written by latentforge.")) -> None:
    """Show the provenance an image carries (model, run, seed, truncation, ...).

    Example: latentforge info grid.png
    """
    from .explore import read_info

    with _as_user_errors():
        meta = read_info(image)
    if not meta:
        _say(f"{image} carries no latentforge metadata")
        return
    width = max(len(k) for k in meta)
    for k, v in meta.items():
        print(f"{k:<{width}}  {v}")


def export(
    run: Path = typer.Argument(..., help="Run directory."),
    out: Path = typer.Option(..., help="Output file: NAME.onnx or NAME.pt (TorchScript); NAME.<ext>.json beside it."),
    format: Optional[str] = typer.Option(None, "--format", help="onnx or torchscript; default: from --out's suffix."),
    check: bool = typer.Option(True, "--check/--no-check", help="Run the exported file and compare with the model."),
    checkpoint: str = typer.Option("latest", help=CHECKPOINT_HELP),
) -> None:
    """Export the generator (GAN) or decoder (VAE): z (N, z_dim) -> images (N, C, H, W) in [-1, 1].

    Example: latentforge export runs/dcgan --format onnx --out dcgan.onnx
    """
    from .export import export as run_export

    m = _load(run, checkpoint, "cpu")
    with _as_user_errors():
        meta = run_export(m, out, format=format, check=check)
    diff = meta["check"]["max_abs_diff"] if meta["check"] else None
    checked = f"checked: max abs diff {diff:.2g}" if diff is not None else "not checked"
    _say(f"wrote {out} ({meta['format']}, z_dim {meta['z_dim']} -> {meta['channels']}x{meta['resolution']}x"
         f"{meta['resolution']}, {checked}) and {meta['metadata_path']}")


COMMANDS: dict[str, Callable[..., None]] = {
    "generate": generate, "interpolate": interpolate, "edit": edit, "vary": vary, "project": project,
    "info": info, "export": export,
}


def register(app: typer.Typer) -> None:
    """Add the commands above to `app`. Idempotent: a command name already registered is left alone."""
    have = {c.name or (c.callback.__name__ if c.callback else None) for c in app.registered_commands}
    for name, fn in COMMANDS.items():
        if name not in have:
            app.command(name)(fn)
