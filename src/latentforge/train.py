"""Training: one visible step function per family, and the loop that drives them.

    gan_step  n_critic discriminator updates, one generator update, then the EMA of G
              (defaults: the DCGAN recipe; the loss, penalties, augmentation are parameters)
    vae_step  one update on the negative ELBO
    train     data -> networks -> loop (log, sample, evaluate, checkpoint) -> run directory

Resume is exact: the data order is a pure function of (seed, step), and the RNG state is saved
with every checkpoint, so a run stopped and resumed at a checkpoint takes the same steps as one
that never stopped. A first Ctrl-C finishes the current step, writes a checkpoint and returns;
a second one aborts at once.
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import __version__
from .checkpoint import STATE, WEIGHTS, append_jsonl, load_state, load_weights, save_state, save_weights, truncate_jsonl
from .config import ConfigError, TrainConfig, read_run_config
from .images import save_grid, to_float, to_uint8
from .augment import diff_augment
from .losses import GAN_LOSSES, gradient_penalty, negative_elbo, r1_penalty
from .models import build_networks

SAMPLE_GRID_SEEDS = range(64)  # the fixed latents behind every samples/step_XXXXXX.png
EVAL_SEED_OFFSET = 1_000_000  # seeds of the images generated for in-training evaluation


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA if available, else Apple MPS, else CPU; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return dev


def latents_for_seeds(seeds: list[int] | range, z_dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """One standard-normal latent per seed, (len(seeds), z_dim). Seed s always gives the same z,
    whatever else is in the batch and on whatever device the model runs (drawn on the CPU)."""
    zs = [torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(zs).to(device)


def default_eval_ref(data: str) -> str:
    """The held-out split of a built-in data set, else the training data itself."""
    from .data import BUILTIN

    name = data.split(":")[0]
    return f"{name}:test" if name in BUILTIN else data


class BatchOrder:
    """Deterministic batches: epoch e is a permutation seeded by (seed, e); step s is batch
    s mod (N // B) of epoch s // (N // B). No sampler state to save: the step is enough."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < batch_size:
            raise ConfigError(f"the data set has {n} images, fewer than one batch of {batch_size}; lower --batch-size")
        self.n, self.b, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm[k * self.b : (k + 1) * self.b]


# ---------------------------------------------------------------------------- the step functions


def gan_step(G: nn.Module, D: nn.Module, opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer,
             real: torch.Tensor | Sequence[torch.Tensor], z_dim: int, *, loss: str = "ns", gp_weight: float = 0.0,
             r1_gamma: float = 0.0, augment: str = "", G_ema: nn.Module | None = None,
             ema_decay: float = 0.0) -> dict[str, float]:
    """One GAN step: D update(s) on real vs fake, then G against the new D, then the EMA of G.

    `real` is one batch per D step (a single tensor = one D step; n_critic = the number of batches).
    `loss` names a pair in losses.GAN_LOSSES; `gp_weight` adds the WGAN-GP penalty, `r1_gamma`
    the R1 penalty (times gamma / 2); `augment` is a DiffAugment policy applied to every image D
    sees. With the defaults this is exactly the DCGAN step with the non-saturating loss.
    """
    d_loss_fn, g_loss_fn = GAN_LOSSES[loss]
    reals = [real] if isinstance(real, torch.Tensor) else list(real)
    aug = (lambda x: diff_augment(x, augment)) if augment else (lambda x: x)  # noqa: E731
    logs: dict[str, float] = {}

    # 1. discriminator, n_critic times: push D(x) up and D(G(z)) down; fake is detached so G gets
    #    no gradient here
    for real_i in reals:
        z = torch.randn(real_i.shape[0], z_dim, device=real_i.device)  # (B, z_dim)
        fake = G(z)  # (B, C, H, W)
        real_in = aug(real_i)
        if r1_gamma > 0:  # R1 differentiates D(x) w.r.t. the (augmented) image D sees
            real_in = real_in.detach().requires_grad_(True)
        fake_in = aug(fake.detach())
        real_logits, fake_logits = D(real_in), D(fake_in)
        loss_D = d_loss_fn(real_logits, fake_logits)
        total_D = loss_D
        if gp_weight > 0:
            gp = gradient_penalty(D, real_in, fake_in)
            total_D = total_D + gp_weight * gp
            logs["loss/gp"] = gp.item()
        if r1_gamma > 0:
            r1 = r1_penalty(real_logits, real_in)
            total_D = total_D + r1_gamma / 2 * r1
            logs["loss/r1"] = r1.item()
        opt_D.zero_grad(set_to_none=True)
        total_D.backward()
        opt_D.step()

    # 2. generator: fool the just-updated discriminator, on the last D step's fakes
    gen_logits = D(aug(fake))
    loss_G = g_loss_fn(gen_logits)
    opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    opt_G.step()

    # 3. exponential moving average of G's weights
    if G_ema is not None:
        ema_update(G_ema, G, ema_decay)

    out = {"loss/D": loss_D.item(), "loss/G": loss_G.item()}
    if loss == "ns":  # probabilities only mean something for the sigmoid (non-saturating) loss
        out["D(x)"] = torch.sigmoid(real_logits).mean().item()
        out["D(G(z))"] = torch.sigmoid(fake_logits).mean().item()
    return {**out, **logs}


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """p_ema <- decay * p_ema + (1 - decay) * p for every parameter; buffers (batch-norm running
    statistics) are copied. Karras et al. 2018 (Progressive GAN); Yazici et al. 2019."""
    for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
        p_ema.mul_(decay).add_(p, alpha=1 - decay)
    for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b)


def make_ema(G: nn.Module) -> nn.Module:
    """A frozen copy of G to hold its exponential moving average (saved as "G_ema.")."""
    return copy.deepcopy(G).requires_grad_(False)


def vae_step(vae: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, cfg: TrainConfig) -> dict[str, float]:
    """One step on the negative ELBO (reconstruction + beta * KL), reported per part."""
    out = vae(real)
    parts = negative_elbo(out.decoded, real, out.mu, out.logvar, cfg.recon_loss, cfg.beta, cfg.gaussian_sigma)
    opt.zero_grad(set_to_none=True)
    parts.total.backward()
    opt.step()
    return {"loss/total": parts.total.item(), "loss/recon": parts.recon.item(), "loss/kl": parts.kl.item()}


# ---------------------------------------------------------------------------- the loop


@dataclass
class RunState:
    step: int = 0  # optimizer steps completed
    elapsed: float = 0.0  # seconds of training wall time, resumes included
    best_fid: float = math.inf
    best_step: int = -1


@torch.no_grad()
def generate_images(nets: dict[str, nn.Module], cfg: TrainConfig, seeds: list[int] | range,
                    device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """uint8 (N, C, H, W) images for the given seeds, networks in eval mode (restored after)."""
    net = nets.get("G_ema", nets["G"]) if cfg.family == "gan" else nets["vae"]  # the EMA copy when kept
    was_training = net.training
    net.eval()
    out = []
    seeds = list(seeds)
    for i in range(0, len(seeds), batch_size):
        z = latents_for_seeds(seeds[i : i + batch_size], cfg.z_dim, device)
        x = net(z) if cfg.family == "gan" else net.decode(z)
        out.append(to_uint8(x).cpu())
    net.train(was_training)
    return torch.cat(out)


def _make_optimizers(nets: dict[str, nn.Module], cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    lrs = {"G": cfg.lr, "D": cfg.lr_d, "vae": cfg.lr}  # G_ema has no optimizer: it follows G
    return {role: torch.optim.Adam(nets[role].parameters(), lr=lrs[role], betas=(cfg.beta1, cfg.beta2))
            for role in nets if role in lrs}


class _StopFlag:
    """First SIGINT asks the loop to stop after the current step; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    elapsed: float
    last_metrics: dict[str, float]


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train a model as configured, writing everything into `cfg.out`. See the module docstring."""
    from .data import FIT_MODES, load_images

    run_dir = Path(cfg.out)
    has_run = (run_dir / "config.json").is_file()
    if has_run and not resume:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not has_run:
        raise ConfigError(f"--resume: {run_dir} holds no run to resume (no config.json)")
    if resume:
        saved, _ = read_run_config(run_dir)
        if saved.model != cfg.model or saved.data != cfg.data or saved.resolution != cfg.resolution:
            raise ConfigError(
                f"--resume: {run_dir} was trained as model={saved.model} data={saved.data} res={saved.resolution}; "
                "those cannot change on resume")
        saved.steps, saved.max_minutes = cfg.steps, cfg.max_minutes  # all a resume may change: how far to train
        cfg = saved

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    data = load_images(cfg.data, res=cfg.resolution, channels=cfg.channels, crop=FIT_MODES[cfg.fit],
                       storage=cfg.data_storage)
    images = data.for_device(device)  # uint8 (N, C, H, W) whole on the device, or read batch by batch from disk
    channels = data.channels
    nets = {role: net.to(device) for role, net in build_networks(cfg, channels).items()}
    if cfg.family == "gan" and cfg.ema_decay > 0:
        nets["G_ema"] = make_ema(nets["G"])
    opts = _make_optimizers(nets, cfg)
    order = BatchOrder(len(images), cfg.batch_size, cfg.seed)

    state = RunState()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    if resume and (run_dir / STATE).is_file():
        load_weights(nets, run_dir / WEIGHTS)
        st = load_state(run_dir / STATE)
        for role, opt in opts.items():
            opt.load_state_dict(st["optim"][role])
        torch.set_rng_state(st["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in st:
            torch.cuda.set_rng_state(st["rng_cuda"])
        state = RunState(step=int(st["step"]), elapsed=float(st["elapsed"]), best_fid=float(st["best_fid"]),
                         best_step=int(st["best_step"]))
        truncate_jsonl(run_dir / "metrics.jsonl", state.step)
        log(f"resuming {run_dir} at step {state.step} of {cfg.steps}")
    data_info = {"resolution": cfg.resolution, "channels": channels, "num_images": len(images),
                 "class_names": data.class_names, "skipped": len(data.skipped), "name": data.name}
    cfg.save(run_dir / "config.json", data_info=data_info, latentforge_version=__version__)

    evaluator = None
    if cfg.eval_every:
        from .metrics.evaluate import InTrainingEvaluator

        evaluator = InTrainingEvaluator(cfg.eval_ref or default_eval_ref(cfg.data), n=cfg.eval_n, seed=cfg.seed)

    def checkpoint() -> None:
        save_weights(nets, run_dir / WEIGHTS, metadata={"step": str(state.step), "model": cfg.model})
        st = {"step": state.step, "elapsed": state.elapsed, "best_fid": state.best_fid, "best_step": state.best_step,
              "optim": {role: opt.state_dict() for role, opt in opts.items()}, "rng_cpu": torch.get_rng_state()}
        if device.type == "cuda":
            st["rng_cuda"] = torch.cuda.get_rng_state()
        save_state(st, run_dir / STATE)

    def write_samples() -> None:
        grid = generate_images(nets, cfg, SAMPLE_GRID_SEEDS, device)
        save_grid(grid, run_dir / "samples" / f"step_{state.step:06d}.png", nrow=8, upscale=2,
                  metadata={"latentforge": __version__, "model": cfg.model, "run": run_dir.name,
                            "step": state.step, "seeds": "0-63", "synthetic image": "true"})

    def evaluate() -> dict[str, float]:
        assert evaluator is not None
        fake = generate_images(nets, cfg, range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + cfg.eval_n), device)
        res = evaluator(fake)
        row = {"kind": "eval", "step": state.step, "time": round(state.elapsed, 3), **res}
        append_jsonl(run_dir / "metrics.jsonl", row)
        if res["fid"] < state.best_fid:
            state.best_fid, state.best_step = float(res["fid"]), state.step
            save_weights(nets, run_dir / "best" / WEIGHTS, metadata={"step": str(state.step), "fid": str(res["fid"])})
        return res

    for net in nets.values():
        net.train()
    acc: dict[str, float] = {}
    acc_n, acc_t0, acc_step0 = 0, time.perf_counter(), state.step
    last: dict[str, float] = {}
    interrupted = False
    bar = _progress_bar(progress)  # total and completed are set by add_task below
    with _StopFlag() as stop, bar:
        task = bar.add_task(f"{cfg.model}", total=cfg.steps, completed=state.step, info="")
        if state.step == 0:
            write_samples()
        while state.step < cfg.steps:
            if stop.requested:
                interrupted = True
                break
            if cfg.max_minutes and state.elapsed >= cfg.max_minutes * 60:
                log(f"time budget of {cfg.max_minutes:g} min of training reached at step {state.step}; stopping")
                if state.step % cfg.sample_every:
                    write_samples()
                break
            t0 = time.perf_counter()
            if cfg.family == "gan":
                # D step i of step s takes batch s * n_critic + i: fresh data, a pure function of the step
                reals = [to_float(images[order.indices(state.step * cfg.n_critic + i)]) for i in range(cfg.n_critic)]
                out = gan_step(nets["G"], nets["D"], opts["G"], opts["D"], reals, cfg.z_dim, loss=cfg.loss,
                               gp_weight=cfg.gp_weight, r1_gamma=cfg.r1_gamma, augment=cfg.augment,
                               G_ema=nets.get("G_ema"), ema_decay=cfg.ema_decay)
            else:
                real = to_float(images[order.indices(state.step)])  # (B, C, H, W) in [-1, 1]
                out = vae_step(nets["vae"], opts["vae"], real, cfg)
            state.step += 1
            state.elapsed += time.perf_counter() - t0
            for k, v in out.items():
                if not math.isfinite(v):
                    checkpoint()
                    raise FloatingPointError(f"{k} became {v} at step {state.step}; stopped (checkpoint written)")
                acc[k] = acc.get(k, 0.0) + v
            acc_n += 1

            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                now = time.perf_counter()
                last = {k: v / acc_n for k, v in acc.items()}
                row = {"kind": "train", "step": state.step, "time": round(state.elapsed, 3),
                       "images_per_s": round((state.step - acc_step0) * cfg.batch_size / max(now - acc_t0, 1e-9), 2),
                       **{k: round(v, 6) for k, v in last.items()}}
                append_jsonl(run_dir / "metrics.jsonl", row)
                acc, acc_n, acc_t0, acc_step0 = {}, 0, now, state.step
                bar.update(task, info="  ".join(f"{k} {v:.3g}" for k, v in last.items()))
            if state.step % cfg.sample_every == 0 or state.step == cfg.steps:
                write_samples()
            if evaluator is not None and (state.step % cfg.eval_every == 0 or state.step == cfg.steps):
                res = evaluate()
                log(f"step {state.step}: FID {res['fid']:.2f}  KID {res['kid']:.4f}  (n={res['n']})")
            if state.step % cfg.checkpoint_every == 0:
                checkpoint()
            bar.update(task, completed=state.step)
        checkpoint()
    if interrupted:
        log(f"interrupted: checkpoint written at step {state.step}; continue with --resume")
    return TrainResult(run_dir=run_dir, step=state.step, interrupted=interrupted, elapsed=state.elapsed, last_metrics=last)


def _progress_bar(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        disable=not enabled, transient=False,
    )
