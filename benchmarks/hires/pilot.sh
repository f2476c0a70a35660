#!/usr/bin/env bash
# A pilot of issue 8's comparison (benchmarks/hires.md, ninth to thirteenth rounds): one run at 64x64 RGB on the
# built-in `emoji` set on one CPU thread for MINUTES, with the rounds' common flags and FLAGS, then
# its raw G scored with the protocol (2,000 generated vs 2,000 training images). Two pilots side by
# side use the machine's two cores.
#
#   bash benchmarks/hires/pilot.sh OUTDIR NAME MINUTES FLAGS...
#   e.g. bash benchmarks/hires/pilot.sh runs/p9 s-lr5e-3 15 --model progan --progan-block strided --lr 5e-3 ...
#   bash benchmarks/hires/pilot.sh runs/p13 si20k 60 --model progan --width 8 --max-channels 128 --r1-gamma 0.1 \
#       --r1-every 4 --z-dim 100 --lr 2e-3 --lr-d 6e-3 --stage-images 20000   # the thirteenth round's better hour
set -euo pipefail
OUT=$1; NAME=$2; MIN=$3
shift 3
source "$(dirname "$0")/common.sh"
mkdir -p "$OUT"
OMP_NUM_THREADS=1 $LF train "${common[@]}" "$@" --out "$OUT/$NAME" > "$OUT/$NAME.log" 2>&1
OMP_NUM_THREADS=1 $LF eval "$OUT/$NAME" --ref emoji:train --n 2000 --no-ema --json "$OUT/$NAME.raw.json" \
    > "$OUT/$NAME.eval.log" 2>&1
