#!/usr/bin/env bash
# progan vs dcgan at 64x64 RGB (built-in `emoji` data set), the same wall-clock budget each,
# both trained side by side with one CPU thread each (so each has one of the 2 cores), then
# scored with the same protocol against the same reference. Results: benchmarks/hires.md.
#
#   bash benchmarks/hires/run_emoji64.sh [MINUTES] [OUTDIR]
set -euo pipefail
MIN=${1:-45}
OUT=${2:-runs/hires}
LF=".venv/bin/python -m latentforge"
mkdir -p "$OUT"
common=(--data emoji --res 64 --batch-size 64 --ema-decay 0.999 --max-minutes "$MIN" --steps 1000000
        --sample-every 500 --checkpoint-every 500 --seed 0 --quiet)
# DCGAN: its defaults (width 32: 256 channels at 4 px, one 4x4 transposed conv per resolution)
OMP_NUM_THREADS=1 $LF train --model dcgan --width 32 "${common[@]}" --out "$OUT/dcgan64" > "$OUT/dcgan64.log" 2>&1 &
# progan: its defaults (lr 1e-3, beta1 0), 16 channels at 64 px doubling to at most 256 at 4 px
# (about the DCGAN's cost per image at 64 px); grown to 64 px after 9 x 12,000 images
OMP_NUM_THREADS=1 $LF train --model progan --width 16 --max-channels 256 --stage-images 12000 "${common[@]}" \
    --out "$OUT/progan64" > "$OUT/progan64.log" 2>&1 &
wait
# the same protocol for both: every training image as the reference (3,388), as many generated
for run in dcgan64 progan64; do
  $LF eval "$OUT/$run" --ref emoji:train --n 3388 --json "$OUT/$run.eval.json"
done
# The DCGAN with its defaults collapsed at step 400 (the guard rolled back 3 times and gave up):
# the same budget for the DCGAN with the SN-GAN recipe (spectral norm in D, hinge loss, Adam(2e-4, 0, 0.9)),
# started when the first DCGAN stopped, beside progan:
# OMP_NUM_THREADS=1 $LF train --model dcgan --width 32 "${common[@]}" --spectral-norm --loss hinge --beta1 0 --beta2 0.9 \
#     --out "$OUT/dcgan64sn"
# $LF eval "$OUT/dcgan64sn" --ref emoji:train --n 3388 --json "$OUT/dcgan64sn.eval.json"
