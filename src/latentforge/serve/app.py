"""HTTP API and web page for one trained run: generate, interpolate, reconstruct, explore.

    app = create_app("runs/dcgan")      # FastAPI app; create_app() with no run = the bundled model
    serve("runs/dcgan", port=8000)      # uvicorn on 127.0.0.1:8000; open http://127.0.0.1:8000/

Endpoints (the OpenAPI spec is at /openapi.json, interactive docs at /docs):

    GET  /api/health        liveness, queue length, batches run
    GET  /api/info          model name, family, resolution, channels, classes, z_dim, run, limits
    GET  /api/directions    the latent sliders: top principal directions (see `compute_directions`)
    POST /api/generate      JSON {seeds | n + seed, truncation, offsets, class, format, scale, nrow}
                            -> one image: image/png; several: one grid PNG (row-major, seed order);
                               format="json": {"images": [{"seed", "png" (base64)}], ...}
    POST /api/interpolate   JSON {seeds, frames, loop, duration_ms, ...} -> animated GIF, `frames` frames
    POST /api/reconstruct   multipart `file` (VAE runs) -> PNG: the input as the model sees it | its reconstruction
    POST /api/vary          multipart `file`, `n`, `seed` (VAE runs) -> grid PNG of n draws from q(z|x)
    GET  /                  the web page (serve/static)

Every PNG carries text chunks with its provenance: model, run, seed(s), truncation, offsets, the
latentforge version and "synthetic image": "true". GIFs carry the same as a JSON comment.

Latents: seed s always gives the same z (`Model.latents`), so the same request gives the same image.
Class-conditional runs (trained with --conditional; /api/info says `conditional`): `class` (a name
in any case, or an index) sets the class of every image; without it seed s gets class s mod K, so
a seed still always gives the same image. An interpolation keeps one class along the path (asked,
or the first seed's). A conditional VAE's reconstruct/vary need the uploaded image's `class`.
`truncation` t in [0, 2] scales z -> t * z before decoding, as in `latentforge.explore` (GANs: the
truncation psi toward the mean latent 0; VAEs: the sampling temperature). t < 1: closer to the mean
image, less varied; t = 1: the model's own distribution; t > 1: more extreme (the API allows up to 2
for both families; explore's Python functions cap a GAN's psi at 1). `offsets[k]` then moves z along
slider direction k by offsets[k] * its scale: z -> t * z + sum_k offsets[k] * scale_k * v_k.
Interpolation paths are `explore.interpolation_latents` (slerp); GIFs are written here, in memory,
frame by frame (see `gif_bytes`).

Hardening: request bodies are counted while they stream in and cut off at the upload limit (413);
uploads are checked for size, type (415) and pixel count before decoding (decompression bombs ->
413); every number has bounds in the schema (422 when broken); each request has a deadline (503
with a message when the model queue cannot serve it in time); the queue length is bounded (503).
Model calls run in one worker thread, one at a time; concurrent generate/decode requests are
coalesced into one batch of at most `max_batch` images (a model call on B images costs far less than
B calls on one). Images from a coalesced batch can differ from the same seeds served alone by float
rounding inside the convolutions (at most 1 grey level, in about 1 pixel in 10^5-10^6).
"""

# No `from __future__ import annotations` here: the request models are built inside create_app
# (their bounds come from its arguments), and FastAPI must resolve the endpoints' annotations.
import asyncio
import base64
import collections
import io
import json
import math
import secrets
import threading
import time
import warnings
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Union

import numpy as np
import torch
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn

from .. import __version__
from ..config import ConfigError
from ..explore import interpolation_latents
from ..images import make_grid, to_pil, to_uint8

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_ASSET = Path(__file__).resolve().parent.parent / "assets" / "fashion-mnist-dcgan"
SEED_MAX = 2**32 - 1  # seeds are unsigned 32-bit: exact in JavaScript numbers too
OFFSET_MAX = 5.0  # slider offsets, in units of each direction's scale
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


class ServeError(ValueError):
    """A setup mistake (no run, missing bundled model); the message says what to do."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for. They appear in the OpenAPI schema and /api/info."""

    max_n: int = 64  # images per generate / vary request, and images per coalesced model batch
    max_frames: int = 120  # frames per interpolation GIF
    max_path_seeds: int = 16  # seeds along one interpolation path
    max_scale: int = 16  # nearest-neighbour upscale factor of returned images
    max_output_pixels: int = 2**24  # pixels in one returned PNG grid or all frames of a GIF
    max_upload_bytes: int = 10 * 2**20  # request body size, counted while it streams in
    max_pixels: int = 4096 * 4096  # width * height of an uploaded image, checked before decoding
    timeout_s: float = 30.0  # deadline of one request, queueing included
    max_queue: int = 256  # model jobs waiting; beyond it requests get 503 at once
    max_decodes: int = 2  # uploads decoded at the same time (bounds decoder memory)


# ------------------------------------------------------------------------------------ latent helpers


@dataclass
class Directions:
    """Latent slider directions: unit vectors (k, z_dim) with a natural step `scales` (k,)."""

    method: str
    description: str
    vectors: torch.Tensor
    scales: torch.Tensor
    explained_variance_ratio: list[float]
    n_samples: int
    seconds: float = 0.0


def _pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Top-k principal components of rows x (N, D): (components (k, D) unit rows, variances (k,),
    total variance). Small D: exact (eigh of the covariance). Large D: randomized SVD (Halko et al.
    2011) with power iterations, seeded so the result is the same on every start."""
    x = x.double()
    x = x - x.mean(0)
    n, d = x.shape
    total = float(x.pow(2).sum() / max(n - 1, 1))
    if d <= 256:
        evals, evecs = torch.linalg.eigh(x.T @ x / max(n - 1, 1))
        idx = evals.argsort(descending=True)[:k]
        return evecs[:, idx].T, evals[idx].clamp_min(0), total
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, s, v = torch.svd_lowrank(x, q=min(k + 20, n, d), niter=8)
    return v[:, :k].T, (s[:k] ** 2 / max(n - 1, 1)), total


def _fix_signs(v: torch.Tensor) -> torch.Tensor:
    """Make each row's largest-magnitude entry positive: PCA signs are arbitrary, sliders shouldn't be."""
    idx = v.abs().argmax(dim=1)
    sign = torch.sign(v[torch.arange(len(v)), idx])
    sign[sign == 0] = 1
    return v * sign[:, None]


def _first_activation(net: nn.Module, run: Callable[[], Any]) -> torch.Tensor:
    """The output of the first ReLU/LeakyReLU that fires while `run()` runs `net` (the first
    nonlinear layer: for DCGAN's G, the (N, ch, base, base) block right after z), flattened."""
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        if not captured:
            captured.append(out.detach().flatten(1).clone())

    hooks = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    if not captured:
        raise RuntimeError("the network has no ReLU/LeakyReLU layer to take features from")
    return captured[0]


def _ganspace(model: Any, k: int, n: int, net: nn.Module) -> Directions:
    """GANSpace (Harkonen et al., NeurIPS 2020, arXiv:2004.02546): sample z ~ N(0, I), take the
    first layer's activations y(z), find their top-k principal components, and carry each back to
    z space by least squares (the linear map from PCA coordinates to z). z itself is isotropic, so
    PCA on z would find nothing; the generator's features are not, and their main axes of variation
    become the directions. Each direction is a unit vector; its scale is 1 = one standard deviation
    of z along it."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, model.z_dim, generator=g)
    feats = []
    for i in range(0, n, 256):
        zi = z[i : i + 256].to(model.device)
        feats.append(_first_activation(net, lambda zi=zi: model.generate(zi)).cpu())
    y = torch.cat(feats).double()
    comps, var, total = _pca(y, k)
    coords = (y - y.mean(0)) @ comps.T  # (n, k) PCA coordinates of each sample
    coef = torch.linalg.lstsq(coords, z.double()).solution  # (k, z_dim): z ~ coords @ coef
    vectors = coef / coef.norm(dim=1, keepdim=True).clamp_min(1e-12)
    vectors = _fix_signs(torch.nan_to_num(vectors))
    return Directions(
        method="ganspace",
        description="GANSpace (Harkonen et al. 2020): principal components of the first-layer activations of "
        f"{n} samples, mapped back to z by least squares. Slider unit: one standard deviation of z.",
        vectors=vectors.float(), scales=torch.ones(len(vectors)),
        explained_variance_ratio=[float(v / total) if total > 0 else 0.0 for v in var], n_samples=n)


def _vae_reference_images(model: Any, limit: int) -> Optional[torch.Tensor]:
    """Up to `limit` held-out images of the run's data set when they are on this machine (never
    downloads): the built-in's test split, or the run's .npz. None otherwise."""
    try:
        from ..data import BUILTIN, load_images, locate
        from ..train import default_eval_ref

        spec = default_eval_ref(model.config.data)
        base, _, split = spec.partition(":")
        if base.strip().lower() in BUILTIN:
            if locate(base.strip().lower(), split=split.strip().lower() or "train") is None:
                return None
        elif not (spec.lower().endswith(".npz") and Path(spec).is_file()):
            return None  # folders can be large and slow to decode; the fallback needs no data
        data = load_images(spec, res=model.resolution, channels=model.channels, progress=False)
    except Exception:  # any problem with the data: use the data-free fallback
        return None
    idx = torch.randperm(len(data.images), generator=torch.Generator().manual_seed(0))[:limit]
    return data.images[idx]


def compute_directions(model: Any, k: int = 5, n: int = 1000) -> Directions:
    """Latent slider directions for `model`.

    VAE with its data on this machine: PCA of the posterior means mu(x) over up to 2000 held-out
    images. These are the axes along which real images spread out in latent space; scale_k is the
    standard deviation of mu along axis k, so a slider at +-2 reaches where real data still is.
    GAN (or a VAE without data): GANSpace on the generator's (decoder's) first layer; see `_ganspace`.
    """
    t0 = time.perf_counter()
    k = max(1, min(k, model.z_dim))
    if model.family == "vae":
        images = _vae_reference_images(model, 2000)
        if images is not None and len(images) > k:
            mus = [model.encode(images[i : i + 256])[0].cpu() for i in range(0, len(images), 256)]
            mu = torch.cat(mus)
            comps, var, total = _pca(mu, k)
            d = Directions(
                method="pca-posterior-means",
                description=f"PCA of the VAE's posterior means mu(x) over {len(mu)} images of "
                f"{model.config.data}. Slider unit: one standard deviation of mu along the direction.",
                vectors=_fix_signs(comps).float(), scales=var.sqrt().float().clamp_min(1e-3),
                explained_variance_ratio=[float(v / total) if total > 0 else 0.0 for v in var], n_samples=len(mu))
        else:
            d = _ganspace(model, k, n, model.nets["vae"])
            d.description += " (The VAE's data set is not on this machine, so its decoder was used.)"
    else:
        d = _ganspace(model, k, n, model.nets["G"])
    d.seconds = time.perf_counter() - t0
    return d


# ------------------------------------------------------------------------------------ encoding


def _png_bytes(image_u8: torch.Tensor, metadata: dict[str, Any], scale: int = 1) -> bytes:
    """uint8 (C, H, W) -> PNG bytes with text chunks; nearest-neighbour upscale keeps pixels crisp."""
    img = to_pil(image_u8)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(str(key), str(value))
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=6)
    return buf.getvalue()


def gif_bytes(frames_u8: torch.Tensor, duration_ms: int, comment: str = "", scale: int = 1, loop: int = 0) -> bytes:
    """uint8 (F, C, H, W) -> an animated GIF with exactly F frames.

    Written frame by frame with PIL's GIF primitives because `Image.save(save_all=True)` merges
    identical consecutive frames (the frame count would then depend on the pictures). Colour images
    share one palette, fitted to all frames at once, so no frame is re-coloured on its own.
    """
    from PIL import GifImagePlugin

    pils = [to_pil(f) for f in frames_u8]
    if scale > 1:
        pils = [p.resize((p.width * scale, p.height * scale), Image.NEAREST) for p in pils]
    if pils[0].mode != "L":
        w, h = pils[0].size
        strip = Image.new("RGB", (w, h * len(pils)))
        for i, p in enumerate(pils):
            strip.paste(p.convert("RGB"), (0, h * i))
        palette = strip.quantize(256, method=Image.Quantize.MEDIANCUT)
        pils = [p.convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE) for p in pils]
    out = io.BytesIO()
    header, _ = GifImagePlugin.getheader(pils[0], None, {})
    for chunk in header:
        out.write(chunk)
    out.write(b"!\xff\x0bNETSCAPE2.0\x03\x01" + int(loop).to_bytes(2, "little") + b"\x00")  # loop forever
    if comment:
        data = comment.encode("utf-8")
        out.write(b"!\xfe")
        for i in range(0, len(data), 255):
            block = data[i : i + 255]
            out.write(bytes([len(block)]) + block)
        out.write(b"\x00")
    for p in pils:
        for chunk in GifImagePlugin.getdata(p, duration=int(duration_ms), disposal=1):
            out.write(chunk)
    out.write(b";")
    return out.getvalue()


def decode_upload(data: bytes, resolution: int, channels: int, max_pixels: int, invert: bool = False) -> torch.Tensor:
    """Untrusted image bytes -> uint8 (1, C, res, res) as the model sees it (shorter side resized to
    res, center-cropped; transparency composited on white). Raises HTTPException: 400 empty or
    corrupt, 413 too many pixels (decompression bombs), 415 not an image."""
    if not data:
        raise HTTPException(400, "the upload is empty: send an image file (PNG, JPEG, GIF, BMP or WebP)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
            w, h = img.size
            if w * h > max_pixels:  # from the header, before any pixel is decoded
                raise HTTPException(413, f"the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels} "
                                         "(decompression-bomb protection)")
            if w < 1 or h < 1:
                raise HTTPException(400, f"the image has no pixels ({w}x{h})")
            img.draft("RGB" if channels == 3 else "L", (resolution * 2, resolution * 2))  # JPEG: decode smaller
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                white.alpha_composite(rgba)
                img = white
            img = img.convert("L" if channels == 1 else "RGB")
            img = ImageOps.fit(img, (resolution, resolution), Image.LANCZOS)
            if invert:
                img = ImageOps.invert(img)
    except HTTPException:
        raise
    except UnidentifiedImageError:
        raise HTTPException(415, "the upload is not an image this server reads; send PNG, JPEG, GIF, BMP or WebP") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise HTTPException(413, f"the image is too large to decode safely: {e}") from None
    except Exception as e:  # untrusted bytes: any decoder failure is the upload's fault, not ours
        raise HTTPException(400, f"could not decode the image (truncated or corrupt?): {type(e).__name__}: {e}") from None
    t = torch.from_numpy(np.asarray(img).copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t[None].contiguous()


# ------------------------------------------------------------------------------------ the model worker


class Busy(Exception):
    """The model queue is full."""


@dataclass
class _Job:
    fut: Future
    z: Optional[torch.Tensor] = None  # generation job: latents (N, z_dim)
    c: Optional[torch.Tensor] = None  # its class indices (N,), for a class-conditional model
    fn: Optional[Callable[[], Any]] = None  # any other model call


class ModelWorker:
    """One thread that owns the model: jobs run one at a time, so torch's threads are never
    oversubscribed and memory stays bounded. Generation jobs waiting together are coalesced into
    one batch of at most `max_batch` images (FIFO otherwise). Cancelled jobs are skipped."""

    def __init__(self, model: Any, max_batch: int, max_queue: int, batching: bool = True):
        self.model, self.max_batch, self.max_queue, self.batching = model, max_batch, max_queue, batching
        self._jobs: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self.batches = 0
        self.images = 0
        self.calls = 0

    def queued(self) -> int:
        return len(self._jobs)

    def _put(self, job: _Job) -> Future:
        with self._cond:
            if self._closed:
                raise Busy("the server is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise Busy(f"{len(self._jobs)} requests are already waiting for the model")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="latentforge-model", daemon=True)
                self._thread.start()
            self._jobs.append(job)
            self._cond.notify()
        return job.fut

    def generate(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> Future:
        """Future of uint8 (N, C, H, W) images for latents z (N, z_dim); a class-conditional
        model needs c, the (N,) class indices (an unconditional one none)."""
        return self._put(_Job(Future(), z=z.cpu(), c=None if c is None else c.cpu()))

    def call(self, fn: Callable[[], Any]) -> Future:
        return self._put(_Job(Future(), fn=fn))

    def close(self) -> None:
        """Finish the queued jobs and stop the thread (at app shutdown). A later job starts a new one."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)
        with self._cond:
            self._closed, self._thread = False, None

    def _next_batch(self) -> Optional[list[_Job]]:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            first = self._jobs.popleft()
            batch = [first]
            if first.z is not None and self.batching:
                total, keep = len(first.z), []
                while self._jobs and total < self.max_batch:
                    job = self._jobs.popleft()
                    if job.z is not None and total + len(job.z) <= self.max_batch:
                        batch.append(job)
                        total += len(job.z)
                    else:
                        keep.append(job)
                self._jobs.extendleft(reversed(keep))  # the rest keep their places
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [j for j in batch if j.fut.set_running_or_notify_cancel()]  # skip timed-out jobs
            if not live:
                continue
            try:
                with torch.no_grad():
                    if live[0].fn is not None:  # a call job runs alone
                        self.calls += 1
                        live[0].fut.set_result(live[0].fn())
                        continue
                    z = torch.cat([j.z for j in live])  # type: ignore[misc]
                    c = None if live[0].c is None else torch.cat([j.c for j in live])  # type: ignore[misc]
                    images = to_uint8(self.model.generate(z) if c is None else self.model.generate(z, c)).cpu()
                self.batches += 1
                self.images += len(z)
                for j, part in zip(live, images.split([len(j.z) for j in live])):  # type: ignore[arg-type]
                    j.fut.set_result(part)
            except Exception as e:  # hand the error to the waiting requests; keep serving
                for j in live:
                    if not j.fut.done():
                        j.fut.set_exception(e)


# ------------------------------------------------------------------------------------ schemas


class ErrorResponse(BaseModel):
    detail: Union[str, list[Any]] = Field(description="What was wrong; for 422 a list of the fields that failed.")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    queued: int = Field(description="Model jobs waiting now.")
    batches: int = Field(description="Generation batches run so far.")
    images: int = Field(description="Images generated so far.")


class LimitsModel(BaseModel):
    max_n: int
    max_frames: int
    max_path_seeds: int
    max_scale: int
    max_output_pixels: int
    max_upload_bytes: int
    max_pixels: int
    timeout_s: float
    max_queue: int
    max_decodes: int


class InfoResponse(BaseModel):
    name: str = Field(description="Model name (the run's config extra.name, else the run folder's name).")
    architecture: str = Field(description="vae or dcgan.")
    family: Literal["vae", "gan"]
    resolution: int
    channels: int
    classes: Optional[list[str]] = Field(description="Class names of the training data (null when unlabelled).")
    conditional: bool = Field(description="Whether `class` can steer generation; false for today's models.")
    z_dim: int
    run: str = Field(description="The run folder's name.")
    data: str = Field(description="What the model was trained on.")
    steps: int = Field(description="Training steps of the served weights (the run's configured step bound when "
                             "the weights do not record it).")
    can_reconstruct: bool = Field(description="True for VAEs: /api/reconstruct and /api/vary work.")
    version: str = Field(description="latentforge version serving it.")
    limits: LimitsModel


class DirectionModel(BaseModel):
    index: int
    label: str
    scale: float = Field(description="Latent distance of one slider unit.")
    explained_variance_ratio: float
    vector: list[float] = Field(description="Unit vector in z space (length z_dim).")


class DirectionsResponse(BaseModel):
    method: Literal["ganspace", "pca-posterior-means"]
    description: str
    n_samples: int
    offset_range: list[float] = Field(description="Allowed offsets, in slider units.")
    directions: list[DirectionModel]


class ImageItem(BaseModel):
    seed: int
    png: str = Field(description="Base64 PNG (with its provenance text chunks).")


class GenerateJSONResponse(BaseModel):
    model: str
    truncation: float
    offsets: list[float]
    images: list[ImageItem]


def _schemas(lim: Limits, n_dirs: int) -> dict[str, type[BaseModel]]:
    """Request models with this app's bounds (they go into the OpenAPI spec)."""
    Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
    Offset = Annotated[float, Field(ge=-OFFSET_MAX, le=OFFSET_MAX, allow_inf_nan=False)]
    ClassField = Optional[Union[Annotated[int, Field(ge=0, le=100_000)], Annotated[str, Field(min_length=1, max_length=100)]]]
    Truncation = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False, description=(
        "Scale z by this before decoding: < 1 nearer the mean image (less varied, cleaner), 1 = unchanged, "
        "> 1 more extreme."))]
    common = ConfigDict(extra="forbid", populate_by_name=True)

    class GenerateRequest(BaseModel):
        """Which images: `seeds` (a list), or `n` images from seeds `seed` .. `seed + n - 1` (a random
        seed when `seed` is left out); not both (422). One image comes back as image/png, several as one grid PNG in
        seed order (`nrow` per row), or with `format: "json"` as a list of base64 PNGs."""

        model_config = common
        seeds: Optional[list[Seed]] = Field(None, min_length=1, max_length=lim.max_n)
        n: int = Field(1, ge=1, le=lim.max_n)
        seed: Optional[Seed] = None
        class_: ClassField = Field(None, alias="class", description=(
            "Class index or name, for class-conditional models only (see /api/info `conditional`)."))
        truncation: Truncation = 1.0
        offsets: list[Offset] = Field(default_factory=list, max_length=n_dirs, description=(
            "Slider positions, one per direction of /api/directions (missing = 0)."))
        format: Literal["png", "json"] = "png"
        scale: int = Field(1, ge=1, le=lim.max_scale, description="Nearest-neighbour upscale factor.")
        nrow: Optional[int] = Field(None, ge=1, le=lim.max_n, description="Grid images per row (default: square).")

        @model_validator(mode="after")
        def _check(self) -> "GenerateRequest":
            if self.seeds is not None and ({"n", "seed"} & self.model_fields_set):
                raise ValueError("give either `seeds`, or `n` and `seed`, not both")
            if self.seed is not None and self.seed + self.n - 1 > SEED_MAX:
                raise ValueError(f"seed + n - 1 must be <= {SEED_MAX}")
            return self

    class InterpolateRequest(BaseModel):
        """A walk through latent space along great circles (slerp) through the seeds' latents, as an
        animated GIF of exactly `frames` frames."""

        model_config = common
        seeds: list[Seed] = Field(min_length=2, max_length=lim.max_path_seeds)
        frames: int = Field(24, ge=2, le=lim.max_frames)
        loop: bool = Field(True, description="Return to the first seed at the end, for a seamless loop.")
        duration_ms: int = Field(80, ge=20, le=2000, description="Display time of each frame.")
        truncation: Truncation = 1.0
        offsets: list[Offset] = Field(default_factory=list, max_length=n_dirs)
        class_: ClassField = Field(None, alias="class")
        scale: int = Field(1, ge=1, le=lim.max_scale)

    return {"GenerateRequest": GenerateRequest, "InterpolateRequest": InterpolateRequest}


# ------------------------------------------------------------------------------------ the app


def _load(run_dir_or_model: Any, device: str) -> Any:
    from ..sample import Model, load

    if isinstance(run_dir_or_model, Model):
        return run_dir_or_model
    if run_dir_or_model is None:
        if not (DEFAULT_ASSET / "config.json").is_file() or not (DEFAULT_ASSET / "model.safetensors").is_file():
            raise ServeError(
                f"no RUN given and the bundled Fashion-MNIST model is missing ({DEFAULT_ASSET} should hold "
                "config.json and model.safetensors); pass a run directory: latentforge serve runs/dcgan")
        run_dir_or_model = DEFAULT_ASSET
    path = Path(run_dir_or_model)
    if not path.is_dir():
        raise ServeError(f"{path} is not a directory; pass a run directory made by `latentforge train`")
    try:
        return load(path, device=device)
    except ConfigError as e:
        raise ServeError(str(e)) from None


def _error(status: int, message: str, **headers: str) -> HTTPException:
    return HTTPException(status, message, headers=headers or None)


ERRORS = {code: {"model": ErrorResponse, "description": text} for code, text in {
    400: "Bad request (a message says what to change).",
    413: "Upload or image too large.",
    415: "The upload is not a supported image.",
    422: "A field is missing, has the wrong type or is out of bounds.",
    503: "Busy: the request could not be served before its deadline, or the queue is full.",
}.items()}


def create_app(run_dir_or_model: Any = None, *, max_batch: int = 64, max_frames: int = 120,
               max_upload_bytes: int = 10 * 2**20, timeout_s: float = 30.0, batching: bool = True,
               n_directions: int = 5, device: str = "auto", limits: Optional[Limits] = None) -> FastAPI:
    """A FastAPI app serving one model: a run directory, a loaded `latentforge.sample.Model`, or
    None for the bundled Fashion-MNIST DCGAN. `max_batch` bounds images per request and per model
    batch; `batching=False` runs each request's images alone. `limits` overrides all bounds at once."""
    lim = limits or Limits(max_n=max_batch, max_frames=max_frames, max_upload_bytes=max_upload_bytes,
                           timeout_s=timeout_s)
    model = _load(run_dir_or_model, device)
    worker = ModelWorker(model, max_batch=lim.max_n, max_queue=lim.max_queue, batching=batching)
    decode_slots = threading.BoundedSemaphore(lim.max_decodes)
    n_dirs = max(1, min(n_directions, model.z_dim))
    schemas = _schemas(lim, n_dirs)
    GenerateRequest, InterpolateRequest = schemas["GenerateRequest"], schemas["InterpolateRequest"]
    name = str((model.config.extra or {}).get("name") or model.run_dir.name)
    conditional = bool(model.conditional)
    directions_state: dict[str, Any] = {"future": None}
    dir_lock = threading.Lock()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        worker.close()

    app = FastAPI(
        title=f"latentforge: {name}",
        version=__version__,
        description="Generate and explore images with a trained latentforge model. Every image carries "
        "provenance metadata and is marked as synthetic. The web page is at /.",
        lifespan=lifespan,
    )
    app.state.model = model
    app.state.worker = worker
    app.state.limits = lim
    app.add_middleware(_BodyLimit, max_bytes=lim.max_upload_bytes + 64 * 1024)  # + multipart framing
    app.add_middleware(_SecurityHeaders)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default, minus the echoed input (which can be a 10 MB upload).
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    # The keys of explore.provenance (read back by explore.read_info), but "run" is the folder's
    # name: the server's file system layout is nobody's business.
    meta_base = {"latentforge": __version__, "model": model.config.model, "model name": name,
                 "run": model.run_dir.name, "checkpoint": model.checkpoint, "Software": f"latentforge {__version__}",
                 "synthetic image": "true"}

    # -------------------------------------------------------------- helpers bound to this app

    async def wait(fut: Future, deadline: float, what: str, shield: bool = False) -> Any:
        remaining = deadline - time.monotonic()
        try:
            aw = asyncio.wrap_future(fut)
            return await asyncio.wait_for(asyncio.shield(aw) if shield else aw, max(remaining, 0.001))
        except asyncio.TimeoutError:
            raise _error(503, f"{what} did not finish within the {lim.timeout_s:g} s deadline: the server is "
                              "busy; try again, or ask for fewer images", **{"Retry-After": "2"}) from None

    def submit(fn: Callable[[], Future]) -> Future:
        try:
            return fn()
        except Busy as e:
            raise _error(503, f"the server is busy ({e}); try again shortly", **{"Retry-After": "2"}) from None

    def check_class(value: Any) -> Optional[int]:
        """A request's `class` (a name, any case, or an index) as a class index; None when not given.
        400 with the reason for an unconditional model or an unknown class (the known ones listed)."""
        if value is None:
            return None
        if not conditional:
            names = model.class_names
            known = f" (its data's classes are {', '.join(names)})" if names else ""
            raise _error(400, f"this model is unconditional: it was trained without class conditioning{known}, "
                              "so `class` cannot steer it; leave `class` out")
        try:
            return model.class_index(value)
        except ConfigError as e:
            raise _error(400, str(e)) from None

    def labels_for(seeds: list[int], cls: Optional[int]) -> Optional[torch.Tensor]:
        """The classes of images from `seeds` for a conditional model: `cls` for all, or, when no
        class was asked for, seed mod the number of classes (a seed always gives the same image).
        None for an unconditional model."""
        if not conditional:
            return None
        if cls is not None:
            return model.class_labels(len(seeds), cls)
        return torch.tensor([s % model.num_classes for s in seeds], dtype=torch.long)

    def class_meta(c: Optional[torch.Tensor]) -> dict[str, str]:
        """PNG provenance of the classes behind the images (nothing for an unconditional model)."""
        if c is None:
            return {}
        names = model.class_names or [str(i) for i in range(model.num_classes)]
        return {"class": ",".join(names[int(i)] for i in c)}

    def need_upload_class(value: Any, endpoint: str) -> Optional[int]:
        """The class of an uploaded image: required by a conditional VAE (it encodes with it)."""
        cls = check_class(value)
        if conditional and cls is None:
            raise _error(400, f"this VAE is class-conditional: /api/{endpoint} needs the uploaded image's class "
                              f"(form field `class`: one of {', '.join(model.class_names or [])}, or its index)")
        return cls

    async def directions(deadline: float) -> Directions:
        with dir_lock:
            fut = directions_state["future"]
            if fut is None or fut.cancelled() or (fut.done() and fut.exception() is not None):
                fut = submit(lambda: worker.call(lambda: compute_directions(model, k=n_dirs)))
                directions_state["future"] = fut
        return await wait(fut, deadline, "computing the latent directions", shield=True)

    async def offset_vector(offsets: list[float], deadline: float) -> Optional[torch.Tensor]:
        """sum_k offsets[k] * scale_k * v_k, (z_dim,); None when every offset is 0."""
        if not any(o != 0 for o in offsets):
            return None
        d = await directions(deadline)
        off = torch.tensor(offsets, dtype=torch.float32)
        return (off * d.scales[: len(off)]) @ d.vectors[: len(off)]

    async def latents(seeds: list[int], truncation: float, offsets: list[float], deadline: float) -> torch.Tensor:
        z = model.latents(seeds).cpu() * truncation
        shift = await offset_vector(offsets, deadline)
        return z if shift is None else z + shift

    def check_output(pixels: int) -> None:
        if pixels > lim.max_output_pixels:
            raise _error(400, f"the result would have {pixels} pixels; the limit is {lim.max_output_pixels}: "
                              "lower `scale`, `n` or `frames`")

    async def read_upload(file: UploadFile, invert: bool) -> torch.Tensor:
        data = await file.read(lim.max_upload_bytes + 1)
        if len(data) > lim.max_upload_bytes:
            raise _error(413, f"the upload is larger than {lim.max_upload_bytes} bytes")

        def work() -> torch.Tensor:
            with decode_slots:
                return decode_upload(data, model.resolution, model.channels, lim.max_pixels, invert)

        return await run_in_threadpool(work)

    def need_vae(endpoint: str) -> None:
        if model.family != "vae":
            raise _error(400, f"{endpoint} needs a VAE: this model is a {model.config.model} (a GAN has no encoder "
                              "to map an image into its latent space); serve a VAE run for this")

    def image_response(content: bytes, media: str, headers: dict[str, str]) -> Response:
        return Response(content, media_type=media, headers={"Cache-Control": "no-store", **headers})

    # -------------------------------------------------------------- routes

    @app.get("/api/health", response_model=HealthResponse, tags=["meta"])
    async def health() -> HealthResponse:
        """Liveness and load."""
        return HealthResponse(status="ok", queued=worker.queued(), batches=worker.batches, images=worker.images)

    @app.get("/api/info", response_model=InfoResponse, tags=["meta"])
    async def info() -> InfoResponse:
        """What is being served, and the bounds on requests."""
        steps = model.trained_steps if model.trained_steps is not None else int(model.config.steps)
        return InfoResponse(
            name=name, architecture=model.config.model, family=model.family, resolution=model.resolution,
            channels=model.channels, classes=model.class_names, conditional=conditional, z_dim=model.z_dim,
            run=model.run_dir.name, data=str(model.config.data), steps=steps,
            can_reconstruct=model.family == "vae", version=__version__, limits=LimitsModel(**asdict(lim)))

    @app.get("/api/directions", response_model=DirectionsResponse, responses={503: ERRORS[503]}, tags=["explore"])
    async def get_directions() -> DirectionsResponse:
        """The latent sliders: the top principal directions of the latent space. GANs: GANSpace
        (PCA of first-layer activations carried back to z by least squares); VAEs: PCA of the
        posterior means over held-out data. Use them through `offsets` in /api/generate."""
        d = await directions(time.monotonic() + lim.timeout_s)
        return DirectionsResponse(
            method=d.method, description=d.description, n_samples=d.n_samples, offset_range=[-OFFSET_MAX, OFFSET_MAX],
            directions=[DirectionModel(index=i, label=f"PC{i + 1}", scale=float(d.scales[i]),
                                       explained_variance_ratio=d.explained_variance_ratio[i],
                                       vector=[float(v) for v in d.vectors[i]]) for i in range(len(d.vectors))])

    @app.post("/api/generate", response_class=Response, tags=["generate"], responses={
        200: {"description": "image/png (one image, or a grid of several), or JSON when format=json.",
              "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                          "application/json": {"schema": GenerateJSONResponse.model_json_schema()}}},
        400: ERRORS[400], 422: ERRORS[422], 503: ERRORS[503]})
    async def generate(req: GenerateRequest) -> Response:  # type: ignore[valid-type]
        """Generate images from seeds. Same request, same bytes."""
        deadline = time.monotonic() + lim.timeout_s
        cls = check_class(req.class_)
        if req.seeds is not None:
            seeds = list(req.seeds)
        else:
            first = req.seed if req.seed is not None else secrets.randbelow(SEED_MAX - req.n + 2)
            seeds = list(range(first, first + req.n))
        n, res = len(seeds), model.resolution * req.scale
        if req.format == "png" and n > 1:
            nrow = req.nrow or max(1, math.ceil(math.sqrt(n)))
            rows = math.ceil(n / nrow)
            check_output((min(nrow, n) * (res + 2) + 2) * (rows * (res + 2) + 2))
        else:
            check_output(n * res * res)
        z = await latents(seeds, req.truncation, req.offsets, deadline)
        c = labels_for(seeds, cls)
        images = await wait(submit(lambda: worker.generate(z, c)), deadline, "generating")
        meta = {**meta_base, "truncation": f"{req.truncation:g}", **class_meta(c)}
        if any(o != 0 for o in req.offsets):
            meta["offsets"] = json.dumps([round(o, 6) for o in req.offsets])
        headers = {"X-Seeds": ",".join(map(str, seeds))}
        if req.format == "json":
            def encode_all() -> list[dict[str, Any]]:
                return [{"seed": s, "png": base64.b64encode(_png_bytes(
                            img, {**meta, "seed": s, **class_meta(None if c is None else c[i : i + 1])},
                            req.scale)).decode()} for i, (s, img) in enumerate(zip(seeds, images))]

            items = await run_in_threadpool(encode_all)
            body = {"model": name, "truncation": req.truncation, "offsets": list(req.offsets), "images": items}
            return JSONResponse(body, headers={"Cache-Control": "no-store", **headers})
        if n == 1:
            png = await run_in_threadpool(_png_bytes, images[0], {**meta, "seed": seeds[0]}, req.scale)
        else:
            nrow = req.nrow or max(1, math.ceil(math.sqrt(n)))
            grid = make_grid(images, nrow=nrow)
            png = await run_in_threadpool(_png_bytes, grid, {**meta, "seeds": ",".join(map(str, seeds)),
                                                            "nrow": nrow}, req.scale)
        return image_response(png, "image/png", headers)

    @app.post("/api/interpolate", response_class=Response, tags=["explore"], responses={
        200: {"description": "An animated GIF of exactly `frames` frames.",
              "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}}},
        400: ERRORS[400], 422: ERRORS[422], 503: ERRORS[503]})
    async def interpolate(req: InterpolateRequest) -> Response:  # type: ignore[valid-type]
        """Slerp through the seeds' latents; returns a looping GIF."""
        deadline = time.monotonic() + lim.timeout_s
        cls = check_class(req.class_)
        check_output(req.frames * (model.resolution * req.scale) ** 2)
        keys = model.latents(list(req.seeds)).cpu() * req.truncation
        z = interpolation_latents(keys, req.frames, mode="slerp", loop=req.loop)
        shift = await offset_vector(list(req.offsets), deadline)  # the same slider offset on every frame
        if shift is not None:
            z = z + shift
        c = labels_for([int(req.seeds[0])] * len(z), cls)  # one class along the path: asked, or the first seed's
        frames = await wait(submit(lambda: worker.generate(z, c)), deadline, "interpolating")
        comment = json.dumps({**meta_base, "seeds": list(req.seeds), "frames": req.frames, "loop": req.loop,
                              "truncation": req.truncation, "offsets": list(req.offsets), "path": "slerp",
                              **class_meta(None if c is None else c[:1])})
        gif = await run_in_threadpool(gif_bytes, frames, req.duration_ms, comment, req.scale)
        return image_response(gif, "image/gif", {"X-Seeds": ",".join(map(str, req.seeds)), "X-Frames": str(req.frames)})

    @app.post("/api/reconstruct", response_class=Response, tags=["vae"], responses={
        200: {"description": "PNG: the input as the model sees it (left) and its reconstruction (right).",
              "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **{c: ERRORS[c] for c in (400, 413, 415, 422, 503)}})
    async def reconstruct(
        file: UploadFile = File(description="An image: PNG, JPEG, GIF, BMP or WebP."),
        scale: Annotated[int, Form(ge=1, le=lim.max_scale)] = 1,
        invert: Annotated[bool, Form(description="Invert grey levels first (dark-on-light photos for "
                                                 "light-on-dark data such as Fashion-MNIST).")] = False,
        class_: Annotated[Optional[str], Form(alias="class", description=(
            "The image's class (name or index): required by a class-conditional VAE, refused otherwise."))] = None,
    ) -> Response:
        """Encode an uploaded image with the VAE and decode it again (posterior mean, no noise)."""
        deadline = time.monotonic() + lim.timeout_s
        need_vae("reconstruct")
        cls = need_upload_class(class_, "reconstruct")
        check_output(2 * (model.resolution * scale + 4) ** 2)
        x = await read_upload(file, invert)
        recon = await wait(submit(lambda: worker.call(lambda: model.reconstruct(x, cls))), deadline, "reconstructing")
        mse = float(((x.float() - recon.float()) / 255).pow(2).mean())
        grid = make_grid(torch.cat([x, recon]), nrow=2)
        png = await run_in_threadpool(_png_bytes, grid, {
            **meta_base, "content": "input as the model sees it (left), reconstruction (right)",
            "synthetic image": "partly: the right half", "pixel mse": f"{mse:.6f}"}, scale)
        return image_response(png, "image/png", {"X-Reconstruction-MSE": f"{mse:.6f}"})

    @app.post("/api/vary", response_class=Response, tags=["vae"], responses={
        200: {"description": "Grid PNG of n variations, row-major.",
              "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **{c: ERRORS[c] for c in (400, 413, 415, 422, 503)}})
    async def vary(
        file: UploadFile = File(description="An image: PNG, JPEG, GIF, BMP or WebP."),
        n: Annotated[int, Form(ge=1, le=lim.max_n)] = 8,
        seed: Annotated[int, Form(ge=0, le=SEED_MAX - lim.max_n)] = 0,
        spread: Annotated[float, Form(ge=0.0, le=3.0, allow_inf_nan=False,
                                      description="Scale of the posterior noise (1 = q(z|x) itself).")] = 1.0,
        scale: Annotated[int, Form(ge=1, le=lim.max_scale)] = 1,
        invert: Annotated[bool, Form()] = False,
        class_: Annotated[Optional[str], Form(alias="class", description=(
            "The image's class (name or index): required by a class-conditional VAE, refused otherwise."))] = None,
    ) -> Response:
        """Variations of an uploaded image: n draws z = mu + spread * sigma * eps from the VAE's
        posterior q(z|x), decoded; draw i uses noise from seed + i."""
        deadline = time.monotonic() + lim.timeout_s
        need_vae("vary")
        cls = need_upload_class(class_, "vary")
        nrow = max(1, math.ceil(math.sqrt(n)))
        check_output((nrow * (model.resolution * scale + 2) + 2) ** 2)
        x = await read_upload(file, invert)
        mu, logvar = await wait(submit(lambda: worker.call(lambda: model.encode(x, cls))), deadline, "encoding")
        eps = model.latents(range(seed, seed + n)).cpu()
        z = mu.cpu() + spread * torch.exp(0.5 * logvar.cpu()) * eps
        c = labels_for(list(range(seed, seed + n)), cls)  # cls is set for a conditional VAE (need_upload_class)
        images = await wait(submit(lambda: worker.generate(z, c)), deadline, "decoding")
        png = await run_in_threadpool(_png_bytes, make_grid(images, nrow=nrow), {
            **meta_base, "content": f"{n} variations of an uploaded image from q(z|x)", "seeds": f"{seed}-{seed + n - 1}",
            "spread": f"{spread:g}", **class_meta(c)}, scale)
        return image_response(png, "image/png", {"X-Seeds": f"{seed}-{seed + n - 1}"})

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


# ------------------------------------------------------------------------------------ middleware


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes (the upload limit); send a smaller image")


class _BodyLimit:
    """Counts request body bytes as they stream in and stops at `max_bytes` with 413, so a huge
    upload is never buffered whole. A declared Content-Length over the limit is refused at once.
    (_BodyTooLarge is an HTTPException, so FastAPI's body parsing re-raises it and the exception
    middleware turns it into a JSON 413.)"""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_json(send, 400, "invalid Content-Length header")
                if declared > self.max_bytes:
                    return await _send_json(send, 413, _BodyTooLarge(self.max_bytes).detail)
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge as e:
            if started:
                raise
            await _send_json(send, 413, e.detail)


async def _send_json(send: Callable, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class _SecurityHeaders:
    """nosniff, no framing, and a same-origin content policy for the page (no inline scripts)."""

    HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
    ]
    CSP = (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; connect-src 'self' blob:; style-src 'self'; "
                                       b"script-src 'self'; frame-ancestors 'none'")

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        is_page = not scope.get("path", "").startswith(("/docs", "/redoc"))

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = self.HEADERS + ([self.CSP] if is_page else [])
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ------------------------------------------------------------------------------------ run it


def serve(run: Any = None, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
          **app_kwargs: Any) -> None:
    """Serve `run` (a run directory, a Model, None for the bundled model, or an app made by
    `create_app`) with uvicorn until Ctrl-C. Binds 127.0.0.1 unless told otherwise: there is no
    authentication."""
    import uvicorn

    app = run if isinstance(run, FastAPI) else create_app(run, **app_kwargs)
    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=512,
                timeout_graceful_shutdown=5, server_header=False)
