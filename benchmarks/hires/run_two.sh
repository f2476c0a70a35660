#!/usr/bin/env bash
# Two runs of issue 8's comparison (benchmarks/hires.md, fifteenth round) side by side, one CPU thread each,
# for MINUTES with the rounds' common flags (common.sh) and each its own FLAGS, then both scored with the
# protocol (eval_runs.sh: EMA and raw G, 2,000 generated vs 2,000 training images of `emoji`).
#
#   bash benchmarks/hires/run_two.sh MINUTES OUTDIR NAME_A "FLAGS_A" NAME_B "FLAGS_B"
#   P="--model progan --width 8 --stage-images 20000 --r1-gamma 0.1 --r1-every 4 --z-dim 100 --lr 2e-3 --lr-d 6e-3 --compile"
#   bash benchmarks/hires/run_two.sh 60 runs/p15 dw16 "$P --max-channels 128 --progan-d-width 16" \
#       g001 "${P/--r1-gamma 0.1/--r1-gamma 0.01} --max-channels 128"       # the fifteenth round's first hour
#   bash benchmarks/hires/run_two.sh 60 runs/p16 dw16mc256 "$P --max-channels 256 --progan-d-width 16" \
#       dw24mc256 "$P --max-channels 256 --progan-d-width 24"                # its second hour
set -euo pipefail
MIN=$1; OUT=$2; A=$3; FLAGS_A=$4; B=$5; FLAGS_B=$6
source "$(dirname "$0")/common.sh"
mkdir -p "$OUT"
# shellcheck disable=SC2086  # FLAGS_A / FLAGS_B are flag lists, split on purpose
OMP_NUM_THREADS=1 $LF train "${common[@]}" $FLAGS_A --out "$OUT/$A" > "$OUT/$A.log" 2>&1 &
# shellcheck disable=SC2086
OMP_NUM_THREADS=1 $LF train "${common[@]}" $FLAGS_B --out "$OUT/$B" > "$OUT/$B.log" 2>&1 &
wait
bash "$(dirname "$0")/eval_runs.sh" "$OUT" "$A" "$B"
