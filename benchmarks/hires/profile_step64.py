"""Where issue 8's 64 px training step spends its time (benchmarks/hires.md, fourteenth round): the
forward + backward of each network on its own, and the operators of whole training steps
(torch.profiler, self CPU time), for the DCGAN and the fully grown width-8 progan of the rounds (R1
gamma 0.1 on one step in 4), unfused (the rounds before `fused_scale`) and fused. The networks,
optimizers and step are bench_step64's variants: one thread, batch 64, bf16 autocast, channels-last.

    .venv/bin/python benchmarks/hires/profile_step64.py [--steps 8] [--top 12]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from bench_step64 import BATCH, Variant
from torch.profiler import ProfilerActivity, profile


def ms(fn: Callable[[], object], n: int = 10) -> float:
    """Mean milliseconds of fn() over n calls, after 3 untimed ones."""
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="profiled training steps per model")
    ap.add_argument("--top", type=int, default=12, help="operators listed per model")
    args = ap.parse_args()
    torch.set_num_threads(1)
    variants = {"dcgan": Variant("dcgan", "bf16", True),
                "progan unfused": Variant("progan", "bf16", True, r1_gamma=0.1, r1_every=4, width=8, fused=False),
                "progan fused": Variant("progan", "bf16", True, r1_gamma=0.1, r1_every=4, width=8)}
    for name, v in variants.items():
        z = torch.randn(BATCH, v.z_dim)
        g_ms = ms(lambda: v.G(z).mean().backward())  # noqa: B023 - called at once
        d_ms = ms(lambda: v.D(v.real).mean().backward())  # noqa: B023
        v.run(4)  # untimed: allocations, oneDNN's kernel choice
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step_ms = v.run(args.steps) * 1e3
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in rows)
        print(f"\n{name}: G forward + backward {g_ms:.1f} ms, D forward + backward {d_ms:.1f} ms, "
              f"training step {step_ms:.1f} ms (profiled)")
        for e in rows[:args.top]:
            per_step = e.self_cpu_time_total / 1e3 / args.steps
            print(f"  {e.key:40s} {e.self_cpu_time_total / total:6.1%}  {per_step:7.1f} ms/step")


if __name__ == "__main__":
    main()
