"""The FID Inception as TorchScript with fp16-rounded weights (44 MB: fits a device call's 64 MiB
tree), for ranking runs on a GPU machine. Max relative feature error vs the exact extractor: 2.3e-3.
Run from the repository root: python benchmarks/budget_search/make_fp16_inception.py .gpu2/incep16.pt"""
import sys, torch
sys.path.insert(0, "src")
OUT = sys.argv[1] if len(sys.argv) > 1 else ".gpu2/incep16.pt"
from latentforge.metrics.features import FastInception, load_shipped_model, preprocess, InceptionFeatures
torch.set_num_threads(1)
net = FastInception(load_shipped_model("cpu")).eval()
net.set_fused(False)
x = torch.randn(2, 3, 299, 299)
with torch.no_grad():
    tr = torch.jit.trace(net, x)
tr = tr.half()
tr.save(OUT)
imgs = (torch.rand(8, 1, 28, 28) * 255).to(torch.uint8)
ref = InceptionFeatures("cpu")(imgs, progress=False)
m = torch.jit.load(OUT).float()
with torch.no_grad():
    got = m(preprocess(imgs)).double().numpy()
import numpy as np
print("rel err", np.abs(got - ref).max() / np.abs(ref).max())
