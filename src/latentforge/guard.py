"""Divergence guard: notice a run going bad, roll it back, lower the learning rates, go on.

Two failures are detected:

    non-finite  a loss of the step is NaN or inf (every step, from the step's own numbers), or a
                weight, buffer or optimizer state is (at every check)
    collapse    GANs only: the generator's images for a fixed set of seeds stopped differing from
                each other. Their diversity (mean pairwise distance, see `diversity`) fell below
                `guard_min_diversity` times the smaller of the best diversity of the earlier
                checks and the real data's diversity (measured once, at the start)

A check runs every `guard_every` steps. When it passes, the state of the run (weights of every
network, optimizer states, RNG state, step) is copied in memory: the last good state. On a
failure the run goes back to that state, multiplies every learning rate by `guard_lr_factor`,
writes a checkpoint, logs what happened (the console and a `"kind": "guard"` line in
metrics.jsonl) and goes on. After `guard_max_retries` recoveries with no passing check in
between it stops with `TrainingDiverged`, leaving a checkpoint of the last good state (with
the lowered learning rate, and a fresh retry budget for `--resume`).

A healthy run is left alone: a check runs the networks under no_grad in eval mode (no batch-norm
statistics move), draws its latents from its own seeded generators, never from the global RNG,
and only copies tensors; so a run that never fails trains bit-identically with the guard on or
off. The guard's own state (learning-rate scale, retries, best diversity) is saved in state.pt,
so a resumed run makes the same decisions and keeps the lowered learning rate.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from .images import to_float
from .models import eval_mode

GUARD_SEEDS = range(2_000_000, 2_000_064)  # fixed latents of the diversity check (apart from sample/eval seeds)
REAL_SUBSET_SEED = 2_000_000  # which real images the real data's diversity is measured on


class TrainingDiverged(FloatingPointError):
    """Training kept failing after every recovery the guard had; the message says what to do."""


def diversity(images: torch.Tensor) -> float:
    """Mean pairwise distance of K images, in RMS pixel units:

        div(x) = 1 / (K (K - 1)) * sum_{i != j} ||x_i - x_j||_2 / sqrt(D),   D = C * H * W,

    for float images (K, C, H, W) in [-1, 1]. 0 when all images are identical (a fully collapsed
    generator); K >= 2. The pixel-space form of the "average pairwise distance between samples"
    diversity score (Zhu et al. 2017, BicycleGAN; Mao et al. 2019, Mode Seeking GANs, use LPIPS
    distances); pixels suffice here because only a drop relative to the same run is judged.
    """
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"diversity needs (K >= 2, C, H, W) images, got shape {tuple(images.shape)}")
    x = images.detach().flatten(1).double()  # (K, D); double: the sum of K^2 distances stays exact enough
    d = torch.cdist(x, x) / math.sqrt(x.shape[1])  # (K, K), zero diagonal
    k = len(x)
    return float(d.sum() / (k * (k - 1)))


def is_collapsed(div: float, best: float, real: float, fraction: float) -> bool:
    """div < fraction * min(best, real): a drop to a small part of both what this generator
    already reached and what the data has. Comparing with `best` too spares an untrained
    generator, whose images all look alike from the start (its diversity is tiny but not falling)."""
    return div < fraction * min(best, real)


@dataclass
class Problem:
    kind: str  # "non-finite" or "collapse"
    detail: str  # one line, e.g. "loss/D became nan"
    numbers: dict[str, float] = field(default_factory=dict)  # for the metrics.jsonl line


@dataclass
class Recovery:
    """What a recovery did: the metrics.jsonl line, the console message, whether it gave up."""

    step: int  # the step the run went back to
    row: dict[str, Any]
    message: str
    gave_up: bool


def _all_finite(tensors: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if torch.is_tensor(t) and t.is_floating_point())


def _optimizer_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]


class Guard:
    """Watches one training run; see the module docstring. The loop calls `start` once, `inspect`
    after every step, and `recover` when `inspect` reports a problem."""

    def __init__(self, cfg: TrainConfig, nets: dict[str, nn.Module], opts: dict[str, torch.optim.Optimizer],
                 images: torch.Tensor, device: torch.device):
        self.cfg, self.nets, self.opts, self.device = cfg, nets, opts, device
        # the configured learning rates: read before a resume loads (possibly lowered) optimizer states
        self.base_lr = {role: float(opt.param_groups[0]["lr"]) for role, opt in opts.items()}
        # persisted in state.pt (state_dict / load_state_dict)
        self.lr_scale = 1.0  # product of guard_lr_factor over the recoveries so far
        self.retries = 0  # recoveries since the last passing check
        self.recoveries = 0  # recoveries in the whole run
        self.best_diversity = -1.0  # best diversity of G's images at a passing check; < 0: none yet
        self.snapshot: dict[str, Any] | None = None
        # (the upsampler has no generator of latents to check)
        self.check_collapse = cfg.family == "gan" and cfg.model != "upsampler" and cfg.guard_min_diversity > 0
        self.real_diversity = math.nan
        if self.check_collapse:
            k = min(len(GUARD_SEEDS), len(images))
            idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(REAL_SUBSET_SEED))[:k]
            self.real_diversity = diversity(to_float(images[idx.to(images.device)]))

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, float | int]:
        return {"lr_scale": self.lr_scale, "retries": self.retries, "recoveries": self.recoveries,
                "best_diversity": self.best_diversity}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.lr_scale, self.retries = float(st["lr_scale"]), int(st["retries"])
        self.recoveries, self.best_diversity = int(st["recoveries"]), float(st["best_diversity"])

    # ------------------------------------------------------------------ checks

    @torch.no_grad()
    def generator_diversity(self) -> float:
        """diversity() of G's images for GUARD_SEEDS, G in eval mode (restored after)."""
        from .train import cycled_labels, latents_for_seeds

        G = self.nets["G"]
        c = cycled_labels(len(GUARD_SEEDS), getattr(getattr(G, "cfg", None), "num_classes", 0))  # conditional G: cycle classes
        with eval_mode(G):
            x = G(latents_for_seeds(GUARD_SEEDS, self.cfg.z_dim, self.device), None if c is None else c.to(self.device))
        return diversity(x)

    def _state_problem(self) -> Problem | None:
        for role, net in self.nets.items():
            if not _all_finite(list(net.parameters()) + list(net.buffers())):
                return Problem("non-finite", f"the weights of {role} hold NaN or inf")
        for role, opt in self.opts.items():
            if not _all_finite(_optimizer_tensors(opt)):
                return Problem("non-finite", f"the optimizer state of {role} holds NaN or inf")
        return None

    def start(self, step: int) -> None:
        """Take the first snapshot (of a fresh or resumed run); the first diversity of a fresh run
        becomes the best so far. A state that is bad already cannot be recovered from."""
        problem = self._state_problem()
        if problem is not None:
            raise TrainingDiverged(f"{problem.detail} at step {step}, before training went on; "
                                   "start a new run (or lower --lr) instead of resuming this one")
        if self.check_collapse and self.best_diversity < 0:
            self.best_diversity = self.generator_diversity()
        self._take_snapshot(step)

    def inspect(self, out: dict[str, float], step: int) -> Problem | None:
        """After step `step`: a problem, or None. Every guard_every steps a full check, which
        takes a snapshot when it passes."""
        for k, v in out.items():
            if not math.isfinite(v):
                return Problem("non-finite", f"{k} became {v}", {k: v})
        if step % self.cfg.guard_every:
            return None
        problem = self._state_problem()
        if problem is None and self.check_collapse:
            div = self.generator_diversity()
            numbers = {"diversity": div, "best_diversity": self.best_diversity, "real_diversity": self.real_diversity}
            if not math.isfinite(div):
                return Problem("non-finite", "the generator's images hold NaN or inf", numbers)
            if is_collapsed(div, self.best_diversity, self.real_diversity, self.cfg.guard_min_diversity):
                return Problem("collapse", f"the generator collapsed: sample diversity {div:.4g}, below "
                               f"{self.cfg.guard_min_diversity:g} x min(best {self.best_diversity:.4g}, "
                               f"real data {self.real_diversity:.4g})", numbers)
            self.best_diversity = max(self.best_diversity, div)
        if problem is None:
            self.retries = 0
            self._take_snapshot(step)
        return problem

    # ------------------------------------------------------------------ snapshot and recovery

    def _take_snapshot(self, step: int) -> None:
        self.snapshot = {
            "step": step,
            "nets": {role: {k: v.detach().clone() for k, v in net.state_dict().items()} for role, net in self.nets.items()},
            "opts": {role: copy.deepcopy(opt.state_dict()) for role, opt in self.opts.items()},
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
        }

    def _restore_snapshot(self) -> int:
        snap = self.snapshot
        assert snap is not None, "Guard.start() takes the first snapshot"
        for role, net in self.nets.items():
            net.load_state_dict(snap["nets"][role])  # copies into the existing parameters
        for role, opt in self.opts.items():
            opt.load_state_dict(copy.deepcopy(snap["opts"][role]))  # a copy: the snapshot may be needed again
        torch.set_rng_state(snap["rng_cpu"])
        if snap["rng_cuda"] is not None:
            torch.cuda.set_rng_state(snap["rng_cuda"])
        return int(snap["step"])

    def _set_lrs(self) -> dict[str, float]:
        lrs = {}
        for role, opt in self.opts.items():
            lrs[role] = self.base_lr[role] * self.lr_scale
            for group in opt.param_groups:
                group["lr"] = lrs[role]
        return lrs

    def recover(self, problem: Problem, step: int) -> Recovery:
        """Go back to the last good state and lower the learning rates; when the retries are
        used up, go back all the same (for the checkpoint) and report giving up."""
        good_step = self._restore_snapshot()
        self.lr_scale *= self.cfg.guard_lr_factor
        lrs = self._set_lrs()
        self.recoveries += 1
        attempt = self.retries + 1  # this failure's place in the streak since the last passing check
        gave_up = attempt > self.cfg.guard_max_retries
        self.retries = 0 if gave_up else attempt  # giving up leaves a fresh budget for --resume
        lr_text = ", ".join(f"{role} {lr:.3g}" for role, lr in lrs.items())
        row = {"event": problem.kind, "detail": problem.detail, "detected_step": step, "rolled_back_to": good_step,
               "lr_scale": self.lr_scale, **{f"lr/{role}": lr for role, lr in lrs.items()},
               "attempt": attempt, "max_retries": self.cfg.guard_max_retries, "gave_up": gave_up,
               **{k: v for k, v in problem.numbers.items() if math.isfinite(v)}}
        if gave_up:
            message = (f"training diverged: {problem.detail} at step {step}, and {self.cfg.guard_max_retries} "
                       f"recoveries (roll back, lower the learning rate) did not help. The last good state "
                       f"(step {good_step}) is checkpointed with learning rates {lr_text}; check the data or "
                       "lower --lr in a new run, or try --resume")
        else:
            message = (f"guard: {problem.detail} at step {step}; rolled back to step {good_step}, learning rates "
                       f"now {lr_text} (recovery {attempt} of at most {self.cfg.guard_max_retries})")
        return Recovery(step=good_step, row=row, message=message, gave_up=gave_up)
