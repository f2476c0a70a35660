"""Data at scale: building the on-disk memory-mapped cache with 1 vs 2 (vs more) worker processes,
and the memory of training-style batch reads from the memory-mapped set vs the set loaded into RAM.

    .venv/bin/python benchmarks/bench_data.py                        # 2000 JPEGs of 1024x768, res 256
    .venv/bin/python benchmarks/bench_data.py --n 500 --workers 1 2 4 --res 128 --json out.json

1. Images: `--n` JPEGs (quality 90) of 1024x768, smooth colour gradients plus noise and a few
   discs, written once to `--dir` (default /tmp/latentforge-bench-data/jpeg) and reused.
2. Build: `data_memmap.build_folder_cache(dir, res, workers=W)` into a fresh cache folder, for each
   W in `--workers`, in `--repeats` interleaved rounds (W1 W2 W1 W2 ...), each W keeping its best
   round (the machine is shared: the best round is the least disturbed). For reference the
   in-memory path (`load_images(storage="ram")`: a thread pool, then one stacked array) is timed
   the same way. All variants produce the same bytes (checked).
3. Memory: in fresh processes, the set is opened from the finished cache either memory-mapped
   (`storage="disk"`) or read into RAM (`storage="ram"`), then `--batches` batches of 64 are
   gathered in the training order (`BatchOrder`) and converted to float as training does. Reported
   from /proc/self/status: VmHWM (peak resident set), and at the end RssAnon (private memory) and
   RssFile (file pages mapped: the page cache, which the kernel can drop under pressure). A
   baseline process only imports torch and latentforge.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import loadavg, machine_info


def make_images(folder: Path, n: int, size: tuple[int, int] = (1024, 768), seed: int = 0) -> float:
    """Write n JPEGs (W x H = size) unless they are there, on every CPU; returns the seconds spent."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    todo = [i for i in range(n) if not (folder / f"img{i:05d}.jpg").is_file()]
    workers = os.cpu_count() or 1
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_jpegs, [(folder, todo[k::workers], size, seed) for k in range(workers)]))
    return time.perf_counter() - t0


def _write_jpegs(job: tuple[Path, list[int], tuple[int, int], int]) -> None:
    """Smooth colour gradients (drawn at 1/4 size, upscaled), a few discs, noise: photo-like JPEGs
    of ~100-200 KB, cheap enough to write thousands on a small machine."""
    from PIL import Image, ImageDraw

    folder, indices, (w, h), seed = job
    yy, xx = np.mgrid[0 : h // 4, 0 : w // 4].astype(np.float32) * 4
    noise = np.random.default_rng(seed).normal(0, 10, (h, w, 3)).astype(np.float32)  # one tile, shifted per image
    for i in indices:
        path = folder / f"img{i:05d}.jpg"
        rng = np.random.default_rng(seed + 1 + i)
        a, b, c = rng.random(3) * 2 * np.pi
        base = np.stack([np.sin(xx / w * (2 + 3 * rng.random()) + a), np.cos(yy / h * (2 + 3 * rng.random()) + b),
                         np.sin((xx + yy) / (w + h) * 4 + c)], axis=-1)  # (H/4, W/4, 3)
        small = Image.fromarray(((base * 0.5 + 0.5) * 200).astype(np.uint8))
        pil = small.resize((w, h), Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(pil)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, w - 200)), int(rng.integers(0, h - 200))
            draw.ellipse((x0, y0, x0 + int(rng.integers(50, 200)), y0 + int(rng.integers(50, 200))),
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        shift = int(rng.integers(0, h))
        img = (np.asarray(pil, dtype=np.float32) + np.roll(noise, shift, axis=0)).clip(0, 255).astype(np.uint8)
        tmp = path.with_suffix(".tmp")
        Image.fromarray(img).save(tmp, format="JPEG", quality=90)
        tmp.rename(path)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the worker processes)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def time_build(folder: Path, res: int, workers: int | None, cache: Path) -> tuple[float, float, bytes]:
    """Wall seconds and CPU seconds to build the cache from nothing (workers None = the in-memory
    path), and a digest of the result."""
    import hashlib

    from latentforge.data import load_images
    from latentforge.data_memmap import build_folder_cache

    shutil.rmtree(cache, ignore_errors=True)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    if workers is None:
        d = load_images(folder, res=res, storage="ram", cache_dir=cache, progress=False)
    else:
        d = build_folder_cache(folder, res=res, workers=workers, cache_dir=cache, progress=False)
    dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return dt, cpu, hashlib.sha256(d.images.numpy().tobytes()).digest()


def child(mode: str, folder: str, res: int, cache: str, batches: int) -> None:
    """One memory measurement in this (fresh) process; prints a JSON line."""
    t0 = time.perf_counter()
    import torch

    from latentforge.data import load_images
    from latentforge.images import to_float
    from latentforge.train import BatchOrder

    t_import = time.perf_counter() - t0
    out: dict[str, object] = {"mode": mode, "import_s": round(t_import, 2)}
    if mode != "baseline":
        t0 = time.perf_counter()
        d = load_images(folder, res=res, storage=mode, cache_dir=cache, progress=False)
        out["open_s"] = round(time.perf_counter() - t0, 3)
        assert d.on_disk == (mode == "disk")
        order = BatchOrder(len(d), 64, seed=0)
        images = d.for_device("cpu")
        t0 = time.perf_counter()
        total = 0.0
        for s in range(batches):
            x = to_float(images[order.indices(s)])  # (64, C, res, res) in [-1, 1], as the training loop does
            total += float(x[:, :, 0, 0].sum())
        out["batches_s"] = round(time.perf_counter() - t0, 3)
        out["images_read"] = batches * 64
        out["set_mib"] = round(d.images.numel() / 2**20, 1)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
        out[key + "_mib"] = round(int(status[key].split()[0]) / 1024, 1)
    print(json.dumps(out))


def measure_memory(folder: Path, res: int, cache: Path, batches: int) -> list[dict[str, object]]:
    rows = []
    for mode in ("baseline", "disk", "ram"):
        for b in ([0] if mode == "baseline" else batches):
            r = subprocess.run([sys.executable, __file__, "--child", mode, "--dir", str(folder), "--res", str(res),
                                "--cache", str(cache), "--batches", str(b)], capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"memory run {mode} failed:\n{r.stderr}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="number of JPEGs")
    p.add_argument("--dir", type=Path, default=Path("/tmp/latentforge-bench-data/jpeg"), help="where the JPEGs go")
    p.add_argument("--res", type=int, default=256, help="cache resolution")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker processes to compare")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; each variant keeps its best")
    p.add_argument("--no-ram-path", action="store_true", help="skip timing the in-memory path")
    p.add_argument("--batches", type=int, nargs="+", default=[10, 31],
                   help="batches of 64 read per memory run; 0 = no memory runs")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, str(a.dir), a.res, a.cache, a.batches[0])
        return

    print(f"machine: {machine_info()}")
    gen_s = make_images(a.dir, a.n)
    files = sorted(a.dir.iterdir())
    if len(files) != a.n:
        raise SystemExit(f"{a.dir} holds {len(files)} files, expected {a.n} JPEGs; use another --dir")
    mib = sum(f.stat().st_size for f in files) / 2**20
    print(f"{a.n} JPEGs 1024x768 in {a.dir} ({mib:.0f} MiB; {gen_s:.0f} s to write the missing ones)")

    tmp = Path(tempfile.mkdtemp(prefix="latentforge-bench-cache-"))
    variants: list[int | None] = list(a.workers) + ([] if a.no_ram_path else [None])
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    digests = set()
    load_before = loadavg()
    for rnd in range(a.repeats):
        for w in variants:
            name = "in-memory path (threads)" if w is None else f"memmap build, workers={w}"
            dt, cpu_s, digest = time_build(a.dir, a.res, w, tmp / "build")
            digests.add(digest)
            if dt < best.get(name, float("inf")):
                best[name], cpu[name] = dt, cpu_s
            print(f"  round {rnd}: {name}: {dt:.1f} s, {cpu_s:.1f} CPU s ({a.n / dt:.0f} images/s)", flush=True)
    load_after = loadavg()
    assert len(digests) == 1, "the variants produced different bytes"
    base = best.get(f"memmap build, workers={a.workers[0]}")
    print(f"\nbuild, res {a.res}, best of {a.repeats} (load average before {load_before}, after {load_after}):")
    print("| variant | seconds | images/s | vs first | CPU seconds | CPU ms / image |\n|---|---:|---:|---:|---:|---:|")
    for name, dt in best.items():
        print(f"| {name} | {dt:.1f} | {a.n / dt:.0f} | {base / dt:.2f}x | {cpu[name]:.1f} | {1000 * cpu[name] / a.n:.1f} |")

    # The last build left a complete cache entry (every variant writes the same one): measure on it.
    rows = measure_memory(a.dir, a.res, tmp / "build", a.batches) if a.batches != [0] else []
    print(f"\nmemory, res {a.res} (load average {loadavg()}):")
    print("| storage | batches of 64 | open s | read s | VmHWM MiB | RssAnon MiB | RssFile MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r.get('images_read', 0) // 64} | {r.get('open_s', '-')} | {r.get('batches_s', '-')} | "
              f"{r['VmHWM_mib']} | {r['RssAnon_mib']} | {r['RssFile_mib']} |")
    if a.json:
        a.json.write_text(json.dumps({"machine": machine_info(), "n": a.n, "res": a.res, "jpeg_mib": mib,
                                      "build_best_s": best, "build_cpu_s": cpu, "load_before": load_before,
                                      "load_after": load_after, "memory": rows}, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
