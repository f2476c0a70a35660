"""The VAE-GAN (model "vae_gan"): the patch discriminator, its two loss helpers against closed
forms, one step, the warm-up that is exactly a plain VAE, save/load, resume, explore/serve, CLI."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import latentforge
from latentforge.checkpoint import read_jsonl
from latentforge.config import ConfigError, TrainConfig
from latentforge.losses import adaptive_adv_weight, feature_matching
from latentforge.models import build_networks
from latentforge.models.vae_gan import PatchDConfig, PatchDiscriminator, decoder_last_layer, n_strided, patch_grid
from latentforge.train import _make_optimizers, train, vae_gan_step, vae_step

QUIET = dict(progress=False, log=lambda m: None)


def tiny_cfg(data: Path | str = "unused", out: Path | str = "unused", **kw) -> TrainConfig:
    base = dict(model="vae_gan", data=str(data), out=str(out), resolution=28, steps=6, batch_size=8, width=8, z_dim=8,
                log_every=2, sample_every=3, checkpoint_every=3, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# ------------------------------------------------------------------------------------ the discriminator


@pytest.mark.parametrize("res, grid", [(28, 5), (32, 6), (64, 6), (128, 14)])
@pytest.mark.parametrize("spectral_norm", (False, True))
def test_patch_discriminator_outputs_a_logit_map(res: int, grid: int, spectral_norm: bool) -> None:
    D = PatchDiscriminator(PatchDConfig(resolution=res, img_channels=3, width=8, spectral_norm=spectral_norm))
    x = torch.rand(2, 3, res, res) * 2 - 1
    logits, feats = D.forward_features(x)
    assert patch_grid(res) == grid
    assert logits.shape == (2, 1, grid, grid)
    # one feature map per hidden block: the strided convs, then the stride-1 one; channels double
    assert len(feats) == n_strided(res) + 1
    assert [f.shape[1] for f in feats] == [8 * 2**i for i in range(len(feats))]
    assert feats[0].shape[-1] == res // 2 and feats[-1].shape[-1] == grid + 1
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    assert has_bn is not spectral_norm
    with pytest.raises(ValueError, match="images must have shape"):
        D(torch.zeros(2, 1, res, res))
    D.eval()  # no batch statistics, no power iteration: forward is forward_features' logits
    assert torch.equal(D(x), D.forward_features(x)[0])


def test_patch_logits_are_local() -> None:
    """A patch discriminator: changing the image's top-left corner leaves far patches' logits alone."""
    D = PatchDiscriminator(PatchDConfig(resolution=64, img_channels=1, width=8)).eval()
    x = torch.zeros(1, 1, 64, 64)
    y = x.clone()
    y[..., :8, :8] = 1
    diff = (D(x) - D(y)).abs()[0, 0]  # (6, 6)
    # logit row/column i sees input rows/columns 8i - 23 .. 8i + 38 (three stride-2 and two stride-1
    # 4x4 convs): i <= 3 overlaps the changed 8x8 corner, i >= 4 starts at pixel 9
    assert (diff[:4, :4] > 0).all()
    assert diff[4:, :].max() == 0 and diff[:, 4:].max() == 0


# ------------------------------------------------------------------------------------ loss helpers


def test_feature_matching_is_mean_abs_per_layer_summed_over_layers() -> None:
    a = [torch.zeros(2, 3, 4, 4), torch.zeros(2, 5)]
    b = [torch.full((2, 3, 4, 4), 0.5), torch.zeros(2, 5)]
    b[1][1, 0] = 5.0  # example 1, layer 2: mean |diff| = 5 / 5 = 1
    fm = feature_matching(a, b)
    assert fm.shape == (2,)
    assert torch.allclose(fm, torch.tensor([0.5, 1.5]))
    assert torch.equal(feature_matching(a, a), torch.zeros(2))
    with pytest.raises(ValueError, match="same non-zero number of layers"):
        feature_matching(a, b[:1])


def test_adaptive_weight_is_the_ratio_of_gradient_norms() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    rec = (torch.tensor([3.0, 4.0]) * w).sum()  # grad (3, 4): norm 5
    adv = (torch.tensor([0.0, 0.5]) * w).sum()  # grad (0, 0.5): norm 0.5
    lam = adaptive_adv_weight(rec, adv, w)
    assert math.isclose(lam.item(), 5 / (0.5 + 1e-4), rel_tol=1e-6)
    assert not lam.requires_grad
    tiny = (torch.tensor([0.0, 1e-9]) * w).sum()
    assert adaptive_adv_weight(rec, tiny, w).item() == pytest.approx(1e4)  # clamped
    assert adaptive_adv_weight(rec, adv, w, max_weight=2.0).item() == 2.0


# ------------------------------------------------------------------------------------ config


def test_config_family_defaults_and_refusals() -> None:
    cfg = tiny_cfg()
    assert cfg.family == "vae" and cfg.lr == 1e-3 and cfg.lr_d == 1e-3 and cfg.z_dim == 8
    assert TrainConfig(model="vae_gan").z_dim == 32
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert tiny_cfg(loss="hinge").loss == "hinge"
    with pytest.raises(ConfigError, match="loss ns or hinge"):
        tiny_cfg(loss="wgan")
    with pytest.raises(ConfigError, match="does not support gp_weight, r1_gamma"):
        tiny_cfg(gp_weight=10.0, r1_gamma=1.0)
    assert tiny_cfg(ema_decay=0.999).ema_roles == ("vae", "vae_ema")  # the VAE's weights are averaged
    assert TrainConfig(model="dcgan").ema_roles == ("G", "G_ema")
    with pytest.raises(ConfigError, match="does not support n_critic"):
        tiny_cfg(n_critic=2)
    for bad in (dict(adv_weight=-1.0), dict(fm_weight=-0.5), dict(adv_start=-1)):
        with pytest.raises(ConfigError, match="must be >= 0"):
            tiny_cfg(**bad)
    # the GAN-only options stay legal for the other models
    assert TrainConfig(model="dcgan", loss="wgan", gp_weight=10.0).family == "gan"


# ------------------------------------------------------------------------------------ the step


@pytest.mark.parametrize("kw", [dict(), dict(loss="hinge", spectral_norm=True, fm_weight=1.0),
                                dict(adv_adaptive=False, adv_weight=2.0, fm_weight=0.5)])
def test_one_step_changes_both_networks_and_reports_finite_losses(kw: dict) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(**kw)
    nets = build_networks(cfg, 1)
    opts = _make_optimizers(nets, cfg)
    vae0, d0 = params(nets["vae"]), params(nets["D"])
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    logs = vae_gan_step(nets["vae"], nets["D"], opts["vae"], opts["D"], x, cfg, step=0)
    expected = {"loss/total", "loss/recon", "loss/kl", "loss/G", "loss/D", "adv_weight"}
    expected |= {"loss/fm"} if cfg.fm_weight > 0 else set()
    assert set(logs) == expected and all(math.isfinite(v) for v in logs.values())
    assert logs["loss/total"] == pytest.approx(logs["loss/recon"] + logs["loss/kl"], rel=1e-5)
    if not cfg.adv_adaptive:
        assert logs["adv_weight"] == cfg.adv_weight
    for name, before, net in (("vae", vae0, nets["vae"]), ("D", d0, nets["D"])):
        after = params(net)
        for part in ("encoder.0.weight", "decoder.0.weight") if name == "vae" else ("head.bias",):
            assert not torch.equal(before[part], after[part]), (name, part)
    assert all(p.requires_grad for p in nets["D"].parameters())  # D is unfrozen again after the VAE update


def test_warm_up_step_is_exactly_a_vae_step_and_leaves_d_alone() -> None:
    cfg = tiny_cfg(adv_start=5)
    torch.manual_seed(1)
    nets = build_networks(cfg, 1)
    twin = copy.deepcopy(nets["vae"])
    opts = _make_optimizers(nets, cfg)
    opt_twin = torch.optim.Adam(twin.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    d0 = params(nets["D"])
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    torch.manual_seed(2)
    logs = vae_gan_step(nets["vae"], nets["D"], opts["vae"], opts["D"], x, cfg, step=4)
    torch.manual_seed(2)
    ref = vae_step(twin, opt_twin, x, cfg)
    assert logs == ref
    for k, v in params(twin).items():
        assert torch.equal(v, params(nets["vae"])[k]), k
    assert all(torch.equal(v, params(nets["D"])[k]) for k, v in d0.items())


def test_adaptive_weight_inside_the_step_matches_the_gradient_ratio() -> None:
    """The logged adv_weight is adv_weight * ||grad recon|| / (||grad adv|| + 1e-4) at the decoder's
    last layer, recomputed here from a copy of the networks before the step."""
    cfg = tiny_cfg(adv_weight=0.3)
    torch.manual_seed(3)
    nets = build_networks(cfg, 1)
    vae, D = copy.deepcopy(nets["vae"]), copy.deepcopy(nets["D"])
    opts = _make_optimizers(nets, cfg)
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    torch.manual_seed(4)
    logs = vae_gan_step(nets["vae"], nets["D"], opts["vae"], opts["D"], x, cfg, step=0)

    from latentforge.losses import g_loss_nonsaturating, negative_elbo

    torch.manual_seed(4)  # the same noise: eps of the reparameterization, then the prior draw
    out = vae(x)
    recon = negative_elbo(out.decoded, x, out.mu, out.logvar, "bce").recon
    prior = vae.decode(torch.randn_like(out.mu))
    logits = D(torch.cat([vae.to_image(out.decoded), prior]))
    adv = g_loss_nonsaturating(logits[:8]) + g_loss_nonsaturating(logits[8:])
    last = decoder_last_layer(vae)
    (g_rec,) = torch.autograd.grad(recon, last, retain_graph=True)
    (g_adv,) = torch.autograd.grad(adv, last)
    expected = 0.3 * g_rec.norm() / (g_adv.norm() + 1e-4)
    assert logs["adv_weight"] == pytest.approx(expected.item(), rel=1e-4)
    assert logs["loss/G"] == pytest.approx(adv.item(), rel=1e-5)


# ------------------------------------------------------------------------------------ training runs


def test_discriminator_off_gives_the_plain_vae_bit_for_bit(tiny_npz: Path, tmp_path: Path) -> None:
    """With the discriminator never starting, vae_gan trains the very same VAE as model "vae"."""
    train(tiny_cfg(tiny_npz, tmp_path / "vg", adv_start=100), **QUIET)
    train(tiny_cfg(tiny_npz, tmp_path / "v", model="vae"), **QUIET)
    a, b = load_file(str(tmp_path / "vg" / "model.safetensors")), load_file(str(tmp_path / "v" / "model.safetensors"))
    vae_keys = {k for k in a if k.startswith("vae.")}
    assert vae_keys == set(b) and {k.split(".")[0] for k in a} == {"vae", "D"}
    for k in vae_keys:
        assert torch.equal(a[k], b[k]), k
    # (model "vae" also logs its KL-schedule weight, kl_weight; vae_gan's ELBO uses --beta as it is)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("time", "images_per_s", "kl_weight")}  # noqa: E731
    assert [strip(r) for r in read_jsonl(tmp_path / "vg" / "metrics.jsonl")] == \
           [strip(r) for r in read_jsonl(tmp_path / "v" / "metrics.jsonl")]


def test_resume_is_exact(tiny_npz: Path, tmp_path: Path) -> None:
    """6 steps at once == 3 steps, stop, resume to 6 (D starts at step 2, before the stop), the
    moving average of the VAE included."""
    kw = dict(adv_start=2, fm_weight=1.0, ema_decay=0.9)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_cfg(tiny_npz, straight, **kw), **QUIET)
    train(tiny_cfg(tiny_npz, split, steps=3, **kw), **QUIET)
    train(tiny_cfg(tiny_npz, split, steps=6, **kw), resume=True, **QUIET)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("D.") for k in a) and any(k.startswith("vae_ema.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda r: {k: v for k, v in r.items() if k not in ("time", "images_per_s")}  # noqa: E731
    la = {r["step"]: strip(r) for r in read_jsonl(straight / "metrics.jsonl") if r["kind"] == "train"}
    lb = {r["step"]: strip(r) for r in read_jsonl(split / "metrics.jsonl") if r["kind"] == "train"}
    assert la[2] == lb[2] and la[6] == lb[6]
    # step 2's line covers steps 1-2, both warm-up; step 4's averages D terms over the steps that had them
    assert "loss/D" not in la[2] and "loss/D" in la[4] and "loss/fm" in la[6]


def test_save_load_round_trip_and_reconstruct(tiny_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "vg"
    train(tiny_cfg(tiny_npz, run, adv_start=2), **QUIET)
    assert json.loads((run / "config.json").read_text())["model"] == "vae_gan"
    m = latentforge.load(run)
    assert m.family == "vae" and set(m.nets) == {"vae"}  # the discriminator is not loaded
    saved = load_file(str(run / "model.safetensors"))
    for k, v in m.nets["vae"].state_dict().items():
        assert torch.equal(v.cpu(), saved["vae." + k]), k
    x = torch.from_numpy(np.load(tiny_npz)["images"][:4]).unsqueeze(1)  # uint8 (4, 1, 28, 28)
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (4, 8)
    rec = m.reconstruct(x)
    assert rec.dtype == torch.uint8 and rec.shape == x.shape
    from latentforge.images import to_uint8

    assert torch.equal(to_uint8(m.decode(mu)).cpu(), rec)
    # samples are the decoder's images of the seeds' prior latents
    assert torch.equal(m.sample_tensor(3, seed=5), to_uint8(m.decode(m.latents(range(5, 8)))).cpu())


def test_ema_of_the_vae_is_the_average_of_encoder_and_decoder(tiny_npz: Path, tmp_path: Path) -> None:
    """One step from the same seed at two decays: the raw VAE is the same, and each average is
    decay * VAE_0 + (1 - decay) * VAE_1 of the same initial weights VAE_0 (buffers are copied)."""
    w = {}
    for decay in (0.999, 0.5):
        run = tmp_path / f"d{decay}"
        train(tiny_cfg(tiny_npz, run, steps=1, ema_decay=decay), **QUIET)
        w[decay] = load_file(str(run / "model.safetensors"))
    assert {k.split(".")[0] for k in w[0.5]} == {"vae", "vae_ema", "D"}
    keys = [k[len("vae."):] for k in w[0.5] if k.startswith("vae.") and w[0.5][k].is_floating_point()]
    assert {"vae_ema." + k for k in keys} <= w[0.5].keys()
    moved = 0
    for k in keys:
        v1 = w[0.5]["vae." + k].double()
        assert torch.equal(w[0.5]["vae." + k], w[0.999]["vae." + k]), k
        if "running_" in k:
            assert torch.equal(w[0.5]["vae_ema." + k], w[0.5]["vae." + k]), k
            continue
        v0 = (w[0.999]["vae_ema." + k].double() - 0.001 * v1) / 0.999
        assert torch.allclose(w[0.5]["vae_ema." + k].double(), 0.5 * v0 + 0.5 * v1, atol=1e-5), k
        moved += not torch.allclose(v0, v1, atol=1e-6)
    assert moved > 0


def test_ema_run_loads_the_average_and_keeps_a_gmm_sampler_per_weights(tiny_npz: Path, tmp_path: Path) -> None:
    from latentforge.samplers import fit_sampler, load_sampler

    run = tmp_path / "ema"
    train(tiny_cfg(tiny_npz, run, adv_start=2, ema_decay=0.5), **QUIET)
    saved = load_file(str(run / "model.safetensors"))
    avg, raw = latentforge.load(run), latentforge.load(run, ema=False)
    assert (avg.ema, raw.ema) == (True, False) and set(avg.nets) == set(raw.nets) == {"vae"}
    for m, prefix in ((avg, "vae_ema."), (raw, "vae.")):
        for k, v in m.nets["vae"].state_dict().items():
            assert torch.equal(v.cpu(), saved[prefix + k]), k
    assert not torch.equal(avg.sample_tensor(4), raw.sample_tensor(4))
    # one file holds both VAEs: a mixture fitted to the average's codes is stale for the raw VAE
    _, info = fit_sampler(avg, k=2, n=20)
    assert info["weights"] == "ema"
    assert load_sampler(avg) is not None and load_sampler(raw) is None
    assert fit_sampler(raw, k=2, n=20)[1]["weights"] == "raw" and load_sampler(avg) is None
    # a run without --ema-decay: ema=True falls back to the raw weights
    plain = tmp_path / "plain"
    train(tiny_cfg(tiny_npz, plain, steps=2), **QUIET)
    assert latentforge.load(plain).ema is False


def test_explore_and_serve_treat_it_as_a_vae(tiny_npz: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from latentforge.explore import vary
    from latentforge.serve import create_app

    run = tmp_path / "vg"
    train(tiny_cfg(tiny_npz, run, steps=2, sample_every=2, checkpoint_every=2, log_every=1), **QUIET)
    m = latentforge.load(run)
    img = np.load(tiny_npz)["images"][0][:, :, None]  # (28, 28, 1) uint8
    out = vary(m, img, n=3, spread=0.0)
    assert out.shape == (3, 1, 28, 28) and torch.equal(out[0], out[2])  # spread 0: three reconstructions
    client = TestClient(create_app(run))
    info = client.get("/api/info").json()
    assert info["family"] == "vae" and info["architecture"] == "vae_gan" and info["can_reconstruct"] is True


def test_cli_trains_with_the_vae_gan_flags(tiny_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "latentforge", "train", "--model", "vae_gan", "--data", str(tiny_npz), "--res", "28",
         "--width", "8", "--z-dim", "8", "--batch-size", "8", "--steps", "2", "--out", str(run), "--quiet",
         "--adv-weight", "0.2", "--no-adv-adaptive", "--adv-start", "1", "--fm-weight", "0.5", "--loss", "hinge",
         "--ema-decay", "0.9"],
        capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["adv_weight"], cfg["adv_adaptive"], cfg["adv_start"], cfg["fm_weight"]) == (0.2, False, 1, 0.5)
    assert cfg["ema_decay"] == 0.9 and any(k.startswith("vae_ema.") for k in load_file(str(run / "model.safetensors")))
    train_rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    assert cfg["loss"] == "hinge" and "loss/fm" in train_rows[-1]
    for flag, weights in (("--no-ema", "raw"), ("--ema", "ema")):  # fit-sampler picks the VAE it fits to
        r = subprocess.run([sys.executable, "-m", "latentforge", "fit-sampler", str(run), "--k", "2", "--n", "20", flag],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert json.loads((run / "gmm_sampler.json").read_text())["weights"] == weights


def test_guard_rolls_back_a_vae_gan_nan_and_the_next_log_line_averages_only_the_replayed_steps(
        tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Call 7 (step 7) reports a NaN: the guard rolls back to its check at step 6, and the line
    at step 8 is the mean over the replayed steps 7 and 8 (calls 8 and 9), nothing else."""
    import latentforge.train as train_module

    seen: list[dict[str, float]] = []
    original = train_module.vae_gan_step

    def step(*args, **kw):
        out = original(*args, **kw)
        if len(seen) == 6:
            out["loss/total"] = math.nan
        seen.append(out)
        return out

    monkeypatch.setattr(train_module, "vae_gan_step", step)
    run = tmp_path / "g"
    train(tiny_cfg(tiny_npz, run, steps=8, log_every=4, guard_every=2, sample_every=8, checkpoint_every=8), **QUIET)
    (guard,) = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "guard"]
    assert (guard["detected_step"], guard["rolled_back_to"]) == (7, 6) and "lr/D" in guard
    rows = {r["step"]: r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"}
    assert len(seen) == 9 and sorted(rows) == [4, 8]
    for key in ("loss/total", "loss/D", "adv_weight"):
        assert rows[8][key] == pytest.approx((seen[7][key] + seen[8][key]) / 2, rel=1e-5, abs=1e-6), key


def test_channels_last_trains_like_the_default(tiny_npz: Path, tmp_path: Path) -> None:
    """--channels-last wraps the VAE and D (acceleration.AutocastView); the step still reaches the
    decoder and D's features inside, and only the memory layout differs."""
    kw = dict(steps=3, adv_start=1, fm_weight=1.0)
    train(tiny_cfg(tiny_npz, tmp_path / "plain", **kw), **QUIET)
    train(tiny_cfg(tiny_npz, tmp_path / "cl", channels_last=True, **kw), **QUIET)
    a, b = load_file(str(tmp_path / "plain" / "model.safetensors")), load_file(str(tmp_path / "cl" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k


def test_bf16_runs_the_whole_step_under_autocast_and_stays_close_to_fp32(tiny_npz: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """--precision bf16: the decoder's prior samples and D's features (called past the autocast
    views) are computed in bfloat16 too, in every training-mode call; losses come out float32 and
    close to fp32's, weights stay float32."""
    seen: dict[str, set] = {"decoder": set(), "D": set()}

    def record(name):  # in training mode: the steps' calls, not the sample grids' (eval mode, fp32)
        return lambda module, args, out: seen[name].add(out.dtype) if module.training else None

    import latentforge.models as models_module

    build = models_module.build_networks

    def hooked(cfg, *a, **kw):
        nets = build(cfg, *a, **kw)
        nets["vae"].decoder.register_forward_hook(record("decoder"))
        nets["D"].head.register_forward_hook(record("D"))
        return nets

    import latentforge.train as train_module

    monkeypatch.setattr(train_module, "build_networks", hooked)
    kw = dict(steps=3, adv_start=1, fm_weight=1.0, log_every=1)
    train(tiny_cfg(tiny_npz, tmp_path / "fp32", **kw), **QUIET)
    assert seen == {"decoder": {torch.float32}, "D": {torch.float32}}
    seen = {"decoder": set(), "D": set()}
    train(tiny_cfg(tiny_npz, tmp_path / "bf16", precision="bf16", **kw), **QUIET)
    assert seen == {"decoder": {torch.bfloat16}, "D": {torch.bfloat16}}  # every call, none left in float32
    rows = {p: [r for r in read_jsonl(tmp_path / p / "metrics.jsonl") if r["kind"] == "train"] for p in ("fp32", "bf16")}
    assert [r["step"] for r in rows["bf16"]] == [1, 2, 3]
    for a, b in zip(rows["fp32"], rows["bf16"]):
        for key in ("loss/total", "loss/D", "loss/G", "loss/fm", "adv_weight"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=0.05, abs=0.02), (a["step"], key)
    assert rows["fp32"][-1] != rows["bf16"][-1]  # bf16 did run: not the fp32 numbers to the bit
    w = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in w.values() if v.is_floating_point())
