"""The on-disk format of a run: weights as safetensors, training state as a weights_only file.

Nothing here pickles code: `model.safetensors` holds tensors only, and `state.pt` holds plain
containers of tensors and numbers that `torch.load(..., weights_only=True)` accepts. Every write
goes to a temporary file first and is renamed into place, so a crash mid-write never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "model.safetensors"
STATE = "state.pt"


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".tmp")


def save_weights(nets: dict[str, nn.Module], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write every network's state dict into one safetensors file, keys prefixed by role ("G.", "D.", "vae.")."""
    path = Path(path)
    tensors = {f"{role}.{k}": v.detach().cpu().contiguous() for role, net in nets.items() for k, v in net.state_dict().items()}
    tmp = _atomic_target(path)
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_weights(nets: dict[str, nn.Module], path: str | Path, roles: tuple[str, ...] | None = None) -> None:
    """Load weights written by `save_weights` into `nets` (all roles, or only `roles`); strict about keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}")
    tensors = load_file(str(path))
    for role, net in nets.items():
        if roles is not None and role not in roles:
            continue
        prefix = role + "."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not sd:
            raise ValueError(f"{path} holds no weights for {role!r}; it holds prefixes "
                             f"{sorted({k.split('.')[0] for k in tensors})}")
        net.load_state_dict(sd, strict=True)


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Training state (optimizer states, step, RNG) via torch.save, atomically."""
    path = Path(path)
    tmp = _atomic_target(path)
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read `state.pt` with weights_only=True: tensors and plain containers only, never code."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one JSON object as a line (flushed, so a crash loses at most the line being written)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file, skipping a torn last line (from a crash mid-write)."""
    rows: list[dict[str, Any]] = []
    p = Path(path)
    if not p.is_file():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Drop rows with step > max_step (after a resume from an earlier checkpoint), atomically."""
    p = Path(path)
    if not p.is_file():
        return
    rows = [r for r in read_jsonl(p) if int(r.get("step", 0)) <= max_step]
    tmp = _atomic_target(p)
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, p)
