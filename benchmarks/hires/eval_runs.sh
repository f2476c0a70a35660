#!/usr/bin/env bash
# The protocol of issue 8's rounds (benchmarks/hires.md), for runs that trained side by side:
# 2,000 generated vs 2,000 training images of `emoji`, the EMA of G and then the raw G, the runs of
# each reading evaluated in parallel with one CPU thread each. Writes OUTDIR/NAME.eval{ema,no-ema}.json.
#
#   bash benchmarks/hires/eval_runs.sh OUTDIR NAME [NAME ...]
set -euo pipefail
OUT=$1
shift
LF=".venv/bin/python -m latentforge"
for e in ema no-ema; do
  for name in "$@"; do
    OMP_NUM_THREADS=1 $LF eval "$OUT/$name" --ref emoji:train --n 2000 --$e \
        --json "$OUT/$name.eval$e.json" > "$OUT/$name.eval$e.log" 2>&1 &
  done
  wait
done
