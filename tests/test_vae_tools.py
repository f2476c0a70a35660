"""The VAE family's objectives, likelihood bounds, samplers and metrics: KL warm-up, free bits,
active units, the importance-weighted bound, reconstruction metrics (MSE/PSNR/SSIM) and the
ex-post Gaussian-mixture sampler; checked against closed forms and independent references."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, MultivariateNormal, Normal

import latentforge
from latentforge.checkpoint import read_jsonl
from latentforge.config import ConfigError, TrainConfig
from latentforge.losses import bernoulli_nll, kl_free_bits, kl_standard_normal, negative_elbo
from latentforge.metrics.recon import gaussian_window, mse, psnr, recon_metrics, ssim
from latentforge.models.vae import VAE, VAEConfig
from latentforge.samplers import GMM_INFO, GMM_WEIGHTS, GaussianMixture, fit_gmm, load_sampler
from latentforge.train import latents_for_seeds, train, vae_step
from latentforge.vae_tools import (
    active_units, binarize, iwae_bound, kl_weight, log_importance_weights, posterior_means, seeded_log_weights,
)


def tiny_vae_cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="vae", data=str(data), out=str(out), resolution=28, steps=6, batch_size=8, width=8, z_dim=8,
                log_every=2, sample_every=3, checkpoint_every=3, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def quiet(msg: str) -> None:
    pass


# ------------------------------------------------------------------------ KL weight, free bits


def test_kl_weight_linear_and_cyclical_schedules() -> None:
    lin = TrainConfig(model="vae", beta=2.0, kl_warmup=4)
    assert [kl_weight(s, lin) for s in (0, 1, 2, 3, 4, 5, 100)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    cyc = TrainConfig(model="vae", kl_warmup=2, kl_schedule="cyclical")
    # cycles of 2 * kl_warmup = 4 steps: ramp 0 -> beta over the first half, hold beta in the second
    assert [kl_weight(s, cyc) for s in range(9)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 0.0]
    off = TrainConfig(model="vae", beta=4.0)
    assert kl_weight(0, off) == kl_weight(10**6, off) == 4.0


def test_vae_objective_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="needs the length of a ramp"):
        TrainConfig(model="vae", kl_schedule="cyclical")
    with pytest.raises(ConfigError, match="kl_schedule must be one of"):
        TrainConfig(model="vae", kl_schedule="cosine", kl_warmup=10)
    with pytest.raises(ConfigError, match="kl_warmup must be >= 0"):
        TrainConfig(model="vae", kl_warmup=-1)
    with pytest.raises(ConfigError, match="free_bits must be >= 0"):
        TrainConfig(model="vae", free_bits=-0.5)
    cfg = TrainConfig(model="vae", kl_warmup=100, kl_schedule="cyclical", free_bits=0.25)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    # a config.json written before these fields existed still loads, with the old behaviour
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("kl_warmup", "kl_schedule", "free_bits")}
    assert TrainConfig.from_dict(old).kl_warmup == 0 and TrainConfig.from_dict(old).free_bits == 0.0


def test_free_bits_clamp_the_batch_mean_kl_per_dimension() -> None:
    # 2 examples, 3 dims; KL_j = (mu^2 + exp(lv) - 1 - lv) / 2 per example
    mu = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 2.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, 0.0, 0.0], [math.log(0.5), 0.0, 0.0]], requires_grad=True)
    kl_ex = 0.5 * (0.5 - 1 - math.log(0.5))  # dim 0 of example 1
    per_dim_mean = [kl_ex / 2, 0.25, 2.0]  # batch means: ~0.0767, 0.25, 2.0
    lam = 0.3
    expected = sum(max(lam, v) for v in per_dim_mean)
    got = kl_free_bits(mu, logvar, lam)
    assert math.isclose(got.item(), expected, rel_tol=1e-6)
    # without clamping it is the batch-mean KL of kl_standard_normal
    assert math.isclose(kl_free_bits(mu, logvar, 0.0).item(), kl_standard_normal(mu, logvar).mean().item(), rel_tol=1e-6)
    # dims under the threshold get no gradient from the KL term; the one above does
    got.backward()
    assert torch.all(mu.grad[:, :2] == 0) and torch.all(logvar.grad[:, :2] == 0)
    assert torch.all(mu.grad[:, 2] != 0)

    x = torch.rand(2, 1, 4, 4) * 2 - 1
    logits = torch.randn(2, 1, 4, 4)
    parts = negative_elbo(logits, x, mu.detach(), logvar.detach(), "bce", beta=2.0, free_bits=lam)
    assert math.isclose(parts.total.item(), parts.recon.item() + 2.0 * expected, rel_tol=1e-6)
    assert math.isclose(parts.kl.item(), sum([kl_ex / 2, 0.25, 2.0]), rel_tol=1e-6)  # the true KL is reported


def test_vae_step_default_is_the_plain_elbo_step_bit_for_bit() -> None:
    """vae_step without a schedule or free bits takes exactly the step of the plain negative ELBO."""
    cfg = TrainConfig(model="vae", resolution=28, z_dim=4, width=8)
    x = torch.rand(4, 1, 28, 28) * 2 - 1

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        vae = VAE(VAEConfig(resolution=28, img_channels=1, z_dim=4, width=8))
        return vae, torch.optim.Adam(vae.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))

    a, opt_a = fresh()
    torch.manual_seed(1)
    vae_step(a, opt_a, x, cfg)
    b, opt_b = fresh()
    torch.manual_seed(1)
    out = b(x)  # the step as it was written before schedules existed
    rec = bernoulli_nll(out.decoded, (x + 1) / 2).mean()
    loss = rec + cfg.beta * kl_standard_normal(out.mu, out.logvar).mean()
    opt_b.zero_grad()
    loss.backward()
    opt_b.step()
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_warmup_and_free_bits_train_log_the_weight_and_resume_exactly(tiny_npz: Path, tmp_path: Path) -> None:
    kw = dict(kl_warmup=4, free_bits=0.05)
    straight = tmp_path / "straight"
    train(tiny_vae_cfg(tiny_npz, straight, **kw), progress=False, log=quiet)
    rows = read_jsonl(straight / "metrics.jsonl")
    train_rows = [r for r in rows if r["kind"] == "train"]
    # the row at step S shows the weight of its last update, kl_weight(S - 1): 1/4, 3/4, then beta
    assert [(r["step"], r["kl_weight"]) for r in train_rows] == [(2, 0.25), (4, 0.75), (6, 1.0)]
    au = [r for r in rows if r["kind"] == "active_units"]
    assert len(au) == 1 and au[0]["step"] == 6 and au[0]["z_dim"] == 8 and au[0]["n"] == 64
    assert 0 <= au[0]["active_units"] <= 8
    # the count logged is the count of the saved weights on the training images
    m = latentforge.load(straight)
    images = torch.from_numpy(np.load(tiny_npz)["images"]).unsqueeze(1)
    assert active_units(posterior_means(m.nets["vae"], images))[0] == au[0]["active_units"]

    split = tmp_path / "split"
    train(tiny_vae_cfg(tiny_npz, split, steps=3, **kw), progress=False, log=quiet)
    train(tiny_vae_cfg(tiny_npz, split, steps=6, **kw), resume=True, progress=False, log=quiet)
    from safetensors.torch import load_file

    a, b = load_file(str(straight / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the weight keeps following the step across the resume
    assert [r["kl_weight"] for r in read_jsonl(split / "metrics.jsonl") if r["kind"] == "train"] == [0.25, 0.5, 0.75, 1.0]


# ------------------------------------------------------------------------ active units


def test_active_units_count_dimensions_whose_mean_varies_over_the_data() -> None:
    v = torch.randn(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = (v - v.mean()) / v.std()  # sample variance exactly 1
    scales = torch.tensor([1.0, 0.2, 0.05, 0.001, 0.0], dtype=torch.float64)  # variances 1, .04, .0025, 1e-6, 0
    mu = v[:, None] * scales + torch.arange(5.0, dtype=torch.float64)  # a constant offset changes nothing
    count, activity = active_units(mu)
    assert count == 2
    assert torch.allclose(activity, scales**2, atol=1e-12)
    assert active_units(mu, threshold=1e-3)[0] == 3
    with pytest.raises(ValueError, match="N >= 2"):
        active_units(mu[:1])


# ------------------------------------------------------------------------ importance-weighted bound


class LinearGaussianVAE(nn.Module):
    """A VAE whose encoder is the exact posterior: p(z) = N(0, I_2), p(x01|z) = N(W z + b, s^2 I_P).
    Then every importance weight equals p(x), so L_k = log p(x) for every k and every draw."""

    def __init__(self, pixels: int = 6, sigma: float = 0.3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = torch.randn(pixels, 2, generator=g) * 0.3  # (P, D)
        self.b = torch.rand(pixels, generator=g)  # (P,)
        self.sigma = sigma
        self.shape = (1, 2, pixels // 2)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x01 = ((x + 1) / 2).flatten(1)  # (N, P)
        prec = torch.eye(2) + self.W.T @ self.W / self.sigma**2  # posterior precision (D, D), diagonal here
        cov = torch.linalg.inv(prec)
        mean = (x01 - self.b) @ self.W @ cov.T / self.sigma**2  # (N, D)
        return mean, torch.log(torch.diagonal(cov)).expand_as(mean)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.W.T + self.b).view(-1, *self.shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_raw(z).clamp(0, 1) * 2 - 1


def test_iwae_bound_equals_log_p_x_when_q_is_the_exact_posterior() -> None:
    torch.set_default_dtype(torch.float64)
    try:
        vae = LinearGaussianVAE()
        # make W's columns orthogonal so that the exact posterior covariance is diagonal (a VAE's q)
        q, _ = torch.linalg.qr(vae.W)
        vae.W = q * torch.tensor([0.5, 0.2])
        x01 = torch.rand(5, 6, generator=torch.Generator().manual_seed(1))
        x = (x01 * 2 - 1).view(5, 1, 2, 3)
        marginal = MultivariateNormal(vae.b, vae.sigma**2 * torch.eye(6) + vae.W @ vae.W.T)
        log_px = marginal.log_prob(x01)  # the closed form
        for k in (1, 7):
            bound = iwae_bound(vae, x, k, likelihood="mse", sigma=vae.sigma, seed=3)
            assert torch.allclose(bound, log_px, atol=1e-9, rtol=0), (k, bound, log_px)
    finally:
        torch.set_default_dtype(torch.float32)


def small_vae(likelihood: str = "bce") -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(resolution=28, img_channels=1, z_dim=4, width=8, likelihood=likelihood)).eval()


def test_one_sample_bound_is_the_elbo_at_the_same_z() -> None:
    vae = small_vae()
    x = (torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5).float() * 2 - 1
    eps = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lw = log_importance_weights(vae, x, eps, "bce")  # (1, 3)
        mu, logvar = vae.encode(x)
        std = torch.exp(0.5 * logvar)
        z = mu + std * eps[0]
        ref = (Bernoulli(logits=vae.decode_raw(z)).log_prob((x + 1) / 2).flatten(1).sum(1)
               + Normal(0.0, 1.0).log_prob(z).sum(1) - Normal(mu, std).log_prob(z).sum(1))
    assert lw.shape == (1, 3)
    assert torch.allclose(lw[0], ref.double(), rtol=1e-5)


def test_bounds_in_expectation_and_their_order() -> None:
    """E[L_1] = the ELBO with the analytic KL; E[L_1] <= E[L_10] <= E[L_100] (Burda et al. 2016, thm. 1)."""
    vae = small_vae()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    m = 2000
    with torch.no_grad():
        lw = seeded_log_weights(vae, x, m, "bce", seed=5)  # (2, m): m one-sample bounds per image
        mu, logvar = vae.encode(x)
        eps = torch.stack([torch.randn(m, 4, generator=torch.Generator().manual_seed(5 * 1_000_003 + i))
                           for i in range(2)], dim=1)  # the same noise (see vae_tools.image_noise)
        z = mu + torch.exp(0.5 * logvar) * eps  # (m, 2, 4)
        rec = -bernoulli_nll(vae.decode_raw(z.reshape(-1, 4)), ((x + 1) / 2).repeat(m, 1, 1, 1)).view(m, 2)
        elbo = rec.double() - kl_standard_normal(mu, logvar).double()  # (m, 2): analytic KL
    diff = lw.T - elbo  # log p(z) - log q(z|x) + KL: mean zero
    se = diff.std(0) / math.sqrt(m)
    assert torch.all(diff.mean(0).abs() < 4 * se + 1e-6), (diff.mean(0), se)
    # L_k from the same draws, in groups of k: the bound rises with k (by ~0.2 nats here, > 10 standard errors)
    bounds = {k: torch.logsumexp(lw.view(2, -1, k), 2) - math.log(k) for k in (1, 10, 100)}
    se1 = bounds[1].std(1) / math.sqrt(m)
    assert torch.all(bounds[1].mean(1) + 5 * se1 < bounds[10].mean(1))
    assert torch.all(bounds[1].mean(1) + 5 * se1 < bounds[100].mean(1))
    # iwae_bound is that logsumexp over the seeded draws
    assert torch.allclose(iwae_bound(vae, x, 10, seed=5), torch.logsumexp(seeded_log_weights(vae, x, 10, "bce", seed=5), 1)
                          - math.log(10))


def test_iwae_bound_does_not_depend_on_batching_and_restores_train_mode() -> None:
    vae = small_vae()
    vae.train()
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a = iwae_bound(vae, x, 6, seed=1, max_batch=1024)
    b = iwae_bound(vae, x, 6, seed=1, max_batch=7)  # 1 image per chunk, samples in chunks
    c = iwae_bound(vae, x[2:4], 6, seed=1)
    assert torch.allclose(a, b, rtol=1e-6) and a.shape == (5,)
    assert not torch.allclose(a[2:4], c, rtol=1e-7, atol=0)  # image i's noise follows its index in the set
    assert vae.training  # put back as it was


def test_binarize_is_seeded_and_unbiased() -> None:
    x = torch.full((2000, 1, 4, 4), 64, dtype=torch.uint8)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0, 255
    b = binarize(x, seed=3)
    assert b.dtype == torch.uint8 and set(b.unique().tolist()) <= {0, 255}
    assert torch.equal(b, binarize(x, seed=3)) and not torch.equal(b, binarize(x, seed=4))
    assert torch.all(b[:, :, 0, 0] == 0) and torch.all(b[:, :, 0, 1] == 255)
    frac = (b[:, :, 1:, :] == 255).double().mean().item()
    assert abs(frac - 64 / 255) < 0.01


# ------------------------------------------------------------------------ reconstruction metrics


def ssim_skimage_formula(x: np.ndarray, y: np.ndarray) -> float:
    """skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1) for one 2-D image, written out with scipy."""
    from scipy.ndimage import gaussian_filter

    def filt(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma=1.5, truncate=3.5)  # radius int(3.5 * 1.5 + 0.5) = 5: 11 x 11

    ux, uy = filt(x), filt(y)
    vx, vy, vxy = filt(x * x) - ux * ux, filt(y * y) - uy * uy, filt(x * y) - ux * uy
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = 5
    return float(s[pad:-pad, pad:-pad].mean())


def test_ssim_matches_the_reference_formula_and_its_properties() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 28, 30, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(3, 2, 28, 30, generator=g, dtype=torch.float64)).clamp(0, 1)
    s = ssim(x, y)
    ref = [np.mean([ssim_skimage_formula(x[i, c].numpy(), y[i, c].numpy()) for c in range(2)]) for i in range(3)]
    assert np.allclose(s.numpy(), ref, atol=1e-10)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(ssim(y, x), s)  # symmetric
    assert torch.all(s < 0.9)
    # constant images: sigma terms vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.3, 0.6
    c1 = 0.01**2
    got = ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)).item()
    assert math.isclose(got, (2 * a * b + c1) / (a * a + b * b + c1), rel_tol=1e-9)
    w = gaussian_window()
    assert w.shape == (11,) and math.isclose(float(w.sum()), 1.0) and int(w.argmax()) == 5
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_mse_and_psnr_closed_forms() -> None:
    x = torch.zeros(2, 1, 16, 16)
    y = torch.full((2, 1, 16, 16), 0.1)
    y[1] = 0.01
    assert torch.allclose(mse(x, y), torch.tensor([0.01, 1e-4], dtype=torch.float64))
    assert torch.allclose(psnr(x, y), torch.tensor([20.0, 40.0], dtype=torch.float64))
    r = recon_metrics(x, y)
    assert math.isclose(r["psnr_db"], 30.0, rel_tol=1e-6) and math.isclose(r["mse"], 0.00505, rel_tol=1e-6)
    with pytest.raises(ValueError, match="of one shape"):
        mse(x, y[:1])


# ------------------------------------------------------------------------ ex-post GMM sampler


def test_em_recovers_a_known_two_component_mixture() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    means = torch.tensor([[-2.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
    covs = torch.tensor([[[1.0, 0.5], [0.5, 1.0]], [[0.5, -0.2], [-0.2, 0.3]]], dtype=torch.float64)
    n = 20000
    comp = (torch.rand(n, generator=g, dtype=torch.float64) > w[0]).long()
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    z = means[comp] + torch.einsum("nij,nj->ni", torch.linalg.cholesky(covs)[comp], eps)
    gmm, info = fit_gmm(z, k=2, seed=0)
    assert info["converged"] and info["k"] == 2 and info["n"] == n
    order = torch.argsort(gmm.means[:, 0])  # components come in no particular order
    assert torch.allclose(gmm.weights[order], w, atol=0.02)
    assert torch.allclose(gmm.means[order], means, atol=0.05)
    assert torch.allclose(gmm.covariances[order], covs, atol=0.05)
    # and closer still to the statistics of each component's own draws (the labels EM never saw)
    for c in range(2):
        zc = z[comp == c]
        assert torch.allclose(gmm.means[order][c], zc.mean(0), atol=0.02)
        assert torch.allclose(gmm.covariances[order][c], torch.cov(zc.T, correction=0), atol=0.02)
    # the mixture's density is the textbook one (against torch.distributions)
    ref = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(gmm.weights),
                                                MultivariateNormal(gmm.means, gmm.covariances))
    assert torch.allclose(gmm.log_prob(z[:50]), ref.log_prob(z[:50]), atol=1e-9)
    assert math.isclose(info["log_likelihood"], float(ref.log_prob(z).mean()), rel_tol=1e-9)
    # seeded: the same fit again
    again, _ = fit_gmm(z, k=2, seed=0)
    assert torch.equal(again.means, gmm.means)


def test_gmm_latents_are_a_pure_function_of_the_seed(tmp_path: Path) -> None:
    # one standard component: the latent of seed s is exactly the prior's latent of seed s
    std = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64),
                          torch.eye(3, dtype=torch.float64).unsqueeze(0))
    assert torch.equal(std.latents_for_seeds(range(5)), latents_for_seeds(range(5), 3))
    two = GaussianMixture(torch.tensor([0.25, 0.75], dtype=torch.float64),
                          torch.tensor([[-10.0, 0.0], [10.0, 0.0]], dtype=torch.float64),
                          torch.eye(2, dtype=torch.float64).expand(2, 2, 2).clone())
    z = two.latents_for_seeds(range(4000))
    assert torch.equal(two.latents_for_seeds([7, 3]), z[[7, 3]])  # independent of the batch
    assert abs((z[:, 0] > 0).double().mean().item() - 0.75) < 0.03  # components by their weights
    two.save(tmp_path, {"k": 2})
    back, info = GaussianMixture.load(tmp_path)
    assert info == {"k": 2} and torch.equal(back.covariances, two.covariances)


def test_model_samples_from_a_cached_gmm_refitted_when_the_weights_change(tiny_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "v"
    train(tiny_vae_cfg(tiny_npz, run), progress=False, log=quiet)
    m = latentforge.load(run)
    a = m.sample(4, seed=2, sampler="gmm")  # fitted on first use
    assert (run / GMM_WEIGHTS).is_file() and (run / GMM_INFO).is_file()
    info = json.loads((run / GMM_INFO).read_text())
    assert info["k"] == 10 and info["n"] == 64 and info["dim"] == 8 and info["data"] == str(tiny_npz)
    assert np.array_equal(latentforge.load(run).sample(4, seed=2, sampler="gmm"), a)  # from the cache
    assert np.array_equal(m.sample(2, seed=3, sampler="gmm"), a[1:3])  # image i from seed + i
    assert not np.array_equal(m.sample(4, seed=2), a)  # the prior gives other images
    gmm, _ = load_sampler(m)
    z = gmm.latents_for_seeds(range(2, 6))
    from latentforge.images import to_hwc_numpy, to_uint8

    assert np.array_equal(to_hwc_numpy(to_uint8(m.decode(z))), a)
    with pytest.raises(ConfigError, match="unknown sampler"):
        m.sample(2, sampler="flow")

    train(tiny_vae_cfg(tiny_npz, run, steps=8), resume=True, progress=False, log=quiet)
    m2 = latentforge.load(run)
    assert load_sampler(m2) is None  # the cached mixture belongs to the old weights
    m2.sample(1, sampler="gmm")
    assert json.loads((run / GMM_INFO).read_text())["weights_sha256"] != info["weights_sha256"]

    gan = tmp_path / "g"
    train(tiny_vae_cfg(tiny_npz, gan, model="dcgan", steps=2), progress=False, log=quiet)
    with pytest.raises(ConfigError, match="needs a VAE run"):
        latentforge.load(gan).sample(2, sampler="gmm")


# ------------------------------------------------------------------------ CLI


def invoke(*args: str):
    """Run a CLI command in this process; returns click's Result (exit_code, stdout, stderr, exception)."""
    from typer.testing import CliRunner

    from latentforge.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_fit_sampler_sample_and_vae_eval(tiny_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "v"
    r = invoke("train", "--model", "vae", "--data", str(tiny_npz), "--res", "28", "--steps", "4", "--batch-size", "8",
               "--width", "8", "--z-dim", "4", "--kl-warmup", "2", "--kl-schedule", "cyclical", "--free-bits", "0.1",
               "--out", str(run), "--quiet", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "active units:" in r.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["kl_warmup"], cfg["kl_schedule"], cfg["free_bits"]) == (2, "cyclical", 0.1)

    r = invoke("fit-sampler", str(run), "--k", "3", "--n", "40", "--device", "cpu")
    assert r.exit_code == 0, r.output
    info = json.loads((run / GMM_INFO).read_text())
    assert info["k"] == 3 and info["n"] == 40
    r = invoke("sample", str(run), "--n", "4", "--sampler", "gmm", "--outdir", str(tmp_path / "each"), "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert json.loads((run / GMM_INFO).read_text())["k"] == 3  # the explicit fit is used, not replaced
    from latentforge.images import read_png_metadata

    assert read_png_metadata(tmp_path / "each" / "seed000000.png")["sampler"] == "gmm"

    out = tmp_path / "eval.json"
    r = invoke("eval", str(run), "--ref", str(tiny_npz), "--n", "16", "--iwae-k", "5", "--recon", "--json", str(out),
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "log-likelihood (IWAE k=5)" in r.stdout and "not a normalized likelihood" in r.stdout
    assert "FID" not in r.stdout  # VAE metrics alone unless --metrics asks for more
    res = json.loads(out.read_text())["vae"]
    ll = res["log_likelihood"]
    assert res["n"] == 16 and ll["k"] == 5 and ll["dims"] == 784
    assert math.isclose(ll["bits_per_dim"], -ll["log_likelihood_nats"] / (784 * math.log(2)), rel_tol=1e-9)
    assert ll["log_likelihood_nats"] >= ll["elbo_nats"] - 3 * ll["standard_error_nats"]
    assert 0 < res["recon"]["mse"] < 1 and -1 <= res["recon"]["ssim"] <= 1 and res["recon"]["psnr_db"] > 0
    assert 0 <= res["active_units"]["count"] <= 4

    r = invoke("eval", str(run), "--ref", str(tiny_npz), "--n", "16", "--iwae-k", "3", "--binarize", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "binarized" in r.stdout and "Bernoulli(x / 255)" in r.stdout
    r = invoke("eval", str(run), "--ref", str(tiny_npz), "--n", "16", "--binarize", "--device", "cpu")
    assert isinstance(r.exception, ConfigError) and "--iwae-k" in str(r.exception)
    # through the real entry point: a mistake is one line, exit code 2, no traceback
    p = subprocess.run([sys.executable, "-m", "latentforge", "sample", str(run), "--n", "2", "--sampler", "vamp",
                        "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "unknown sampler 'vamp'" in p.stderr and "Traceback" not in p.stderr


def test_cli_vae_options_are_refused_for_gan_runs(tiny_npz: Path, tmp_path: Path) -> None:
    from latentforge.cli import UserError

    gan = tmp_path / "g"
    train(tiny_vae_cfg(tiny_npz, gan, model="dcgan", steps=2), progress=False, log=quiet)
    r = invoke("eval", str(gan), "--iwae-k", "5", "--n", "8", "--device", "cpu")
    assert isinstance(r.exception, UserError) and "need a VAE run" in str(r.exception)
    r = invoke("fit-sampler", str(gan), "--device", "cpu")
    assert isinstance(r.exception, UserError) and "needs a VAE run" in str(r.exception)
    r = invoke("eval", "--real", str(tiny_npz), "--fake", str(tiny_npz), "--recon")
    assert isinstance(r.exception, UserError) and "give RUN" in str(r.exception)
    # a Gaussian-likelihood run has no discrete likelihood to binarize for
    from latentforge.sample import Model
    from latentforge.vae_tools import evaluate_vae_run

    mse_run = Model(config=TrainConfig(model="vae", recon_loss="mse"), info={"channels": 1}, nets={},
                    device=torch.device("cpu"), run_dir=tmp_path, checkpoint="latest")
    with pytest.raises(ConfigError, match="Gaussian likelihood"):
        evaluate_vae_run(mse_run, str(tiny_npz), 8, iwae_k=5, binarize_images=True)


@pytest.mark.integration
def test_cli_eval_states_the_sampler_with_fid(tiny_npz: Path, tmp_path: Path) -> None:
    """eval --sampler gmm: FID/KID on images decoded from the mixture (real Inception weights),
    the sampler stated in the protocol, active units reported for the VAE run."""
    import os

    run = tmp_path / "v"
    train(tiny_vae_cfg(tiny_npz, run), progress=False, log=quiet)
    env = {**os.environ, "LATENTFORGE_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "e.json"
    r = subprocess.run([sys.executable, "-m", "latentforge", "eval", str(run), "--ref", str(tiny_npz), "--n", "20",
                        "--metrics", "fid,kid", "--sampler", "gmm", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["fid"] > 0 and res["protocol"]["sampler"].startswith("gmm: Gaussian mixture, k=10")
    assert "sampler: gmm" in r.stdout and "active units" in r.stdout and res["vae"]["n"] == 20
