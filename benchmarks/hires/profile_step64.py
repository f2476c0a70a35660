"""Where issue 8's 64 px training step spends its time (benchmarks/hires.md, fourteenth round): the
forward + backward of each network on its own, and the operators of whole training steps
(torch.profiler, self CPU time), for the DCGAN and the fully grown progan of the rounds (`--width 8
--max-channels 128 --z-dim 100`, R1 gamma 0.1 on one step in 4), unfused (the rounds before
`fused_scale`) and fused. One thread, batch 64, bf16 autocast, channels-last, as the rounds train.

    .venv/bin/python benchmarks/hires/profile_step64.py [--steps 8] [--top 12]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from latentforge import acceleration
from latentforge.config import TrainConfig
from latentforge.models import dcgan, progan
from latentforge.train import gan_step, r1_gamma_at

BATCH, RES, Z = 64, 64, 100
CPU = torch.device("cpu")


def ms(fn: Callable[[], object], n: int = 10) -> float:
    """Mean milliseconds of fn() over n calls, after 3 untimed ones."""
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


def nets(name: str) -> tuple[torch.nn.Module, torch.nn.Module, tuple[float, tuple[float, float]]]:
    torch.manual_seed(0)
    if name == "dcgan":
        cfg = dcgan.DCGANConfig(resolution=RES, img_channels=3, width=32, z_dim=Z)
        G, D, opt = dcgan.Generator(cfg), dcgan.Discriminator(cfg), (2e-4, (0.5, 0.999))
    else:
        cfg = progan.ProGANConfig(resolution=RES, img_channels=3, width=8, max_channels=128, z_dim=Z,
                                  fused_scale=name == "progan fused")
        G, D, opt = progan.Generator(cfg), progan.Discriminator(cfg), (1e-3, (0.0, 0.999))
    view = lambda net: acceleration.autocast_view(net, "bf16", True, CPU)  # noqa: E731
    return view(G), view(D), opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="profiled training steps per model")
    ap.add_argument("--top", type=int, default=12, help="operators listed per model")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in ("dcgan", "progan unfused", "progan fused"):
        G, D, (lr, betas) = nets(name)
        z = torch.randn(BATCH, Z)
        x = torch.rand(BATCH, 3, RES, RES) * 2 - 1
        g_ms = ms(lambda: G(z).mean().backward())
        d_ms = ms(lambda: D(x).mean().backward())
        opt_G = torch.optim.Adam(G.parameters(), lr, betas=betas)
        opt_D = torch.optim.Adam(D.parameters(), lr, betas=betas)
        cfg = TrainConfig(r1_gamma=0.0) if name == "dcgan" else TrainConfig(r1_gamma=0.1, r1_every=4)
        step = lambda i: gan_step(G, D, opt_G, opt_D, x, Z, augment="translation,color,cutout",  # noqa: E731
                                  r1_gamma=r1_gamma_at(i, cfg))
        for i in range(4):
            step(i)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            for i in range(args.steps):
                step(i)
            step_ms = (time.perf_counter() - t) / args.steps * 1e3
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in rows)
        print(f"\n{name}: G forward + backward {g_ms:.1f} ms, D forward + backward {d_ms:.1f} ms, "
              f"training step {step_ms:.1f} ms (profiled)")
        for e in rows[:args.top]:
            per_step = e.self_cpu_time_total / 1e3 / args.steps
            print(f"  {e.key:40s} {e.self_cpu_time_total / total:6.1%}  {per_step:7.1f} ms/step")


if __name__ == "__main__":
    main()
