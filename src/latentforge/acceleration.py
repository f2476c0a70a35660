"""Speed options of training, each off by default: mixed precision, channels-last, torch.compile.

--precision fp32   float32 everywhere (the default: today's numbers, bit for bit)
--precision bf16   the networks' forward passes under torch.autocast(bfloat16): matrix products
                   and convolutions in bfloat16, reductions and losses in float32. bfloat16 has
                   float32's exponent range, so no loss scaling is needed. Fast on GPUs with
                   bfloat16 units (A100, H100); allowed on the CPU, where it is only faster with
                   native bfloat16 instructions (AVX-512 BF16 / AMX), and slower elsewhere.
--precision auto   bf16 where the device computes bfloat16 natively (a CUDA GPU that supports it; a
                   CPU with AMX or AVX-512 BF16 instructions: Intel Xeon since Cooper Lake,
                   AMD Zen 4), else fp32. Resolved once when training starts (`resolve_precision`), logged,
                   and config.json keeps the value chosen, so a resumed run keeps it. The fast-cpu
                   preset uses it: on this project's 2-core Intel Xeon with AMX, a conditional
                   DCGAN step takes 31 ms instead of 51 (benchmarks/train.md).
--precision fp16   autocast(float16) plus dynamic loss scaling (torch.amp.GradScaler: the loss is
                   multiplied by S before backward, gradients divided by S before the step, a step
                   with inf/NaN gradients is skipped and S halved; Micikevicius et al. 2018,
                   "Mixed Precision Training"). CUDA only. Not with --gp-weight / --r1-gamma: those
                   penalties differentiate D's output w.r.t. its input, which underflows in float16
                   without scaling that torch.amp does not do for torch.autograd.grad; use bf16.
--channels-last    weights and activations in NHWC memory order, which cuDNN (tensor cores) and
                   oneDNN convolve faster; the same numbers up to float rounding.
--compile          torch.compile of each trained network (the first steps compile: minutes on a
                   CPU, and it needs a C++ compiler there). progan: only G's LReLU + pixel-norm
                   pairs (whole, it ran slower than eager; D stays eager for R1's double backward).

Weights stay float32 in every mode (autocast casts copies), so checkpoints and sampling do not
depend on these options. `autocast_view` wraps a network so that the step functions need no
change for autocast; the loss scaler is passed to them (`grad_scaler`). The VAE-GAN's step also
calls the VAE's decoder and D's hidden features directly; it opens `autocast` around those calls.
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any

import torch
from torch import nn

from .config import PRECISIONS, ConfigError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype per --precision
assert set(_DTYPES) | {"auto"} == set(PRECISIONS)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matrix products natively (so bf16 autocast is faster there):
    a CUDA GPU that supports bfloat16, or a CPU with AMX tiles or AVX-512 BF16 instructions
    (oneDNN's bfloat16 kernels without them emulate it, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own CPUID checks
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def resolve_precision(cfg: Any, device: torch.device) -> tuple[str, str]:
    """(precision, why): cfg.precision with "auto" replaced by the choice for this model on `device`
    (see the module docstring), and the reason in words, for the log."""
    if cfg.precision != "auto":
        return cfg.precision, "as asked"
    if native_bf16(device):
        return "bf16", f"this {device.type} computes bfloat16 natively"
    return "fp32", f"this {device.type} has no native bfloat16"


def check(cfg: Any, device: torch.device) -> None:
    """Refuse combinations that cannot work on `device`, with the reason and what to do."""
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"--precision fp16 needs a CUDA device (loss scaling), not {device.type}; "
                          "use --precision bf16 or fp32")
    if cfg.compile and device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")
                                                     or shutil.which("clang++")):
        raise ConfigError("--compile on the CPU needs a C++ compiler (g++ or clang++) on the PATH; "
                          "install one or train without --compile")


def float32(out: Any) -> Any:
    """Floating tensors inside `out` (a tensor, tuple, list, dict or dataclass) as float32: what
    came out of autocast, before a loss."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(float32(o) for o in out)
    if isinstance(out, dict):
        return {k: float32(v) for k, v in out.items()}
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return dataclasses.replace(out, **{f.name: float32(getattr(out, f.name)) for f in dataclasses.fields(out)})
    return out


def _autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved --precision (None: fp32, no autocast)."""
    if precision not in _DTYPES:
        raise ValueError(f"precision {precision!r} must be resolved first (resolve_precision)")
    return _DTYPES[precision]


def _autocast(device_type: str, dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


class AutocastView(nn.Module):
    """`net` under torch.autocast at `dtype` (None: no autocast), with image inputs in
    channels-last memory when asked; outputs come back as float32, so that losses and
    penalties are computed in float32 outside autocast, and the backward pass runs outside it,
    as the torch.amp documentation recommends. Shares every parameter with `net`."""

    def __init__(self, net: nn.Module, device_type: str, dtype: torch.dtype | None, channels_last: bool):
        super().__init__()
        self.net, self.device_type, self.dtype, self.channels_last = net, device_type, dtype, channels_last

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.channels_last:  # (N, C, H, W) images; latents and labels pass unchanged
            args = tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.ndim == 4
                         else a for a in args)
        with _autocast(self.device_type, self.dtype):
            out = self.net(*args, **kwargs)
        return float32(out) if self.dtype is not None else out


def autocast_view(net: nn.Module, precision: str, channels_last: bool, device: torch.device) -> nn.Module:
    """`net` itself with fp32 and no channels-last (the default, bit-identical); else an AutocastView.
    With channels-last, `net`'s weights are converted in place (the same parameter objects)."""
    dtype = _autocast_dtype(precision)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    if dtype is None and not channels_last:
        return net
    return AutocastView(net, device.type, dtype, channels_last)


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context of --precision (disabled for fp32), for step code that calls a network's
    methods other than forward (a VAE's decode), which an AutocastView does not cover. Cast what
    comes out back with `float32` before a loss."""
    return _autocast(device.type, _autocast_dtype(precision))


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler: active for fp16, otherwise disabled (scale(loss) is loss, step(opt) is opt.step())."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def compile_net(net: nn.Module, enabled: bool) -> nn.Module:
    """torch.compile(net) when enabled (the default backend, inductor), else `net`. A network with a
    `compile_parts` method (progan's) compiles what that chooses instead, and `net` comes back as it is."""
    if not enabled:
        return net
    inner = net.net if isinstance(net, AutocastView) else net
    if hasattr(inner, "compile_parts"):
        inner.compile_parts()
        return net
    return torch.compile(net)
