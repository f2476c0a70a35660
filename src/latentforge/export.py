"""Export a run's generator (GAN) or decoder (VAE) as a standalone file: TorchScript or ONNX.

    m = latentforge.load("runs/dcgan")
    export(m, "dcgan.onnx")                 # + dcgan.onnx.json beside it
    export(m, "dcgan.pt", format="torchscript")

The exported graph maps latents z, float32 (N, z_dim), to images, float32 (N, C, H, W) in
[-1, 1]; N is dynamic. Sample z ~ N(0, I) (scale by psi <= 1 for truncation, or by the
temperature for a VAE); to get uint8 pixels: round((x + 1) * 127.5). Input name "z", output
name "images". A class-conditional run's graph takes a second input, "class": int64 (N,), the
class index of each image (the metadata lists the class names in index order).

Right after writing, the file is loaded back (torch.jit.load, or an onnxruntime session) and
run on a batch of a different size from the one it was traced with; its images must match the
PyTorch model's to a max abs difference < 1e-4, else ExportError. The file is written
atomically, and the metadata JSON (`<file>.json`: z_dim, resolution, channels, class names,
output range, the check's result, ...) only after the check passed.

TorchScript is produced by tracing (`torch.jit.trace`, deprecated upstream in favour of
torch.export but still the format most C++/mobile runtimes load); ONNX by the TorchScript-based
exporter (`dynamo=False`), which needs only the `onnx` package (the torch.export-based
exporter would add `onnxscript`). The check of an ONNX file needs `onnxruntime`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .sample import Model

__all__ = ["export", "ExportError", "FORMATS", "TOLERANCE", "metadata_path"]

FORMATS = ("torchscript", "onnx")
SUFFIXES = {".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript", ".onnx": "onnx"}
TOLERANCE = 1e-4  # max abs difference allowed between the exported file and the PyTorch model
TRACE_BATCH = 2  # batch size the graph is traced with
CHECK_BATCH = 5  # a different batch size for the check: proves the batch dimension is dynamic
ONNX_OPSET = 17


class ExportError(RuntimeError):
    """The exported file does not reproduce the model (or could not be checked)."""


class ZToImage(nn.Module):
    """The exported graph: latents (N, z_dim) -> images (N, C, H, W) in [-1, 1]; with a
    conditional network also the class indices c (N,) int64."""

    def __init__(self, net: nn.Module, family: str):
        super().__init__()
        self.net, self.family = net, family

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z, c) if self.family == "gan" else self.net.decode(z, c)


def metadata_path(path: str | os.PathLike) -> Path:
    """"gen.onnx" -> "gen.onnx.json" (so gen.onnx and gen.pt keep separate metadata)."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def _format_of(path: Path, format: str | None) -> str:
    if format is None:
        fmt = SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"cannot tell the format from {path.name!r}; name it .onnx or .pt, or pass format= "
                             f"one of {', '.join(FORMATS)}")
        return fmt
    fmt = format.lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def export(model: "Model", path: str | os.PathLike, format: str | None = None, check: bool = True,
           opset: int = ONNX_OPSET) -> dict[str, Any]:
    """Export `model`'s generator / decoder to `path` (format from the suffix when not given:
    .onnx -> onnx, .pt / .ts -> torchscript), check it (see the module docstring) and write
    `<path>.json`. Returns that metadata dict (with "path" and "metadata_path" added)."""
    import copy

    from . import __version__
    from .train import latents_for_seeds

    path = Path(path)
    fmt = _format_of(path, format)
    conditional = bool(getattr(model, "conditional", False))
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (the exporter needs it)
        except ImportError:
            raise ValueError("ONNX export needs the onnx package (pip install onnx onnxruntime); "
                             "or export --format torchscript") from None
        if check:
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                raise ValueError("checking an ONNX export needs onnxruntime (pip install onnxruntime); "
                                 "or skip the check (check=False / --no-check)") from None
    net = model.nets["G"] if model.family == "gan" else model.nets["vae"]
    wrapper = ZToImage(copy.deepcopy(net).cpu().float().eval(), model.family).eval()
    for p in wrapper.parameters():
        p.requires_grad_(False)
    example: tuple[torch.Tensor, ...] = (latents_for_seeds(range(TRACE_BATCH), model.z_dim),)
    if conditional:  # classes 0, 1, ...: any valid indices trace the same graph
        example += (torch.arange(TRACE_BATCH) % model.num_classes,)
    names = ["z", "class"][: len(example)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit / legacy ONNX exporter notices
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the shape checks in forward()
            if fmt == "torchscript":
                traced = torch.jit.trace(wrapper, example, check_trace=False)
                torch.jit.save(traced, str(tmp))
            else:
                torch.onnx.export(wrapper, example, str(tmp), input_names=names, output_names=["images"],
                                  dynamic_axes={**{n: {0: "batch"} for n in names}, "images": {0: "batch"}},
                                  opset_version=opset, dynamo=False, do_constant_folding=True)
        max_diff = None
        if check:
            inputs = (latents_for_seeds(range(100, 100 + CHECK_BATCH), model.z_dim),)  # not the traced latents
            if conditional:  # not the traced classes either: the class input must steer the graph
                inputs += (torch.arange(CHECK_BATCH - 1, -1, -1) % model.num_classes,)
            with torch.no_grad():
                want = wrapper(*inputs)
            got = _run_exported(tmp, fmt, inputs)
            if tuple(got.shape) != tuple(want.shape):
                raise ExportError(f"exported {fmt} gives shape {tuple(got.shape)} for a batch of {CHECK_BATCH}, "
                                  f"the model {tuple(want.shape)}")
            max_diff = float((got - want).abs().max())
            if not max_diff < TOLERANCE:
                raise ExportError(f"exported {fmt} differs from the model by up to {max_diff:.3g} "
                                  f"(allowed < {TOLERANCE:g}); the file was not written")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    meta: dict[str, Any] = {
        "format": fmt,
        "file": path.name,
        "family": model.family,
        "model": model.config.model,
        "z_dim": model.z_dim,
        "resolution": model.resolution,
        "channels": model.channels,
        "class_names": model.class_names,
        "input": {"name": "z", "shape": ["N", model.z_dim], "dtype": "float32",
                  "distribution": "standard normal N(0, I); scale by truncation psi (GAN) or temperature (VAE)"},
        "class_input": ({"name": "class", "shape": ["N"], "dtype": "int64",
                         "values": f"0..{model.num_classes - 1}, the index into class_names"}
                        if conditional else None),
        "output": {"name": "images", "shape": ["N", model.channels, model.resolution, model.resolution],
                   "dtype": "float32", "layout": "NCHW", "range": [-1.0, 1.0],
                   "to_uint8": "round((x + 1) * 127.5), clamped to 0..255"},
        "output_range": [-1.0, 1.0],
        "dynamic_batch": True,
        "opset": opset if fmt == "onnx" else None,
        "check": {"max_abs_diff": max_diff, "tolerance": TOLERANCE, "batch": CHECK_BATCH} if check else None,
        "run": str(model.run_dir),
        "checkpoint": model.checkpoint,
        "latentforge": __version__,
        "torch": torch.__version__,
    }
    mpath = metadata_path(path)
    mtmp = mpath.with_name(mpath.name + ".tmp")
    mtmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(mtmp, mpath)
    return {**meta, "path": str(path), "metadata_path": str(mpath)}


def _run_exported(path: Path, fmt: str, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Run an exported file on (z,) or (z, class) (CPU) -> float32 images."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return loaded(*inputs).float()
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    feed = {"z": inputs[0].numpy().astype(np.float32)}
    if len(inputs) > 1:
        feed["class"] = inputs[1].numpy().astype(np.int64)
    (out,) = sess.run(["images"], feed)
    return torch.from_numpy(out)
