"""FID (10k generated vs the 10k FMNIST test images) of every /root/gen/*.npy, features on the GPU
with fp16-rounded Inception weights (ranking only; official numbers come from the CPU protocol)."""
import glob, json, os, sys, time
import numpy as np, torch
sys.path.insert(0, "src")
from latentforge.data import load_images
from latentforge.metrics.features import preprocess
from latentforge.metrics.fid import fid_from_features
dev = torch.device(os.environ.get("DEV", "cuda"))
m = torch.jit.load(os.environ.get("INCEPTION_FP16", ".gpu2/incep16.pt"), map_location="cpu").float().to(dev).eval()
torch.backends.cudnn.allow_tf32 = False
def feats(x):
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), 500):
            out.append(m(preprocess(x[i:i + 500]).to(dev)).double().cpu().numpy())
    return np.concatenate(out)
t = time.time()
ref = feats(load_images("fashion-mnist:test", res=28).images)
print("ref", ref.shape, round(time.time() - t, 1), "s", flush=True)
res = {}
for p in sorted(glob.glob(sys.argv[1] if len(sys.argv) > 1 else "/root/gen/*.npy")):
    x = torch.from_numpy(np.load(p))
    res[os.path.basename(p)[:-4]] = round(fid_from_features(feats(x), ref, method="eigh"), 2)
    print(os.path.basename(p), res[os.path.basename(p)[:-4]], flush=True)
print(json.dumps(res, indent=1))
if os.environ.get("OUT"):
    json.dump(res, open(os.path.join(os.environ["OUT"], "fid.json"), "w"), indent=1)
