"""Experiment: adversarial fine-tuning of a trained VAE (vae_gan_step from step 0), for a fixed time.
usage: python ft_vaegan.py VAE_RUN OUT_RUN ADV_WEIGHT MINUTES"""
import shutil, sys, time
from pathlib import Path
import torch
from latentforge.config import TrainConfig
from latentforge.data import load_images
from latentforge.models import build_networks
from latentforge.checkpoint import load_weights, save_weights
from latentforge.train import vae_gan_step, _make_optimizers

src, out, w, minutes = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
torch.manual_seed(0)
cfg = TrainConfig(model="vae_gan", data="fashion-mnist:train", out=str(out), resolution=28, width=32, z_dim=32,
                  spectral_norm=True, loss="hinge", adv_weight=w, adv_start=0, lr=1e-3, beta1=0.9, beta2=0.999)
nets = build_networks(cfg, 1)
load_weights({"vae": nets["vae"]}, src / "model.safetensors", roles=("vae",))
opts = _make_optimizers(nets, cfg)
x = load_images("fashion-mnist:train", res=28, channels=1).images
print(x.shape, x.dtype, flush=True)
t0, step = time.time(), 0
while time.time() - t0 < minutes * 60:
    idx = torch.randint(len(x), (64,))
    real = x[idx].float() / 127.5 - 1
    logs = vae_gan_step(nets["vae"], nets["D"], opts["vae"], opts["D"], real, cfg, step)
    if step % 200 == 0:
        print(step, round(time.time() - t0), {k: round(v, 3) for k, v in logs.items()}, flush=True)
    step += 1
shutil.copytree(src, out, ignore=shutil.ignore_patterns("samples", "gmm_sampler*", "state.pt", "*.json[l]"), dirs_exist_ok=True)
shutil.copy(src / "config.json", out / "config.json")
save_weights({"vae": nets["vae"]}, out / "model.safetensors", metadata={"step": str(step)})
print("done", step, "steps", flush=True)
