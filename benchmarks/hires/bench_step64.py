"""Training-step time of issue 8's two 64 px models (benchmarks/hires.md): the DCGAN and the fully
grown progan of the rounds, in fp32 and bf16 autocast, contiguous (NCHW) and channels-last (NHWC),
and progan with the R1 penalty on every step and lazily (on one step in 16, Karras et al. 2020), and
the fifth round's narrower progan (width 8) without R1 and with it on one step in 4, and the eighth
round's progan with strided blocks (`--progan-block strided`, width 16, at most 256 channels: the
DCGAN's channel counts) without R1 and with it on one step in 4, with 8 channels at 64 px
(`--progan-top-channels 8`), and at width 8. With --stage S ... the progans are timed at those stages
of their growth (alpha 1: at 4 * 2**S px, their output and the reals nearest-upsampled to 64 px, as
training runs them) instead of fully grown; with --compile every selected variant without R1, and every
progan, is timed compiled as --compile compiles it as well (inductor; a whole network, or progan's
`compile_parts`: G's LReLU + pixel-norm pairs, D eager; R1's double backward cannot be compiled; the
thirteenth round's compiled progans were compiled whole, before compile_parts existed); with
--unfused every selected paper-block progan is timed without `fused_scale` as well (the rounds before it);
with --d-width W every selected progan is timed with D W channels wide at 64 px as well (`--progan-d-width`).

Each variant runs train.gan_step as training does (Adam, DiffAugment translation,color,cutout,
ns loss, D frozen in G's half, the networks wrapped as --precision / --channels-last wrap them),
batch 64, RGB 64 px; progan width 16 with at most 128 channels, DCGAN width 32. One torch thread by
default: each run of a round trains on one thread. The variants are timed in interleaved rounds
(A B C ... A B C ...) so that a shared machine's load hits all alike; the median round is reported.
A round is 16 steps (one lazy-R1 period), after 2 untimed steps per variant (8 for a compiled one).

    .venv/bin/python benchmarks/hires/bench_step64.py [--threads 1] [--rounds 3] [--only TEXT ...] [--stage S ...]
        [--compile] [--unfused] [--d-width W ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/machine.py
from machine import machine_info  # noqa: E402

from latentforge import acceleration  # noqa: E402
from latentforge.config import TrainConfig  # noqa: E402
from latentforge.models import dcgan, progan  # noqa: E402
from latentforge.models.progan import fade_reals, stage_resolutions  # noqa: E402
from latentforge.train import gan_step, r1_gamma_at  # noqa: E402

BATCH, RES, STEPS = 64, 64, 16
AUGMENT = "translation,color,cutout"
CPU = torch.device("cpu")


class Variant:
    """One model in one setting, with its own optimizers and a fixed real batch."""

    def __init__(self, model: str, precision: str, channels_last: bool, r1_gamma: float = 0.0, r1_every: int = 1,
                 width: int | None = None, block: str = "paper", top: int = 0, stage: int | None = None,
                 compiled: bool = False, fused: bool = True, d_width: int = 0):
        torch.manual_seed(0)
        width = width or (16 if model == "progan" else 32)
        if model == "progan":  # built fully grown: stage 4 (64 px), alpha 1
            max_ch = 256 if block == "strided" else 128  # strided: the DCGAN's 256 channels at 4 px
            cfg = progan.ProGANConfig(resolution=RES, img_channels=3, width=width, max_channels=max_ch, block=block,
                                      top_channels=top, fused_scale=fused, d_width=d_width)
            G, D = progan.Generator(cfg), progan.Discriminator(cfg)
            lr, betas = 1e-3, (0.0, 0.999)  # progan's defaults
        else:
            cfg = dcgan.DCGANConfig(resolution=RES, img_channels=3, width=width)
            G, D = dcgan.Generator(cfg), dcgan.Discriminator(cfg)
            lr, betas = 2e-4, (0.5, 0.999)
        self.z_dim = cfg.z_dim
        self.opt_G = torch.optim.Adam(G.parameters(), lr, betas=betas)
        self.opt_D = torch.optim.Adam(D.parameters(), lr, betas=betas)
        self.real = torch.rand(BATCH, 3, RES, RES) * 2 - 1
        staged = model == "progan" and stage is not None
        if staged:  # built fully grown; set back to `stage`, as training runs it
            G.set_progress(stage, 1.0)
            D.set_progress(stage, 1.0)
            self.real = fade_reals(self.real, stage, 1.0, RES)
        res = stage_resolutions(RES)[stage] if staged else RES
        self.G = acceleration.autocast_view(G, precision, channels_last, CPU)
        self.D = acceleration.autocast_view(D, precision, channels_last, CPU)
        self.G, self.D = acceleration.compile_net(self.G, compiled), acceleration.compile_net(self.D, compiled)
        self.compiled = compiled
        self.train_cfg = TrainConfig(r1_gamma=r1_gamma, r1_every=r1_every)
        self.name = (f"{model}{' strided' if block == 'strided' else ''} w{width}{f' top{top}' if top else ''} {precision}"
                     f"{' channels-last' if channels_last else ''}"
                     + (f" R1 gamma {r1_gamma:g} every {r1_every}" if r1_gamma else "") + (f" at {res} px" if staged else "")
                     + (" compiled" if compiled else "") + ("" if fused else " unfused")
                     + (f" D w{d_width}" if d_width else ""))
        self.args = dict(model=model, precision=precision, channels_last=channels_last, r1_gamma=r1_gamma,
                         r1_every=r1_every, width=width, block=block, top=top, stage=stage, fused=fused,
                         d_width=d_width)
        self.row = {"model": model, "width": width, "precision": precision, "channels_last": channels_last,
                    "r1_gamma": r1_gamma, "r1_every": r1_every, "block": block,
                    "top_channels": top, "stage_resolution": res,
                    "compiled": compiled, "fused_scale": fused if model == "progan" else None,
                    "d_width": (d_width or width) if model == "progan" else None}
        self.step = 0

    def run(self, steps: int) -> float:
        """Mean seconds per step over `steps` consecutive training steps."""
        t = time.perf_counter()
        for _ in range(steps):
            gan_step(self.G, self.D, self.opt_G, self.opt_D, self.real, self.z_dim, augment=AUGMENT,
                     r1_gamma=r1_gamma_at(self.step, self.train_cfg))
            self.step += 1
        return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help=f"timed rounds of {STEPS} steps per variant")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--only", nargs="+", metavar="TEXT",
                    help="time only the variants whose name contains one of these, e.g. 'w8' 'w32 bf16 channels-last'")
    ap.add_argument("--stage", type=int, nargs="+", choices=range(len(stage_resolutions(RES))),
                    help="time the progans at these stages of their growth (0: 4 px ... 4: 64 px, fully grown)")
    ap.add_argument("--compile", action="store_true",
                    help="also time each selected variant without R1, and each progan, compiled")
    ap.add_argument("--unfused", action="store_true", help="also time each selected paper-block progan without fused_scale")
    ap.add_argument("--d-width", type=int, nargs="+", default=[], metavar="W",
                    help="also time each selected progan with D this wide at 64 px (--progan-d-width)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = [Variant("dcgan", p, cl) for p in ("fp32", "bf16") for cl in (False, True)]
    for stage in args.stage or [None]:
        V = functools.partial(Variant, "progan", stage=stage)
        variants += [V(p, cl) for p in ("fp32", "bf16") for cl in (False, True)]
        variants += [V("bf16", True, r1_gamma=10.0, r1_every=1),
                     V("bf16", True, r1_gamma=10.0, r1_every=16)]
        variants += [V("bf16", True, width=8),  # the fifth round's progan: width 8, lazy R1
                     V("bf16", True, r1_gamma=1.0, r1_every=4, width=8)]
        variants += [V("bf16", True, width=16, block="strided"),  # the eighth round's progan
                     V("bf16", True, r1_gamma=0.1, r1_every=4, width=16, block="strided"),
                     V("bf16", True, width=16, block="strided", top=8),
                     V("bf16", True, width=8, block="strided")]
    if args.only:
        variants = [v for v in variants if any(text in v.name for text in args.only)]
        if not variants:
            ap.error(f"--only {args.only} matches no variant")
    if args.unfused:
        variants += [Variant(**{**v.args, "fused": False}) for v in variants
                     if v.args["model"] == "progan" and v.args["block"] == "paper"]
    variants += [Variant(**{**v.args, "d_width": w}) for w in args.d_width for v in variants
                 if v.args["model"] == "progan"]
    if args.compile:
        variants += [Variant(**v.args, compiled=True) for v in variants
                     if (not v.args["r1_gamma"] or v.args["model"] == "progan") and v.args["fused"]]
    for v in variants:
        v.run(8 if v.compiled else 2)  # untimed: allocations, oneDNN's kernel choice, compilation
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            times[v.name].append(v.run(STEPS))
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    rows = []
    for v in variants:
        ms = statistics.median(times[v.name]) * 1000
        rows.append({**v.row, "ms_per_step": round(ms, 1), "images_per_s": round(BATCH / ms * 1000, 1),
                     "rounds_ms": [round(s * 1000, 1) for s in times[v.name]]})
        print(f"{v.name:55s} {ms:8.1f} ms/step {BATCH / ms * 1000:7.1f} images/s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "threads": args.threads, "batch": BATCH,
                                         "steps_per_round": STEPS, "rounds": args.rounds, "augment": AUGMENT,
                                         "stage": args.stage,
                                         "native_bf16": acceleration.native_bf16(CPU), "results": rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
