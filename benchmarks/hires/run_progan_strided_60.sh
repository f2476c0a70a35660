#!/usr/bin/env bash
# Eighth round of issue 8's comparison (benchmarks/hires.md, "An eighth round"): two progan runs with
# the strided blocks at 64x64 RGB on the built-in `emoji` set, side by side with one CPU thread each,
# at most 60 minutes of training; scored with the same protocol (2,000 generated vs 2,000 training
# images, EMA and raw G).
#
#   bash benchmarks/hires/run_progan_strided_60.sh [MINUTES] [OUTDIR] [STEPS]
#
# Both runs: `--progan-block strided` (one 4x4 stride-2 conv per block, the DCGAN's layers) with the
# DCGAN's channels (width 16 at 64 px doubling to 256 at 4 px) but 8 at 64 px (`--progan-top-channels
# 8`), batch norm in D's blocks, DiffAugment, lazy R1 gamma 0.1 on one step in 4, bf16 + channels-last,
# Adam(2e-3, 0, 0.999). Run `const` keeps the learning rate, run `cosine` decays it to 0 by a cosine
# over STEPS (7,000: about what fits the hour).
set -euo pipefail
MIN=${1:-60}
OUT=${2:-runs/hires60r8}
STEPS=${3:-7000}
LF=".venv/bin/python -m latentforge"
mkdir -p "$OUT"
common=(--model progan --progan-block strided --width 16 --max-channels 256 --progan-top-channels 8
        --progan-d-batch-norm --stage-images 6000 --data emoji --res 64 --batch-size 64 --max-minutes "$MIN"
        --seed 0 --quiet --ema-decay 0.999 --ema-warmup --sample-every 500 --precision bf16 --channels-last
        --augment translation,color,cutout --r1-gamma 0.1 --r1-every 4 --lr 2e-3)
OMP_NUM_THREADS=1 $LF train "${common[@]}" --steps 1000000 --out "$OUT/strided-const" > "$OUT/strided-const.log" 2>&1 &
OMP_NUM_THREADS=1 $LF train "${common[@]}" --steps "$STEPS" --lr-decay cosine \
    --out "$OUT/strided-cosine" > "$OUT/strided-cosine.log" 2>&1 &
wait
bash "$(dirname "$0")/eval_runs.sh" "$OUT" strided-const strided-cosine
