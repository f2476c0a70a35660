"""Scale-out with torch.distributed: one process per device, launched by torchrun.

    torchrun --nproc-per-node 4 -m latentforge train --model dcgan --batch-size 256 --sync-bn --out runs/d
    torchrun --nproc-per-node 4 -m latentforge eval runs/d --n 50000

A command started by torchrun finds WORLD_SIZE, RANK and LOCAL_RANK in its environment and
joins the job in `setup` (nccl on CUDA, gloo on the CPU; each process on cuda:LOCAL_RANK). In a
single process every helper here is the identity or a no-op, so one code path serves both.

Training (see docs/DISTRIBUTED.md for what each choice means for reproducibility):
- data: the global batch is --batch-size; BatchOrder gives it for each step as before, and rank
  r takes slice r of it (`batch_slice`), so the data order is a pure function of (seed, step)
  whatever the number of processes;
- gradients: each trained network is wrapped in DistributedDataParallel (`ddp`), which averages
  gradients over ranks in the backward pass; the discriminator's forward in the generator step
  runs under `no_grad_sync` (those gradients are thrown away);
- batch norm: per-rank statistics unless --sync-bn (`SyncBatchNorm`: the global batch's);
- noise: the GAN's z comes from one stream that all ranks share, drawn for the whole global
  batch, each rank keeping its slice (`noise`); noise drawn inside the networks (the VAE's
  reparameterization, DiffAugment, the gradient penalty's mixing weights) comes from a per-rank
  stream (`split_rng`). Checkpoints hold both (`rng_state`);
- rank 0 alone writes files and logs; the stop flag (Ctrl-C) and the time budget are agreed
  over ranks (`any_rank`), so all ranks stop at the same step;
- a failing rank says so and takes the process group down with it (`failure_guard`).

Sampling and evaluation: `sample_sharded` gives each rank a contiguous share of the seeds,
`gather_rows` collects everything in seed order, and `evaluate_on_main` runs the metrics on
rank 0 while every feature extraction it asks for is split over all ranks (`SharedExtractor`).
Shares are aligned to the batch size, so every batch holds the same images as in one process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError

T = TypeVar("T")
TIMEOUT = timedelta(minutes=30)  # how long a collective waits for a slow rank (rank 0 evaluating, writing a checkpoint)


# ----------------------------------------------------------------------------- the process group


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it; 1 when not launched by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    """True in a job of several processes whose process group is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files and prints."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the job when torchrun started several processes, and return this process's device:
    cuda:LOCAL_RANK on CUDA (nccl), the CPU otherwise (gloo). In one process: `device` itself.
    Idempotent: a second call returns the same device without joining again."""
    world = env_world_size()
    if world <= 1:
        return device
    if not dist.is_available():
        raise ConfigError("launched with several processes, but this PyTorch has no torch.distributed; run one process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"process with LOCAL_RANK {local_rank}, but this machine has {torch.cuda.device_count()} "
                              "GPU(s); start at most one process per GPU (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"several processes run on CUDA (nccl) or on the CPU (gloo), not on {device.type}; "
                          "use --device cpu or one process")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return device


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (at the end of a command, or after a failure)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _is_peer_failure(err: BaseException) -> bool:
    """A collective that failed because another rank went away (gloo: "Connection closed by peer")."""
    text = str(err)
    return isinstance(err, getattr(dist, "DistNetworkError", ())) or "closed by peer" in text or "reset by peer" in text


@contextlib.contextmanager
def failure_guard(expected: tuple[type[BaseException], ...] = (),
                  log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Wrap a whole command. If this rank of a multi-process job fails, print "rank R failed: ..."
    and destroy the process group: the other ranks, waiting in a collective for this one, then
    fail at once instead of after TIMEOUT, and torchrun ends the job. Exceptions of the
    `expected` types (user errors, which the CLI prints itself) are not announced again.
    SystemExit is a normal end. In one process this does nothing."""
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        yield
    except SystemExit:
        shutdown()
        raise
    except BaseException as err:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            r = dist.get_rank()
            if _is_peer_failure(err):
                say(f"rank {r} stopped: a collective operation failed because another rank failed or exited "
                    f"(see its message): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            elif not isinstance(err, expected):
                say(f"rank {r} failed: {type(err).__name__}: {err}")
            with contextlib.suppress(Exception):  # never hide the original error
                shutdown()
        raise
    else:
        shutdown()


# ----------------------------------------------------------------------------- collectives


def _comm_device() -> torch.device:
    """Where tensors must be for a collective: the current GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank (one process: `flag`)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over ranks (in float64), the same on every rank. Every rank holds
    an equal share of the global batch, so the mean of per-rank batch means is the global batch's."""
    if not is_distributed() or not values:
        return values
    keys = list(values)  # the same order on every rank: the same code made the dict
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    t /= world_size()
    return dict(zip(keys, t.tolist()))


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `t`, concatenated in rank order, on every rank (one process: `t`).
    Ranks may hold different numbers of rows, also none; the dtype must agree."""
    if not is_distributed():
        return t
    metas: list[Any] = [None] * world_size()
    dist.all_gather_object(metas, (int(t.shape[0]), tuple(t.shape[1:])))
    rows = [m[0] for m in metas]
    trailing = next((m[1] for m in metas if m[0] > 0), tuple(t.shape[1:]))
    dev = _comm_device()
    buf = torch.zeros((max(max(rows), 1), *trailing), dtype=t.dtype, device=dev)
    if t.shape[0]:
        buf[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(buf) for _ in rows]
    dist.all_gather(parts, buf)
    return torch.cat([p[:k] for p, k in zip(parts, rows)]).to(t.device)


# ----------------------------------------------------------------------------- sharding


def shard_range(n: int, align: int = 1) -> range:
    """This rank's contiguous share of range(n), cut at multiples of `align` (a batch size, so
    that every batch holds the same items as in one process); range(n) in one process. Ranks in
    order cover range(n) exactly once; a rank may get nothing when n < world_size * align."""
    if not is_distributed():
        return range(n)
    w, r = world_size(), rank()
    blocks = -(-n // align)
    lo, hi = (r * blocks // w) * align, ((r + 1) * blocks // w) * align
    return range(min(lo, n), min(hi, n))


def check_batch_size(batch_size: int) -> None:
    """The global batch must split evenly over the processes."""
    w = world_size()
    if batch_size % w:
        raise ConfigError(f"--batch-size {batch_size} is the global batch and must split evenly over the {w} "
                          f"processes; use a multiple of {w} (e.g. {batch_size + w - batch_size % w})")


def batch_slice(global_indices: torch.Tensor) -> torch.Tensor:
    """Rank r's slice r of a global batch (of indices, images, ...): equal shares, in rank order."""
    if not is_distributed():
        return global_indices
    w, r = world_size(), rank()
    per = global_indices.shape[0] // w
    assert per * w == global_indices.shape[0], "the global batch must split evenly (check_batch_size)"
    return global_indices[r * per : (r + 1) * per]


# ----------------------------------------------------------------------------- random streams

_noise_stream: torch.Generator | None = None  # several processes: the z stream that every rank shares


def rank_seed(seed: int, rank_: int, step: int = 0) -> int:
    """Seed of rank `rank_`'s own stream: a stable hash of (seed, rank, step)."""
    digest = hashlib.sha256(f"latentforge:{seed}:{rank_}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _global_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def split_rng(seed: int, device: torch.device) -> None:
    """Several processes: from here on, the GAN's z comes from a stream shared by all ranks that
    starts where one process's generator stands now (`noise`), and torch's global generators,
    used inside the networks, are seeded per rank with rank_seed(seed, rank). One process: nothing."""
    global _noise_stream
    if not is_distributed():
        _noise_stream = None
        return
    _noise_stream = torch.Generator(device=device)
    _noise_stream.set_state(_global_state(device))
    torch.manual_seed(rank_seed(seed, rank()))


def noise(n: int, z_dim: int, device: torch.device) -> torch.Tensor:
    """This rank's z for a batch of n: (n, z_dim) standard normal. One process:
    torch.randn(n, z_dim). Several: rows r*n .. (r+1)*n of one (world*n, z_dim) draw from the
    shared stream, so the global batch gets the z that one process would draw."""
    if _noise_stream is None:
        return torch.randn(n, z_dim, device=device)
    w, r = world_size(), rank()
    return torch.randn(n * w, z_dim, generator=_noise_stream, device=device)[r * n : (r + 1) * n]


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """Random state for a checkpoint (a collective with several processes: call it on every rank).
    "rng_cpu" / "rng_cuda" hold one process's generator, or with several the shared z stream
    (plus rank 0's other generator); "rng_ranks_cpu" / "rng_ranks_cuda" (W, ...) every rank's own."""
    if _noise_stream is None:
        st = {"rng_cpu": torch.get_rng_state()}
        if device.type == "cuda":
            st["rng_cuda"] = torch.cuda.get_rng_state(device)
        return st
    own_cpu = torch.get_rng_state()
    st = {"rng_ranks_cpu": gather_rows(own_cpu[None])}
    if device.type == "cuda":
        st["rng_cpu"] = st["rng_ranks_cpu"][0].clone()
        st["rng_cuda"] = _noise_stream.get_state()
        st["rng_ranks_cuda"] = gather_rows(torch.cuda.get_rng_state(device)[None])
    else:
        st["rng_cpu"] = _noise_stream.get_state()
    return st


def set_rng_state(st: dict[str, Any], device: torch.device, seed: int, step: int) -> None:
    """Restore what `rng_state` saved. The z stream always continues; every rank's own stream
    continues when the checkpoint has one per rank for this many processes, and is otherwise
    seeded afresh with rank_seed(seed, rank, step)."""
    if _noise_stream is None:
        torch.set_rng_state(st["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in st:
            torch.cuda.set_rng_state(st["rng_cuda"], device)
        return
    if device.type == "cuda":
        if "rng_cuda" in st:
            _noise_stream.set_state(st["rng_cuda"])
    else:
        _noise_stream.set_state(st["rng_cpu"])
    ranks_cpu = st.get("rng_ranks_cpu")
    if ranks_cpu is not None and len(ranks_cpu) == world_size():
        # .clone(): a row of the (W, ...) tensor has a storage offset, which set_rng_state
        # does not handle (it crashes the process in torch 2.13)
        torch.set_rng_state(ranks_cpu[rank()].clone())
        if device.type == "cuda" and "rng_ranks_cuda" in st:
            torch.cuda.set_rng_state(st["rng_ranks_cuda"][rank()].clone(), device)
    else:
        torch.manual_seed(rank_seed(seed, rank(), step))


# ----------------------------------------------------------------------------- networks


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum over ranks is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(nn.BatchNorm2d):
    """Batch norm over the global batch: in training with several processes, the mean and
    variance are those of all ranks' batches together (Ioffe & Szegedy 2015 over the global
    batch; what torch.nn.SyncBatchNorm does, which accepts GPU tensors only; this one also runs
    on the CPU with gloo). Otherwise (eval mode, one process) exactly nn.BatchNorm2d.

        mean = sum_ranks sum(x) / N,   var = sum_ranks sum((x - mean)^2) / N   (N: global count)
        y = (x - mean) / sqrt(var + eps) * weight + bias
        running stats: as BatchNorm2d, with the global mean and the unbiased var * N / (N - 1)

    Two passes (mean first, then squared deviations) rather than E[x^2] - E[x]^2, which loses
    precision when the mean is large. Parameters and buffers have BatchNorm2d's names, so
    checkpoints do not depend on this option."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        c, xf = x.shape[1], x.float()  # statistics in float32, also under bf16/fp16 autocast
        count = xf.new_full((1,), x.numel() // c)
        total = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), count]))  # (C + 1,)
        n = total[c]
        mean = total[:c] / n  # (C,)
        dev = xf - mean[None, :, None, None]
        var = _AllReduceSum.apply(dev.pow(2).sum((0, 2, 3))) / n  # (C,), biased: normalizes this batch
        y = dev * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d inside `module` (in place) by a SyncBatchNorm holding the very
    same parameter and buffer tensors (optimizers keep working). Returns `module`."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                                 track_running_stats=child.track_running_stats)
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias
            if child.track_running_stats:
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child)
    return module


def ddp(net: nn.Module, device: torch.device) -> nn.Module:
    """`net` wrapped in DistributedDataParallel with several processes; `net` itself otherwise.
    DDP broadcasts rank 0's weights once, then averages gradients over ranks in every backward."""
    if not is_distributed():
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast_parameters(net: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DistributedDataParallel does when it
    wraps a network), for networks trained with GradAveragingScaler instead."""
    if is_distributed():
        for t in [*net.parameters(), *net.buffers()]:
            dist.broadcast(t.data, src=0)


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Each parameter's .grad replaced by its mean over ranks, in one all-reduce. Every rank must
    hold gradients for the same parameters (the same code ran on each)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not is_distributed() or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class GradAveragingScaler:
    """A torch.amp.GradScaler stand-in whose step(opt) first averages the gradients of opt's
    parameters over ranks: the gradient synchronization of networks that DistributedDataParallel
    cannot wrap. progan is one: the parameters its forward uses change with the growing (the blocks
    not yet grown, the old toRGB after a fade-in), and with DDP's find_unused_parameters D cannot
    run on the real and on the fake batch before one backward. Only the gradients an optimizer
    steps on are averaged, so the discriminator's gradients from the generator step stay local,
    as under no_grad_sync. Averaging before the scaler's inf check makes every rank skip or take
    the same step. Unlike DDP, communication waits for the end of the backward pass."""

    def __init__(self, scaler: Any):
        self.inner = scaler

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.inner.scale(loss)

    def step(self, opt: torch.optim.Optimizer) -> Any:
        average_gradients([p for group in opt.param_groups for p in group["params"]])
        return self.inner.step(opt)

    def update(self) -> None:
        self.inner.update()

    def is_enabled(self) -> bool:
        return self.inner.is_enabled()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def unwrap(net: nn.Module) -> nn.Module:
    """The network inside the wrappers of train.step_networks (DistributedDataParallel,
    acceleration.AutocastView, torch.compile); `net` itself when not wrapped. For calling methods
    other than forward (a VAE's decode), which share the wrappers' weights but not what they add
    (gradient averaging, autocast, channels-last inputs): the backward of a step must still start
    from the wrapper's forward."""
    from .acceleration import AutocastView

    while True:
        if isinstance(net, nn.parallel.DistributedDataParallel):
            net = net.module
        elif isinstance(net, AutocastView):
            net = net.net
        elif isinstance(getattr(net, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            net = net._orig_mod
        else:
            return net


def no_grad_sync(net: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """Inside: a backward through `net` leaves its gradients local (not averaged over ranks). For
    the discriminator in the generator step, whose gradients there are thrown away."""
    no_sync = getattr(net, "no_sync", None)  # DistributedDataParallel (also through torch.compile)
    return no_sync() if callable(no_sync) else contextlib.nullcontext()


# ----------------------------------------------------------------------------- sampling and features


def sample_sharded(model: Any, n: int, seed: int, batch_size: int = 256, labels: torch.Tensor | None = None,
                   sampler: str = "prior", upsample: Any = None) -> tuple[range, torch.Tensor]:
    """This rank's share of images seed .. seed + n - 1 from a loaded model (sample.Model):
    (its indices in 0..n-1, uint8 (len, C, H, W)). One process: (range(n), all of them).
    `labels`: the (n,) classes of a conditional model's n images (each rank takes its slice);
    `sampler`: a VAE's latent sampler; `upsample`: an upsampler model (see Model.sample_tensor)."""
    idx = shard_range(n, align=batch_size)
    if len(idx):
        mine = None if labels is None else labels[idx.start : idx.stop]
        return idx, model.sample_tensor(len(idx), seed + idx.start, batch_size, classes=mine, sampler=sampler,
                                        upsample=upsample)
    f = 1 if upsample is None else int(upsample.factor)
    return idx, torch.empty((0, model.channels, model.resolution * f, model.resolution * f), dtype=torch.uint8)


def _broadcast_images(images: torch.Tensor | None, stop: bool = False) -> torch.Tensor | None:
    """Rank 0 sends uint8 images (or the stop signal) to every rank; returns them (None = stop)."""
    header: list[Any] = [None if stop or images is None else tuple(images.shape)]
    dist.broadcast_object_list(header, src=0)
    if header[0] is None:
        return None
    dev = _comm_device()
    buf = images.to(dev) if is_main() else torch.empty(header[0], dtype=torch.uint8, device=dev)
    dist.broadcast(buf, src=0)
    return buf.cpu()


class SharedExtractor:
    """A feature extractor (uint8 images -> float64 (N, D) features) whose calls on rank 0 are
    computed by all ranks: rank 0 sends the images, each rank extracts its share (cut at the
    extractor's batch size), and the features come back in order. Ranks > 0 run `serve()` until
    rank 0 calls `close()`. The inner extractor is made on first use, on every rank."""

    def __init__(self, make_extractor: Callable[[], Any]):
        self._make = make_extractor
        self._inner: Any = None

    @property
    def inner(self) -> Any:
        if self._inner is None:
            self._inner = self._make()
        return self._inner

    @property
    def cache_id(self) -> str | None:  # features cached by evaluate() are those of the inner extractor
        return getattr(self.inner, "cache_id", None)

    def protocol(self) -> dict[str, Any]:
        inner = self.inner
        p = dict(inner.protocol()) if callable(getattr(inner, "protocol", None)) else {
            "model": type(inner).__name__, "note": "custom feature extractor"}
        p["processes"] = world_size()
        return p

    def _extract_share(self, images: torch.Tensor, progress: bool) -> np.ndarray:
        idx = shard_range(int(images.shape[0]), align=int(getattr(self.inner, "batch_size", 1)))
        mine = np.asarray(self.inner(images[idx.start : idx.stop], progress=progress), dtype=np.float64) \
            if len(idx) else np.empty((0, 0), dtype=np.float64)
        return gather_rows(torch.from_numpy(mine)).numpy()

    def __call__(self, images_u8: torch.Tensor, progress: bool = True) -> np.ndarray:
        assert is_main(), "only rank 0 calls a SharedExtractor; the other ranks serve()"
        _broadcast_images(images_u8)
        return self._extract_share(images_u8, progress)

    def serve(self) -> None:
        while (images := _broadcast_images(None)) is not None:
            self._extract_share(images, progress=False)

    def close(self) -> None:
        _broadcast_images(None, stop=True)


def evaluate_on_main(evaluate_fn: Callable[[Any], T], make_extractor: Callable[[], Any]) -> T | None:
    """Run `evaluate_fn(extractor)` on rank 0 while every feature extraction it asks for is split
    over all ranks; returns its result on rank 0 and None on the others. One process:
    `evaluate_fn(None)` (the caller's default extractor)."""
    if not is_distributed():
        return evaluate_fn(None)
    shared = SharedExtractor(make_extractor)
    if not is_main():
        shared.serve()
        return None
    try:
        return evaluate_fn(shared)
    finally:
        shared.close()
