#!/usr/bin/env bash
# The bf16 VAE-GAN of benchmarks/vae.md ("bf16 and a wider network"): 30 minutes of training with
# both cores (2 torch threads, nothing else running) under --precision bf16, a plain VAE first and
# then VQGAN-style adversarial steps against a spectrally normalized patch discriminator; then the
# GMM sampler and issue 5's protocol. Run from the repository root with the venv active.
#
#   bash benchmarks/vae/run_vaegan_bf16.sh [OUTDIR] [WIDTH] [ADV_START] [MORE TRAIN FLAGS ...]
#
# e.g. the moving average of the VAE: bash benchmarks/vae/run_vaegan_bf16.sh runs/q5-ema 64 12000 --ema-decay 0.999
set -euo pipefail
out=${1:-runs/q5-bf16}
width=${2:-64}
adv_start=${3:-12000}
shift $(( $# < 3 ? $# : 3 ))
run="$out/vaegan-w$width"

latentforge train --model vae_gan --data fashion-mnist --res 28 --width "$width" --spectral-norm --loss hinge \
  --adv-weight 0.5 --adv-start "$adv_start" --precision bf16 --steps 1000000 --max-minutes 30 --seed 0 \
  --checkpoint-every 2000 --sample-every 2000 --out "$run" "$@"
latentforge fit-sampler "$run"                                  # GMM, k = 10, on 10,000 posterior means
latentforge eval "$run" --sampler gmm --ref fashion-mnist:test --n 10000 --json "$run/eval10k_gmm.json"
latentforge eval "$run" --recon --ref fashion-mnist:test --n 10000 --json "$run/recon10k.json"
latentforge sample "$run" --sampler gmm --n 64 --seed 0 --out "$run/gmm64.png"
latentforge reconstruct "$run" --data fashion-mnist:test --out "$run/recon.png"
