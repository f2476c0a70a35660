#!/usr/bin/env bash
# The VAE family at issue 5's protocol (benchmarks/vae.md): 30 minutes of training each, one torch
# thread per run (the two trainings of the record ran at different times, each beside one
# evaluation on the other core), then FID of 10,000 generated images against the 10,000
# Fashion-MNIST test images. Run from the repository root with the venv active.
set -euo pipefail
export OMP_NUM_THREADS=1
out=${1:-runs/q5}

latentforge train --model vae --data fashion-mnist --res 28 --width 32 --steps 1000000 --max-minutes 30 \
  --seed 0 --checkpoint-every 2000 --sample-every 2000 --out "$out/vae"
latentforge train --model vae_gan --data fashion-mnist --res 28 --width 32 --spectral-norm --loss hinge \
  --adv-weight 0.5 --adv-start 18000 --steps 1000000 --max-minutes 30 --seed 0 \
  --checkpoint-every 2000 --sample-every 2000 --out "$out/vaegan"

for run in vae vaegan; do
  latentforge fit-sampler "$out/$run"                                   # GMM, k = 10, on 10,000 posterior means
  latentforge eval "$out/$run" --sampler gmm --ref fashion-mnist:test --n 10000 --json "$out/$run/eval10k_gmm.json"
  latentforge eval "$out/$run" --recon --ref fashion-mnist:test --n 10000 --json "$out/$run/recon10k.json"
done
latentforge eval "$out/vae" --sampler prior --ref fashion-mnist:test --n 10000 --json "$out/vae/eval10k_prior.json"
latentforge eval "$out/vae" --iwae-k 100 --ref fashion-mnist:test --n 1000 --json "$out/vae/iwae.json"
latentforge reconstruct "$out/vae" --data fashion-mnist:test --out "$out/vae_recon.png"
latentforge reconstruct "$out/vaegan" --data fashion-mnist:test --out "$out/vaegan_recon.png"
