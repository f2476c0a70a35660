"""Progressive GAN: layers against closed forms, the schedule at its boundaries, the fade-in
exact at alpha 0 and 1, shapes at every stage, and exact resume in the middle of a fade."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from latentforge import acceleration
from latentforge.checkpoint import read_jsonl
from latentforge.config import ConfigError, TrainConfig, read_run_config
from latentforge.losses import GAN_LOSSES, d_loss_wasserstein_drift
from latentforge.models import build_networks
from latentforge.models.progan import (Discriminator, EqualizedConv2d, EqualizedConvTranspose2d, EqualizedLinear,
                                       Generator, ProGANConfig, _DBlock, _GBlock,
                                       fade_reals, lrelu_pixel_norm, minibatch_stddev, pixel_norm, progan_schedule,
                                       stage_resolutions)
from latentforge.train import gan_step, train


# paper-unfused: the paper's blocks without fused_scale (up x2 and pooling as layers of their own);
# strided-bn: the strided blocks with batch norm in G and in D; strided-rgb: with the image made and read by the last blocks
BLOCKS = ["paper", "paper-unfused", "strided", "strided-bn", "strided-rgb"]


def _block_kw(block: str) -> dict:
    if block == "paper-unfused":
        return dict(block="paper", fused_scale=False)
    if block == "strided-bn":
        return dict(block="strided", g_batch_norm=True, d_batch_norm=True)
    if block == "strided-rgb":
        return dict(block="strided", rgb_top=True, d_batch_norm=True)
    return dict(block=block)


def _nets(res: int = 28, channels: int = 1, seed: int = 0, block: str = "paper") -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    cfg = ProGANConfig(resolution=res, img_channels=channels, z_dim=8, width=8, **_block_kw(block))
    return Generator(cfg), Discriminator(cfg)


def _dyadic(*shape: int, seed: int = 0) -> torch.Tensor:
    """Values k / 64: sums of a few of them, and their halves and quarters, are exact in float32."""
    return torch.randint(-64, 65, shape, generator=torch.Generator().manual_seed(seed)).float() / 64


# ---------------------------------------------------------------------------- layers


def test_equalized_lr_scales_weights_by_he_constant_at_run_time() -> None:
    conv = EqualizedConv2d(3, 5, 3)
    assert conv.scale == pytest.approx(math.sqrt(2) / math.sqrt(3 * 3 * 3))
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1))
    # the stored weight is N(0, 1), not pre-scaled: its std is ~1, whatever the fan-in
    big = EqualizedConv2d(256, 64, 3)
    assert abs(big.weight.std().item() - 1) < 0.02 and big.scale == pytest.approx(math.sqrt(2 / (256 * 9)))
    lin = EqualizedLinear(50, 4, gain=1.0)
    assert lin.scale == pytest.approx(1 / math.sqrt(50))
    v = torch.randn(3, 50)
    torch.testing.assert_close(lin(v), v @ (lin.weight * lin.scale).T + lin.bias)


def test_pixel_norm_gives_unit_mean_square_over_channels() -> None:
    x = torch.randn(2, 7, 3, 3) * 5
    y = pixel_norm(x)
    torch.testing.assert_close(y.pow(2).mean(dim=1), torch.ones(2, 3, 3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y / y.norm(dim=1, keepdim=True), x / x.norm(dim=1, keepdim=True))  # direction kept


def test_minibatch_stddev_adds_one_channel_with_the_group_std() -> None:
    # four images, 2 channels of 2x2; groups of 2: image i is in group i mod 2, so {0, 2} and {1, 3}
    x = torch.zeros(4, 2, 2, 2)
    x[2] = 2.0  # group 0: values 0 and 2 everywhere -> std 1 at every feature
    x[1], x[3] = 1.0, 7.0  # group 1: values 1 and 7 -> std 3
    y = minibatch_stddev(x, group_size=2)
    assert y.shape == (4, 3, 2, 2)
    assert torch.equal(y[:, :2], x)  # the input channels pass unchanged
    expect = torch.tensor([1.0, 3.0, 1.0, 3.0]).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    torch.testing.assert_close(y[:, 2:], expect)
    # one group of all four: values 0, 1, 2, 7 -> population std over the group
    vals = torch.tensor([0.0, 1.0, 2.0, 7.0])
    std = math.sqrt(((vals - vals.mean()) ** 2).mean().item() + 1e-8)
    torch.testing.assert_close(minibatch_stddev(x, group_size=4)[:, 2], torch.full((4, 2, 2), std))
    # a batch the group size does not divide uses the largest group size that does (6 -> 3)
    assert minibatch_stddev(torch.randn(6, 2, 2, 2), group_size=4).shape == (6, 3, 2, 2)


def test_wgan_drift_loss() -> None:
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    # mean(fake) - mean(real) + 0.001 * mean(real^2) = 1 - 0.5 + 0.001 * 2.5
    assert d_loss_wasserstein_drift(real, fake).item() == pytest.approx(0.5 + 0.0025)
    assert GAN_LOSSES["wgan-drift"][1](fake).item() == pytest.approx(-1.0)


# ---------------------------------------------------------------------------- schedule


def test_stage_resolutions() -> None:
    assert stage_resolutions(28) == [7, 14, 28]
    assert stage_resolutions(32) == [4, 8, 16, 32]
    assert stage_resolutions(1024) == [4, 8, 16, 32, 64, 128, 256, 512, 1024]
    with pytest.raises(ValueError, match="supports resolutions"):
        stage_resolutions(48)
    cfg = ProGANConfig(resolution=1024, width=16)
    assert [cfg.channels(s) for s in range(cfg.n_stages)] == [512, 512, 512, 512, 256, 128, 64, 32, 16]  # capped


def _cfg(**kw) -> TrainConfig:
    base = dict(model="progan", resolution=28, batch_size=8, stage_images=16)
    base.update(kw)
    return TrainConfig(**base)


def test_progan_schedule_at_the_stage_boundaries() -> None:
    cfg = _cfg()  # 2 steps per phase; 3 stages (7, 14, 28 px)
    got = [progan_schedule(s, cfg) for s in range(10)]
    assert got == [(0, 1.0), (0, 1.0),  # base stage: stable only
                   (1, 0.0), (1, 0.5), (1, 1.0), (1, 1.0),  # 14 px: fade in, then stable
                   (2, 0.0), (2, 0.5), (2, 1.0), (2, 1.0)]  # 28 px
    assert progan_schedule(10_000, cfg) == (2, 1.0)  # grown: stays at the last stage
    # alpha is the fraction of the fade phase's images already shown, also off the step grid
    assert progan_schedule(3, _cfg(stage_images=20)) == (1, pytest.approx(4 / 20))  # 24 shown: 4 into phase 1
    # D sees n_critic batches a step: the schedule counts them all
    assert progan_schedule(1, _cfg(n_critic=2)) == (1, 0.0)


# ---------------------------------------------------------------------------- shapes and fade-in


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize(("res", "channels"), [(28, 1), (28, 3), (32, 1), (64, 3)])
def test_shapes_at_every_stage(res: int, channels: int, block: str) -> None:
    G, D = _nets(res, channels, block=block)
    stages = stage_resolutions(res)
    for s, r in enumerate(stages):
        for alpha in (1.0,) if s == 0 else (0.3, 1.0):
            G.set_progress(s, alpha)
            D.set_progress(s, alpha)
            x = G(torch.randn(2, 8))
            assert x.shape == (2, channels, res, res)  # always the target size ...
            k = res // r  # ... nearest-upsampled from the stage size: constant k x k blocks
            assert torch.equal(x, F.interpolate(x[:, :, ::k, ::k], scale_factor=k, mode="nearest"))
            assert D(x).shape == (2,)
    with pytest.raises(ValueError, match="images must have shape"):
        D(torch.zeros(2, channels, res // 2, res // 2))


@pytest.mark.parametrize("block", BLOCKS)
def test_generator_fade_in_is_exact_at_alpha_0_and_1(block: str) -> None:
    G, _ = _nets(28, block=block)
    z = torch.randn(5, 8)
    for s in (1, 2):
        G.set_progress(s - 1, 1.0)
        old = G(z)  # the previous stage, fully faded in, upsampled to 28 px
        G.set_progress(s, 0.0)
        assert torch.equal(G(z), old)
        G.set_progress(s, 1.0)
        new = G(z)
        with torch.no_grad():  # at alpha 1 the old toRGB plays no part
            G.to_rgb[s - 1].weight.add_(1.0)
        assert torch.equal(G(z), new)
        G.set_progress(s, 0.25)
        torch.testing.assert_close(G(z), G_at(G, s - 1, 1.0, z) * 0.75 + new * 0.25, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            G.to_rgb[s - 1].weight.sub_(1.0)


def G_at(G: Generator, stage: int, alpha: float, z: torch.Tensor) -> torch.Tensor:
    G.set_progress(stage, alpha)
    return G(z)


@pytest.mark.parametrize("block", BLOCKS)
def test_discriminator_fade_in_is_exact_at_alpha_0_and_1(block: str) -> None:
    _, D = _nets(28, block=block)
    for s, r_old in ((1, 7), (2, 14)):
        # an image the previous stage could have made: r_old px, nearest-upsampled to 28 px
        x = F.interpolate(_dyadic(6, 1, r_old, r_old, seed=s), size=28, mode="nearest")
        D.set_progress(s - 1, 1.0)
        old = D(x)
        D.set_progress(s, 0.0)
        assert torch.equal(D(x), old)
        D.set_progress(s, 1.0)
        new = D(x)
        with torch.no_grad():  # at alpha 1 the old fromRGB plays no part
            D.from_rgb[s - 1].weight.add_(1.0)
        assert torch.equal(D(x), new)
        with torch.no_grad():
            D.from_rgb[s - 1].weight.sub_(1.0)


def test_discriminator_input_gradient_has_the_stage_resolution_norm() -> None:
    """D reads every k-th pixel, so for an image nearest-upsampled from the stage size the input
    gradient (what WGAN-GP and R1 penalize) has the same norm at 28 px as at the stage size."""
    _, D = _nets(28)
    D.set_progress(1, 1.0)  # 14 px: k = 2
    xs = torch.randn(3, 1, 14, 14, requires_grad=True)
    big = F.interpolate(xs.detach(), scale_factor=2, mode="nearest").requires_grad_(True)
    (g_big,) = torch.autograd.grad(D(big).sum(), big)
    (g_small,) = torch.autograd.grad(D(F.interpolate(xs, scale_factor=2, mode="nearest")).sum(), xs)
    torch.testing.assert_close(g_big.flatten(1).norm(dim=1), g_small.flatten(1).norm(dim=1))


def test_fade_reals_matches_the_stage() -> None:
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    # stable at 14 px: the 2x2 means, nearest-upsampled back to 28 px
    y = fade_reals(x, 1, 1.0, 28)
    assert y.shape == x.shape
    assert torch.equal(y[:, :, ::2, ::2], F.avg_pool2d(x, 2))
    assert torch.equal(y, F.interpolate(y[:, :, ::2, ::2], scale_factor=2, mode="nearest"))
    # the start of the fade to 14 px is the 7 px stage; the middle is the blend of both
    torch.testing.assert_close(fade_reals(x, 1, 0.0, 28), fade_reals(x, 0, 1.0, 28))
    mid = 0.6 * fade_reals(x, 0, 1.0, 28) + 0.4 * fade_reals(x, 1, 1.0, 28)
    torch.testing.assert_close(fade_reals(x, 1, 0.4, 28), mid)
    assert torch.equal(fade_reals(x, 2, 1.0, 28), x)  # the last stage sees the images as they are


def test_set_progress_is_checked() -> None:
    G, _ = _nets(28)
    with pytest.raises(ValueError, match="stage must lie"):
        G.set_progress(3, 1.0)
    with pytest.raises(ValueError, match="alpha must lie"):
        G.set_progress(1, 1.5)
    with pytest.raises(ValueError, match="be 1 at stage 0"):
        G.set_progress(0, 0.5)
    assert G.progress() == (2, 1.0)  # built fully grown


def test_a_step_at_stage_0_leaves_later_stages_without_gradients() -> None:
    """All stages exist from step 0; only the active ones train (the optimizer state stays static)."""
    cfg = _cfg(width=8, z_dim=8)
    torch.manual_seed(0)
    nets = build_networks(cfg, channels=1)
    G, D = nets["G"], nets["D"]
    for net in (G, D):
        net.set_progress(0, 1.0)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    before = {k: v.clone() for k, v in G.state_dict().items()}
    real = fade_reals(torch.rand(8, 1, 28, 28) * 2 - 1, 0, 1.0, 28)
    out = gan_step(G, D, opt_G, opt_D, real, cfg.z_dim, loss="wgan-drift", gp_weight=10.0)
    assert math.isfinite(out["loss/D"]) and "loss/gp" in out
    after = G.state_dict()
    assert not torch.equal(after["blocks.0.dense.weight"], before["blocks.0.dense.weight"])
    assert not torch.equal(after["to_rgb.0.weight"], before["to_rgb.0.weight"])
    for k in ("blocks.1.conv1.weight", "blocks.2.conv2.weight", "to_rgb.1.weight", "to_rgb.2.weight"):
        assert torch.equal(after[k], before[k]), k
        assert dict(G.named_parameters())[k].grad is None


def test_config_for_progan() -> None:
    cfg = TrainConfig(model="progan")
    assert (cfg.z_dim, cfg.lr, cfg.beta1) == (512, 1e-3, 0.0)  # the paper's latent size and Adam settings
    assert TrainConfig(model="progan", resolution=1024).resolution == 1024
    with pytest.raises(ConfigError, match="resolution 256 is not supported"):
        TrainConfig(model="dcgan", resolution=256)
    with pytest.raises(ConfigError, match="not spectral norm"):
        TrainConfig(model="progan", spectral_norm=True)
    with pytest.raises(ConfigError, match="progan has no conditional variant"):
        TrainConfig(model="progan", conditional=True)
    with pytest.raises(ConfigError, match="stage_images must be positive"):
        TrainConfig(model="progan", stage_images=0)
    assert TrainConfig().z_dim == 100 and TrainConfig().lr == 2e-4  # dcgan defaults unchanged
    with pytest.raises(ConfigError, match="progan_upsample must be one of"):
        TrainConfig(model="progan", progan_upsample="bicubic")
    with pytest.raises(ConfigError, match="progan_block must be one of"):
        TrainConfig(model="progan", progan_block="resnet")
    with pytest.raises(ConfigError, match="drop --progan-upsample bilinear"):
        TrainConfig(model="progan", progan_block="strided", progan_upsample="bilinear")
    with pytest.raises(ConfigError, match="progan_top_channels must be >= 0"):
        TrainConfig(model="progan", progan_top_channels=-1)
    with pytest.raises(ConfigError, match="--progan-d-batch-norm needs --progan-block strided"):
        TrainConfig(model="progan", progan_d_batch_norm=True)
    with pytest.raises(ConfigError, match="--progan-g-batch-norm needs --progan-block strided"):
        TrainConfig(model="progan", progan_g_batch_norm=True)


def test_bilinear_upsampling_inside_G_keeps_shapes_and_the_exact_fade() -> None:
    """The same weights with bilinear instead of nearest x2 inside G's blocks: other images from
    stage 1 on (identical at stage 0, which has no block), the same sizes, and the fade's ends exact."""
    torch.manual_seed(0)
    G_near = Generator(ProGANConfig(resolution=32, img_channels=3, z_dim=8, width=8))
    G_bil = Generator(ProGANConfig(resolution=32, img_channels=3, z_dim=8, width=8, upsample="bilinear"))
    G_bil.load_state_dict(G_near.state_dict())
    z = torch.randn(3, 8)
    for G in (G_near, G_bil):
        G.set_progress(0, 1.0)
    assert torch.equal(G_bil(z), G_near(z))
    for s in (1, 2, 3):
        G_near.set_progress(s, 1.0)
        G_bil.set_progress(s, 1.0)
        out = G_bil(z)
        assert out.shape == (3, 3, 32, 32) and not torch.allclose(out, G_near(z))
    G_bil.set_progress(2, 0.0)  # alpha 0: exactly the previous stage, fully faded in
    assert torch.equal(G_bil(z), G_at(G_bil, 1, 1.0, z))
    with pytest.raises(ValueError, match="upsample must be"):
        ProGANConfig(upsample="area")


# ---------------------------------------------------------------------------- training


def _train_cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="progan", data=str(data), out=str(out), resolution=28, steps=4, batch_size=8, width=8, z_dim=8,
                stage_images=16, log_every=1, sample_every=100, checkpoint_every=2, seed=0, loss="wgan-drift",
                gp_weight=10.0, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("block", BLOCKS)
def test_resume_mid_fade_is_exact(tiny_npz: Path, tmp_path: Path, block: str) -> None:
    """4 steps at once == 3 steps (stopped in the fade to 14 px), resume to 4: bit-identical
    weights, EMA and (stage, alpha), and the same log."""
    quiet = dict(progress=False, log=lambda m: None)
    straight = tmp_path / "straight"
    kw = {f"progan_{k}": v for k, v in _block_kw(block).items()}
    train(_train_cfg(tiny_npz, straight, **kw), **quiet)
    split = tmp_path / "split"
    train(_train_cfg(tiny_npz, split, steps=3, **kw), **quiet)
    w3 = load_file(str(split / "model.safetensors"))
    assert (int(w3["G.stage"]), float(w3["G.alpha"])) == (1, 0.0)  # stopped in the middle of the fade
    train(_train_cfg(tiny_npz, split, steps=4, **kw), resume=True, **quiet)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and {"G.stage", "G.alpha", "D.alpha", "G_ema.alpha"} <= a.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (int(a["G.stage"]), float(a["G.alpha"]), float(a["G_ema.alpha"])) == (1, 0.5, 0.5)
    rows_a, rows_b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(split / "metrics.jsonl")
    assert [(r["step"], r["stage"], r["alpha"]) for r in rows_a] == [(1, 0, 1.0), (2, 0, 1.0), (3, 1, 0.0), (4, 1, 0.5)]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("time", "images_per_s")}  # noqa: E731
    assert [strip(r) for r in rows_a] == [strip(r) for r in rows_b]


def test_loaded_progan_samples_at_its_stage(tiny_npz: Path, tmp_path: Path) -> None:
    import latentforge

    run = tmp_path / "p"
    train(_train_cfg(tiny_npz, run, steps=3, ema_decay=0.0, loss="ns", gp_weight=0.0), progress=False,
          log=lambda m: None)
    m = latentforge.load(run)
    assert m.nets["G"].progress() == (1, 0.0)  # saved at step 3, which ran at 7 px (fade to 14 px just begun)
    x = m.sample(3, seed=0)
    assert x.shape == (3, 28, 28, 1)
    x = torch.from_numpy(x[..., 0])
    assert torch.equal(x, x[:, ::4, ::4].repeat_interleave(4, 1).repeat_interleave(4, 2))  # 7 px, upsampled x4


def test_max_channels_caps_every_stage() -> None:
    from latentforge.models import build_networks

    cfg = TrainConfig(model="progan", resolution=64, width=16, max_channels=64)
    nets = build_networks(cfg, 3, 0)
    convs = [m for m in nets["G"].modules() if hasattr(m, "weight") and m.weight.dim() == 4]
    widest = max(m.weight.shape[0] for m in convs)
    assert widest == 64  # 16 at 64 px, 32 at 32 px, 64 from 16 px down (uncapped: 256 at 4 px)
    uncapped = build_networks(TrainConfig(model="progan", resolution=64, width=16), 3, 0)
    assert sum(p.numel() for p in nets["G"].parameters()) < sum(p.numel() for p in uncapped["G"].parameters())
    with pytest.raises(ConfigError, match="max_channels"):
        TrainConfig(model="progan", max_channels=0)


def test_strided_layers_start_as_the_paper_layers_they_fuse() -> None:
    """The strided blocks' layers map sizes exactly (a 4x4 stride-2 conv 2r -> r, a 4x4 stride-2
    transposed conv r -> 2r, the DCGAN's) and start as the paper's: the transposed conv equals nearest
    x2 upsampling + a 3x3 conv, the strided conv a 3x3 conv + 2x2 average pooling (the official code's
    fused_scale layers), with the 3x3 conv's equalized learning rate (fan-in 9 c_in)."""
    torch.manual_seed(0)
    up = EqualizedConvTranspose2d(6, 5)
    torch.manual_seed(0)
    w3 = torch.randn(6, 5, 3, 3)  # the 3x3 kernel the 4x4 one was fused from
    assert up.scale == pytest.approx(math.sqrt(2 / (6 * 9))) and up.weight.shape == (6, 5, 4, 4)
    with torch.no_grad():
        up.bias.normal_()
    h = _dyadic(2, 6, 4, 4)
    y = up(h)
    assert y.shape == (2, 5, 8, 8)
    near = F.conv2d(F.interpolate(h, scale_factor=2, mode="nearest"), w3.transpose(0, 1).flip(2, 3) * up.scale,
                    up.bias, padding=1)
    torch.testing.assert_close(y, near, rtol=1e-5, atol=1e-5)
    torch.manual_seed(1)
    down = EqualizedConv2d(6, 5, 4, stride=2)
    torch.manual_seed(1)
    w3 = torch.randn(5, 6, 3, 3)
    assert down.scale == pytest.approx(math.sqrt(2 / (6 * 9)))
    x = _dyadic(2, 6, 8, 8, seed=1)
    assert down(x).shape == (2, 5, 4, 4)
    torch.testing.assert_close(down(x), F.avg_pool2d(F.conv2d(x, w3 * down.scale, padding=1), 2), rtol=1e-5, atol=1e-5)
    # trained, the 4x4 kernels are free: a kernel no 3x3 one fuses to gives another function
    with torch.no_grad():
        up.weight[:, :, 0, 0] += 1.0
    assert not torch.allclose(up(h), near)
    with pytest.raises(ValueError, match="stride 2 with kernel 4"):
        EqualizedConv2d(3, 3, 3, stride=2)


def test_fused_scale_blocks_compute_the_paper_layers_they_fuse() -> None:
    """fused_scale: G's up x2 + first 3x3 conv run as one stride-2 transposed conv, the same function
    and parameters (float64: equal to rounding); D's second conv + pooling as one stride-2 conv, which
    pools before the LReLU (the official code's order; the unfused block pools after it)."""
    torch.manual_seed(0)
    g = _GBlock(6, 5, fused=True).double()
    with torch.no_grad():
        for p in g.parameters():
            p.normal_()
    h = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    g.fused = False
    want = g(h)
    g.fused = True
    assert want.shape == (2, 5, 8, 8)
    torch.testing.assert_close(g(h), want, rtol=1e-12, atol=1e-12)
    assert not _GBlock(6, 5, upsample="bilinear", fused=True).fused  # only nearest upsampling fuses
    d = _DBlock(5, 6, fused=True).double()
    with torch.no_grad():
        for p in d.parameters():
            p.normal_()
    x = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    c1, c2 = d.conv1, d.conv2
    a = F.leaky_relu(c1(x), 0.2)
    pooled = F.avg_pool2d(F.conv2d(a, c2.weight * c2.scale, padding=1), 2)
    pool_first = F.leaky_relu(pooled + c2.bias.view(1, -1, 1, 1), 0.2)
    torch.testing.assert_close(d(x), pool_first, rtol=1e-12, atol=1e-12)
    d.fused = False
    torch.testing.assert_close(d(x), F.avg_pool2d(F.leaky_relu(c2(a), 0.2), 2), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(d(x), pool_first)  # the order of pooling and LReLU matters


def test_runs_saved_before_fused_scale_load_without_it(tmp_path: Path) -> None:
    """A progan config.json without progan_fused_scale was written before the option: it loads with
    False (D pooled after its LReLU then); a new run's config keeps its own value."""
    run = tmp_path / "old"
    run.mkdir()
    TrainConfig(model="progan", resolution=32).save(run / "config.json")
    payload = json.loads((run / "config.json").read_text())
    assert payload.pop("progan_fused_scale") is True
    (run / "config.json").write_text(json.dumps(payload))
    assert read_run_config(run)[0].progan_fused_scale is False
    TrainConfig(model="progan", resolution=32).save(run / "config.json")
    assert read_run_config(run)[0].progan_fused_scale is True
    nets = build_networks(TrainConfig(model="progan", resolution=32, progan_fused_scale=False), 3, 0)
    assert not nets["G"].blocks[1].fused and not nets["D"].blocks[1].fused


def test_compile_compiles_G_activations_only() -> None:
    """--compile with progan: G's LReLU + pixel-norm pairs are torch.compiled (the same numbers to
    float rounding), the networks themselves are not wrapped, and D is left eager (R1's double backward)."""
    G, D = _nets(res=32, channels=3)
    z = torch.randn(4, 8)
    want = G(z)
    assert acceleration.compile_net(G, True) is G and acceleration.compile_net(D, True) is D
    assert all(b.act is not lrelu_pixel_norm for b in G.blocks)
    torch.testing.assert_close(G(z), want, rtol=1e-4, atol=1e-4)
    x = torch.randn(4, 3, 32, 32, requires_grad=True)  # R1 through D still works
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    g.pow(2).sum().backward()


def test_strided_blocks_are_one_conv_each_and_cheaper() -> None:
    """--progan-block strided: one (transposed) conv per block, no 3x3 conv in G's input or D's output,
    and fewer weights than the paper's blocks of the same widths."""
    cfg = dict(resolution=32, img_channels=3, z_dim=8, width=8)
    G, D = Generator(ProGANConfig(**cfg, block="strided")), Discriminator(ProGANConfig(**cfg, block="strided"))
    Gp, Dp = Generator(ProGANConfig(**cfg)), Discriminator(ProGANConfig(**cfg))
    assert all(isinstance(b.conv, EqualizedConvTranspose2d) for b in G.blocks[1:]) and G.blocks[0].conv is None
    assert all(isinstance(b.conv, EqualizedConv2d) and b.conv.stride == 2 for b in D.blocks[1:])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(G) < count(Gp) and count(D) < count(Dp)
    with pytest.raises(ValueError, match="block must be one of"):
        ProGANConfig(block="resnet")
    with pytest.raises(ValueError, match="upsample must stay 'nearest'"):
        ProGANConfig(block="strided", upsample="bilinear")


def test_top_channels_sets_the_last_stage_only() -> None:
    cfg = ProGANConfig(resolution=64, img_channels=3, width=16, max_channels=256, top_channels=8)
    assert [cfg.channels(s) for s in range(cfg.n_stages)] == [256, 128, 64, 32, 8]
    assert [ProGANConfig(resolution=64, width=16, max_channels=256).channels(s) for s in range(5)] == [256, 128, 64, 32, 16]
    nets = build_networks(TrainConfig(model="progan", resolution=64, width=16, max_channels=256, progan_top_channels=8,
                                      progan_block="strided"), 3, 0)
    assert nets["G"].to_rgb[4].weight.shape == (3, 8, 1, 1) and nets["D"].from_rgb[4].weight.shape == (8, 3, 1, 1)
    assert nets["G"].blocks[4].conv.weight.shape == (32, 8, 4, 4)  # 32 px (32 channels) -> 64 px (8)
    with pytest.raises(ValueError, match="top_channels must be >= 0"):
        ProGANConfig(top_channels=-2)


@pytest.mark.parametrize("block", ["paper", "paper-unfused", "strided"])
def test_d_width_widens_the_discriminator_only_and_trains_through_a_fade(block: str) -> None:
    """--progan-d-width: D's channels follow the width rule from d_width (capped at max_channels), G's from
    width, unchanged; D with its own width reads every stage, and a step mid-fade with R1 changes G and D."""
    cfg = ProGANConfig(resolution=32, img_channels=3, z_dim=8, width=4, max_channels=24, d_width=8, **_block_kw(block))
    assert [cfg.channels(s) for s in range(cfg.n_stages)] == [24, 16, 8, 4]
    assert [cfg.channels(s, d=True) for s in range(cfg.n_stages)] == [24, 24, 16, 8]
    torch.manual_seed(0)
    G, D = Generator(cfg), Discriminator(cfg)
    assert [m.weight.shape[0] for m in D.from_rgb] == [24, 24, 16, 8]
    assert [m.weight.shape[1] for m in G.to_rgb] == [24, 16, 8, 4]
    same = Generator(ProGANConfig(**{**cfg.__dict__, "d_width": 0}))
    assert [p.shape for p in same.parameters()] == [p.shape for p in G.parameters()]
    x = _dyadic(8, 3, 32, 32)
    for stage in range(cfg.n_stages):
        D.set_progress(stage, 0.5 if stage else 1.0)
        assert D(fade_reals(x, stage, 0.5 if stage else 1.0, 32)).shape == (8,)
    for net in (G, D):
        net.set_progress(2, 0.5)
    opt_G, opt_D = torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)
    before_G, before_D = [p.detach().clone() for p in G.parameters()], [p.detach().clone() for p in D.parameters()]
    out = gan_step(G, D, opt_G, opt_D, fade_reals(x, 2, 0.5, 32), 8, r1_gamma=1.0)
    assert math.isfinite(out["loss/r1"]) and out["loss/r1"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before_G, G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_D, D.parameters()))
    nets = build_networks(TrainConfig(model="progan", resolution=32, width=4, max_channels=24, progan_d_width=8), 3, 0)
    assert nets["D"].from_rgb[3].weight.shape == (8, 3, 1, 1) and nets["G"].to_rgb[3].weight.shape == (3, 4, 1, 1)
    with pytest.raises(ValueError, match="d_width must be >= 0"):
        ProGANConfig(d_width=-1)
    with pytest.raises(ConfigError, match="progan_d_width must be >= 0"):
        TrainConfig(model="progan", progan_d_width=-8)


def test_strided_discriminator_with_batch_norm_trains_with_r1() -> None:
    """--progan-d-batch-norm: a batch norm after every strided D block's conv (not after fromRGB, as the
    DCGAN's first layer), through which R1's double backward runs; a step changes G and D."""
    cfg = ProGANConfig(resolution=32, img_channels=3, z_dim=8, width=8, block="strided", d_batch_norm=True)
    torch.manual_seed(0)
    G, D = Generator(cfg), Discriminator(cfg)
    assert all(isinstance(b.norm, torch.nn.BatchNorm2d) for b in D.blocks[1:])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in [*G.modules(), *D.from_rgb.modules()])
    assert all(isinstance(b.norm, torch.nn.Identity) for b in Discriminator(ProGANConfig(**{**cfg.__dict__, "d_batch_norm": False})).blocks[1:])
    for net in (G, D):
        net.set_progress(2, 0.5)
    opt_G, opt_D = torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)
    before_G, before_D = [p.detach().clone() for p in G.parameters()], [p.detach().clone() for p in D.parameters()]
    out = gan_step(G, D, opt_G, opt_D, fade_reals(_dyadic(8, 3, 32, 32), 2, 0.5, 32), 8, r1_gamma=1.0)
    assert math.isfinite(out["loss/r1"]) and out["loss/r1"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before_G, G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_D, D.parameters()))
    with pytest.raises(ValueError, match="d_batch_norm needs block='strided'"):
        ProGANConfig(d_batch_norm=True)


def test_strided_generator_with_batch_norm_normalizes_each_layer_over_the_batch() -> None:
    """--progan-g-batch-norm: a batch norm after G's dense layer and every strided block's conv, before
    the LReLU and the pixel norm (which stays): in train mode each channel of the normalized
    pre-activations has batch mean 0 and variance 1 at the start (gain 1, bias 0); eval mode uses the
    running statistics; toRGB has none; and the pixel norm still gives unit mean square over channels."""
    cfg = ProGANConfig(resolution=32, img_channels=3, z_dim=8, width=8, block="strided", g_batch_norm=True)
    torch.manual_seed(0)
    G = Generator(cfg)
    norms = [b.norm for b in G.blocks]
    assert all(isinstance(n, torch.nn.BatchNorm2d) for n in norms)
    assert [n.num_features for n in norms] == [cfg.channels(s) for s in range(cfg.n_stages)]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in [*G.to_rgb.modules(), *Discriminator(cfg).modules()])
    seen: dict[int, torch.Tensor] = {}
    hooks = [n.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o)) for k, n in enumerate(norms)]
    G.set_progress(cfg.n_stages - 1, 1.0)
    G(torch.randn(16, 8))
    for k, out in seen.items():
        torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(out.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.var(dim=(0, 2, 3), unbiased=False), torch.ones(out.shape[1]), atol=1e-3, rtol=0)
    assert len(seen) == cfg.n_stages
    for h in hooks:
        h.remove()
    block = G.blocks[1]
    h = block(torch.randn(4, cfg.channels(0), 4, 4))
    torch.testing.assert_close(h.pow(2).mean(dim=1), torch.ones(4, 8, 8), rtol=1e-4, atol=1e-4)
    G.eval()  # running statistics now: one image alone gets the same output in a batch or by itself
    z = torch.randn(4, 8)
    torch.testing.assert_close(G(z)[:1], G(z[:1]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="g_batch_norm needs block='strided'"):
        ProGANConfig(g_batch_norm=True)


def test_rgb_top_makes_and_reads_the_image_in_the_last_blocks() -> None:
    """--progan-rgb-top: at the last stage G's image is its last transposed conv's output (no 1x1 toRGB,
    no LReLU or pixel norm after it) and D's last block reads the image itself (no 1x1 fromRGB), as the
    DCGAN's outer layers; the stages below and their fades are untouched."""
    cfg = ProGANConfig(resolution=32, img_channels=3, z_dim=8, width=8, block="strided", rgb_top=True)
    torch.manual_seed(0)
    G, D = Generator(cfg), Discriminator(cfg)
    last = cfg.n_stages - 1
    assert cfg.channels(last) == 3 and cfg.channels(last - 1) == 16
    assert isinstance(G.to_rgb[last], torch.nn.Identity) and isinstance(D.from_rgb[last], torch.nn.Identity)
    assert G.blocks[last].weight.shape == (16, 3, 4, 4) and D.blocks[last].conv.weight.shape == (16, 3, 4, 4)
    z = torch.randn(4, 8)
    G.set_progress(last, 1.0)
    img = G(z)
    with torch.no_grad():
        h = z
        for b in G.blocks[:last]:
            h = b(h)
        w = G.blocks[last].weight * G.blocks[last].scale  # gain 1: He's constant over the 3x3 taps, no sqrt(2)
        assert G.blocks[last].scale == pytest.approx(1 / math.sqrt(16 * 9))
        torch.testing.assert_close(img, F.conv_transpose2d(h, w, G.blocks[last].bias, stride=2, padding=1))
        assert img.min() < 0  # linear: no LReLU after the last layer
    D.set_progress(last, 1.0)
    x = _dyadic(4, 3, 32, 32)
    with torch.no_grad():
        h = F.leaky_relu(F.conv2d(x, D.blocks[last].conv.weight * D.blocks[last].conv.scale, D.blocks[last].conv.bias,
                                  stride=2, padding=1), 0.2)
        for b in reversed(D.blocks[:last]):
            h = b(h)
        torch.testing.assert_close(D(x), h)
    with pytest.raises(ValueError, match="rgb_top needs block='strided'"):
        ProGANConfig(rgb_top=True)
    with pytest.raises(ValueError, match="leave top_channels at 0"):
        ProGANConfig(block="strided", rgb_top=True, top_channels=8)
    with pytest.raises(ConfigError, match="--progan-rgb-top needs --progan-block strided"):
        TrainConfig(model="progan", progan_rgb_top=True)
