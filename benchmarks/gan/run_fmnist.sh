#!/usr/bin/env bash
# Issue 4's protocol on the 2-core CPU (benchmarks/quality.md): 30 minutes of training each, run one
# after the other with both cores to themselves, then FID/KID/precision-recall/memorization of
# 10,000 generated images against the 10,000 Fashion-MNIST test images (and class accuracy for
# the conditional run). Run from the repository root with the venv active.
set -euo pipefail
out=${1:-runs/q4}
metrics=fid,kid,pr,memorization

# the best preset: fast-cpu (DCGAN + EMA of G, bf16 where the CPU has it natively) with the
# class-conditional networks and the AC-GAN class loss
latentforge train --preset fast-cpu --conditional --aux-class-weight 1 --precision bf16 --data fashion-mnist \
  --seed 0 --out "$out/cond-ac-bf16"
# the baseline: DCGAN with its paper's settings (no EMA, fp32, unconditional), the same 30 minutes
latentforge train --model dcgan --data fashion-mnist --res 28 --width 64 --steps 1000000 --max-minutes 30 \
  --seed 0 --out "$out/dcgan-baseline"

for run in cond-ac-bf16 dcgan-baseline; do
  latentforge eval "$out/$run" --ref fashion-mnist:test --n 10000 --metrics $metrics --json "$out/$run/eval10k.json"
done
