"""Time of one GAN training step (train.gan_step): two variants timed in interleaved rounds.

--compare layers (the default): as latentforge trains now vs the plain step.
--compare precision: fp32 vs bf16 autocast (--precision bf16, acceleration.autocast_view), both as
latentforge trains now; bf16 is faster only on CPUs with native bfloat16 (AMX / AVX-512 BF16).

"plain": the step as written in the DCGAN paper's reference code: the discriminator's weights get
gradients in the generator's half of the step too (thrown away), and the generator's first layer
and the discriminator's last are the transposed conv / conv modules of torch.
"now": latentforge's step: D frozen in G's half (train.frozen), and those two layers computed as
the matrix products they are (models/dcgan.py: LatentProjection, Collapse). Same weights, same
data, same random numbers; the two are timed in interleaved rounds (A B A B ...) so that a shared
machine's load hits both alike.

    .venv/bin/python benchmarks/bench_gan_step.py                       # the conditional AC preset
    .venv/bin/python benchmarks/bench_gan_step.py --classes 0 --aux-weight 0   # unconditional
    .venv/bin/python benchmarks/bench_gan_step.py --compare precision          # fp32 vs bf16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import time
from unittest import mock

import torch
from torch import nn

from machine import machine_info

from latentforge import acceleration
from latentforge import train as train_module
from latentforge.models.dcgan import DCGANConfig, Discriminator, Generator


def plain_layers(G: nn.Module, D: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Copies of G and D whose first / last layer is torch's own ConvTranspose2d / Conv2d (same weights)."""
    G, D = copy.deepcopy(G), copy.deepcopy(D)
    first, last = G.net[0], D.net[-1]
    plain_first = nn.ConvTranspose2d(first.in_channels, first.out_channels, first.kernel_size, 1, 0, bias=False)
    plain_last = nn.Conv2d(last.in_channels, last.out_channels, last.kernel_size, 1, 0, bias=False)
    plain_first.weight.data.copy_(first.weight.data)
    plain_last.weight.data.copy_(last.weight.data)
    G.net[0], D.net[-1] = plain_first, plain_last
    return G, D


def time_steps(G: nn.Module, D: nn.Module, steps: int, args: argparse.Namespace, freeze: bool) -> float:
    """Mean seconds per gan_step over `steps` steps (after 3 untimed ones)."""
    opt_G = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(args.batch_size, 1, args.res, args.res, generator=gen) * 2 - 1
    labels = torch.randint(max(args.classes, 1), (args.batch_size,), generator=gen) if args.classes else None
    z_dim = DCGANConfig().z_dim
    no_freeze = mock.patch.object(train_module, "frozen", lambda net: contextlib.nullcontext(net))
    with contextlib.nullcontext() if freeze else no_freeze:
        for i in range(steps + 3):
            if i == 3:
                t0 = time.perf_counter()
            train_module.gan_step(G, D, opt_G, opt_D, real, z_dim, labels=labels, num_classes=args.classes,
                                  aux_weight=args.aux_weight)
    return (time.perf_counter() - t0) / steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--res", type=int, default=28)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=10, help="0 = unconditional")
    p.add_argument("--aux-weight", type=float, default=1.0, help="AC-GAN class loss weight (needs --classes)")
    p.add_argument("--steps", type=int, default=60, help="timed steps per round and variant")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare", choices=("layers", "precision"), default="layers")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = DCGANConfig(resolution=args.res, width=args.width, num_classes=args.classes,
                      aux_classifier=args.aux_weight > 0)
    G, D = Generator(cfg), Discriminator(cfg)
    cpu = torch.device("cpu")
    if args.compare == "layers":  # (G, D, freeze D in G's half); the first is the baseline
        variants = {"plain": (*plain_layers(G, D), False), "now": (G, D, True)}
    else:  # the same networks (autocast views share the weights), each variant from the same initial state
        variants = {"fp32": (G, D, True),
                    "bf16": (acceleration.autocast_view(copy.deepcopy(G), "bf16", False, cpu),
                             acceleration.autocast_view(copy.deepcopy(D), "bf16", False, cpu), True)}
    rows: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, (g, d, freeze) in variants.items():
            rows[name].append(time_steps(g, d, args.steps, args, freeze=freeze))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1] * 1e3:.1f} ms/step" for k, v in rows.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    base, new = list(med)
    result = {"args": vars(args), "ms_per_step": {k: [round(x * 1e3, 2) for x in v] for k, v in rows.items()},
              "median_ms": {k: round(v * 1e3, 2) for k, v in med.items()}, "speedup": round(med[base] / med[new], 3),
              "machine": machine_info(), "native_bf16": acceleration.native_bf16(cpu), "load_avg": os.getloadavg()}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
