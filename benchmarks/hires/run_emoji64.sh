#!/usr/bin/env bash
# progan vs dcgan at 64x64 RGB (built-in `emoji` data set, 3,388 training images), the same
# wall-clock budget each, trained side by side with one CPU thread per run, then scored with the
# same protocol against the same reference. Results and the story of the runs: benchmarks/hires.md.
#
#   bash benchmarks/hires/run_emoji64.sh [MINUTES] [OUTDIR]
set -euo pipefail
MIN=${1:-40}
OUT=${2:-runs/hires}
LF=".venv/bin/python -m latentforge"
mkdir -p "$OUT"
common=(--data emoji --res 64 --batch-size 64 --max-minutes "$MIN" --steps 1000000 --seed 0 --quiet)
# 1. DCGAN with its defaults (width 32: 256 channels at 4 px, one 4x4 transposed conv per doubling),
#    EMA 0.999. In the recorded run D won at once and G collapsed at step 400; the divergence guard
#    rolled back three times and stopped the run (its last good checkpoint is step 300).
OMP_NUM_THREADS=1 $LF train --model dcgan --width 32 --ema-decay 0.999 "${common[@]}" --out "$OUT/dcgan64" \
    > "$OUT/dcgan64.log" 2>&1 || true
# 2. DCGAN with the SN-GAN recipe (spectral norm in D, hinge loss, Adam(2e-4, 0, 0.9)), EMA 0.999
OMP_NUM_THREADS=1 $LF train --model dcgan --width 32 --ema-decay 0.999 --spectral-norm --loss hinge --beta1 0 \
    --beta2 0.9 "${common[@]}" --out "$OUT/dcgan64sn" > "$OUT/dcgan64sn.log" 2>&1 &
# 3. progan with its defaults (lr 1e-3, beta1 0), 16 channels at 64 px doubling to at most 256 at 4 px
#    (about 4x the DCGAN's cost per image at 64 px), 3,000 images per fade-in and per stable phase (fully
#    grown after 27,000 images), EMA 0.995 (StyleGAN2's 10k-image half-life at batch 64: a longer EMA
#    would average over the stages still growing)
OMP_NUM_THREADS=1 $LF train --model progan --width 16 --max-channels 256 --stage-images 3000 --ema-decay 0.995 \
    "${common[@]}" --out "$OUT/progan64b" > "$OUT/progan64b.log" 2>&1 &
wait
# the same protocol for all: 2,000 generated vs 2,000 training images; the EMA of G and the raw G
for spec in "dcgan64 --ema" "dcgan64sn --ema" "progan64b --ema" "dcgan64sn --no-ema" "progan64b --no-ema"; do
  set -- $spec
  OMP_NUM_THREADS=1 $LF eval "$OUT/$1" --ref emoji:train --n 2000 "$2" --json "$OUT/$1.eval${2#--}.json"
done
