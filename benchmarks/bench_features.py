"""Inception feature extraction speed: the TorchScript model as shipped vs `InceptionFeatures`.

Both get the same real Fashion-MNIST test images, the same preprocessing
(`latentforge.metrics.features.preprocess`) and the same batch size; the shipped model is
called plainly, `model(x)` under `torch.no_grad()`. The two are timed in the same process,
interleaved (the order alternates every repeat), after one warm-up batch each, so that load
from other processes on a shared machine hits both alike. Prints the results and appends them
to benchmarks/features.md (unless --no-record).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_features.py --images 64 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model, loadavg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from latentforge.metrics.features import (FEATURE_SHA256, InceptionFeatures, load_shipped_model,  # noqa: E402
                                          preprocess)

RESULTS = Path(__file__).with_name("features.md")


def fashion_mnist_test(n: int) -> torch.Tensor:
    """The first n Fashion-MNIST test images, uint8 (n, 1, 28, 28)."""
    try:
        from latentforge.data import load_images

        return load_images("fashion-mnist:test", progress=False).images[:n].clone()
    except Exception as err:  # noqa: BLE001 - fall back to the packaged idx file
        import gzip

        print(f"(data.load_images unavailable: {err}; reading the idx file directly)")
        with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
            arr = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
        return torch.from_numpy(arr[:n].copy())


def run_shipped(model: torch.jit.ScriptModule, images: torch.Tensor, batch: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            out.append(model(preprocess(images[i:i + batch])).double().numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64, help="images per timed pass")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per implementation (interleaved)")
    ap.add_argument("--batch", type=int, default=32, help="batch size for both")
    ap.add_argument("--no-record", action="store_true", help="do not append to benchmarks/features.md")
    args = ap.parse_args()

    images = fashion_mnist_test(args.images)
    shipped = load_shipped_model()
    ours = InceptionFeatures(batch_size=args.batch)
    runners = {
        "shipped": lambda: run_shipped(shipped, images, args.batch),
        "ours": lambda: ours(images, progress=False),
    }
    load_before = loadavg()
    # Warm-up (oneDNN primitive creation, allocator) on one batch each; also the agreement check.
    warm = images[: args.batch]
    f_ship = run_shipped(shipped, warm, args.batch)
    f_ours = ours(warm, progress=False)
    rel_err = float(np.abs(f_ours - f_ship).max() / np.abs(f_ship).max())

    times: dict[str, list[float]] = {"shipped": [], "ours": []}
    cpu: dict[str, list[float]] = {"shipped": [], "ours": []}
    for r in range(args.repeats):
        order = ["shipped", "ours"] if r % 2 == 0 else ["ours", "shipped"]
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            print(f"repeat {r + 1}/{args.repeats} {name:8s} {args.images / times[name][-1]:7.2f} images/s "
                  f"(wall {times[name][-1]:.2f} s, cpu {cpu[name][-1]:.2f} s, load {loadavg()})", flush=True)
    load_after = loadavg()

    rate = {k: args.images / statistics.median(v) for k, v in times.items()}
    pair_ratios = [s / o for s, o in zip(times["shipped"], times["ours"])]
    ratio = rate["ours"] / rate["shipped"]
    machine = (f"{os.cpu_count()} CPUs (nproc), {cpu_model()}, torch {torch.__version__}, "
               f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}")
    print(f"\nmachine: {machine}")
    print(f"load average before / after: {load_before} / {load_after}")
    print(f"shipped TorchScript: {rate['shipped']:.2f} images/s (median of {args.repeats})")
    print(f"InceptionFeatures:   {rate['ours']:.2f} images/s (median of {args.repeats}); "
          f"implementation: {ours.protocol()['implementation']}")
    print(f"speed-up: {ratio:.2f}x (ratio of medians); per interleaved pair: "
          + ", ".join(f"{x:.2f}" for x in pair_ratios))
    print(f"feature agreement on {warm.shape[0]} images: max|ours - shipped| / max|shipped| = {rel_err:.2e}")

    if not args.no_record:
        cmd = "PYTHONPATH=src .venv/bin/python benchmarks/bench_features.py " + " ".join(sys.argv[1:])
        cpu_share = {k: statistics.median(c) / statistics.median(times[k]) for k, c in cpu.items()}
        block = [
            f"\n## {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}\n",
            f"- command: `{cmd.strip()}`",
            f"- machine: {machine}",
            f"- load average (1/5/15 min) before / after: {load_before} / {load_after}; CPU seconds per wall "
            f"second during the passes: shipped {cpu_share['shipped']:.2f}, ours {cpu_share['ours']:.2f} "
            f"(2.0 = both cores to this process)",
            f"- data: first {args.images} Fashion-MNIST test images (28x28 gray -> 3x299x299), batch {args.batch}, "
            f"{args.repeats} interleaved repeats after one warm-up batch each; weights sha256 {FEATURE_SHA256[:16]}...",
            "",
            "| implementation | images/s (median) | per repeat |",
            "|---|---|---|",
            f"| TorchScript as shipped, `model(x)` under no_grad | {rate['shipped']:.2f} | "
            + ", ".join(f"{args.images / t:.2f}" for t in times["shipped"]) + " |",
            f"| `InceptionFeatures` ({ours.protocol()['implementation']}) | {rate['ours']:.2f} | "
            + ", ".join(f"{args.images / t:.2f}" for t in times["ours"]) + " |",
            "",
            f"- speed-up: **{ratio:.2f}x** (ratio of medians); per interleaved pair: "
            + ", ".join(f"{x:.2f}" for x in pair_ratios),
            f"- feature agreement: max |ours - shipped| / max |shipped| = {rel_err:.2e}",
            "",
        ]
        if not RESULTS.exists():
            RESULTS.write_text("# Inception feature extraction speed\n\n# Results (appended by the script)\n")
        with RESULTS.open("a") as f:
            f.write("\n".join(block))
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
