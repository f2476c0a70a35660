"""`latentforge upsample UPRUN`: a trained upsampler on real images, beside bicubic upsampling.

cli.py calls `register(app)`; everything heavy is imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def upsample(
    run: Path = typer.Argument(..., help="An upsampler run directory (trained with --model upsampler)."),
    data: str = typer.Option("fashion-mnist:test", help="Images (data spec): loaded at the upsampler's output size and area-downsampled to its input, unless --as-input."),
    n: int = typer.Option(16, help="Number of images."),
    seed: int = typer.Option(0, help="Which images (a seeded choice from the data); image i also uses noise seed + i."),
    out: Optional[Path] = typer.Option(None, help="Grid PNG: rows of low-res inputs, bicubic, upsampler, originals (with --as-input: inputs and upsampler)."),
    outdir: Optional[Path] = typer.Option(None, help="Write each upsampled image as a PNG into this folder."),
    as_input: bool = typer.Option(False, "--as-input", help="Treat --data as the low-res input: resize it to the upsampler's input size and upsample it (no originals to compare with)."),
    scale: int = typer.Option(2, min=1, max=16, help="Enlarge the grid by this factor (nearest neighbour)."),
    checkpoint: str = typer.Option("latest", help="latest or best."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Upsample real images with a trained upsampler; prints PSNR against bicubic.

    Example: latentforge upsample runs/up28 --data fashion-mnist:test --n 16 --out up.png
    """
    import torch

    from . import __version__
    from .cli import UserError, console
    from .data import load_images
    from .images import save_grid, save_png, to_float, to_uint8
    from .metrics.psnr import psnr
    from .models.upsampler import area_downsample, bicubic_upsample
    from .sample import load_upsampler

    if out is None and outdir is None:
        raise UserError("give --out GRID.png or --outdir DIR")
    up = load_upsampler(run, device=device, checkpoint=checkpoint)
    d = load_images(data, res=up.in_resolution if as_input else up.resolution, channels=up.channels)
    if n <= 0 or n > len(d.images):
        raise UserError(f"--n must be between 1 and {len(d.images)}, got {n}")
    idx = torch.randperm(len(d.images), generator=torch.Generator().manual_seed(seed))[:n]
    seeds = range(seed, seed + n)
    meta = {"latentforge": __version__, "model": "upsampler", "run": str(run), "data": data,
            "factor": up.factor, "synthetic image": "true"}
    if as_input:
        low = d.images[idx]
        result = up.upsample(low, seeds=seeds)
        rows = [to_uint8(torch.nn.functional.interpolate(to_float(low), scale_factor=up.factor)), result]
        content = "low-res inputs (nearest), upsampler"
    else:
        high = d.images[idx]
        low_f = area_downsample(to_float(high), up.factor)
        low = to_uint8(low_f)
        result = up.upsample(low, seeds=seeds)
        bicubic = to_uint8(bicubic_upsample(to_float(low), up.factor))
        rows = [to_uint8(torch.nn.functional.interpolate(to_float(low), scale_factor=up.factor)), bicubic, result, high]
        content = "low-res inputs (nearest), bicubic, upsampler, originals"
        console.print(f"PSNR vs the originals (mean over {n} images): bicubic {psnr(bicubic, high).mean():.2f} dB, "
                      f"upsampler {psnr(result, high).mean():.2f} dB", highlight=False)
    if out is not None:
        row = min(n, 16)
        grid = []
        for i in range(0, n, row):  # each row group: inputs, (bicubic), upsampler, (originals)
            grid += [r[i : i + row] for r in rows]
        save_grid(torch.cat(grid), out, nrow=row, upscale=scale, metadata={**meta, "content": content})
        console.print(f"wrote {out}: {content}", highlight=False)
    if outdir is not None:
        for i, img in enumerate(result):
            save_png(img, Path(outdir) / f"up{int(idx[i]):06d}.png", metadata={**meta, "index": int(idx[i])})
        console.print(f"wrote {n} upsampled images to {outdir}/", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("upsample")(upsample)
