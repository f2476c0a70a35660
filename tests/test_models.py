"""Models and losses: shapes at every resolution, loss formulas against independent references,
one training step changes the weights."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from latentforge.config import ConfigError, TrainConfig
from latentforge.losses import (
    bernoulli_nll, d_loss_nonsaturating, g_loss_nonsaturating, gaussian_nll, kl_standard_normal, negative_elbo,
)
from latentforge.models import build_networks
from latentforge.models.dcgan import DCGANConfig, Discriminator, Generator, layout
from latentforge.models.vae import VAE, VAEConfig
from latentforge.train import frozen, gan_step, vae_step

RESOLUTIONS = (28, 32, 64, 128)


@pytest.mark.parametrize("res", RESOLUTIONS)
@pytest.mark.parametrize("channels", (1, 3))
def test_dcgan_shapes_match_at_every_resolution(res: int, channels: int) -> None:
    cfg = DCGANConfig(resolution=res, img_channels=channels, z_dim=16, width=8)
    G, D = Generator(cfg), Discriminator(cfg)
    x = G(torch.randn(3, 16))
    assert x.shape == (3, channels, res, res)
    assert x.min() >= -1 and x.max() <= 1  # tanh output
    logits = D(x)
    assert logits.shape == (3,)
    # the discriminator accepts exactly the generator's size and nothing else
    with pytest.raises(ValueError, match="images must have shape"):
        D(torch.zeros(3, channels, res + 4, res + 4))


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_layout_arithmetic(res: int) -> None:
    base, n_up = layout(res)
    assert base * 2**n_up == res
    assert base in (4, 7)


def test_unsupported_resolution_is_refused() -> None:
    with pytest.raises(ValueError, match="supports resolutions"):
        DCGANConfig(resolution=40)
    with pytest.raises(ConfigError, match="resolution 40 is not supported"):
        TrainConfig(resolution=40)


@pytest.mark.parametrize("res", RESOLUTIONS)
@pytest.mark.parametrize("likelihood", ("bce", "mse"))
def test_vae_shapes(res: int, likelihood: str) -> None:
    vae = VAE(VAEConfig(resolution=res, img_channels=3, z_dim=8, width=8, likelihood=likelihood))
    x = torch.rand(2, 3, res, res) * 2 - 1
    out = vae(x)
    assert out.decoded.shape == x.shape
    assert out.mu.shape == out.logvar.shape == out.z.shape == (2, 8)
    img = vae.decode(out.mu)
    assert img.shape == x.shape and img.min() >= -1 and img.max() <= 1
    with pytest.raises(ValueError, match="z must have shape"):
        vae.decode(torch.zeros(2, 9))


def test_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), expected)
    # KL of the prior against itself is exactly zero
    assert kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0


def test_bernoulli_and_gaussian_nll_match_log_probs() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, 5, 5, generator=g)
    x01 = torch.randint(0, 2, (4, 1, 5, 5), generator=g).float()
    expected = -Bernoulli(logits=logits).log_prob(x01).flatten(1).sum(1)
    torch.testing.assert_close(bernoulli_nll(logits, x01), expected)

    mean = torch.rand(4, 3, 5, 5, generator=g)
    x = torch.rand(4, 3, 5, 5, generator=g)
    expected = -Normal(mean, 0.2).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_nll(mean, x, 0.2), expected)


def test_negative_elbo_parts_and_beta() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    logits, mu, logvar = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    p1 = negative_elbo(logits, x, mu, logvar, "bce", beta=1.0)
    p4 = negative_elbo(logits, x, mu, logvar, "bce", beta=4.0)
    torch.testing.assert_close(p1.total, p1.recon + p1.kl)
    torch.testing.assert_close(p4.total, p4.recon + 4 * p4.kl)
    torch.testing.assert_close(p1.recon, bernoulli_nll(logits, (x + 1) / 2).mean())


def test_gan_losses_match_their_formulas() -> None:
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    d = -(torch.log(torch.sigmoid(real)).mean() + torch.log(1 - torch.sigmoid(fake)).mean())
    torch.testing.assert_close(d_loss_nonsaturating(real, fake), d)
    torch.testing.assert_close(g_loss_nonsaturating(fake), -torch.log(torch.sigmoid(fake)).mean())
    # a perfect discriminator's loss goes to 0, and log 4 at D = 1/2 everywhere
    assert d_loss_nonsaturating(torch.tensor([30.0]), torch.tensor([-30.0])) < 1e-10
    assert math.isclose(d_loss_nonsaturating(torch.zeros(4), torch.zeros(4)).item(), 2 * math.log(2), rel_tol=1e-6)


def _params(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def test_one_gan_step_changes_both_networks() -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(model="dcgan", resolution=28, z_dim=8, width=8)
    nets = build_networks(cfg, channels=1)
    G, D = nets["G"], nets["D"]
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    g0, d0 = _params(G), _params(D)
    out = gan_step(G, D, opt_G, opt_D, torch.rand(4, 1, 28, 28) * 2 - 1, z_dim=8)
    assert all(math.isfinite(v) for v in out.values())
    assert all(not torch.equal(a, b) for a, b in zip(g0, _params(G)))
    assert all(not torch.equal(a, b) for a, b in zip(d0, _params(D)))


def test_gan_step_equals_the_written_out_dcgan_step() -> None:
    """gan_step freezes D in G's half (no weight gradients for D there); the result must be the
    plain DCGAN step, where D's weights get a gradient in G's half too, that is then thrown away."""
    cfg = TrainConfig(model="dcgan", resolution=28, z_dim=8, width=8)
    torch.manual_seed(0)
    nets = build_networks(cfg, channels=1)
    ref = {k: copy.deepcopy(v) for k, v in nets.items()}
    real = torch.rand(6, 1, 28, 28) * 2 - 1

    def adam(net: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))

    torch.manual_seed(1)
    gan_step(nets["G"], nets["D"], adam(nets["G"]), adam(nets["D"]), real, z_dim=8)

    G, D, opt_G, opt_D = ref["G"], ref["D"], adam(ref["G"]), adam(ref["D"])
    torch.manual_seed(1)
    fake = G(torch.randn(6, 8))
    opt_D.zero_grad()
    d_loss_nonsaturating(D(real), D(fake.detach())).backward()
    opt_D.step()
    opt_G.zero_grad()
    g_loss_nonsaturating(D(fake)).backward()
    assert all(p.grad is not None for p in D.parameters())  # the plain step computes D's, unused
    opt_G.step()
    for name in ("G", "D"):
        for a, b in zip(nets[name].parameters(), ref[name].parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_frozen_passes_input_gradients_and_restores_only_what_it_froze() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    net[0].bias.requires_grad_(False)  # frozen before: must stay frozen after
    x = torch.randn(5, 3, requires_grad=True)
    (expected,) = torch.autograd.grad(net(x).sum(), x)
    with frozen(net):
        assert not any(p.requires_grad for p in net.parameters())
        y = net(x).sum()
    y.backward()  # the graph was built while frozen: no weight gradients even after leaving
    torch.testing.assert_close(x.grad, expected)
    assert all(p.grad is None for p in net.parameters())
    assert [p.requires_grad for p in net.parameters()] == [True, False, True, True]
    with pytest.raises(RuntimeError, match="boom"), frozen(net):
        raise RuntimeError("boom")
    assert [p.requires_grad for p in net.parameters()] == [True, False, True, True]


def test_one_vae_step_changes_weights_and_reports_parts() -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(model="vae", resolution=32, z_dim=4, width=8)
    vae = build_networks(cfg, channels=1)["vae"]
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    before = _params(vae)
    out = vae_step(vae, opt, torch.rand(4, 1, 32, 32) * 2 - 1, cfg)
    assert set(out) == {"loss/total", "loss/recon", "loss/kl"}
    assert math.isclose(out["loss/total"], out["loss/recon"] + out["loss/kl"], rel_tol=1e-5)
    assert all(not torch.equal(a, b) for a, b in zip(before, _params(vae)))


def test_config_validation_and_defaults() -> None:
    assert TrainConfig(model="dcgan").z_dim == 100 and TrainConfig(model="dcgan").lr == 2e-4
    vae = TrainConfig(model="vae")
    assert vae.z_dim == 32 and vae.lr == 1e-3 and vae.beta1 == 0.9
    with pytest.raises(ConfigError, match="unknown model 'gpt'"):
        TrainConfig(model="gpt")
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="recon_loss"):
        TrainConfig(model="vae", recon_loss="l1")
    cfg = TrainConfig(model="vae", beta=4.0, z_dim=16)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config keys: bogus"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})
