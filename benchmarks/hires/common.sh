# Sourced by pilot.sh, run_pair.sh and run_two.sh: the flags every run of issue 8's ninth to fifteenth rounds shares
# (benchmarks/hires.md), so that a pilot and a pair train alike. Needs MIN (minutes) set.
LF=".venv/bin/python -m latentforge"
common=(--data emoji --res 64 --batch-size 64 --max-minutes "$MIN" --steps 1000000 --seed 0 --quiet --ema-decay 0.999
        --ema-warmup --sample-every 500 --precision bf16 --channels-last --augment translation,color,cutout)
