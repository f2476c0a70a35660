"""GAN training techniques: losses and penalties on hand-checkable cases, spectral norm, EMA,
differentiable augmentation, one step of each variant, and exact resume with them on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import latentforge
from latentforge.augment import diff_augment
from latentforge.checkpoint import load_weights, save_weights
from latentforge.config import ConfigError, TrainConfig
from latentforge.losses import (d_loss_hinge, d_loss_wasserstein, g_loss_hinge, g_loss_wasserstein,
                                gradient_penalty, r1_penalty)
from latentforge.models import DCGANConfig, Discriminator, Generator
from latentforge.train import ema_decay_at, ema_update, gan_step, make_ema, r1_gamma_at, train


class LinearCritic(nn.Module):
    """D(x) = <w, x>: its gradient is w everywhere."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


def _w_with_norm(norm: float, d: int = 12) -> torch.Tensor:
    w = torch.randn(d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return w / w.norm() * norm


def test_gradient_penalty_of_a_linear_critic() -> None:
    D = LinearCritic(_w_with_norm(3.0))
    real, fake = torch.randn(5, 3, 2, 2, dtype=torch.float64), torch.randn(5, 3, 2, 2, dtype=torch.float64)
    gp = gradient_penalty(D, real, fake)
    assert gp.item() == pytest.approx(4.0, abs=1e-9)  # (||w|| - 1)^2 = (3 - 1)^2
    gp.backward()  # create_graph=True: the penalty reaches the critic's weights
    assert D.w.grad is not None and D.w.grad.abs().sum() > 0


def test_r1_of_a_linear_critic() -> None:
    D = LinearCritic(_w_with_norm(3.0))
    real = torch.randn(5, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert r1_penalty(D(real), real).item() == pytest.approx(9.0, abs=1e-9)  # ||w||^2


def test_hinge_and_wasserstein_values() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] -> mean 2.5/3; relu(1 + fake) = [0, 1, 2] -> mean 1
    assert d_loss_hinge(real, fake).item() == pytest.approx(2.5 / 3 + 1.0)
    assert g_loss_hinge(fake).item() == pytest.approx(1.0 / 3)  # -mean(fake) = -(-1/3)
    assert d_loss_wasserstein(real, fake).item() == pytest.approx(-1 / 3 - 0.5)  # mean(fake) - mean(real)
    assert g_loss_wasserstein(fake).item() == pytest.approx(1.0 / 3)


def _dcgan(spectral_norm: bool = False, seed: int = 0) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    mc = DCGANConfig(resolution=28, img_channels=1, z_dim=8, width=8, spectral_norm=spectral_norm)
    return Generator(mc), Discriminator(mc)


def test_spectral_norm_bounds_singular_values_and_drops_batch_norm() -> None:
    _, D = _dcgan(spectral_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in _dcgan()[1].modules())
    D.train()
    for _ in range(10):  # power iterations
        D(torch.randn(4, 1, 28, 28))
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3
    for m in convs:
        assert nn.utils.parametrize.is_parametrized(m, "weight")
        with torch.no_grad():
            sigma = torch.linalg.matrix_norm(m.weight.reshape(m.weight.shape[0], -1), ord=2).item()
            raw = torch.linalg.matrix_norm(m.parametrizations.weight.original.reshape(m.weight.shape[0], -1), ord=2)
        assert sigma <= 1 + 1e-2
        assert sigma >= 0.9 and raw.item() != pytest.approx(1.0, abs=1e-2)  # normalized, not already unit


def test_spectral_norm_weights_save_and_load_back(tmp_path: Path) -> None:
    _, D = _dcgan(spectral_norm=True, seed=0)
    D.train()
    for _ in range(3):
        D(torch.randn(4, 1, 28, 28))
    save_weights({"D": D}, tmp_path / "w.safetensors")
    _, D2 = _dcgan(spectral_norm=True, seed=1)
    x = torch.randn(4, 1, 28, 28)
    D.eval(), D2.eval()
    assert not torch.equal(D(x), D2(x))
    load_weights({"D": D2}, tmp_path / "w.safetensors")
    assert torch.equal(D(x), D2(x))


def test_ema_update_arithmetic_and_buffers() -> None:
    G, _ = _dcgan()
    G_ema = make_ema(G)
    assert all(not p.requires_grad for p in G_ema.parameters())
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p))
    G.train()
    G(torch.randn(4, 8))  # moves the batch-norm running statistics
    old = [p.clone() for p in G_ema.parameters()]
    d = 0.9
    ema_update(G_ema, G, d)
    for p_old, p_new, p_ema in zip(old, G.parameters(), G_ema.parameters()):
        assert not torch.equal(p_old, p_new)
        assert torch.allclose(p_ema, d * p_old + (1 - d) * p_new, atol=1e-7, rtol=0)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        assert torch.equal(b_ema, b)


def test_augment_is_differentiable_and_keeps_shapes() -> None:
    for c in (1, 3):
        x = torch.randn(4, c, 28, 28, requires_grad=True)
        y = diff_augment(x, "color,translation,cutout")
        assert y.shape == x.shape
        (y * torch.randn_like(y)).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        assert not torch.equal(y, x)
    x = torch.randn(2, 3, 32, 32)
    assert diff_augment(x, "") is x
    for name in ("color", "translation", "cutout"):
        assert diff_augment(x, name).shape == x.shape
    with pytest.raises(ConfigError, match="unknown augment policy"):
        diff_augment(x, "color,flip")
    with pytest.raises(ConfigError, match="augment"):
        TrainConfig(augment="rotate")


def test_config_validation() -> None:
    assert TrainConfig().lr_d == TrainConfig().lr
    assert TrainConfig(lr_d=1e-3).lr_d == 1e-3
    for bad in (dict(loss="lsgan"), dict(n_critic=0), dict(ema_decay=1.0), dict(gp_weight=-1), dict(lr_d=0)):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)


VARIANTS = {
    "ns": dict(),
    "hinge": dict(loss="hinge"),
    "wgan-gp": dict(loss="wgan", gp_weight=10.0),
    "ns-r1": dict(r1_gamma=10.0),
    "spectral-norm": dict(loss="hinge"),
    "augment": dict(augment="color,translation,cutout"),
    "n-critic-2": dict(n_critic=2),
    "ema": dict(ema=True),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_one_step_of_each_variant(name: str) -> None:
    kw = dict(VARIANTS[name])
    G, D = _dcgan(spectral_norm=name == "spectral-norm")
    G_ema = make_ema(G) if kw.pop("ema", False) else None
    n_critic = kw.pop("n_critic", 1)
    opt_G = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
    before = {role: {k: v.clone() for k, v in net.state_dict().items()} for role, net in (("G", G), ("D", D))}
    ema_before = [p.clone() for p in G_ema.parameters()] if G_ema is not None else []
    reals = [torch.rand(4, 1, 28, 28) * 2 - 1 for _ in range(n_critic)]
    out = gan_step(G, D, opt_G, opt_D, reals, 8, G_ema=G_ema, ema_decay=0.5, **kw)
    assert {"loss/D", "loss/G"} <= set(out)
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert ("loss/gp" in out) == (name == "wgan-gp") and ("loss/r1" in out) == (name == "ns-r1")
    for role, net in (("G", G), ("D", D)):
        params = [k for k, _ in net.named_parameters()]
        assert params and all(not torch.equal(before[role][k], net.state_dict()[k]) for k in params), role
    if G_ema is not None:
        for p_old, p_new, p_ema in zip(ema_before, G.parameters(), G_ema.parameters()):
            assert torch.allclose(p_ema, 0.5 * p_old + 0.5 * p_new, atol=1e-7, rtol=0)


def tiny_cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="dcgan", data=str(data), out=str(out), resolution=28, steps=6, batch_size=8, width=8, z_dim=8,
                log_every=2, sample_every=3, checkpoint_every=3, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_ema_decay_at_ramps_up_to_the_decay() -> None:
    assert ema_decay_at(0, 0.999, warmup=False) == 0.999
    assert ema_decay_at(0, 0.999, warmup=True) == pytest.approx(0.1)
    assert ema_decay_at(8, 0.999, warmup=True) == pytest.approx(0.5)
    assert ema_decay_at(8989, 0.999, warmup=True) < 0.999 == ema_decay_at(8990, 0.999, warmup=True)
    ramp = [ema_decay_at(t, 0.9999, warmup=True) for t in range(0, 20000, 100)]
    assert ramp == sorted(ramp) and ramp[-1] < 0.9999


def test_ema_warmup_in_training_uses_the_ramped_decay(tiny_npz: Path, tmp_path: Path) -> None:
    # one step from the same seed with and without the warm-up: the raw G is the same, and the EMAs are
    # 0.999 * G0 + 0.001 * G1 (no warm-up) and 0.1 * G0 + 0.9 * G1 (warm-up: decay (1 + 0) / (10 + 0))
    w = {}
    for warm in (False, True):
        run = tmp_path / f"warm{warm}"
        train(tiny_cfg(tiny_npz, run, steps=1, ema_decay=0.999, ema_warmup=warm), progress=False, log=lambda m: None)
        w[warm] = load_file(str(run / "model.safetensors"))
    keys = [k[len("G."):] for k in w[False] if k.startswith("G.") and w[False][k].is_floating_point()]
    moved = 0
    for k in keys:
        g1 = w[False]["G." + k]
        assert torch.equal(g1, w[True]["G." + k]), k
        if "running_" in k:  # buffers are copied, not averaged
            continue
        g0 = (w[False]["G_ema." + k].double() - 0.001 * g1.double()) / 0.999
        assert torch.allclose(w[True]["G_ema." + k].double(), 0.1 * g0 + 0.9 * g1.double(), atol=1e-5), k
        moved += not torch.allclose(g0, g1.double(), atol=1e-6)
    assert moved > 0  # the step changed G, so the two averages differ
    with pytest.raises(ConfigError, match="--ema-decay"):
        tiny_cfg(tiny_npz, tmp_path / "bad", ema_warmup=True)


def test_ema_run_saves_g_ema_and_load_prefers_it(tiny_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "ema"
    train(tiny_cfg(tiny_npz, run, steps=3, ema_decay=0.5, spectral_norm=True), progress=False, log=lambda m: None)
    w = load_file(str(run / "model.safetensors"))
    ema_keys = {k[len("G_ema."):] for k in w if k.startswith("G_ema.")}
    g_keys = {k[len("G."):] for k in w if k.startswith("G.")}
    assert ema_keys and ema_keys == g_keys
    assert any(k.startswith("D.") and "parametrizations" in k for k in w)
    m = latentforge.load(run, device="cpu")
    for k, v in m.nets["G"].state_dict().items():
        assert torch.equal(v, w["G_ema." + k]), k
    raw = latentforge.load(run, device="cpu", ema=False)
    for k, v in raw.nets["G"].state_dict().items():
        assert torch.equal(v, w["G." + k]), k
    assert not torch.equal(m.sample_tensor(4), raw.sample_tensor(4))


def test_resume_is_exact_with_ema_and_n_critic(tiny_npz: Path, tmp_path: Path) -> None:
    kw = dict(ema_decay=0.99, n_critic=2, loss="hinge", augment="translation")
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_cfg(tiny_npz, straight, **kw), progress=False, log=lambda m: None)
    train(tiny_cfg(tiny_npz, split, steps=3, **kw), progress=False, log=lambda m: None)
    train(tiny_cfg(tiny_npz, split, steps=6, **kw), resume=True, progress=False, log=lambda m: None)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("G_ema.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_lazy_r1_puts_k_times_the_penalty_on_every_kth_step(tiny_npz: Path, tmp_path: Path) -> None:
    # the weight schedule: k * gamma on steps 0, k, 2k, ..., nothing between; k = 1 is plain R1
    lazy = TrainConfig(r1_gamma=10.0, r1_every=4)
    assert [r1_gamma_at(t, lazy) for t in range(9)] == [40.0, 0, 0, 0, 40.0, 0, 0, 0, 40.0]
    assert [r1_gamma_at(t, TrainConfig(r1_gamma=10.0)) for t in range(3)] == [10.0] * 3
    # in training: step 0 of (gamma 1, every 4) is step 0 of (gamma 4, every 1), to the bit
    w = {}
    for name, kw in (("lazy", dict(r1_gamma=1.0, r1_every=4)), ("x4", dict(r1_gamma=4.0))):
        train(tiny_cfg(tiny_npz, tmp_path / name, steps=1, **kw), progress=False, log=lambda m: None)
        w[name] = load_file(str(tmp_path / name / "model.safetensors"))
    assert w["lazy"].keys() == w["x4"].keys()
    assert all(torch.equal(w["lazy"][k], w["x4"][k]) for k in w["lazy"])
    # and the penalty is computed (and logged) on steps 0 and 2 of 4 with every = 2 only
    run = tmp_path / "every2"
    train(tiny_cfg(tiny_npz, run, steps=4, log_every=1, r1_gamma=1.0, r1_every=2), progress=False, log=lambda m: None)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: "loss/r1" in r for r in rows if r["kind"] == "train"}
    assert logged == {1: True, 2: False, 3: True, 4: False}  # row "step" = steps done: step 0 is row 1
    for bad, match in ((dict(r1_gamma=1.0, r1_every=0), "r1_every must be >= 1"), (dict(r1_every=4), "--r1-gamma")):
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad)


def test_cli_accepts_the_technique_flags(tiny_npz: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from latentforge.cli import app

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["train", "--data", str(tiny_npz), "--res", "28", "--steps", "2", "--batch-size", "8",
                                 "--width", "8", "--z-dim", "8", "--out", str(out), "--quiet", "--device", "cpu",
                                 "--loss", "wgan", "--gp-weight", "10", "--r1-gamma", "1", "--r1-every", "2", "--n-critic", "2",
                                 "--spectral-norm", "--lr-d", "4e-4", "--ema-decay", "0.9", "--augment", "color"])
    assert r.exit_code == 0, r.output
    cfg, _ = latentforge.config.read_run_config(out)
    assert (cfg.loss, cfg.gp_weight, cfg.r1_gamma, cfg.r1_every, cfg.n_critic, cfg.spectral_norm, cfg.lr_d,
            cfg.ema_decay, cfg.augment) == ("wgan", 10.0, 1.0, 2, 2, True, 4e-4, 0.9, "color")


def test_eval_scores_the_ema_generator_unless_no_ema(tiny_npz: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from distributed_worker import PoolExtractor
    from latentforge.cli import app

    ev = importlib.import_module("latentforge.metrics.evaluate")  # the module, not the function of that name
    monkeypatch.setattr(ev, "default_extractor", lambda device="cpu": PoolExtractor())
    monkeypatch.setenv("LATENTFORGE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "ema"
    train(tiny_cfg(tiny_npz, run, steps=3, ema_decay=0.5), progress=False, log=lambda m: None)
    out = {}
    for flag in ("--ema", "--no-ema"):
        path = tmp_path / f"{flag}.json"
        app(["eval", str(run), "--ref", str(tiny_npz), "--n", "32", "--metrics", "fid", "--json", str(path), flag],
            standalone_mode=False)
        out[flag] = json.loads(path.read_text())
    assert out["--ema"]["generator"] == "ema" and out["--no-ema"]["generator"] == "raw"
    assert out["--ema"]["fid"] != out["--no-ema"]["fid"]  # different weights, different images


# ------------------------------------------------------------------ each loss learns real data (FID)

# The three losses of the issue, each with the discriminator and optimizer its authors use: batch
# norm and Adam(betas 0.5, 0.999) for the non-saturating loss (DCGAN), spectral norm and Adam(betas
# 0, 0.9) for hinge (SN-GAN), and for the Wasserstein loss the gradient penalty with Adam(betas 0,
# 0.9) and several critic steps (Gulrajani et al.; spectral norm here removes D's batch norm, so the
# penalty is per example). Measured at width 16, n = 200 (untrained G: FID ~398): after 600 steps
# ns 229, hinge 231, wgan-gp 254 (hinge with DCGAN's betas: 292).
LOSS_RUNS = {
    "ns": {},
    "hinge": {"loss": "hinge", "spectral_norm": True, "beta1": 0.0, "beta2": 0.9},
    "wgan-gp": {"loss": "wgan", "gp_weight": 10.0, "spectral_norm": True, "n_critic": 2, "beta1": 0.0,
                "beta2": 0.9},
}
FID_N = 200  # images per side: enough to tell an untrained generator from a trained one


@pytest.fixture(scope="module")
def fid_vs_fashion_mnist(tmp_path_factory: pytest.TempPathFactory):
    """FID (real Inception weights) of uint8 (N, 1, 28, 28) images against FID_N Fashion-MNIST test images."""
    from latentforge.metrics.evaluate import InTrainingEvaluator

    judge = InTrainingEvaluator("fashion-mnist:test", n=FID_N, seed=0, cache_dir=tmp_path_factory.mktemp("fid"))
    return lambda images: judge(images)["fid"]


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(LOSS_RUNS))
def test_a_short_real_data_run_of_each_loss_lowers_fid(name: str, fid_vs_fashion_mnist, tmp_path: Path) -> None:
    from latentforge.models import build_networks
    from latentforge.train import generate_images

    run = tmp_path / name
    cfg = TrainConfig(model="dcgan", data="fashion-mnist:train", out=str(run), resolution=28, steps=600,
                      batch_size=64, width=16, log_every=100, sample_every=600, checkpoint_every=600, seed=0,
                      **LOSS_RUNS[name])
    torch.manual_seed(cfg.seed)  # an untrained G, seeded and built as train() seeds and builds it
    untrained = build_networks(cfg, channels=1)
    fid_before = fid_vs_fashion_mnist(generate_images(untrained, cfg, range(FID_N), torch.device("cpu")))
    train(cfg, progress=False, log=lambda m: None)
    trained = torch.from_numpy(latentforge.load(run).sample(FID_N, seed=0)).permute(0, 3, 1, 2)
    fid_after = fid_vs_fashion_mnist(trained)
    assert fid_after < 0.75 * fid_before, (name, fid_before, fid_after)  # a loss that does not learn stays ~400
