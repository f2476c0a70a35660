"""The upsampler: output sizes, untrained == bicubic, the step's loss against its closed form,
seeded noise, PSNR, training + exact resume, and chaining it after a generator (library and CLI)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import latentforge
from latentforge.cli import app
from latentforge.config import ConfigError, TrainConfig
from latentforge.images import read_png_metadata
from latentforge.metrics.psnr import psnr
from latentforge.models.upsampler import (PatchDiscriminator, Upsampler, UpsamplerConfig, area_downsample,
                                          bicubic_upsample, upsample_seeded)
from latentforge.sample import check_chain, load_upsampler
from latentforge.train import train, upsampler_step

QUIET = dict(progress=False, log=lambda m: None)


@pytest.mark.parametrize("factor", (2, 4))
@pytest.mark.parametrize("channels", (1, 3))
def test_output_size(factor: int, channels: int) -> None:
    cfg = UpsamplerConfig(resolution=32, img_channels=channels, factor=factor, width=8)
    U, D = Upsampler(cfg), PatchDiscriminator(cfg)
    low = torch.randn(3, channels, 32 // factor, 32 // factor)
    y = U(low)
    assert y.shape == (3, channels, 32, 32)
    assert D(y, low).shape == (3, 8 * 8)  # one logit per patch: 32 px / 2 stride-2 convs
    with pytest.raises(ValueError, match="low-res images must have shape"):
        U(torch.randn(3, channels, 32, 32))
    assert PatchDiscriminator(UpsamplerConfig(resolution=128, factor=4, width=8))(
        torch.zeros(1, 1, 128, 128), torch.zeros(1, 1, 32, 32)).shape == (1, 16 * 16)  # 3 stride-2 convs above 64 px


def test_untrained_upsampler_is_bicubic_and_area_downsample_is_the_block_mean() -> None:
    U = Upsampler(UpsamplerConfig(resolution=28, factor=2, width=8))
    low = torch.rand(2, 1, 14, 14) * 2 - 1
    assert torch.equal(U(low), F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False))
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(area_downsample(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    torch.testing.assert_close(area_downsample(x, 2), F.interpolate(x, scale_factor=0.5, mode="area"))


def test_seeded_noise_makes_upsampling_reproducible() -> None:
    torch.manual_seed(0)
    U = Upsampler(UpsamplerConfig(resolution=28, factor=2, width=8))
    torch.nn.init.normal_(U.tail.weight, 0, 0.1)  # a trained-like tail: the noise now matters
    low = torch.rand(3, 1, 14, 14) * 2 - 1
    a = upsample_seeded(U, low, [5, 6, 7])
    assert torch.equal(a, upsample_seeded(U, low, [5, 6, 7]))
    # per image, not per batch (up to float differences between batch sizes)
    torch.testing.assert_close(upsample_seeded(U, low[1:2], [6]), a[1:2], rtol=0, atol=1e-5)
    assert not torch.equal(upsample_seeded(U, low, [8, 9, 10]), a)


def test_upsampler_step_losses_match_their_formulas() -> None:
    torch.manual_seed(0)
    cfg = UpsamplerConfig(resolution=28, factor=4, width=8)
    U, D = Upsampler(cfg), PatchDiscriminator(cfg)
    opt_U, opt_D = torch.optim.Adam(U.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)
    real = torch.rand(4, 1, 28, 28) * 2 - 1
    expect_l1 = (bicubic_upsample(area_downsample(real, 4), 4) - real).abs().mean().item()  # untrained U = bicubic
    u0, d0 = U.tail.weight.clone(), D.net[0].weight.clone()
    out = upsampler_step(U, D, opt_U, opt_D, real, 4, loss="hinge", gp_weight=10.0, recon_weight=7.0)
    assert out["loss/l1"] == pytest.approx(expect_l1, rel=1e-5)
    assert out["loss/U"] == pytest.approx(out["loss/adv"] + 7.0 * out["loss/l1"], rel=1e-5)
    assert {"loss/D", "loss/gp"} <= set(out)
    assert not torch.equal(U.tail.weight, u0) and not torch.equal(D.net[0].weight, d0)


def test_psnr() -> None:
    a = torch.full((2, 1, 4, 4), 100, dtype=torch.uint8)
    b = a.clone()
    b[0] += 5  # MSE 25 -> 10 log10(255^2 / 25)
    got = psnr(a, b)
    assert got[0].item() == pytest.approx(10 * math.log10(255**2 / 25))
    assert got[1].item() == 100.0  # identical: capped
    with pytest.raises(ValueError, match="one shape"):
        psnr(a, b[:, :, :2])


def test_config_for_the_upsampler() -> None:
    assert TrainConfig(model="upsampler", resolution=512, upsample_factor=4).resolution == 512
    with pytest.raises(ConfigError, match="upsample_factor must be 2 or 4"):
        TrainConfig(model="upsampler", upsample_factor=3)
    with pytest.raises(ConfigError, match="does not support ema_decay"):
        TrainConfig(model="upsampler", ema_decay=0.99)
    with pytest.raises(ConfigError, match="upsampler has no conditional variant"):
        TrainConfig(model="upsampler", conditional=True)


def _up_cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="upsampler", data=str(data), out=str(out), resolution=28, upsample_factor=2, steps=4,
                batch_size=8, width=8, log_every=2, sample_every=100, checkpoint_every=2, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_writes_comparison_grids_and_resumes_exactly(tiny_npz: Path, tmp_path: Path) -> None:
    straight, split = tmp_path / "a", tmp_path / "b"
    train(_up_cfg(tiny_npz, straight), **QUIET)
    train(_up_cfg(tiny_npz, split, steps=2), **QUIET)
    train(_up_cfg(tiny_npz, split, steps=4), resume=True, **QUIET)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert {k.split(".")[0] for k in a} == {"U", "D"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    grid = Image.open(straight / "samples" / "step_000004.png")  # 4 rows of 8: input, bicubic, upsampler, real
    assert grid.size == (2 * (8 * 30 + 2), 2 * (4 * 30 + 2))
    with pytest.raises(ConfigError, match="is an upsampler run"):
        latentforge.load(straight)


@pytest.fixture(scope="module")
def chain_runs(tmp_path_factory: pytest.TempPathFactory, make_tiny_npz) -> tuple[Path, Path, Path]:
    """A 32 px DCGAN, a 32 -> 64 px upsampler and a 14 -> 28 px upsampler, 2 steps each."""
    root = tmp_path_factory.mktemp("chain")
    data = make_tiny_npz(root / "tiny.npz")
    gen, up64, up28 = root / "gen32", root / "up64", root / "up28"
    common = dict(data=str(data), steps=2, batch_size=8, width=8, log_every=1, sample_every=100, seed=0)
    train(TrainConfig(model="dcgan", out=str(gen), resolution=32, z_dim=8, **common), **QUIET)
    train(TrainConfig(model="upsampler", out=str(up64), resolution=64, upsample_factor=2, **common), **QUIET)
    train(TrainConfig(model="upsampler", out=str(up28), resolution=28, upsample_factor=2, **common), **QUIET)
    return gen, up64, up28


def test_sample_chain_size_and_mismatch(chain_runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    gen, up64, up28 = chain_runs
    m, up = latentforge.load(gen), load_upsampler(up64)
    x = m.sample(3, seed=2, upsample=up)
    assert x.shape == (3, 64, 64, 1)
    one = m.sample(1, seed=3, upsample=up)[0]  # image i: seed i, for G and the noise (batch size aside: +-1 level)
    assert np.abs(one.astype(int) - x[1].astype(int)).max() <= 1
    low = m.sample_tensor(3, seed=2)
    assert torch.equal(up.upsample(low, seeds=range(2, 5)), torch.from_numpy(x).permute(0, 3, 1, 2))
    with pytest.raises(ConfigError, match="cannot chain .* takes 14 px"):
        m.sample(2, upsample=load_upsampler(up28))
    with pytest.raises(ConfigError, match="not an upsampler"):
        load_upsampler(gen)
    check_chain(m, up)  # no error

    runner = CliRunner()
    r = runner.invoke(app, ["sample", str(gen), "--n", "4", "--upsample", str(up64), "--outdir", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "o").glob("*.png"))
    assert len(files) == 4 and Image.open(files[0]).size == (64, 64)
    assert read_png_metadata(files[0])["upsampler"] == str(up64)
    r = runner.invoke(app, ["sample", str(gen), "--n", "4", "--upsample", str(up28), "--out", str(tmp_path / "g.png")])
    assert isinstance(r.exception, ConfigError) and "cannot chain" in str(r.exception)


def test_upsample_command_on_real_images(chain_runs: tuple[Path, Path, Path], tiny_npz: Path, tmp_path: Path) -> None:
    _, _, up28 = chain_runs
    runner = CliRunner()
    r = runner.invoke(app, ["upsample", str(up28), "--data", str(tiny_npz), "--n", "5", "--out", str(tmp_path / "g.png"),
                            "--outdir", str(tmp_path / "each"), "--scale", "1"])
    assert r.exit_code == 0, r.output
    assert "PSNR" in r.output and "bicubic" in r.output
    assert Image.open(tmp_path / "g.png").size == (5 * 30 + 2, 4 * 30 + 2)  # 4 rows of 5 images, 28 px + 2 padding
    files = sorted((tmp_path / "each").glob("*.png"))
    assert len(files) == 5 and Image.open(files[0]).size == (28, 28)
    r = runner.invoke(app, ["upsample", str(up28), "--data", str(tiny_npz), "--n", "3", "--as-input",
                            "--outdir", str(tmp_path / "in")])
    assert r.exit_code == 0, r.output
    assert Image.open(sorted((tmp_path / "in").glob("*.png"))[0]).size == (28, 28)  # 14 px inputs, x2
