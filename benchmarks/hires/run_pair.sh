#!/usr/bin/env bash
# A pair of issue 8's comparison (benchmarks/hires.md, ninth to twelfth and fourteenth rounds): the seventh round's
# DCGAN and the fifth round's paper-block progan (width 8, lazy R1 gamma 0.1) with PROGAN_FLAGS on top,
# side by side with one CPU thread each for MINUTES, scored with the protocol (EMA and raw G).
#
#   bash benchmarks/hires/run_pair.sh MINUTES OUTDIR [PROGAN_FLAGS...]
#   bash benchmarks/hires/run_pair.sh 20 runs/p9/b20 --lr 2e-3       # the ninth round's 20-minute pair
#   bash benchmarks/hires/run_pair.sh 60 runs/p10 --z-dim 100         # the tenth round's hour
#   bash benchmarks/hires/run_pair.sh 60 runs/p12 --z-dim 100 --lr 2e-3 --lr-d 6e-3   # the twelfth round's hour
#   DCGAN_FLAGS=--compile bash benchmarks/hires/run_pair.sh 60 runs/p14 --z-dim 100 --lr 2e-3 --lr-d 6e-3 \
#       --stage-images 20000 --compile     # the fourteenth round's hour (DCGAN_FLAGS: the DCGAN's extra flags)
set -euo pipefail
MIN=$1
OUT=$2
shift 2
source "$(dirname "$0")/common.sh"
mkdir -p "$OUT"
OMP_NUM_THREADS=1 $LF train "${common[@]}" --model dcgan --width 32 ${DCGAN_FLAGS:-} --out "$OUT/dcgan" > "$OUT/dcgan.log" 2>&1 &
OMP_NUM_THREADS=1 $LF train "${common[@]}" --model progan --width 8 --max-channels 128 --stage-images 6000 \
    --r1-gamma 0.1 --r1-every 4 "$@" --out "$OUT/progan" > "$OUT/progan.log" 2>&1 &
wait
bash "$(dirname "$0")/eval_runs.sh" "$OUT" dcgan progan
