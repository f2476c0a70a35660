"""Hyper-parameter search on a GPU at a fixed step budget (the steps a 2-core CPU does in ~30 min).
Usage: python search.py NAME JSON_CONFIG  -> /root/gen/NAME_*.npz (10k uint8 images each) + grid PNGs."""
import copy, json, math, os, sys, time
import numpy as np, torch
sys.path.insert(0, "src")
from latentforge.config import TrainConfig
from latentforge.data import load_images
from latentforge.images import to_float, to_uint8, save_grid
from latentforge.models import build_networks
from latentforge.train import BatchOrder, gan_step, vae_step, ema_update, make_ema, latents_for_seeds, _make_optimizers

name, spec = sys.argv[1], json.loads(sys.argv[2])
torch.backends.cudnn.benchmark = True
dev = torch.device(os.environ.get("DEV", "cuda"))
NG = int(os.environ.get("NGEN", "10000"))
opts_extra = {k: spec.pop(k) for k in ("lr_decay", "emas", "gmm_k") if k in spec}
cfg = TrainConfig(resolution=28, data="fashion-mnist:train", device=str(dev), **spec)
torch.manual_seed(cfg.seed)
data = load_images(cfg.data, res=28)
images = data.images.to(dev)
nets = {r: n.to(dev) for r, n in build_networks(cfg, 1).items()}
opts = _make_optimizers(nets, cfg)
order = BatchOrder(len(images), cfg.batch_size, cfg.seed)
emas = {d: make_ema(nets["G"]) for d in opts_extra.get("emas", [])} if cfg.family == "gan" else {}
t0 = time.time()
base_lrs = {r: [g["lr"] for g in o.param_groups] for r, o in opts.items()}
MAXT = float(os.environ.get("MAXT", "1e9"))
done = 0
for step in range(cfg.steps):
    if time.time() - t0 > MAXT:
        print(name, "TIME LIMIT at step", step, flush=True)
        break
    done = step + 1
    if opts_extra.get("lr_decay"):  # linear decay to 0 over the second half
        f = min(1.0, 2 * (1 - step / cfg.steps))
        for r, o in opts.items():
            for g, lr0 in zip(o.param_groups, base_lrs[r]):
                g["lr"] = lr0 * f
    if cfg.family == "gan":
        reals = [to_float(images[order.indices(step * cfg.n_critic + i)]) for i in range(cfg.n_critic)]
        out = gan_step(nets["G"], nets["D"], opts["G"], opts["D"], reals, cfg.z_dim, loss=cfg.loss,
                       gp_weight=cfg.gp_weight, r1_gamma=cfg.r1_gamma, augment=cfg.augment)
        for d, e in emas.items():
            ema_update(e, nets["G"], d)
    else:
        out = vae_step(nets["vae"], opts["vae"], to_float(images[order.indices(step)]), cfg)
    if step % 2000 == 0:
        print(name, step, {k: round(v, 3) for k, v in out.items()}, f"{time.time()-t0:.0f}s", flush=True)
print(name, "trained", done, "steps in", round(time.time() - t0), "s", flush=True)
os.makedirs("/root/gen", exist_ok=True)
seeds = range(1_000_000, 1_000_000 + NG)

@torch.no_grad()
def gen(fn):
    out = []
    for i in range(0, NG, 500):
        z = latents_for_seeds(list(seeds)[i:i + 500], cfg.z_dim, dev)
        out.append(to_uint8(fn(z)).cpu())
    return torch.cat(out)

sets = {}
if cfg.family == "gan":
    nets["G"].eval()
    sets["raw"] = gen(nets["G"])
    for d, e in emas.items():
        e.eval()
        sets[f"ema{d}"] = gen(e)
else:
    vae = nets["vae"].eval()
    sets["prior"] = gen(vae.decode)
    with torch.no_grad():
        mus = torch.cat([vae.encode(to_float(images[i:i + 1000]))[0] for i in range(0, len(images), 1000)]).cpu().numpy()
    from sklearn.mixture import GaussianMixture
    for k in opts_extra.get("gmm_k", [10]):
        gm = GaussianMixture(k, covariance_type="full", random_state=0, max_iter=200).fit(mus)
        zs, _ = gm.sample(NG)
        zs = torch.from_numpy(zs).float().to(dev)
        with torch.no_grad():
            sets[f"gmm{k}"] = torch.cat([to_uint8(vae.decode(zs[i:i + 500])).cpu() for i in range(0, NG, 500)])
for v, x in sets.items():
    np.save(f"/root/gen/{name}_{v}.npy", x.numpy())
    save_grid(x[:64], f"/root/gen/{name}_{v}.png", nrow=8, upscale=1)
print(name, "saved", list(sets), flush=True)
