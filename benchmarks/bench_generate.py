"""Generation throughput of a DCGAN on the CPU: batched vs a naive loop of batch size 1.

    .venv/bin/python benchmarks/bench_generate.py                 # 32 and 64 px, width 64, z_dim 100
    .venv/bin/python benchmarks/bench_generate.py --res 32 --n 2048 --naive 256 --json out.json

For each resolution, in the same process, one after the other:
  memory, batched   model.sample_tensor(n, seed=0, batch_size=B)           uint8 tensors, no files
  memory, naive     for s in range(m): model.sample_tensor(1, seed=s)
  files, bulk       explore.bulk_generate(model, n, tmpdir, batch_size=B, workers=W) for each W
  files, naive      for s in range(m): save_png(model.sample_tensor(1, seed=s)[0], seedNNNNNN.png, provenance)
Every variant writes / returns the same images (image i from seed i). Throughput is images per
second of wall time. The variants run in `--repeats` interleaved rounds (A B C .. A B C ..) and
each keeps its best round: the machine is shared, and the best round is the least disturbed. The weights are untrained (DCGAN init,
seed 0): the speed of a forward pass does not depend on the weights' values.

The run directory is made here (config.json + model.safetensors in a temp folder) and loaded
with latentforge.load, so the measured path is the one users take.
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

import torch
from machine import loadavg, machine_info


def make_run(root: Path, res: int, width: int, z_dim: int, channels: int) -> Path:
    from latentforge import __version__
    from latentforge.checkpoint import save_weights
    from latentforge.config import TrainConfig
    from latentforge.models import build_networks

    run = root / f"dcgan{res}"
    run.mkdir(parents=True)
    cfg = TrainConfig(model="dcgan", data="untrained", out=str(run), resolution=res, width=width, z_dim=z_dim,
                      channels=channels)
    torch.manual_seed(0)
    save_weights(build_networks(cfg, channels), run / "model.safetensors")
    cfg.save(run / "config.json", data_info={"resolution": res, "channels": channels, "class_names": None,
                                             "num_images": 0, "skipped": 0, "name": "untrained"},
             latentforge_version=__version__)
    return run


def bench(res: int, args: argparse.Namespace, root: Path) -> dict[str, object]:
    import latentforge
    from latentforge.explore import bulk_generate, provenance, seed_filename
    from latentforge.images import save_png

    model = latentforge.load(make_run(root, res, args.width, args.z_dim, args.channels), device="cpu")
    n, m, b = args.n[res], args.naive[res], args.batch_size
    model.sample_tensor(min(n, b), seed=0, batch_size=b)  # warm-up: allocator, kernels
    model.sample_tensor(1, seed=0)

    def mem_batched() -> float:
        t = time.perf_counter()
        model.sample_tensor(n, seed=0, batch_size=b)
        return time.perf_counter() - t

    def mem_naive() -> float:
        t = time.perf_counter()
        for s in range(m):
            model.sample_tensor(1, seed=s)
        return time.perf_counter() - t

    def files_bulk(workers: int) -> float:
        d = Path(tempfile.mkdtemp(dir=root))
        t = time.perf_counter()
        r = bulk_generate(model, n, d, batch_size=b, progress=False, workers=workers)
        dt = time.perf_counter() - t
        assert r.written == n and len(os.listdir(d)) == n
        shutil.rmtree(d)
        return dt

    def files_naive() -> float:
        d = Path(tempfile.mkdtemp(dir=root))
        meta = provenance(model, truncation=1.0)
        t = time.perf_counter()
        for s in range(m):
            save_png(model.sample_tensor(1, seed=s)[0], d / seed_filename(s), metadata={**meta, "seed": str(s)})
        dt = time.perf_counter() - t
        shutil.rmtree(d)
        return dt

    variants = {"memory_batched": (n, mem_batched), "memory_naive": (m, mem_naive), "files_naive": (m, files_naive),
                **{f"files_bulk_w{w}": (n, (lambda w=w: files_bulk(w))) for w in args.workers}}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):  # interleaved rounds: a burst of load from elsewhere hits every variant alike
        for name, (_, fn) in variants.items():
            times[name].append(fn())
    out: dict[str, object] = {"res": res, "n_batched": n, "n_naive": m, "batch_size": b}
    for name, (count, _) in variants.items():
        out[name] = count / min(times[name])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--res", type=int, nargs="+", default=[32, 64])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--z-dim", type=int, default=100)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n", type=int, default=None, help="images for the batched variants (default 2048 at 32 px, 512 at 64 px)")
    p.add_argument("--naive", type=int, default=None, help="images for the naive loops (default 256 at 32 px, 128 at 64 px)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="bulk_generate PNG threads to compare")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.n = {r: args.n or (2048 if r <= 32 else 512) for r in args.res}
    args.naive = {r: args.naive or (256 if r <= 32 else 128) for r in args.res}

    info_before = machine_info()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        for res in args.res:
            r = bench(res, args, Path(tmp))
            results.append(r)
            print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    info = {**info_before, "loadavg_after": loadavg()}

    print()
    print(f"machine: nproc {info['nproc']}, {info['cpu']}, torch {info['torch']} ({info['torch_threads']} threads), "
          f"python {info['python']}, load average before {info['loadavg']}, "
          f"after {info['loadavg_after']}")
    print(f"model: DCGAN width {args.width}, z_dim {args.z_dim}, {args.channels} channel(s), untrained weights; "
          f"batch size {args.batch_size}; best of {args.repeats}")
    print()
    print("| res | variant | images/s | vs naive |")
    print("|---|---|---:|---:|")
    for r in results:
        mem_naive, files_naive = r["memory_naive"], r["files_naive"]
        print(f"| {r['res']} | memory, naive loop (batch 1), n={r['n_naive']} | {mem_naive:.0f} | 1.0x |")
        print(f"| {r['res']} | memory, `sample_tensor` (batch {r['batch_size']}), n={r['n_batched']} | "
              f"{r['memory_batched']:.0f} | {r['memory_batched'] / mem_naive:.1f}x |")
        print(f"| {r['res']} | files, naive loop (batch 1 + `save_png`), n={r['n_naive']} | {files_naive:.0f} | 1.0x |")
        for w in args.workers:
            v = r[f"files_bulk_w{w}"]
            print(f"| {r['res']} | files, `bulk_generate` workers={w}, n={r['n_batched']} | {v:.0f} | "
                  f"{v / files_naive:.1f}x |")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": {k: (v if not isinstance(v, dict) else
                                         {str(a): c for a, c in v.items()}) for k, v in vars(args).items()
                                         if k != "json"}, "results": results}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
