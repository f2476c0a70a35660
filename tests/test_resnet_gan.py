"""The SN-GAN-style ResNet GAN: shapes at every resolution, spectral norm on every D layer, the
residual blocks' arithmetic, registration in the config and the model map, one training step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from latentforge.config import ConfigError, TrainConfig
from latentforge.models import MODELS, build_networks
from latentforge.models.resnet_gan import DBlock, Discriminator, GBlock, Generator, ResNetGANConfig
from latentforge.train import gan_step

RESOLUTIONS = (28, 32, 64, 128)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks on shared cores: intra-op threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("res", RESOLUTIONS)
@pytest.mark.parametrize("channels", (1, 3))
def test_shapes_at_every_resolution(res: int, channels: int) -> None:
    torch.manual_seed(0)
    cfg = ResNetGANConfig(resolution=res, img_channels=channels, z_dim=16, width=8)
    G, D = Generator(cfg), Discriminator(cfg)
    x = G(torch.randn(3, 16))
    assert x.shape == (3, channels, res, res)
    assert x.min() >= -1 and x.max() <= 1  # tanh output
    assert D(x).shape == (3,)
    # G: one up-sampling block per doubling from base (7 for 28 px, else 4); D: as many down blocks + 1 plain
    base = 7 if res == 28 else 4
    assert len(G.blocks) == round(math.log2(res // base))
    assert [b.down for b in D.blocks] == [True] * len(G.blocks) + [False]
    with pytest.raises(ValueError, match="images must have shape"):
        D(torch.zeros(3, channels, res + 4, res + 4))
    with pytest.raises(ValueError, match="z must have shape"):
        G(torch.zeros(3, 17))


def test_unsupported_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="supports resolutions"):
        ResNetGANConfig(resolution=48)
    with pytest.raises(ValueError, match="img_channels"):
        ResNetGANConfig(img_channels=2)


def test_every_discriminator_layer_is_spectrally_normalized() -> None:
    torch.manual_seed(0)
    D = Discriminator(ResNetGANConfig(resolution=32, img_channels=3, width=8, num_classes=3))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in D.modules())
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    # 4 blocks x 2 convs + 3 shortcut convs (the down-sampling blocks) + the linear head + the class embedding
    assert len(layers) == 8 + 3 + 1 + 1
    assert all(nn.utils.parametrize.is_parametrized(m, "weight") for m in layers)
    D.train()
    c = torch.tensor([0, 1, 2, 0])
    for _ in range(30):  # power iterations, one per forward in train mode
        D(torch.randn(4, 3, 32, 32), c)
    for m in layers:
        with torch.no_grad():
            w = m.weight.reshape(m.weight.shape[0], -1)
            sigma = torch.linalg.matrix_norm(w, ord=2).item()
            raw = torch.linalg.matrix_norm(m.parametrizations.weight.original.reshape(w.shape[0], -1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.05), m  # normalized to unit spectral norm
        assert raw != pytest.approx(1.0, abs=0.05), m  # ... which the raw weight was not


def test_generator_block_matches_its_formula() -> None:
    """GBlock(x) = conv2(relu(bn2(conv1(up(relu(bn1(x))))))) + shortcut(up(x)), recomputed by hand."""
    torch.manual_seed(0)
    blk = GBlock(4, 6, num_classes=0).eval()
    with torch.no_grad():  # non-trivial running statistics
        for bn in (blk.bn1, blk.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 5, 5)
    up = lambda t: t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # noqa: E731  nearest x2
    h = blk.conv1(up(torch.relu(blk.bn1(x))))
    want = blk.conv2(torch.relu(blk.bn2(h))) + blk.shortcut(up(x))
    got = blk(x)
    assert got.shape == (2, 6, 10, 10)
    torch.testing.assert_close(got, want)


def test_discriminator_blocks_match_their_formulas() -> None:
    torch.manual_seed(0)
    pool = lambda t: t.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2))  # noqa: E731  2x2 average
    x = torch.randn(2, 3, 8, 8)
    first = DBlock(3, 5, down=True, first=True)
    want = pool(first.conv2(torch.relu(first.conv1(x)))) + first.shortcut(pool(x))
    torch.testing.assert_close(first(x), want)
    mid = DBlock(5, 5, down=True)
    y = torch.randn(2, 5, 8, 8)
    want = pool(mid.conv2(torch.relu(mid.conv1(torch.relu(y))))) + pool(mid.shortcut(y))
    torch.testing.assert_close(mid(y), want)
    plain = DBlock(5, 5, down=False)
    assert plain.shortcut is None  # identity shortcut where the shape does not change
    torch.testing.assert_close(plain(y), plain.conv2(torch.relu(plain.conv1(torch.relu(y)))) + y)


def test_registered_in_config_and_model_map() -> None:
    cfg = TrainConfig(model="resnet_gan", resolution=28, width=8)
    assert cfg.family == "gan" and cfg.z_dim == 128  # SN-GAN's latent size
    assert cfg.loss == "ns" and cfg.lr == 2e-4  # the config's GAN defaults are kept; hinge is a flag
    assert "resnet_gan" in MODELS
    nets = build_networks(cfg, channels=1)
    assert isinstance(nets["G"], Generator) and isinstance(nets["D"], Discriminator)
    assert nets["G"](torch.randn(2, 128)).shape == (2, 1, 28, 28)
    with pytest.raises(ConfigError, match="resnet_gan"):
        TrainConfig(model="resnet")


def test_one_hinge_step_changes_both_networks() -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(model="resnet_gan", resolution=28, z_dim=8, width=8, loss="hinge")
    nets = build_networks(cfg, channels=1)
    G, D = nets["G"], nets["D"]
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    g0 = [p.detach().clone() for p in G.parameters()]
    d0 = [p.detach().clone() for p in D.parameters()]
    out = gan_step(G, D, opt_G, opt_D, torch.rand(4, 1, 28, 28) * 2 - 1, z_dim=8, loss="hinge")
    assert all(math.isfinite(v) for v in out.values())
    assert all(not torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d0, D.parameters()))
