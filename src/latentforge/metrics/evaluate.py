"""The evaluation protocol: generated images vs a reference data set, under stated rules.

`evaluate(fake_u8, ref_spec, n=10000, ...)`:
1. Reference: `load_images(ref_spec)` at its native resolution and channels. The reference
   sample is the first min(n, N_ref) images after a seeded shuffle,
   `numpy.random.default_rng(seed).permutation(N_ref)[:n]` (all of them, shuffled, when the data
   set has fewer than n images).
2. Generated: the first min(n, N_fake) images. They are brought to the reference's native
   resolution and channels BEFORE Inception, because Inception features react strongly to
   the resize path (shared/design/EVALUATION.md: FID 308 when 64 px samples were fed against
   28 px data, 140 after downsampling them to 28 px first): resized with
   `F.interpolate(mode="bicubic", antialias=True, align_corners=False)` (the PIL-style
   antialiased filter), rounded and clamped to uint8; RGB -> grayscale with the ITU-R 601 luma
   weights (0.299, 0.587, 0.114, as PIL's "L"); grayscale -> RGB by replication. Both sets then
   take the same path to Inception (`features.PREPROCESSING`).
3. Features: Inception-v3 pool3 (`features.InceptionFeatures`). Reference FEATURES (not only
   their mean/covariance: KID and precision/recall need them) are cached as
   `<cache root>/metrics/<key>.npy` (cache root = `cache_dir`, else `$LATENTFORGE_CACHE`, else
   `~/.cache/latentforge`), key = SHA-256 of (ref spec, n, seed, resolution, extractor file hash,
   preprocessing version, and a hash of the selected images' bytes), written atomically and
   read with `np.load(allow_pickle=False)`.
4. Metrics (float64): FID (fid.py), KID with `kid_subsets` subsets of `kid_subset_size`
   (kid.py), precision/recall with k = `pr_k` (prdc.py), and, given `train_spec`, memorization
   in pixel space against the training data (memorization.py).
Everything that defines the numbers is returned in `result["protocol"]`. FID depends on n:
compare FIDs only at equal n, and see `floor=True` for the real-vs-real FID at the same n.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .fid import feature_statistics, frechet_distance
from .kid import KID_SUBSET_SIZE, KID_SUBSETS, effective_subset_size, kid
from .memorization import MEMORIZATION_ALPHA, memorization, save_closest_pairs_png
from .prdc import PR_K, prdc

METRICS = ("fid", "kid", "pr", "memorization")
FEATURE_METRICS = ("fid", "kid", "pr")
CACHE_FORMAT = 1
SELECTION_RULE = "first min(n, N) after a seeded shuffle: numpy.random.default_rng(seed).permutation(N)[:n]"
RESIZE_RULE = ("F.interpolate(mode='bicubic', antialias=True, align_corners=False) on float in [0, 255], "
               "rounded and clamped to uint8")
LUMA = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------------------------- helpers


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """`cache_dir`, else `$LATENTFORGE_CACHE`, else `~/.cache/latentforge` (as data.py)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LATENTFORGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "latentforge"


def _load_images(spec: str, progress: bool):
    """data.load_images at native resolution; one place so that tests can substitute it."""
    from ..data import load_images

    return load_images(spec, progress=progress)


@functools.lru_cache(maxsize=2)
def default_extractor(device: str = "cpu"):
    """One InceptionFeatures per device for the life of the process (building one reads 87 MB)."""
    from .features import InceptionFeatures

    return InceptionFeatures(device=device)


def select_indices(n_total: int, n: int, seed: int) -> np.ndarray:
    """The reference selection rule (SELECTION_RULE)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return np.random.default_rng(seed).permutation(n_total)[: min(n, n_total)]


def match_images(images_u8: torch.Tensor, size: tuple[int, int], channels: int) -> tuple[torch.Tensor, dict[str, str]]:
    """Bring uint8 (N, C, H, W) to `size` (H, W) and `channels`; returns (images, what was done)."""
    if images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
        raise TypeError(f"expected uint8 (N, C, H, W) images, got {images_u8.dtype} {tuple(images_u8.shape)}")
    c, h, w = images_u8.shape[1:]
    done = {"resize": "none", "channels": "none"}
    x = images_u8
    if c != channels:
        if c == 3 and channels == 1:
            wts = torch.tensor(LUMA).view(1, 3, 1, 1)
            x = (x.float() * wts).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
            done["channels"] = "RGB -> grayscale, ITU-R 601 luma (0.299, 0.587, 0.114), rounded"
        elif c == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
            done["channels"] = "grayscale -> RGB by replication"
        else:
            raise ValueError(f"cannot match {c} channels to {channels}")
    if (h, w) != tuple(size):
        out = []
        for i in range(0, x.shape[0], 512):  # bounded memory for large sets
            y = F.interpolate(x[i:i + 512].float(), size=tuple(size), mode="bicubic", antialias=True,
                              align_corners=False)
            out.append(y.round_().clamp_(0, 255).to(torch.uint8))
        x = torch.cat(out) if out else x.new_empty((0, x.shape[1], *size))
        done["resize"] = f"{h}x{w} -> {size[0]}x{size[1]}: {RESIZE_RULE}"
    return x, done


def _images_digest(images_u8: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(images_u8.shape)).encode())
    h.update(images_u8.contiguous().numpy().tobytes())
    return h.hexdigest()


def _extractor_protocol(ext: Any) -> dict[str, Any]:
    if hasattr(ext, "protocol") and callable(ext.protocol):
        return dict(ext.protocol())
    return {"model": type(ext).__name__, "note": "custom feature extractor"}


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _spec_split(spec: str) -> str | None:
    base, sep, split = str(spec).partition(":")
    if not sep or any(ch in base + split for ch in "/\\"):
        return None
    return split.strip().lower() or None


# --------------------------------------------------------------------- reference features


def reference_features(ref_spec: str, n: int, seed: int, extractor: Any, cache_dir: str | os.PathLike[str] | None = None,
                       progress: bool = True, data: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Features of the reference sample (SELECTION_RULE), from the on-disk cache when present.

    Returns (features (n_ref, D) float64, info) where info has the selection, resolution and
    cache facts, and `images` (the selected uint8 images, not JSON: popped by callers).
    """
    data = data if data is not None else _load_images(ref_spec, progress)
    images_all = data.images
    idx = select_indices(int(images_all.shape[0]), n, seed)
    images = images_all[torch.from_numpy(idx)]
    c, h, w = (int(v) for v in images.shape[1:])
    info: dict[str, Any] = {
        "ref_spec": str(ref_spec), "ref_name": getattr(data, "name", str(ref_spec)), "ref_split": _spec_split(ref_spec),
        "ref_total": int(images_all.shape[0]), "n_ref": int(len(idx)), "ref_resolution": [c, h, w],
        "ref_selection": SELECTION_RULE,
    }
    cache_id = getattr(extractor, "cache_id", None)
    if cache_id is None:
        feats = extractor(images, progress=progress)
        info["ref_cache"] = {"file": None, "hit": False, "note": "extractor has no cache_id: not cached"}
        info["images"] = images
        return np.asarray(feats, dtype=np.float64), info
    from .features import PREPROCESSING_VERSION

    key_fields = {"format": CACHE_FORMAT, "ref_spec": str(ref_spec), "n": int(n), "seed": int(seed),
                  "resolution": [c, h, w], "extractor": str(cache_id), "preprocessing": PREPROCESSING_VERSION,
                  "images_sha256": _images_digest(images)}
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_root(cache_dir) / "metrics" / f"{key}.npy"
    feats = None
    if path.is_file():
        try:
            feats = np.load(path, allow_pickle=False)
            if feats.dtype != np.float64 or feats.ndim != 2 or feats.shape[0] != len(idx) or not np.isfinite(feats).all():
                warnings.warn(f"ignoring malformed feature cache {path}", RuntimeWarning, stacklevel=2)
                feats = None
        except (OSError, ValueError) as err:
            warnings.warn(f"ignoring unreadable feature cache {path}: {err}", RuntimeWarning, stacklevel=2)
            feats = None
    hit = feats is not None
    if feats is None:
        feats = np.asarray(extractor(images, progress=progress), dtype=np.float64)
        _atomic_save_npy(path, feats)
        _atomic_write_text(path.with_suffix(".json"), json.dumps({**key_fields, "name": info["ref_name"]}, indent=2))
    info["ref_cache"] = {"file": str(path), "hit": hit}
    info["images"] = images
    return feats, info


# ---------------------------------------------------------------------------------- metrics


def _check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(str(m).strip().lower() for m in metrics))
    bad = [m for m in wanted if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; choose from {list(METRICS)}")
    return wanted


def _feature_metrics(ref_feats: np.ndarray, fake_feats: np.ndarray, metrics: Sequence[str], seed: int,
                     kid_subsets: int, kid_subset_size: int, pr_k: int, fid_method: str = "sqrtm") -> dict[str, float]:
    out: dict[str, float] = {}
    if "fid" in metrics:
        mu1, s1 = feature_statistics(ref_feats)
        mu2, s2 = feature_statistics(fake_feats)
        out["fid"] = frechet_distance(mu1, s1, mu2, s2, method=fid_method)
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kid(ref_feats, fake_feats, num_subsets=kid_subsets, subset_size=kid_subset_size,
                                         seed=seed)
    if "pr" in metrics:
        res = prdc(ref_feats, fake_feats, k=pr_k)
        out.update({k: res[k] for k in ("precision", "recall", "density", "coverage")})
    return out


def _metric_protocol(metrics: Sequence[str], n_ref: int, n_fake: int, kid_subsets: int, kid_subset_size: int,
                     pr_k: int, fid_method: str = "sqrtm") -> dict[str, Any]:
    p: dict[str, Any] = {}
    if "fid" in metrics:
        p["fid"] = ("Frechet distance of float64 mean/covariance (ddof=1), "
                    + ("scipy.linalg.sqrtm" if fid_method == "sqrtm" else "trace of the root via eigh"))
    if "kid" in metrics:
        p["kid_subsets"] = int(kid_subsets)
        p["kid_subset_size"] = effective_subset_size(n_ref, n_fake, kid_subset_size)
        p["kid"] = "unbiased MMD^2, kernel (x.y/d + 1)^3; mean and std (ddof=0) over subsets"
    if "pr" in metrics:
        p["pr_k"] = int(pr_k)
        p["pr"] = "Kynkaanniemi et al. 2019 k-NN manifolds in feature space; density/coverage: Naeem et al. 2020"
    return p


def _memorization_block(fake_u8: torch.Tensor, train_spec: str, seed: int, memorization_dir: Any,
                        progress: bool, train_data: Any = None) -> dict[str, Any]:
    train = train_data if train_data is not None else _load_images(train_spec, progress)
    c, h, w = (int(v) for v in train.images.shape[1:])
    fake_t, done = match_images(fake_u8, (h, w), c)
    rep = memorization(fake_t, train.images, alpha=MEMORIZATION_ALPHA, seed=seed)
    block = {"train_spec": str(train_spec), "train_resolution": [c, h, w], "fake_resize": done["resize"],
             "fake_channels": done["channels"], **rep.summary()}
    if memorization_dir is not None:
        path = save_closest_pairs_png(Path(memorization_dir) / "memorization_pairs.png", fake_t, train.images, rep)
        block["pairs_png"] = str(path)
    return block


def _finite(x: Any) -> Any:
    """JSON-friendly: numpy scalars -> python; NaN/inf kept as float (json writes NaN)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def evaluate(fake_u8: torch.Tensor, ref_spec: str, n: int = 10000, metrics: Sequence[str] = ("fid", "kid", "pr"),
             seed: int = 0, train_spec: str | None = None, memorization_dir: str | os.PathLike[str] | None = None,
             cache_dir: str | os.PathLike[str] | None = None, extractor: Any = None, progress: bool = True,
             kid_subsets: int = KID_SUBSETS, kid_subset_size: int = KID_SUBSET_SIZE, pr_k: int = PR_K,
             floor: bool = False, fid_method: str = "sqrtm") -> dict[str, Any]:
    """Metrics of generated uint8 (N, C, H, W) images against `ref_spec`; see the module docstring.

    metrics: any of "fid", "kid", "pr", "memorization". Memorization (also run when
    `memorization_dir` is given) needs `train_spec`; with `memorization_dir` the closest
    (generated, training) pairs are written to `memorization_dir/memorization_pairs.png`.
    floor: also compute FID/KID of a real training sample (train_spec, the same n, selected with
    seed + 1) against the same reference sample: the best any model can reach under this protocol.
    Returns a JSON-serialisable dict: the metric values and a `protocol` block.
    """
    wanted = _check_metrics(metrics)
    if memorization_dir is not None and "memorization" not in wanted:
        wanted = wanted + ("memorization",)
    if ("memorization" in wanted or floor) and train_spec is None:
        raise ValueError("memorization and floor need train_spec (the training data)")
    if fake_u8.dtype != torch.uint8 or fake_u8.ndim != 4 or fake_u8.shape[0] < 2:
        raise ValueError(f"expected at least 2 uint8 (N, C, H, W) images, got {fake_u8.dtype} {tuple(fake_u8.shape)}")
    fake = fake_u8[:n].cpu()
    result: dict[str, Any] = {}
    protocol: dict[str, Any] = {"n_requested": int(n), "n_fake": int(fake.shape[0]), "seed": int(seed),
                                "fake_resolution": [int(v) for v in fake.shape[1:]],
                                "fake_selection": "the first min(n, N_fake) generated images"}
    feature_metrics = [m for m in wanted if m in FEATURE_METRICS]
    ref_data = _load_images(ref_spec, progress)
    c, h, w = (int(v) for v in ref_data.images.shape[1:])
    if feature_metrics or floor:
        ext = extractor if extractor is not None else default_extractor()
        ref_feats, info = reference_features(ref_spec, n, seed, ext, cache_dir, progress, data=ref_data)
        info.pop("images")
        fake_m, done = match_images(fake, (h, w), c)
        fake_feats = np.asarray(ext(fake_m, progress=progress), dtype=np.float64)
        result.update(_feature_metrics(ref_feats, fake_feats, feature_metrics, seed, kid_subsets, kid_subset_size, pr_k,
                                       fid_method))
        protocol.update(info)
        protocol.update({"fake_resize": done["resize"], "fake_channels": done["channels"],
                         "features": _extractor_protocol(ext)})
        protocol.update(_metric_protocol(feature_metrics, ref_feats.shape[0], fake_feats.shape[0], kid_subsets,
                                         kid_subset_size, pr_k, fid_method))
        if fake_feats.shape[0] != ref_feats.shape[0]:
            protocol["warning"] = (f"n_fake = {fake_feats.shape[0]} != n_ref = {ref_feats.shape[0]}: FID depends on n; "
                                   f"compare FIDs only at equal n")
        if floor:
            train_data = _load_images(train_spec, progress)
            tr_feats, tr_info = _matched_reference_features(train_spec, n, seed + 1, ext, cache_dir, progress,
                                                            train_data, (h, w), c)
            fl = _feature_metrics(ref_feats, tr_feats, ("fid", "kid"), seed, kid_subsets, kid_subset_size, pr_k,
                                  fid_method)
            result["floor"] = {**fl, "n": int(tr_feats.shape[0]), "train_spec": str(train_spec),
                               "selection": f"{SELECTION_RULE} with seed {seed + 1}", **tr_info}
    else:
        protocol.update({"ref_spec": str(ref_spec), "ref_name": getattr(ref_data, "name", str(ref_spec)),
                         "ref_resolution": [c, h, w]})
    if "memorization" in wanted:
        result["memorization"] = _memorization_block(fake, train_spec, seed, memorization_dir, progress)
    result["protocol"] = protocol
    return _finite(result)


def _matched_reference_features(spec: str, n: int, seed: int, ext: Any, cache_dir: Any, progress: bool, data: Any,
                                size: tuple[int, int], channels: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Reference features of a data set brought to (size, channels) first (for the floor)."""
    if tuple(data.images.shape[1:]) != (channels, *size):
        images, done = match_images(data.images, size, channels)
        data = type("Matched", (), {"images": images, "name": getattr(data, "name", spec)})()
        spec = f"{spec}@{channels}x{size[0]}x{size[1]}"
    else:
        done = {"resize": "none", "channels": "none"}
    feats, info = reference_features(spec, n, seed, ext, cache_dir, progress, data=data)
    info.pop("images")
    return feats, {"resize": done["resize"], "channels": done["channels"], "cache": info["ref_cache"]}


def evaluate_sets(real_u8: torch.Tensor, fake_u8: torch.Tensor, metrics: Sequence[str] = ("fid", "kid", "pr"),
                  seed: int = 0, n: int | None = None, extractor: Any = None, progress: bool = True,
                  real_name: str | None = None, fake_name: str | None = None, memorization_dir: Any = None,
                  kid_subsets: int = KID_SUBSETS, kid_subset_size: int = KID_SUBSET_SIZE,
                  pr_k: int = PR_K, fid_method: str = "sqrtm") -> dict[str, Any]:
    """The same metrics for two arbitrary uint8 image sets; `real_u8` plays the reference.

    The fake images are brought to the real images' resolution and channels (as in `evaluate`).
    n: use at most n images of each set (the real ones by SELECTION_RULE, the first n fakes);
    None = all. Memorization compares the fake images with the real set. No caching.
    """
    wanted = _check_metrics(metrics)
    if memorization_dir is not None and "memorization" not in wanted:
        wanted = wanted + ("memorization",)
    if real_u8.shape[0] < 2 or fake_u8.shape[0] < 2:
        raise ValueError("need at least 2 images in each set")
    real = real_u8.cpu()
    if n is not None:
        real = real[torch.from_numpy(select_indices(real.shape[0], n, seed))]
    fake = (fake_u8[:n] if n is not None else fake_u8).cpu()
    c, h, w = (int(v) for v in real.shape[1:])
    fake_m, done = match_images(fake, (h, w), c)
    result: dict[str, Any] = {}
    protocol: dict[str, Any] = {
        "real": real_name, "fake": fake_name, "n_real": int(real.shape[0]), "n_fake": int(fake.shape[0]),
        "real_selection": "all" if n is None else SELECTION_RULE, "seed": int(seed),
        "real_resolution": [c, h, w], "fake_resolution": [int(v) for v in fake.shape[1:]],
        "fake_resize": done["resize"], "fake_channels": done["channels"],
    }
    feature_metrics = [m for m in wanted if m in FEATURE_METRICS]
    if feature_metrics:
        ext = extractor if extractor is not None else default_extractor()
        real_feats = np.asarray(ext(real, progress=progress), dtype=np.float64)
        fake_feats = np.asarray(ext(fake_m, progress=progress), dtype=np.float64)
        result.update(_feature_metrics(real_feats, fake_feats, feature_metrics, seed, kid_subsets, kid_subset_size, pr_k,
                                       fid_method))
        protocol["features"] = _extractor_protocol(ext)
        protocol.update(_metric_protocol(feature_metrics, real_feats.shape[0], fake_feats.shape[0], kid_subsets,
                                         kid_subset_size, pr_k, fid_method))
        if real_feats.shape[0] != fake_feats.shape[0]:
            protocol["warning"] = (f"n_fake = {fake_feats.shape[0]} != n_real = {real_feats.shape[0]}: FID depends "
                                   f"on n; compare FIDs only at equal n")
    if "memorization" in wanted:
        holder = type("Train", (), {"images": real_u8.cpu()})()
        result["memorization"] = _memorization_block(fake, real_name or "real set", seed, memorization_dir,
                                                     progress, train_data=holder)
    result["protocol"] = protocol
    return _finite(result)


# ------------------------------------------------------------------------------ in training


class InTrainingEvaluator:
    """FID/KID during training against a fixed, cached reference sample.

    The reference sample (SELECTION_RULE with `n`, `seed`) is loaded and its features extracted
    (or read from the cache) on the first call; each call then extracts only the generated
    images' features. KID uses subsets of min(kid_subset_size, n // 2) so that its std over
    subsets means something when n is about 1000 (subsets of all n images would all be equal).
    FID uses `fid_method="eigh"` by default: the same value as scipy's sqrtm (to ~1e-6
    relative; see fid.py and the tests) in a fraction of the time.
    """

    def __init__(self, ref_spec: str, n: int = 1000, seed: int = 0, extractor: Any = None,
                 cache_dir: str | os.PathLike[str] | None = None, kid_subsets: int = KID_SUBSETS,
                 kid_subset_size: int | None = None, progress: bool = False, fid_method: str = "eigh"):
        self.fid_method = fid_method
        self.ref_spec, self.n, self.seed = str(ref_spec), int(n), int(seed)
        self.extractor, self.cache_dir, self.progress = extractor, cache_dir, progress
        self.kid_subsets = int(kid_subsets)
        self.kid_subset_size = int(kid_subset_size) if kid_subset_size else max(2, min(KID_SUBSET_SIZE, self.n // 2))
        self._ref: tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int]] | None = None
        self.info: dict[str, Any] = {}

    def _ext(self) -> Any:
        if self.extractor is None:
            self.extractor = default_extractor()
        return self.extractor

    def reference(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int]]:
        """(features, mu, sigma, (C, H, W)) of the reference sample, computed once."""
        if self._ref is None:
            feats, info = reference_features(self.ref_spec, self.n, self.seed, self._ext(), self.cache_dir,
                                             self.progress)
            info.pop("images")
            mu, sigma = feature_statistics(feats)
            self.info = info
            self._ref = (feats, mu, sigma, tuple(info["ref_resolution"]))
        return self._ref

    def __call__(self, fake_u8: torch.Tensor) -> dict[str, float | int]:
        feats, mu, sigma, (c, h, w) = self.reference()
        fake, _ = match_images(fake_u8[: self.n].cpu(), (h, w), c)
        ff = np.asarray(self._ext()(fake, progress=self.progress), dtype=np.float64)
        mu2, s2 = feature_statistics(ff)
        k, k_std = kid(feats, ff, num_subsets=self.kid_subsets, subset_size=self.kid_subset_size, seed=self.seed)
        return {"fid": float(frechet_distance(mu, sigma, mu2, s2, method=self.fid_method)), "kid": float(k),
                "kid_std": float(k_std),
                "n": int(ff.shape[0])}


# ------------------------------------------------------------------------------------ table


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if abs(v) >= 1:
            return f"{v:.2f}"  # FID 49.9995 -> "50.00", not "50"
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table of an `evaluate` / `evaluate_sets` result, protocol included."""
    rows: list[tuple[str, str]] = []
    if "fid" in result:
        rows.append(("FID", _fmt(result["fid"])))
    if "kid" in result:
        rows.append(("KID", f"{_fmt(result['kid'])} ± {_fmt(result.get('kid_std', float('nan')))}"))
    for k in ("precision", "recall", "density", "coverage"):
        if k in result:
            rows.append((k, _fmt(result[k])))
    if "floor" in result:
        fl = result["floor"]
        rows.append(("FID floor (train vs ref)", f"{_fmt(fl.get('fid'))}  (n={fl.get('n')})"))
        if "kid" in fl:
            rows.append(("KID floor", _fmt(fl["kid"])))
    mem = result.get("memorization")
    if mem:
        rows.append(("near-copies", f"{mem['flagged']}/{mem['n_generated']} ({100 * mem['flagged_fraction']:.2f}%); "
                                    f"real-data rate {100 * mem['train_flag_fraction']:.2f}%"))
        rows.append(("exact copies", str(mem["exact_copies"])))
        rows.append(("NN dist. median / train", f"{_fmt(mem['nn_distance_median'])} / {_fmt(mem['train_nn_median'])}"))
        if "pairs_png" in mem:
            rows.append(("closest pairs", mem["pairs_png"]))
    p = result.get("protocol", {})
    width = max([len(k) for k, _ in rows] + [10])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 24}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    lines.append("protocol")
    for key in ("n_fake", "n_ref", "n_real", "ref_spec", "ref_total", "ref_selection", "real", "fake", "seed",
                "fake_resolution", "ref_resolution", "real_resolution", "fake_resize", "fake_channels", "kid_subsets",
                "kid_subset_size", "pr_k", "sampler", "warning"):
        if key in p and p[key] is not None:
            lines.append(f"  {key}: {p[key]}")
    feats = p.get("features")
    if feats:
        sha = feats.get("sha256")
        lines.append(f"  features: {feats.get('model')} {feats.get('file', '')}"
                     + (f" sha256 {sha[:16]}..." if sha else ""))
        if feats.get("preprocessing"):
            lines.append(f"  preprocessing: {feats['preprocessing']}")
    cache = p.get("ref_cache")
    if cache and cache.get("file"):
        lines.append(f"  reference features: {cache['file']} ({'cache hit' if cache['hit'] else 'computed'})")
    if mem:
        lines.append(f"  memorization: {mem['space']}; {mem['rule']} (threshold {_fmt(mem['threshold'])})")
    return "\n".join(lines)


__all__ = ["evaluate", "evaluate_sets", "InTrainingEvaluator", "format_table", "reference_features",
           "match_images", "select_indices", "cache_root", "default_extractor", "METRICS", "SELECTION_RULE"]
