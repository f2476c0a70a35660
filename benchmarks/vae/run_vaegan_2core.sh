#!/usr/bin/env bash
# The VAE-GAN of benchmarks/vae.md ("On the Xeon with AMX, both cores"): 30 minutes of training with
# both cores (2 torch threads, nothing else running), 24,000 plain VAE steps (~6 min) and then
# VQGAN-style adversarial steps against a spectrally normalized patch discriminator; then the GMM
# sampler and issue 5's protocol. Run from the repository root with the venv active.
set -euo pipefail
out=${1:-runs/q5-2core}

latentforge train --model vae_gan --data fashion-mnist --res 28 --width 32 --spectral-norm --loss hinge \
  --adv-weight 0.5 --adv-start 24000 --steps 1000000 --max-minutes 30 --seed 0 \
  --checkpoint-every 2000 --sample-every 2000 --out "$out/vaegan"
latentforge fit-sampler "$out/vaegan"                                  # GMM, k = 10, on 10,000 posterior means
latentforge eval "$out/vaegan" --sampler gmm --ref fashion-mnist:test --n 10000 --json "$out/vaegan/eval10k_gmm.json"
latentforge eval "$out/vaegan" --recon --ref fashion-mnist:test --n 10000 --json "$out/vaegan/recon10k.json"
latentforge sample "$out/vaegan" --sampler gmm --n 64 --seed 0 --out "$out/vaegan_gmm64.png"
