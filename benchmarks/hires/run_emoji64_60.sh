#!/usr/bin/env bash
# Second round of issue 8's comparison (benchmarks/hires.md, "60-minute round"): progan vs dcgan at
# 64x64 RGB on the built-in `emoji` set, 60 minutes of training each, side by side with one CPU thread
# per run (the two cores of the machine shared out), then scored with the same protocol.
#
#   bash benchmarks/hires/run_emoji64_60.sh [MINUTES] [OUTDIR]
#
# Extra train flags through the environment: COMMON (both runs), DCGAN and PROGAN (one run each),
# e.g. the fourth round's settings (benchmarks/hires.md):
#   COMMON="--precision bf16 --channels-last" \
#   PROGAN="--stage-images 6000 --augment translation,color,cutout --r1-gamma 10" \
#     bash benchmarks/hires/run_emoji64_60.sh 60 runs/hires60r4
set -euo pipefail
MIN=${1:-60}
OUT=${2:-runs/hires60}
LF=".venv/bin/python -m latentforge"
mkdir -p "$OUT"
common=(--data emoji --res 64 --batch-size 64 --max-minutes "$MIN" --steps 1000000 --seed 0 --quiet
        --ema-decay 0.999 --ema-warmup --sample-every 500 ${COMMON:-})
# 1. DCGAN (width 32, ns loss, batch norm, Adam(2e-4, 0.5)) with differentiable augmentation of all
#    that D sees: without it D wins at once on these 3,388 images and G collapses (first round).
OMP_NUM_THREADS=1 $LF train --model dcgan --width 32 --augment translation,color,cutout "${common[@]}" \
    ${DCGAN:-} --out "$OUT/dcgan" > "$OUT/dcgan.log" 2>&1 &
# 2. progan with the paper's recipe (no augmentation, Adam(1e-3, 0, 0.999): the defaults, ns loss),
#    16 channels at 64 px doubling to at most 128, 12,000 images per fade-in and per stable phase:
#    fully grown after 108,000 images, roughly half of the budget at one thread.
OMP_NUM_THREADS=1 $LF train --model progan --width 16 --max-channels 128 --stage-images 12000 "${common[@]}" \
    ${PROGAN:-} --out "$OUT/progan" > "$OUT/progan.log" 2>&1 &
wait
# the same protocol for both: 2,000 generated vs 2,000 training images; the EMA of G and the raw G
for g in ema no-ema; do
  OMP_NUM_THREADS=1 $LF eval "$OUT/dcgan" --ref emoji:train --n 2000 --$g --json "$OUT/dcgan.eval$g.json" \
      > "$OUT/dcgan.eval$g.log" 2>&1 &
  OMP_NUM_THREADS=1 $LF eval "$OUT/progan" --ref emoji:train --n 2000 --$g --json "$OUT/progan.eval$g.json" \
      > "$OUT/progan.eval$g.log" 2>&1 &
  wait
done
