"""Programs that tests/test_distributed.py starts under torchrun (gloo, on the CPU).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py MODE ...

MODE
  job JOB.json     JOB.json: {"runs": [{"config": {...}, "resume": bool, "record": "PREFIX"}, ...],
                   "commands": [["sample", ...], ["eval", ...], ...], "crash": {"step": S, "args": [...]}}.
                   1. the trainings, with the step functions spied on: each rank writes
                   PREFIX.rank<R>.pt with, per step, the ids of the images it trained on (pixel
                   (0, 0) of the test data holds the image's id), its local losses, and all the
                   trained weights after the step;
                   2. the `latentforge` commands, one after the other, with the Inception extractor
                   replaced by PoolExtractor (fast, deterministic);
                   3. `latentforge ARGS` through cli.main (as the real command runs) where rank 1
                   raises RuntimeError("injected failure") in its step S: the job ends there.
The test runs the same functions in one process to compare. (Processes are expensive to start
on a busy machine: one launch does all of it.)
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F


def image_ids(batch: torch.Tensor) -> list[int]:
    """The id stored in pixel (0, 0) of each image of a float batch in [-1, 1] (value = 4 * id)."""
    u8 = ((batch[:, 0, 0, 0].detach().cpu().double() + 1) * 127.5).round().long()
    return (u8 // 4).tolist()


def spy_on_steps(records: list[dict[str, Any]]) -> Callable[[], None]:
    """Wrap train's step functions (gan, vae, upsampler, vae_gan) so that each step appends what it saw and did;
    returns the function that puts the originals back."""
    from latentforge import train as T

    orig_gan, orig_vae, orig_up, orig_vg = T.gan_step, T.vae_step, T.upsampler_step, T.vae_gan_step

    def weights(*nets: torch.nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().flatten().cpu() for n in nets for p in n.parameters()]).clone()

    def gan_step(G, D, opt_G, opt_D, real, z_dim, **kw):  # type: ignore[no-untyped-def]
        reals = [real] if isinstance(real, torch.Tensor) else list(real)
        out = orig_gan(G, D, opt_G, opt_D, real, z_dim, **kw)
        records.append({"ids": [image_ids(r) for r in reals], "loss": dict(out), "weights": weights(G, D)})
        return out

    def vae_step(vae, opt, real, cfg, **kw):  # type: ignore[no-untyped-def]
        out = orig_vae(vae, opt, real, cfg, **kw)
        records.append({"ids": [image_ids(real)], "loss": dict(out), "weights": weights(vae)})
        return out

    def upsampler_step(U, D, opt_U, opt_D, real, factor, **kw):  # type: ignore[no-untyped-def]
        reals = [real] if isinstance(real, torch.Tensor) else list(real)
        out = orig_up(U, D, opt_U, opt_D, real, factor, **kw)
        records.append({"ids": [image_ids(r) for r in reals], "loss": dict(out), "weights": weights(U, D)})
        return out

    def vae_gan_step(vae, D, opt_vae, opt_D, real, cfg, step):  # type: ignore[no-untyped-def]
        out = orig_vg(vae, D, opt_vae, opt_D, real, cfg, step)
        records.append({"ids": [image_ids(real)], "loss": dict(out), "weights": weights(vae, D)})
        return out

    T.gan_step, T.vae_step, T.upsampler_step, T.vae_gan_step = gan_step, vae_step, upsampler_step, vae_gan_step

    def restore() -> None:
        T.gan_step, T.vae_step, T.upsampler_step, T.vae_gan_step = orig_gan, orig_vae, orig_up, orig_vg

    return restore


def run_trainings(runs: list[dict[str, Any]]) -> None:
    from latentforge import distributed
    from latentforge.config import TrainConfig
    from latentforge.train import train

    for run in runs:
        records: list[dict[str, Any]] = []
        restore = spy_on_steps(records)
        try:
            train(TrainConfig(**run["config"]), resume=run.get("resume", False), progress=False, log=lambda m: None)
        finally:
            restore()
        torch.save({"rank": distributed.rank(), "world": distributed.world_size(),
                    "ids": [r["ids"] for r in records], "loss": [r["loss"] for r in records],
                    "weights": torch.stack([r["weights"] for r in records])},
                   f"{run['record']}.rank{distributed.rank()}.pt")


class PoolExtractor:
    """A fast deterministic stand-in for Inception in tests: 4x4 average-pooled gray levels and
    their squares (32 features), computed in batches of 32 like the real extractor."""

    batch_size = 32
    cache_id = "test-pool-v1"

    def protocol(self) -> dict[str, Any]:
        return {"model": "pool test extractor"}

    def __call__(self, images_u8: torch.Tensor, progress: bool = True) -> np.ndarray:
        out = [np.empty((0, 32))]
        for i in range(0, images_u8.shape[0], self.batch_size):
            x = images_u8[i : i + self.batch_size].float().mean(1, keepdim=True) / 255
            f = F.adaptive_avg_pool2d(x, 4).flatten(1)
            out.append(torch.cat([f, f * f], 1).double().numpy())
        return np.concatenate(out)


def use_pool_extractor() -> None:
    ev = importlib.import_module("latentforge.metrics.evaluate")  # the module, not the function of that name

    ev.default_extractor = lambda device="cpu": PoolExtractor()  # type: ignore[assignment]


def run_commands(commands: list[list[str]]) -> None:
    """Each `latentforge` command in turn, as the CLI runs it."""
    from latentforge.cli import app

    for command in commands:
        app(command, standalone_mode=False)


def crash(step: int, args: list[str]) -> None:
    """Run the CLI with rank 1's step `step` raising (see the module docstring)."""
    from latentforge import distributed
    from latentforge import train as T
    from latentforge.cli import main

    orig, calls = T.gan_step, [0]

    def failing_step(*a, **kw):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if distributed.rank() == 1 and calls[0] == step:
            raise RuntimeError("injected failure")
        return orig(*a, **kw)

    T.gan_step = failing_step
    sys.argv = ["latentforge", *args]
    main()


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "job":
        from latentforge.distributed import shutdown

        job = json.loads(Path(rest[0]).read_text())
        run_trainings(job.get("runs", []))
        use_pool_extractor()
        run_commands(job.get("commands", []))
        if "crash" in job:
            crash(int(job["crash"]["step"]), job["crash"]["args"])
        shutdown()
    else:
        raise SystemExit(f"unknown mode {mode}")
