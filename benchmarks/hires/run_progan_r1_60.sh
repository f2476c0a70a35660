#!/usr/bin/env bash
# Fifth round of issue 8's comparison (benchmarks/hires.md, "A fifth round"): two progan runs at
# 64x64 RGB on the built-in `emoji` set, 60 minutes of training each, side by side with one CPU thread
# per run, as every DCGAN of the earlier rounds trained (beside a one-thread progan); scored with the
# same protocol (2,000 generated vs 2,000 training images, EMA and raw G).
#
#   bash benchmarks/hires/run_progan_r1_60.sh [MINUTES] [OUTDIR] [GAMMA_A] [GAMMA_B]
#
# Both runs: width 8 (8 channels at 64 px doubling to 128 at 4 px), bf16 + channels-last, DiffAugment
# (translation, colour, cutout), lazy R1 on one step in 4; they differ only in the R1 weight gamma.
set -euo pipefail
MIN=${1:-60}
OUT=${2:-runs/hires60r5}
GAMMAS=("${3:-1}" "${4:-0.1}")
LF=".venv/bin/python -m latentforge"
mkdir -p "$OUT"
for g in "${GAMMAS[@]}"; do
  OMP_NUM_THREADS=1 $LF train --model progan --width 8 --max-channels 128 --stage-images 6000 \
      --data emoji --res 64 --batch-size 64 --max-minutes "$MIN" --steps 1000000 --seed 0 --quiet \
      --ema-decay 0.999 --ema-warmup --sample-every 500 --precision bf16 --channels-last \
      --augment translation,color,cutout --r1-gamma "$g" --r1-every 4 \
      --out "$OUT/progan-g$g" > "$OUT/progan-g$g.log" 2>&1 &
done
wait
bash "$(dirname "$0")/eval_runs.sh" "$OUT" "progan-g${GAMMAS[0]}" "progan-g${GAMMAS[1]}"
