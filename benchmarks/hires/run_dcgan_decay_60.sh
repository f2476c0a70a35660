#!/usr/bin/env bash
# Seventh round of issue 8's comparison (benchmarks/hires.md, "A seventh round"): the baseline again.
# Two DCGANs at 64x64 RGB on the built-in `emoji` set, side by side with one CPU thread each, at most
# 60 minutes of training; scored with the same protocol (2,000 generated vs 2,000 training images,
# EMA and raw G).
#
#   bash benchmarks/hires/run_dcgan_decay_60.sh [MINUTES] [OUTDIR] [STEPS]
#
# Both runs: the fourth round's DCGAN (width 32, ns loss, batch norm, Adam(2e-4, 0.5), DiffAugment
# translation,color,cutout, EMA 0.999 with warm-up, bf16 + channels-last). Run `const` keeps the
# learning rate (the fourth round's run, repeated in the same hour), run `cosine` decays it to 0 by a
# cosine over STEPS (13,500: about what fits the hour), the lever the sixth round gave progan.
set -euo pipefail
MIN=${1:-60}
OUT=${2:-runs/hires60r7}
STEPS=${3:-13500}
LF=".venv/bin/python -m latentforge"
mkdir -p "$OUT"
common=(--model dcgan --width 32 --augment translation,color,cutout --data emoji --res 64 --batch-size 64
        --max-minutes "$MIN" --seed 0 --quiet --ema-decay 0.999 --ema-warmup --sample-every 500
        --precision bf16 --channels-last)
OMP_NUM_THREADS=1 $LF train "${common[@]}" --steps 1000000 --out "$OUT/dcgan-const" > "$OUT/dcgan-const.log" 2>&1 &
OMP_NUM_THREADS=1 $LF train "${common[@]}" --steps "$STEPS" --lr-decay cosine \
    --out "$OUT/dcgan-cosine" > "$OUT/dcgan-cosine.log" 2>&1 &
wait
bash "$(dirname "$0")/eval_runs.sh" "$OUT" dcgan-const dcgan-cosine
