#!/usr/bin/env bash
# Sixth round of issue 8's comparison (benchmarks/hires.md, "A sixth round"): two progan runs at 64x64
# RGB on the built-in `emoji` set, side by side with one CPU thread each, at most 60 minutes of training;
# scored with the same protocol (2,000 generated vs 2,000 training images, EMA and raw G).
#
#   bash benchmarks/hires/run_progan_decay_60.sh [MINUTES] [OUTDIR] [STEPS]
#
# Both runs: the fifth round's progan-g0.1 (width 8, bf16 + channels-last, DiffAugment, lazy R1 gamma
# 0.1 on one step in 4) with the learning rate starting at 2e-3 and decaying to 0 by a cosine over
# STEPS (7,000: about what fits the hour). Run `nearest` keeps the paper's upsampling in G, run
# `bilinear` upsamples bilinearly inside G's blocks.
set -euo pipefail
MIN=${1:-60}
OUT=${2:-runs/hires60r6}
STEPS=${3:-7000}
LF=".venv/bin/python -m latentforge"
mkdir -p "$OUT"
for up in nearest bilinear; do
  OMP_NUM_THREADS=1 $LF train --model progan --width 8 --max-channels 128 --stage-images 6000 \
      --data emoji --res 64 --batch-size 64 --max-minutes "$MIN" --steps "$STEPS" --seed 0 --quiet \
      --ema-decay 0.999 --ema-warmup --sample-every 500 --precision bf16 --channels-last \
      --augment translation,color,cutout --r1-gamma 0.1 --r1-every 4 \
      --lr 2e-3 --lr-decay cosine --progan-upsample "$up" \
      --out "$OUT/progan-$up" > "$OUT/progan-$up.log" 2>&1 &
done
wait
bash "$(dirname "$0")/eval_runs.sh" "$OUT" progan-nearest progan-bilinear
