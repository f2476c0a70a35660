"""Exploring a trained model's latent space, and generating images fast.

    m = latentforge.load("runs/dcgan")
    seeds = parse_seeds("0-3,9")                          # [0, 1, 2, 3, 9]
    x = generate_from_seeds(m, seeds, truncation=0.7)     # uint8 (5, C, H, W)
    frames = interpolation_path(m, [3, 17, 42], frames=48)  # a looping walk, slerp between seeds
    write_animation(frames, "walk.gif", metadata=provenance(m, seeds="3,17,42"))
    bulk_generate(m, 50_000, "fakes/")                    # seed000000.png ...; resumable

What each part does, and the choices behind it:

Seeds. Seed s always gives the same latent z_s ~ N(0, I) (`train.latents_for_seeds`), whatever
else is in the batch, so every image here is named by its seed and can be made again.

Truncation (GANs). z <- psi * z with psi in [0, 1]. A DCGAN's prior is N(0, I), whose mean is
exactly z = 0, so psi pulls every latent toward the mean latent: psi = 1 is the untouched
prior, psi = 0 gives the single "mean image" G(0) for every seed, values in between trade
diversity for typicality (Brock et al., "BigGAN", 2019, section 3.1; Karras et al.,
"StyleGAN", 2019, appendix B, which truncates toward an estimated mean in its w space; here the
mean is known, no estimate is needed).
Temperature (VAEs). The same knob under its VAE name: z <- t * z with t >= 0 (t > 1 allowed),
i.e. sampling from N(0, t^2 I) instead of the prior. Every function that takes `truncation`
treats it as the temperature when the model is a VAE.

Interpolation. Gaussian latents in d dimensions concentrate near the sphere of radius sqrt(d);
the straight line between two of them passes much closer to the origin (its midpoint has
norm ~ sqrt(d / 2) for independent draws), where the generator has rarely been trained. Spherical
interpolation (`slerp`, Shoemake 1985; proposed for generative models by White, "Sampling
Generative Networks", 2016) keeps the norm near the endpoints' norms. `lerp` is provided for
comparison.

Latent arithmetic. A class direction is mean(latents of class A) - mean(latents of class B).
It needs a latent for every labelled image, i.e. an encoder:
- VAE: the encoder's posterior means mu(x) over the run's own labelled training data (at most
  `max_per_class` images per class, a standard error of about sigma / sqrt(1000)).
- GAN: a DCGAN has no encoder (a class-conditional GAN, trained with --conditional, takes the
  class as an input instead: `Model.sample(..., classes=...)`). Projecting images
  into the latent space (`project`) works image by image, but costs hundreds of generator
  forward/backward passes per image and recovers each image only approximately, so averaging
  projections into class means is slow and unreliable; `direction` therefore refuses a GAN run
  with an explanation, instead of returning a direction of unknown quality. If you want to try
  anyway, project your own images and pass `means={"A": z_a.mean(0), "B": z_b.mean(0)}`.

Real images in.
- `vary` (VAEs): encode -> z = mu + spread * sigma * eps -> decode: images the model considers
  plausible variants of the input (spread = 1 samples the posterior itself).
- `project` (any model, meant for GANs): optimize z to reproduce the image. Loss = pixel MSE +
  `feature_weight` * a feature distance. The features are the GAN's own discriminator
  activations (the output of every LeakyReLU of D, loaded from the run's model.safetensors
  under "D."): they were trained on exactly this data and resolution, unlike an ImageNet
  network at 28 or 32 px. When the run stores no discriminator (a VAE), a fixed, seeded random
  conv pyramid is used instead (random conv features still measure local structure; Ulyanov
  et al., "Deep Image Prior", 2018). Each layer's distance is divided by the target's feature
  energy, so layers weigh alike whatever their scale.

Provenance. Every PNG written here carries text chunks (`provenance`): package version, model,
run, seed(s), truncation, class or direction when there is one, and "synthetic image": "true".
GIFs carry the same as JSON in the GIF comment. `read_info(path)` reads either back.

Bulk generation. `bulk_generate` writes seedNNNNNN.png files one batch at a time (memory is
bounded by two batches), each written to NAME.tmp and renamed, so a file either exists whole or
not at all. A re-run lists the folder, generates only the missing seeds (an image depends only
on its seed, so they are the same images) and never touches the files already there.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .images import make_grid, read_png_metadata, save_png, to_float, to_uint8

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .sample import Model

__all__ = [
    "parse_seeds", "format_seeds", "check_truncation", "generate_from_seeds",
    "lerp", "slerp", "interpolation_latents", "interpolation_path", "interpolation_grid", "write_animation",
    "class_means", "direction", "edit_row",
    "prepare_image", "vary", "project",
    "provenance", "read_info",
    "BulkResult", "bulk_generate", "default_workers", "seed_filename",
]

MAX_SEEDS = 10_000_000  # parse_seeds refuses more: a typo like 0-99999999999 should not eat the memory
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes seeds up to 2**64 - 1; keep them signed-safe


# ------------------------------------------------------------------------------------ seeds


def parse_seeds(text: str | int | Iterable[int], limit: int = MAX_SEEDS) -> list[int]:
    """"0-63" | "3,17,42" | "0-3,9" -> a list of seeds, in the order written (ranges inclusive).

    Seeds are integers 0 .. 2**63 - 1. Repeats are kept ("3,17,3" walks back to 3). Raises
    ValueError with the offending part for anything else: empty parts, non-integers, negative
    numbers, reversed ranges ("9-3"), or more than `limit` seeds in all.
    """
    if isinstance(text, bool):
        raise ValueError(f"seeds must be text like '0-63' or '3,17,42', got {text!r}")
    if isinstance(text, int):
        text = str(text)
    if not isinstance(text, str):
        seeds = [int(s) for s in text]
        for s in seeds:
            if not 0 <= s <= MAX_SEED:
                raise ValueError(f"seed {s} is out of range; seeds are integers 0 .. {MAX_SEED}")
        return seeds
    spec = text.strip()
    if not spec:
        raise ValueError("no seeds given; write them like '0-63', '3,17,42' or '0-3,9'")
    out: list[int] = []
    for part in spec.split(","):
        p = part.strip()
        if not p:
            raise ValueError(f"empty item in seeds {text!r}; write them like '0-63', '3,17,42' or '0-3,9'")
        lo_s, dash, hi_s = p.partition("-")
        try:
            lo = _seed_int(lo_s)
            hi = _seed_int(hi_s) if dash else lo
        except ValueError:
            raise ValueError(f"bad seed {p!r} in {text!r}: seeds are integers 0 .. {MAX_SEED}, "
                             f"ranges are written FIRST-LAST (inclusive), e.g. '0-63' or '0-3,9'") from None
        if hi < lo:
            raise ValueError(f"reversed range {p!r} in seeds {text!r}; write it as {hi}-{lo}")
        if len(out) + (hi - lo + 1) > limit:
            raise ValueError(f"seeds {text!r} name more than {limit:,} seeds")
        out.extend(range(lo, hi + 1))
    return out


def _seed_int(s: str) -> int:
    s = s.strip()
    if not s.isdigit():  # no signs, no decimals, no spaces inside
        raise ValueError(s)
    v = int(s)
    if v > MAX_SEED:
        raise ValueError(s)
    return v


def format_seeds(seeds: Sequence[int]) -> str:
    """The inverse of parse_seeds, compacted: [0, 1, 2, 3, 9] -> "0-3,9"."""
    parts: list[str] = []
    i = 0
    seeds = list(seeds)
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if j == i else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)


# ------------------------------------------------------------------------------------ generation


def check_truncation(model: "Model", truncation: float) -> float:
    """Validate the truncation psi (GAN: 0 <= psi <= 1) or temperature (VAE: t >= 0)."""
    t = float(truncation)
    if not math.isfinite(t) or t < 0:
        what = "truncation" if model.family == "gan" else "temperature"
        raise ValueError(f"{what} must be a finite number >= 0, got {truncation}")
    if model.family == "gan" and t > 1:
        raise ValueError(f"truncation must lie in [0, 1] (1 = no truncation, 0 = the mean image), got {truncation}")
    return t


def seed_latents(model: "Model", seeds: Sequence[int], truncation: float = 1.0) -> torch.Tensor:
    """(len(seeds), z_dim) latents of the seeds, scaled by the truncation / temperature."""
    t = check_truncation(model, truncation)
    z = model.latents(list(seeds))
    return z if t == 1.0 else z * t


def generate_from_seeds(model: "Model", seeds: Sequence[int] | str, truncation: float = 1.0,
                        batch_size: int = 256, classes: Any = None) -> torch.Tensor:
    """uint8 (N, C, H, W) images, image i from seeds[i]: G(psi * z_seed) for a GAN,
    decode(t * z_seed) for a VAE (`truncation` is the VAE's temperature). With truncation 1 this
    is exactly `model.sample_tensor` for the same seeds. Conditional models: image i gets class
    `model.class_labels(len(seeds), classes)[i]` (one name/index, one per seed, or None to cycle)."""
    seeds = parse_seeds(seeds) if isinstance(seeds, str) else list(seeds)
    if not seeds:
        raise ValueError("no seeds given")
    check_truncation(model, truncation)
    labels = model.class_labels(len(seeds), classes)  # None when unconditional
    out = [to_uint8(model.generate(seed_latents(model, seeds[i:i + batch_size], truncation),
                                   None if labels is None else labels[i:i + batch_size])).cpu()
           for i in range(0, len(seeds), batch_size)]
    return torch.cat(out)


# ------------------------------------------------------------------------------------ interpolation


def _as_t(t: float | Sequence[float] | torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """t -> a float64 column (T, 1) and whether t was a scalar."""
    tt = torch.as_tensor(t, dtype=torch.float64, device=like.device)
    scalar = tt.ndim == 0
    return tt.reshape(-1, 1), scalar


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Linear interpolation (1 - t) z0 + t z1 of two latents (d,). t scalar -> (d,); t of length
    T -> (T, d)."""
    if z0.shape != z1.shape or z0.ndim != 1:
        raise ValueError(f"lerp needs two latents of the same shape (d,), got {tuple(z0.shape)} and {tuple(z1.shape)}")
    tt, scalar = _as_t(t, z0)
    a, b = z0.double()[None], z1.double()[None]
    out = (a + (b - a) * tt).to(z0.dtype)
    return out[0] if scalar else out


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: float | Sequence[float] | torch.Tensor,
          eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation of two latents (d,) (Shoemake 1985):

        omega = angle(z0, z1),  slerp = sin((1 - t) omega) / sin(omega) z0 + sin(t omega) / sin(omega) z1

    It moves along the great circle through z0 and z1 at constant angular speed; for endpoints
    of equal norm the norm stays exactly that, and for Gaussian latents (nearly orthogonal,
    norms ~ sqrt(d)) it stays between the endpoints' norms, where lerp dips toward the origin.
    When sin(omega) < eps (z0, z1 nearly parallel or opposite: the great circle is ill-defined)
    it falls back to lerp. t scalar -> (d,); t of length T -> (T, d). Computed in float64.
    """
    if z0.shape != z1.shape or z0.ndim != 1:
        raise ValueError(f"slerp needs two latents of the same shape (d,), got {tuple(z0.shape)} and {tuple(z1.shape)}")
    a, b = z0.double(), z1.double()
    na, nb = a.norm(), b.norm()
    if float(na) == 0.0 or float(nb) == 0.0:
        return lerp(z0, z1, t)
    cos = torch.clamp((a / na) @ (b / nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    so = torch.sin(omega)
    if float(so) < eps:
        return lerp(z0, z1, t)
    tt, scalar = _as_t(t, z0)
    out = (torch.sin((1.0 - tt) * omega) / so) * a[None] + (torch.sin(tt * omega) / so) * b[None]
    out = out.to(z0.dtype)
    return out[0] if scalar else out


_MODES: dict[str, Callable[..., torch.Tensor]] = {"slerp": slerp, "lerp": lerp}


def _interp_fn(mode: str) -> Callable[..., torch.Tensor]:
    if mode not in _MODES:
        raise ValueError(f"unknown interpolation mode {mode!r}; choose slerp or lerp")
    return _MODES[mode]


def interpolation_latents(keys: torch.Tensor, frames: int, mode: str = "slerp", loop: bool = True) -> torch.Tensor:
    """Latents (frames, d) of a walk through the key latents `keys` (K, d), in order.

    loop=True: K segments (the last one returns to keys[0]); frame j sits at position
    j * K / frames along the walk, so frame 0 is keys[0] and the last frame stops just short of
    keys[0] again: played in a loop there is no repeated frame. loop=False: K - 1 segments,
    frame j at j * (K - 1) / (frames - 1): the first frame is keys[0], the last keys[-1].
    Key k is hit exactly whenever frames is a multiple of the number of segments.
    """
    fn = _interp_fn(mode)
    if keys.ndim != 2 or keys.shape[0] < 2:
        raise ValueError(f"interpolation needs at least 2 key latents (K, d), got shape {tuple(keys.shape)}")
    if frames < 2:
        raise ValueError(f"frames must be at least 2, got {frames}")
    k = keys.shape[0]
    segs = k if loop else k - 1
    pos = torch.arange(frames, dtype=torch.float64) * (segs / frames if loop else segs / (frames - 1))
    out = torch.empty(frames, keys.shape[1], dtype=keys.dtype, device=keys.device)
    for j, u in enumerate(pos.tolist()):
        s = min(int(math.floor(u + 1e-9)), segs - 1)
        t = min(max(u - s, 0.0), 1.0)
        a, b = keys[s], keys[(s + 1) % k]
        out[j] = a if t == 0.0 else (b if t == 1.0 else fn(a, b, t))
    return out


def interpolation_path(model: "Model", seeds: Sequence[int] | str, frames: int = 48, mode: str = "slerp",
                       loop: bool = True, truncation: float = 1.0, batch_size: int = 256) -> torch.Tensor:
    """uint8 (frames, C, H, W): a walk through the seeds' latents in order (and back to the
    first when `loop`); see `interpolation_latents` for where each frame sits."""
    seeds = parse_seeds(seeds) if isinstance(seeds, str) else list(seeds)
    if len(seeds) < 2:
        raise ValueError(f"interpolation needs at least 2 seeds, got {len(seeds)}")
    z = interpolation_latents(seed_latents(model, seeds, truncation).cpu(), frames, mode, loop)
    return _generate_latents(model, z, batch_size)


def interpolation_grid(model: "Model", corners: Sequence[int] | str, size: int = 8, mode: str = "slerp",
                       truncation: float = 1.0) -> torch.Tensor:
    """uint8 (size * size, C, H, W), row-major: a 2D interpolation between 4 corner seeds given
    as top-left, top-right, bottom-left, bottom-right. Each row interpolates between the left
    and right edges, which themselves interpolate top to bottom (bilinear for lerp, the
    spherical analogue for slerp). Tile with `make_grid(x, nrow=size)`."""
    corners = parse_seeds(corners) if isinstance(corners, str) else list(corners)
    if len(corners) != 4:
        raise ValueError(f"a 2D interpolation grid needs exactly 4 corner seeds "
                         f"(top-left, top-right, bottom-left, bottom-right), got {len(corners)}")
    if size < 2:
        raise ValueError(f"grid size must be at least 2, got {size}")
    fn = _interp_fn(mode)
    tl, tr, bl, br = seed_latents(model, corners, truncation).cpu()
    ts = torch.linspace(0, 1, size, dtype=torch.float64)
    left, right = fn(tl, bl, ts), fn(tr, br, ts)  # (size, d) each, top to bottom
    z = torch.cat([fn(left[r], right[r], ts) for r in range(size)])  # (size * size, d)
    return _generate_latents(model, z, 256)


def _generate_latents(model: "Model", z: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([to_uint8(model.generate(z[i:i + batch_size])).cpu() for i in range(0, len(z), batch_size)])


# ------------------------------------------------------------------------------------ writers


def write_animation(frames_u8: torch.Tensor, path: str | os.PathLike, fps: float = 24.0,
                    metadata: Mapping[str, object] | None = None, upscale: int = 1, nrow: int | None = None) -> Path:
    """Write frames uint8 (F, C, H, W) by the file's suffix, atomically:

    .gif  animated, looping forever, `metadata` as JSON in the GIF comment (Pillow);
    .png  all frames tiled into one grid strip (one row up to 16 frames; `nrow` to choose),
          `metadata` as PNG text chunks;
    .mp4  H.264 through imageio-ffmpeg, only when that package is installed.
    """
    path = Path(path)
    if frames_u8.dtype != torch.uint8 or frames_u8.ndim != 4:
        raise ValueError(f"frames must be uint8 (F, C, H, W), got {frames_u8.dtype} {tuple(frames_u8.shape)}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if upscale < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    suffix = path.suffix.lower()
    if suffix == ".png":
        n = len(frames_u8)
        grid = make_grid(frames_u8, nrow=nrow or (n if n <= 16 else 12))
        return save_png(grid, path, metadata=metadata, upscale=upscale)
    if suffix == ".gif":
        return _write_gif(frames_u8, path, fps, metadata, upscale)
    if suffix == ".mp4":
        return _write_mp4(frames_u8, path, fps, metadata, upscale)
    raise ValueError(f"cannot write {path.name}: use a .gif, .png (a grid strip) or .mp4 file name")


def _pil_frames(frames_u8: torch.Tensor, upscale: int) -> list["Image.Image"]:
    from PIL import Image

    from .images import to_pil

    out = []
    for f in frames_u8:
        img = to_pil(f)
        if upscale > 1:
            img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
        out.append(img)
    return out


def _write_gif(frames_u8: torch.Tensor, path: Path, fps: float, metadata: Mapping[str, object] | None,
               upscale: int) -> Path:
    imgs = _pil_frames(frames_u8, upscale)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    comment = json.dumps({str(k): str(v) for k, v in (metadata or {}).items()}, sort_keys=True).encode("utf-8")
    imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=max(1, round(1000 / fps)),
                 loop=0, comment=comment, optimize=False)
    os.replace(tmp, path)
    return path


def _write_mp4(frames_u8: torch.Tensor, path: Path, fps: float, metadata: Mapping[str, object] | None,
               upscale: int) -> Path:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ValueError(f"writing {path.name} needs the imageio-ffmpeg package (pip install imageio-ffmpeg); "
                         f"or write a .gif instead") from None
    x = frames_u8
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if upscale > 1:
        x = x.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    # H.264 in yuv420p needs even sides: replicate the last row / column when odd
    if x.shape[2] % 2:
        x = torch.cat([x, x[:, :, -1:]], dim=2)
    if x.shape[3] % 2:
        x = torch.cat([x, x[:, :, :, -1:]], dim=3)
    arr = x.permute(0, 2, 3, 1).contiguous().numpy()  # (F, H, W, 3)
    h, w = arr.shape[1:3]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.mp4")
    comment = json.dumps({str(k): str(v) for k, v in (metadata or {}).items()}, sort_keys=True)
    writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                         pix_fmt_out="yuv420p", macro_block_size=1,
                                         output_params=["-metadata", f"comment={comment}"])
    writer.send(None)  # start the generator
    for frame in arr:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------ provenance


def provenance(model: "Model", **extra: Any) -> dict[str, str]:
    """Text metadata for an image made by `model`: latentforge version, model, run, checkpoint,
    "synthetic image": "true", plus every keyword given (seed, seeds, class, truncation, ...),
    as strings ("_" in a keyword becomes a space). Keywords whose value is None are left out
    (an unconditional GAN image has no class). For a VAE "truncation" is the temperature.
    Write it with `images.save_png(..., metadata=...)`; read it with `read_info`."""
    from . import __version__

    info = {"latentforge": __version__, "model": model.config.model, "run": str(model.run_dir),
            "checkpoint": model.checkpoint}
    for k, v in extra.items():
        if v is not None:
            info[str(k).replace("_", " ")] = str(v)
    info["synthetic image"] = "true"
    return info


def read_info(path: str | os.PathLike) -> dict[str, str]:
    """The provenance metadata of a PNG (its text chunks) or a GIF (the JSON in its comment);
    {} when the file carries none."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with Image.open(path) as img:
        fmt = img.format
        comment = img.info.get("comment")
    if fmt == "PNG":
        return read_png_metadata(path)
    if fmt == "GIF":
        if not comment:
            return {}
        text = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else str(comment)
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return {"comment": text}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {"comment": text}
    raise ValueError(f"{path.name} is a {fmt} file; provenance is read from PNG and GIF files")


# ------------------------------------------------------------------------------------ latent arithmetic


def class_means(model: "Model", data: str | None = None, max_per_class: int = 1000,
                batch_size: int = 256) -> dict[str, torch.Tensor]:
    """{class name: mean posterior mean mu(x) over that class's images} for a VAE, from the run's
    own training data (or `data`, any spec `load_images` takes), using the first
    `max_per_class` images of each class. A GAN has no encoder: see the module docstring."""
    if model.family != "vae":
        raise ValueError(
            f"{model.config.model} has no encoder, so its latent space has no class directions from labels: "
            "train a VAE on the same data for latent arithmetic (or a --conditional GAN to pick classes); "
            "`project` finds one image's latent, and you may pass your own means=")
    from .data import load_images

    spec = data or model.config.data
    d = load_images(spec, res=model.resolution, channels=model.channels, progress=False)
    if d.labels is None or not d.class_names:
        raise ValueError(f"{spec} has no labels; class directions need labelled data (a built-in data set, "
                         "a folder with one subfolder per class, or an .npz with labels)")
    means: dict[str, torch.Tensor] = {}
    for c, name in enumerate(d.class_names):
        idx = (d.labels == c).nonzero().flatten()[:max_per_class]
        if len(idx) == 0:
            continue
        mus = [model.encode(d.images[idx[i:i + batch_size]])[0].cpu() for i in range(0, len(idx), batch_size)]
        means[name] = torch.cat(mus).mean(0)
    return means


def parse_direction(spec: str, class_names: Sequence[str]) -> tuple[str, str | None]:
    """"A-B" -> (A, B), "A" -> (A, None); names matched exactly, else case-insensitively. Class
    names may contain "-" ("T-shirt/top-Sneaker" works): the one split where both sides are
    class names wins. ValueError (listing the classes) when no split, or more than one, fits."""
    names = list(class_names)
    listing = ", ".join(repr(n) for n in names)

    def find(s: str) -> str | None:
        s = s.strip()
        if s in names:
            return s
        low = [n for n in names if n.lower() == s.lower()]
        return low[0] if len(low) == 1 else None

    spec = spec.strip()
    if not spec:
        raise ValueError(f"empty direction; write it as 'A-B' with classes from: {listing}")
    whole = find(spec)
    splits = []
    for i, ch in enumerate(spec):
        if ch == "-":
            a, b = find(spec[:i]), find(spec[i + 1:])
            if a is not None and b is not None:
                splits.append((a, b))
    if len(splits) == 1 and whole is None:
        return splits[0]
    if whole is not None and not splits:
        return whole, None
    if len(splits) + (whole is not None) > 1:
        raise ValueError(f"direction {spec!r} can be read more than one way; classes: {listing}")
    raise ValueError(f"direction {spec!r} is not 'A-B' with A and B class names of this model; classes: {listing}")


def direction(model: "Model", spec: str, means: Mapping[str, torch.Tensor] | None = None, data: str | None = None,
              max_per_class: int = 1000) -> torch.Tensor:
    """A latent direction (z_dim,) from class names: "A-B" -> mean(A) - mean(B); a single class
    "A" -> mean(A) - the mean over all classes. Strength 1 along it moves a latent by the full
    distance between the two class means. `means` (from `class_means`, or your own) skips the
    encoding pass."""
    names = list(means) if means is not None else model.class_names
    if not names:
        raise ValueError(f"{model.run_dir} has no class names (its data was unlabelled); directions need classes")
    a, b = parse_direction(spec, names)  # parse first: a typo fails before any encoding
    if means is None:
        means = class_means(model, data=data, max_per_class=max_per_class)
    for name in (a, b):
        if name is not None and name not in means:
            raise ValueError(f"class {name!r} has no images in the data; classes with images: {', '.join(means)}")
    ref = means[b] if b is not None else torch.stack(list(means.values())).mean(0)
    return (means[a] - ref).float()


_class_direction = direction  # edit_row's parameter `direction` shadows the function


def edit_row(model: "Model", seed: int, direction: torch.Tensor | str,
             strengths: Sequence[float] | torch.Tensor | None = None, truncation: float = 1.0,
             **direction_kw: Any) -> torch.Tensor:
    """uint8 (k, C, H, W): the image of `seed` moved along `direction` (a (z_dim,) tensor or an
    "A-B" class spec) by each strength: z = z_seed * truncation + s * direction. Default
    strengths: linspace(-2, 2, 7)."""
    d = _class_direction(model, direction, **direction_kw) if isinstance(direction, str) else direction
    d = d.to(torch.float32).flatten()
    if d.numel() != model.z_dim:
        raise ValueError(f"direction has {d.numel()} entries, the model's z_dim is {model.z_dim}")
    s = torch.linspace(-2, 2, 7) if strengths is None else torch.as_tensor(strengths, dtype=torch.float32).flatten()
    if s.numel() == 0:
        raise ValueError("no strengths given")
    z = seed_latents(model, [int(seed)], truncation).cpu() + s[:, None] * d[None]
    return _generate_latents(model, z, 256)


# ------------------------------------------------------------------------------------ real images in


def prepare_image(model: "Model", image: Any) -> torch.Tensor:
    """Any image -> uint8 (1, C, res, res) at the model's resolution and channels.

    Accepts a file path, a PIL image, a numpy array (H, W) / (H, W, C) uint8, or a uint8 tensor
    (C, H, W) / (1, C, H, W). Decoding, EXIF rotation, transparency (on white), grayscale/RGB
    conversion and the resize (shorter side LANCZOS to res, then center crop) are latentforge.data's
    own, so a file goes through exactly what training images went through.
    """
    from PIL import Image

    from . import data as lfdata

    res, ch = model.resolution, model.channels
    if isinstance(image, (str, os.PathLike)):
        p = Path(image)
        if not p.is_file():
            raise FileNotFoundError(f"no such image file: {p}")
        try:
            arr = lfdata.decode_image(p, res, ch)  # (res, res, C)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read {p} as an image: {e}") from None
        return torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].contiguous()  # np.array: a writable copy
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dtype != torch.uint8:
            raise ValueError(f"image tensors must be uint8, got {t.dtype} (convert with images.to_uint8)")
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
            raise ValueError(f"image tensor must be (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
        if tuple(t.shape) == (ch, res, res):
            return t[None].contiguous()
        image = t.permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        a = image
        if a.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8, got {a.dtype}")
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
            raise ValueError(f"image array must be (H, W) or (H, W, C) with C in 1, 3, 4; got {image.shape}")
        image = Image.fromarray(np.ascontiguousarray(a))
    if not isinstance(image, Image.Image):
        raise ValueError(f"cannot use a {type(image).__name__} as an image; pass a path, PIL image, array or tensor")
    arr = lfdata.decode_image(image, res, ch)  # (res, res, C)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].contiguous()


def vary(model: "Model", image: Any, n: int = 16, spread: float = 1.0, seed: int = 0) -> torch.Tensor:
    """VAEs: uint8 (n, C, H, W) variations of a real image: encode -> z = mu + spread * sigma * eps
    (eps from `seed`) -> decode. spread 0 gives n copies of the reconstruction decode(mu)."""
    if model.family != "vae":
        raise ValueError(f"vary needs a VAE run ({model.config.model} has no encoder); "
                         "for a GAN, use project to find a latent for the image")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not math.isfinite(spread) or spread < 0:
        raise ValueError(f"spread must be >= 0, got {spread}")
    x = prepare_image(model, image)
    mu, logvar = model.encode(x)  # (1, z_dim) each
    eps = torch.randn(n, model.z_dim, generator=torch.Generator().manual_seed(int(seed))).to(mu.device)
    z = mu + spread * torch.exp(0.5 * logvar) * eps
    return to_uint8(model.decode(z)).cpu()


class _Features(nn.Module):
    """Feature pyramid for the projection loss: the activations after every LeakyReLU of a
    DCGAN discriminator, or of a fixed random conv pyramid (seeded, never trained)."""

    def __init__(self, layers: nn.Sequential, kind: str):
        super().__init__()
        self.layers, self.kind = layers, kind

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(x)
        return feats


def _feature_net(model: "Model") -> _Features:
    from .checkpoint import WEIGHTS, load_weights
    from .models import build_networks

    if model.family == "gan":
        path = model.run_dir / WEIGHTS if model.checkpoint == "latest" else model.run_dir / "best" / WEIGHTS
        D = build_networks(model.config, model.channels).get("D")
        if D is not None:
            try:
                load_weights({"D": D}, path, roles=("D",))
            except (ValueError, FileNotFoundError):
                D = None
        if D is not None:
            # only the feature layers: the last conv (the logit) is not needed
            body = [m for m in D.net][:-1]
            for m in body:
                if isinstance(m, nn.LeakyReLU):
                    m.inplace = False
            return _Features(nn.Sequential(*body), "discriminator").to(model.device).eval()
    g = torch.Generator().manual_seed(0)
    layers: list[nn.Module] = []
    c_in = model.channels
    for c_out in (32, 64, 128):
        conv = nn.Conv2d(c_in, c_out, 4, 2, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / (c_in * 16)))
            conv.bias.zero_()
        layers += [conv, nn.LeakyReLU(0.2)]
        c_in = c_out
    return _Features(nn.Sequential(*layers), "random-conv").to(model.device).eval()


def _psnr(mse01: float) -> float:
    return float("inf") if mse01 <= 0 else 10.0 * math.log10(1.0 / mse01)


def project(model: "Model", image: Any, steps: int = 300, lr: float = 0.05, starts: int = 16,
            feature_weight: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Find a latent whose image matches `image` (meant for GANs; works for VAEs too).

    1. Score the latents of seeds seed .. seed + starts - 1 (and, for a VAE, the encoder's mu)
       and start from the best.
    2. Adam on z for `steps` steps (learning rate `lr`, cosine-decayed) on
           loss = MSE(G(z), x) + feature_weight * mean_l |f_l(G(z)) - f_l(x)|^2 / mean |f_l(x)|^2
       with images in [-1, 1] and f_l the feature pyramid described in the module docstring.
    Keeps the best z seen. Returns (z (1, z_dim), image uint8 (1, C, H, W), report) where the
    report holds initial_loss / final_loss (the loss above), initial_mse / mse and
    initial_psnr / psnr (of the uint8 images, pixels in [0, 1]), start_seed, features, steps.
    """
    if steps < 0 or starts < 1:
        raise ValueError(f"steps must be >= 0 and starts >= 1, got steps={steps}, starts={starts}")
    if lr <= 0 or feature_weight < 0:
        raise ValueError(f"lr must be > 0 and feature_weight >= 0, got lr={lr}, feature_weight={feature_weight}")
    target_u8 = prepare_image(model, image)
    target = to_float(target_u8).to(model.device)
    feats = _feature_net(model)
    net = model.nets["G"] if model.family == "gan" else model.nets["vae"]
    gen: Callable[[torch.Tensor], torch.Tensor] = net if model.family == "gan" else net.decode
    flags = [p.requires_grad for p in list(net.parameters()) + list(feats.parameters())]
    for p in list(net.parameters()) + list(feats.parameters()):
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            t_feats = feats(target)
            t_energy = [f.pow(2).mean().clamp_min(1e-8) for f in t_feats]

        def losses(z: torch.Tensor) -> torch.Tensor:  # (B, z_dim) -> (B,) per-latent losses
            x = gen(z)
            mse = (x - target).pow(2).flatten(1).mean(1)
            fl = [((f - t).pow(2).flatten(1).mean(1) / e) for f, t, e in zip(feats(x), t_feats, t_energy)]
            return mse + feature_weight * torch.stack(fl).mean(0) if fl else mse

        cand_seeds = list(range(seed, seed + starts))
        cands = model.latents(cand_seeds)
        labels: list[Any] = list(cand_seeds)
        if model.family == "vae":
            cands = torch.cat([cands, model.encode(target_u8)[0]])
            labels.append("encoder")
        with torch.no_grad():
            scores = torch.cat([losses(cands[i:i + 64]) for i in range(0, len(cands), 64)])
        best_i = int(scores.argmin())
        z = cands[best_i:best_i + 1].clone().requires_grad_(True)
        initial = float(scores[best_i])
        best_loss, best_z = initial, z.detach().clone()
        opt = torch.optim.Adam([z], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
        for _ in range(steps):
            loss = losses(z)[0]
            value = float(loss.detach())
            if value < best_loss:  # the loss of the current z, before this step moves it
                best_loss, best_z = value, z.detach().clone()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            last = float(losses(z)[0])
            if last < best_loss:
                best_loss, best_z = last, z.detach().clone()
            out_u8 = to_uint8(gen(best_z)).cpu()
            init_u8 = to_uint8(gen(cands[best_i:best_i + 1])).cpu()
    finally:
        for p, f in zip(list(net.parameters()) + list(feats.parameters()), flags):
            p.requires_grad_(f)

    def mse01(a: torch.Tensor) -> float:
        return float(((a.float() - target_u8.float()) / 255.0).pow(2).mean())

    m0, m1 = mse01(init_u8), mse01(out_u8)
    report = {"initial_loss": initial, "final_loss": best_loss, "initial_mse": m0, "mse": m1,
              "initial_psnr": _psnr(m0), "psnr": _psnr(m1), "start_seed": labels[best_i], "starts": starts,
              "steps": steps, "lr": lr, "feature_weight": feature_weight, "features": feats.kind}
    return best_z.cpu(), out_u8, report


# ------------------------------------------------------------------------------------ bulk generation


def seed_filename(seed: int) -> str:
    """seed 7 -> "seed000007.png" (six digits at least, as `latentforge sample --outdir` writes)."""
    return f"seed{int(seed):06d}.png"


@dataclass
class BulkResult:
    outdir: Path
    total: int  # files the call was asked for
    written: int  # files written by this call
    skipped: int  # files already present, left untouched
    seconds: float  # wall time of this call

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def bulk_generate(model: "Model", n: int | None, outdir: str | os.PathLike, seed: int = 0, batch_size: int = 256,
                  truncation: float = 1.0, progress: bool = True, workers: int | None = None,
                  seeds: Sequence[int] | None = None,
                  callback: Callable[[int, int], None] | None = None, classes: Any = None) -> BulkResult:
    """Write one PNG per seed, seed .. seed + n - 1 (or the given `seeds`), into `outdir` as
    seedNNNNNN.png with provenance metadata; resumable.

    Streams `batch_size` images at a time; at most two batches are held in memory. With
    `workers` > 0 a thread pool encodes and writes one batch while the next is generated (zlib
    in Pillow releases the GIL). That only pays when cores are left over: on the 2-core
    benchmark machine, where torch already uses both cores, the pool was no faster than writing
    in this thread (benchmarks/generate.md). So None = 0 workers when generating on the CPU with
    torch using every core, else the spare cores (at most 4); on CUDA/MPS min(4, cores).
    Files already in `outdir` are skipped and never rewritten; leftover NAME.png.tmp files of an
    interrupted run are removed. `callback(done, total)` is called in this thread after each
    file (done counts skipped files too); an exception from it stops the run cleanly: files
    finished stay, nothing half-written is left. Conditional models: `classes` as in
    `generate_from_seeds`, over the seeds asked for (a repeated seed keeps its first class), so a
    resumed run gives each seed the same class; the class name goes into each file's metadata.
    """
    if seeds is None:
        if n is None or n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        wanted = list(range(seed, seed + n))
    else:
        wanted = list(dict.fromkeys(int(s) for s in seeds))  # one file per seed: drop repeats, keep order
        if not wanted:
            raise ValueError("no seeds given")
    asked = wanted if seeds is None else [int(s) for s in seeds]
    labels = model.class_labels(len(asked), classes)  # None when unconditional
    class_of: dict[int, int] = {}
    for s, c in zip(asked, labels.tolist() if labels is not None else []):
        class_of.setdefault(s, c)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    t = check_truncation(model, truncation)
    workers = default_workers(model) if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    present: set[str] = set()
    with os.scandir(out) as it:
        for e in it:
            if e.name.startswith("seed") and e.name.endswith(".png.tmp"):
                os.unlink(e.path)  # a write interrupted by a hard kill; the .png itself never appeared
            elif e.name.startswith("seed") and e.name.endswith(".png"):
                present.add(e.name)
    todo = [s for s in wanted if seed_filename(s) not in present]
    total, skipped = len(wanted), len(wanted) - len(todo)
    meta = provenance(model, truncation=t)
    done = skipped
    bar, task = _bulk_progress(progress, total, skipped, out)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="png") if workers > 0 else None
    inflight: list[Future[Path]] = []
    written = 0

    def tick() -> None:
        nonlocal done, written
        done += 1
        written += 1
        if bar is not None:
            bar.update(task, completed=done)
        if callback is not None:
            callback(done, total)

    def settle(futures: list[Future[Path]]) -> None:
        for f in futures:
            f.result()
            tick()

    try:
        if bar is not None:
            bar.start()
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            chunk_classes = [class_of[s] for s in chunk] if class_of else None
            images = generate_from_seeds(model, chunk, t, batch_size=batch_size, classes=chunk_classes)
            metas = [{**meta, "seed": str(s), **({"class": _class_name(model, class_of[s])} if class_of else {})}
                     for s in chunk]
            if pool is None:
                for s, img, m in zip(chunk, images, metas):
                    save_png(img, out / seed_filename(s), metadata=m)
                    tick()
                continue
            batch = [pool.submit(save_png, img, out / seed_filename(s), m) for s, img, m in zip(chunk, images, metas)]
            settle(inflight)  # the previous batch: wait for it while this one is being written
            inflight = batch
        settle(inflight)
        inflight = []
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.stop()
    return BulkResult(outdir=out, total=total, written=written, skipped=skipped, seconds=time.perf_counter() - t0)


def _class_name(model: "Model", index: int) -> str:
    names = model.class_names or []
    return names[index] if index < len(names) else str(index)


def default_workers(model: "Model") -> int:
    """PNG-writing threads for bulk_generate: the cores torch leaves free (see its docstring)."""
    cores = os.cpu_count() or 1
    if model.device.type != "cpu":
        return min(4, cores)
    return max(0, min(4, cores - torch.get_num_threads()))


def _bulk_progress(enabled: bool, total: int, done: int, out: Path) -> tuple[Any, Any]:
    if not enabled:
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"[bold]{out}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=False)
    task = bar.add_task("generate", total=total, completed=done)
    return bar, task
