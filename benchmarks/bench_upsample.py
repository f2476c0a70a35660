"""Upsampler vs bicubic (and nearest) on held-out real images: PSNR and FID.

    .venv/bin/python benchmarks/bench_upsample.py                                # train 2000 steps, then compare
    .venv/bin/python benchmarks/bench_upsample.py --steps 300 --n 500 --width 32   # a small version
    .venv/bin/python benchmarks/bench_upsample.py --run runs/up28 --n 10000        # compare an existing run

Protocol:
  1. The upsampler: `--run`, or trained here with latentforge.train on `--data` (the training split)
     at `--res` (the output size) with `--factor`, `--steps`, `--batch-size`, `--width`, seed 0.
  2. Held-out images: `--test` (default the test split) at `--res`; the first `--n` after the
     seeded shuffle of metrics.evaluate (numpy.random.default_rng(seed).permutation(N)[:n]).
  3. Inputs: each image area-downsampled by the factor (mean of each factor x factor block) and
     rounded to uint8: the same low-res images for every method.
  4. Methods: nearest, bicubic (F.interpolate bicubic, a = -0.75, align_corners=False), the
     upsampler (noise seeded per image: image i uses seed i). Outputs rounded to uint8.
  5. PSNR per image against the original (10 log10(255^2 / MSE), metrics/psnr.py), mean and std
     over the n images; FID (and KID) of each method's n outputs against the same n originals with
     metrics.evaluate_sets (Inception pool3; FID depends on n: compare only at equal n).
The result (with the machine and every setting) goes to `--json`; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from machine import machine_info


def train_upsampler(args: argparse.Namespace, out: Path) -> tuple[Path, float]:
    from latentforge.config import TrainConfig
    from latentforge.train import train

    cfg = TrainConfig(model="upsampler", data=args.data, out=str(out), resolution=args.res,
                      upsample_factor=args.factor, steps=args.steps, batch_size=args.batch_size, width=args.width,
                      recon_weight=args.recon_weight, seed=0, log_every=max(1, args.steps // 20),
                      sample_every=args.steps, checkpoint_every=args.steps, device=args.device)
    result = train(cfg, progress=False, log=lambda m: print(m, file=sys.stderr))
    return out, result.elapsed


class _OnceForTheOriginals:
    """The Inception extractor, computing the originals' features once for all methods."""

    def __init__(self, ext: object, originals: torch.Tensor):
        self.ext, self.originals, self.cached = ext, originals, None

    def protocol(self) -> dict[str, object]:
        return dict(self.ext.protocol())  # type: ignore[attr-defined]

    def __call__(self, images_u8: torch.Tensor, progress: bool = True) -> np.ndarray:
        if images_u8 is self.originals:
            if self.cached is None:
                self.cached = self.ext(images_u8, progress=progress)  # type: ignore[operator]
            return self.cached
        return self.ext(images_u8, progress=progress)  # type: ignore[operator]


def compare(args: argparse.Namespace, run: Path) -> dict[str, object]:
    from latentforge.data import load_images
    from latentforge.images import to_float, to_uint8
    from latentforge.metrics.evaluate import default_extractor, evaluate_sets, select_indices
    from latentforge.metrics.psnr import psnr
    from latentforge.models.upsampler import area_downsample, bicubic_upsample
    from latentforge.sample import load_upsampler

    up = load_upsampler(run, device=args.device)
    if up.resolution != args.res:
        raise SystemExit(f"{run} makes {up.resolution} px images, not --res {args.res}")
    data = load_images(args.test, res=up.resolution, channels=up.channels)
    high = data.images[torch.from_numpy(select_indices(len(data.images), args.n, args.seed))]  # uint8 (n, C, H, W)
    low = to_uint8(area_downsample(to_float(high), up.factor))  # the same inputs for every method
    f = up.factor
    outputs = {
        "nearest": to_uint8(F.interpolate(to_float(low), scale_factor=f, mode="nearest")),
        "bicubic": to_uint8(bicubic_upsample(to_float(low), f)),
    }
    t0 = time.perf_counter()
    outputs["upsampler"] = torch.cat([up.upsample(low[i : i + 256], seeds=range(i, i + 256))
                                      for i in range(0, len(low), 256)])
    up_seconds = time.perf_counter() - t0
    rows: dict[str, dict[str, float]] = {}
    ext = _OnceForTheOriginals(default_extractor(str(up.device)), high)
    for name, images in outputs.items():
        p = psnr(images, high)
        res = evaluate_sets(high, images, metrics=("fid", "kid"), seed=args.seed, progress=False, extractor=ext,
                            real_name=f"{args.test} originals", fake_name=name)
        rows[name] = {"psnr_mean": float(p.mean()), "psnr_std": float(p.std()), "fid": res["fid"], "kid": res["kid"]}
    return {"n": int(len(high)), "factor": f, "in_resolution": up.in_resolution, "resolution": up.resolution,
            "upsample_seconds": round(up_seconds, 3), "methods": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=None, help="an upsampler run to evaluate (default: train one here)")
    ap.add_argument("--data", default="fashion-mnist:train", help="training data (when training)")
    ap.add_argument("--test", default="fashion-mnist:test", help="held-out images to compare on")
    ap.add_argument("--res", type=int, default=28, help="output resolution")
    ap.add_argument("--factor", type=int, default=2, help="2 or 4")
    ap.add_argument("--steps", type=int, default=2000, help="training steps (when training)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--recon-weight", type=float, default=100.0)
    ap.add_argument("--n", type=int, default=2000, help="held-out images")
    ap.add_argument("--seed", type=int, default=0, help="selection of the held-out images")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="where to keep the trained run (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    args = ap.parse_args()

    result: dict[str, object] = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run, seconds = train_upsampler(args, args.out or Path(tmp) / "up")
            result["train_seconds"] = round(seconds, 1)
        result["run"] = str(run)
        result.update(compare(args, run))
    methods = result["methods"]
    assert isinstance(methods, dict)
    print(f"\n{result['in_resolution']} px -> {result['resolution']} px (x{result['factor']}), "
          f"n = {result['n']} held-out images of {args.test}\n")
    print("| method | PSNR (dB, mean ± std) | FID | KID |")
    print("|---|---|---|---|")
    for name, r in methods.items():
        print(f"| {name} | {r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} | {r['fid']:.2f} | {r['kid']:.4f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=lambda o: float(o) if np.isscalar(o) else str(o)) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
