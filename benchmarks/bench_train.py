"""Training throughput (images/s) of one configuration, on whatever device, in 1 or N processes.

    .venv/bin/python benchmarks/bench_train.py --model dcgan --res 64 --device cpu
    torchrun --standalone --nproc-per-node 2 benchmarks/bench_train.py --model dcgan --res 64 --device cpu
    python benchmarks/bench_train.py --model dcgan --res 64 --precision bf16 --compile --channels-last  # a GPU

What runs is `latentforge.train.train` itself, the path users take (batch indexing, the step,
DistributedDataParallel, the per-step agreement of ranks), on synthetic images that this script
writes (the speed of a step does not depend on what the images show). Timing: the run logs
every step, and each metrics.jsonl row carries `time`, the seconds spent in training steps
so far (on GPUs every step ends with a synchronizing .item()). The first --warmup steps
(allocator, cuDNN autotuning, torch.compile's compilation) are left out:

    images/s = (steps - warmup) * global batch / (time[steps] - time[warmup])

Under torchrun, --batch-size is the global batch (split over the processes, as in training) and
rank 0 prints the result. One markdown table row is printed, with the machine beside it; --json
appends the numbers to a JSON-lines file. The model is a flag: any name in latentforge's
MODELS map (dcgan, vae, and whatever else is registered there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import loadavg, machine_info


def write_images(path: Path, n: int, res: int, channels: int) -> None:
    """n smooth random uint8 images (N, res, res[, C]), as an .npz that latentforge reads natively."""
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, size=(n, 8, 8, channels), dtype=np.uint8)
    img = low.repeat(res // 8 + 1, axis=1).repeat(res // 8 + 1, axis=2)[:, :res, :res]
    np.savez(path, images=img[..., 0] if channels == 1 else img)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dcgan", help="a name in latentforge.models.MODELS (dcgan, vae, ...)")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (split over processes)")
    p.add_argument("--steps", type=int, default=40, help="steps in all, warm-up included")
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=2048, help="size of the synthetic data set")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="append the result as a JSON line here")
    args = p.parse_args()
    if not 0 < args.warmup < args.steps:
        p.error("need 0 < --warmup < --steps")

    from latentforge import distributed
    from latentforge.checkpoint import read_jsonl
    from latentforge.config import TrainConfig
    from latentforge.train import resolve_device, train

    device = distributed.setup(resolve_device(args.device))
    # one scratch folder for all processes of this job (torchrun gives them a shared run id)
    job = os.environ.get("TORCHELASTIC_RUN_ID", str(os.getpid()))
    work = args.workdir or Path(tempfile.gettempdir()) / f"latentforge-bench-train-{job}"
    data = work / "images.npz"
    if distributed.is_main():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        write_images(data, args.images, args.res, args.channels)
    distributed.barrier()

    cfg = TrainConfig(model=args.model, data=str(data), out=str(work / "run"), resolution=args.res,
                      channels=args.channels, width=args.width, batch_size=args.batch_size, steps=args.steps,
                      log_every=1, sample_every=10**9, checkpoint_every=10**9, precision=args.precision,
                      compile=args.compile, channels_last=args.channels_last, sync_bn=args.sync_bn,
                      device=args.device)
    info = machine_info()
    wall = time.perf_counter()
    train(cfg, progress=False, log=lambda m: None)
    wall = time.perf_counter() - wall
    main_rank = distributed.is_main()
    distributed.shutdown()
    if not main_rank:
        return 0

    rows = {r["step"]: r for r in read_jsonl(work / "run" / "metrics.jsonl") if r["kind"] == "train"}
    seconds = rows[args.steps]["time"] - rows[args.warmup]["time"]
    timed = args.steps - args.warmup
    rate = timed * args.batch_size / seconds
    procs = int(os.environ.get("WORLD_SIZE", "1"))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    threads = torch.get_num_threads()
    result = {"model": args.model, "res": args.res, "channels": args.channels, "width": args.width,
              "batch_size": args.batch_size, "processes": procs, "device": gpu or device.type,
              "torch_threads_per_process": threads, "precision": args.precision, "compile": args.compile,
              "channels_last": args.channels_last, "sync_bn": args.sync_bn, "timed_steps": timed,
              "warmup_steps": args.warmup, "images_per_s": round(rate, 1),
              "ms_per_step": round(1000 * seconds / timed, 2),
              "wall_s": round(wall, 1), "machine": {**info, "loadavg_after": loadavg()}}
    print(f"machine: {info['cpu']}, nproc {info['nproc']}, torch {info['torch']}, python {info['python']}"
          + (f", GPU {gpu}" if gpu else "") + f"; load average before {info['loadavg']}, after {loadavg()}")
    print("| model | res | global batch | processes | device | threads/proc | precision | compile | channels-last "
          "| sync-bn | images/s | ms/step |")
    print("|---|---:|---:|---:|---|---:|---|---|---|---|---:|---:|")
    print(f"| {args.model} | {args.res} | {args.batch_size} | {procs} | {gpu or device.type} | {threads} | "
          f"{args.precision} | {'yes' if args.compile else 'no'} | {'yes' if args.channels_last else 'no'} | "
          f"{'yes' if args.sync_bn else 'no'} | {rate:.1f} | {1000 * seconds / timed:.1f} |")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
