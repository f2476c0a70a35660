"""Latency and throughput of POST /api/generate over loopback, at 1 and 20 concurrent clients.

    .venv/bin/python benchmarks/bench_serve.py                      # default DCGAN shape, both modes
    .venv/bin/python benchmarks/bench_serve.py --run runs/dcgan --out benchmarks/serve.md

The server is `latentforge.serve.serve` (uvicorn) in a subprocess on 127.0.0.1; clients are threads
with one keep-alive httpx connection each, every request a fresh seed (one 32x32 image unless --n).
Without --run, a run with the default DCGAN architecture (32 px, width 64, z_dim 100: the shape of
the bundled Fashion-MNIST model) is made from one training step on random data: speed does not
depend on how well a model is trained. "batching on" coalesces concurrent requests into one model
call (the default); "off" runs each request's images alone, for comparison.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from machine import loadavg, machine_info
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_run(root: Path) -> Path:
    from latentforge.config import TrainConfig
    from latentforge.train import train

    rng = np.random.default_rng(0)
    np.savez(root / "rand.npz", images=rng.integers(0, 256, (64, 32, 32), dtype=np.uint8))
    cfg = TrainConfig(model="dcgan", data=str(root / "rand.npz"), out=str(root / "dcgan"), resolution=32, steps=1,
                      batch_size=16, width=64, z_dim=100, log_every=1, sample_every=1, checkpoint_every=1)
    train(cfg, progress=False, log=lambda m: None)
    return root / "dcgan"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, batching: bool) -> subprocess.Popen:
    code = ("import sys; from latentforge.serve import serve; "
            f"serve({str(run)!r}, host='127.0.0.1', port={port}, log_level='warning', batching={batching})")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the server did not start within 120 s")


def run_clients(base: str, clients: int, per_client: int, n: int, seed0: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            http.get("/api/health")  # open the connection before the clock starts
            barrier.wait()
            for i in range(per_client):
                body = {"seed": seed0 + (c * per_client + i) * n, "n": n}
                t = time.perf_counter()
                r = http.post("/api/generate", json=body)
                dt = time.perf_counter() - t
                with lock:
                    (latencies.append(dt) if r.status_code == 200 else errors.append(f"{r.status_code} {r.text[:80]}"))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    before = httpx.get(base + "/api/health").json()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = httpx.get(base + "/api/health").json()
    ms = sorted(x * 1000 for x in latencies)
    batches = after["batches"] - before["batches"]
    return {
        "clients": clients, "requests": len(latencies), "errors": len(errors), "n": n,
        "p50_ms": statistics.median(ms) if ms else float("nan"),
        "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))] if ms else float("nan"),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "req_per_s": len(latencies) / wall, "img_per_s": len(latencies) * n / wall, "wall_s": wall,
        "model_batches": batches, "mean_batch": (after["images"] - before["images"]) / max(batches, 1),
        "error_samples": errors[:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="Run directory to serve (default: a fresh default-shape DCGAN).")
    ap.add_argument("--single", type=int, default=100, help="Requests for the 1-client measurement.")
    ap.add_argument("--per-client", type=int, default=15, help="Requests per client at 20 clients.")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--n", type=int, default=1, help="Images per request.")
    ap.add_argument("--batching", choices=["both", "on", "off"], default="both")
    ap.add_argument("--json", type=Path, help="Also write the raw results as JSON here.")
    args = ap.parse_args()

    info_before = machine_info()
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.batching]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp))
        for batching in modes:
            port = free_port()
            proc = start_server(run, port, batching)
            base = f"http://127.0.0.1:{port}"
            try:
                run_clients(base, 1, 10, args.n, seed0=10**6)  # warm-up: first-call costs, allocator
                for clients, per in ((1, args.single), (args.clients, args.per_client)):
                    r = run_clients(base, clients, per, args.n, seed0=clients * 10**5)
                    r["batching"] = "on" if batching else "off"
                    results.append(r)
                    print(f"batching {r['batching']:>3}  clients {clients:>2}  requests {r['requests']:>4}  "
                          f"errors {r['errors']}  p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  "
                          f"{r['req_per_s']:7.1f} req/s  {r['img_per_s']:7.1f} img/s  mean batch {r['mean_batch']:.1f}",
                          flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    info = {**info_before, "loadavg_after": loadavg()}
    print()
    print("| batching | clients | requests | errors | p50 ms | p95 ms | req/s | images/s | mean model batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['batching']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.1f} | "
              f"{r['p95_ms']:.1f} | {r['req_per_s']:.1f} | {r['img_per_s']:.1f} | {r['mean_batch']:.1f} |")
    print()
    print(f"machine: {info['nproc']} CPUs ({info['cpu']}), load average {info['loadavg']} before, "
          f"{info['loadavg_after']} after; Python {info['python']}, torch {info['torch']} "
          f"({info['torch_threads']} threads)")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": vars(args) | {"run": str(args.run), "json": str(args.json)},
                                         "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
