#!/usr/bin/env bash
# Ninth round of issue 8's comparison (benchmarks/hires.md): the seventh round's DCGAN and the fifth
# round's paper-block progan (width 8, lazy R1 gamma 0.1) started at lr 2e-3, side by side with one CPU
# thread each for MINUTES (20: a shorter budget than the hour), scored with the protocol (EMA and raw G).
#
#   bash benchmarks/hires/run_pair_20.sh [MINUTES] [OUTDIR]
set -euo pipefail
MIN=${1:-20}
OUT=${2:-runs/p9/b20}
LF=".venv/bin/python -m latentforge"
mkdir -p "$OUT"
common=(--data emoji --res 64 --batch-size 64 --max-minutes "$MIN" --steps 1000000 --seed 0 --quiet --ema-decay 0.999
        --ema-warmup --sample-every 500 --precision bf16 --channels-last --augment translation,color,cutout)
OMP_NUM_THREADS=1 $LF train "${common[@]}" --model dcgan --width 32 --out "$OUT/dcgan" > "$OUT/dcgan.log" 2>&1 &
OMP_NUM_THREADS=1 $LF train "${common[@]}" --model progan --width 8 --max-channels 128 --stage-images 6000 \
    --r1-gamma 0.1 --r1-every 4 --lr 2e-3 --out "$OUT/progan" > "$OUT/progan.log" 2>&1 &
wait
bash "$(dirname "$0")/eval_runs.sh" "$OUT" dcgan progan
