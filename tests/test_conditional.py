"""Class conditioning: conditional batch norm and the projection discriminator against their
formulas, the conditional VAE, conditional training (labels, resume, save/load), and the class
contract of sample / generate and their CLI, on the tiny labelled data set ("square", "disc")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import latentforge
from latentforge.checkpoint import read_jsonl
from latentforge.config import ConfigError, TrainConfig
from latentforge.export import export
from latentforge.images import make_grid, read_png_metadata, to_uint8
from latentforge.losses import aux_class_loss
from latentforge.models import build_networks
from latentforge.models.conditional import ConditionalBatchNorm2d
from latentforge.train import gan_step, generate_images, latents_for_seeds, sample_grid_nrow, train

GANS = ("dcgan", "resnet_gan")
MODELS = (*GANS, "vae")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks on shared cores: intra-op threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_cfg(data: Path, out: Path, model: str = "dcgan", **kw) -> TrainConfig:
    base = dict(model=model, data=str(data), out=str(out), resolution=28, steps=6, batch_size=8, width=8, z_dim=8,
                log_every=2, sample_every=3, checkpoint_every=3, seed=0, conditional=True)
    base.update(kw)
    return TrainConfig(**base)


def quiet_train(cfg: TrainConfig, resume: bool = False):
    return train(cfg, resume=resume, progress=False, log=lambda m: None)


def randomize_class_parameters(net: torch.nn.Module, seed: int = 0) -> None:
    """Conditional BN starts as plain BN (gain 1, bias 0 for every class), so a few training
    steps leave the classes almost alike; random per-class gains and biases make every class
    visibly different, so tests on class effects cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ConditionalBatchNorm2d):
                m.gain.weight.copy_(1 + torch.randn(m.gain.weight.shape, generator=g))
                m.bias.weight.copy_(torch.randn(m.bias.weight.shape, generator=g))


# ------------------------------------------------------------------------------------ layers


def test_conditional_batch_norm_formula() -> None:
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(3, num_classes=2)
    x, c = torch.randn(4, 3, 5, 5), torch.tensor([0, 1, 1, 0])
    # at initialization: exactly a freshly initialized nn.BatchNorm2d (gain 1, bias 0)
    torch.testing.assert_close(cbn(x, c), torch.nn.BatchNorm2d(3)(x))
    randomize_class_parameters(cbn)
    normed = F.batch_norm(x, None, None, training=True, eps=1e-5)  # batch statistics, shared by all classes
    want = normed * cbn.gain.weight[c][:, :, None, None] + cbn.bias.weight[c][:, :, None, None]
    torch.testing.assert_close(cbn(x, c), want)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("res", (28, 32))
def test_conditional_forward_shapes_and_label_checks(model: str, res: int) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(model=model, resolution=res, width=8, z_dim=8)
    nets = build_networks(cfg, channels=3, num_classes=3)
    z, c, x = torch.randn(4, 8), torch.tensor([0, 2, 1, 2]), torch.rand(4, 3, res, res) * 2 - 1
    if model == "vae":
        vae = nets["vae"]
        mu, logvar = vae.encode(x, c)
        assert mu.shape == logvar.shape == (4, 8)
        assert vae.decode(z, c).shape == (4, 3, res, res)
        assert vae(x, c).decoded.shape == (4, 3, res, res)
        net, call = vae, (lambda cc: vae.decode(z, cc))
    else:
        G, D = nets["G"], nets["D"]
        img = G(z, c)
        assert img.shape == (4, 3, res, res) and img.min() >= -1 and img.max() <= 1
        assert D(img, c).shape == (4,)
        net, call = G, (lambda cc: G(z, cc))
    assert net.cfg.num_classes == 3
    with pytest.raises(ValueError, match="class-conditional"):
        call(None)
    with pytest.raises(ValueError, match="int64"):
        call(c.float())
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        call(torch.tensor([0, 1, 2, 3]))
    # num_classes = 0: the unconditional network, which refuses labels
    plain = build_networks(cfg, channels=3)
    plain_net = plain["vae"] if model == "vae" else plain["G"]
    assert plain_net.cfg.num_classes == 0
    assert not any(isinstance(m, (ConditionalBatchNorm2d, torch.nn.Embedding)) for n in plain.values() for m in n.modules())
    with pytest.raises(ValueError, match="unconditional"):
        (plain_net.decode if model == "vae" else plain_net)(z, c)


def _phi(D: torch.nn.Module, x: torch.Tensor, model: str) -> torch.Tensor:
    """The discriminator's features phi(x) that the projection reads, recomputed from its layers."""
    if model == "dcgan":
        return D.net[:-1](x).flatten(1)
    return torch.relu(D.blocks(x)).sum(dim=(2, 3))


@pytest.mark.parametrize("model,sn", [("dcgan", False), ("dcgan", True), ("resnet_gan", True)])
def test_projection_discriminator_uses_the_class(model: str, sn: bool) -> None:
    """D(x, c) = psi(phi(x)) + <embed(c), phi(x)>: the logit moves with c by exactly
    <embed(c1) - embed(c0), phi(x)> (Miyato & Koyama 2018, eq. 3)."""
    torch.manual_seed(0)
    cfg = TrainConfig(model=model, resolution=28, width=8, z_dim=8, spectral_norm=sn)
    D = build_networks(cfg, channels=1, num_classes=3)["D"].eval()  # eval: no BN / power-iteration updates
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    c0, c1 = torch.zeros(5, dtype=torch.long), torch.tensor([1, 2, 1, 2, 0])
    with torch.no_grad():
        d0, d1 = D(x, c0), D(x, c1)
        phi, emb = _phi(D, x, model), D.embed.weight  # the (spectrally normalized) embedding
        torch.testing.assert_close(d1 - d0, ((emb[c1] - emb[c0]) * phi).sum(1))
        torch.testing.assert_close(d0 - (emb[c0] * phi).sum(1), D(x, c1) - (emb[c1] * phi).sum(1))  # psi: no c
    assert not torch.allclose(d0[:4], d1[:4])  # changing the class changes the logit
    assert d0[4] == d1[4]  # same class, same logit


@pytest.mark.parametrize("model", GANS)
def test_conditional_generator_uses_the_class(model: str) -> None:
    torch.manual_seed(0)
    G = build_networks(TrainConfig(model=model, resolution=28, width=8, z_dim=8), 1, num_classes=3)["G"]
    randomize_class_parameters(G)
    G.eval()  # running statistics: image i depends only on (z_i, c_i), not on the rest of the batch
    z = torch.randn(3, 8)
    with torch.no_grad():
        a, b = G(z, torch.tensor([0, 1, 2])), G(z, torch.tensor([2, 1, 0]))
        assert torch.equal(a[1], b[1]) and not torch.allclose(a[0], b[0], atol=1e-3)
        torch.testing.assert_close(G(z[2:], torch.tensor([2])), a[2:])


def test_conditional_vae_feeds_one_hot_classes_to_both_sides() -> None:
    """Sohn et al. 2015: q(z|x, y) with y as K extra input channels, p(x|z, y) on [z, y]."""
    torch.manual_seed(0)
    vae = build_networks(TrainConfig(model="vae", resolution=28, width=8, z_dim=4), 1, num_classes=2)["vae"].eval()
    assert vae.encoder[0].in_channels == 1 + 2 and vae.from_z[0].in_features == 4 + 2
    x, c, z = torch.rand(3, 1, 28, 28) * 2 - 1, torch.tensor([1, 0, 1]), torch.randn(3, 4)
    y = F.one_hot(c, 2).float()
    with torch.no_grad():
        mu, logvar = vae.encode(x, c)
        want = vae.to_stats(vae.encoder(torch.cat([x, y[:, :, None, None].expand(-1, -1, 28, 28)], 1))).chunk(2, 1)
        torch.testing.assert_close((mu, logvar), want)
        raw = vae.decode_raw(z, c)
        torch.testing.assert_close(raw, vae.decoder(vae.from_z(torch.cat([z, y], 1)).view(-1, *vae._top)))
        assert not torch.allclose(raw, vae.decode_raw(z, 1 - c))  # the class changes the decoded image
        assert not torch.allclose(mu, vae.encode(x, 1 - c)[0])


def test_conditional_gan_step_trains_the_class_parameters() -> None:
    torch.manual_seed(0)
    nets = build_networks(TrainConfig(model="dcgan", resolution=28, width=8, z_dim=8), 1, num_classes=2)
    G, D = nets["G"], nets["D"]
    opt_G, opt_D = torch.optim.Adam(G.parameters(), lr=1e-3), torch.optim.Adam(D.parameters(), lr=1e-3)
    before = (D.embed.weight.detach().clone(), G.net[1].gain.weight.detach().clone())
    real, labels = torch.rand(8, 1, 28, 28) * 2 - 1, torch.tensor([0, 1] * 4)
    out = gan_step(G, D, opt_G, opt_D, real, 8, labels=labels, num_classes=2)
    assert np.isfinite(list(out.values())).all()
    assert not torch.equal(before[0], D.embed.weight) and not torch.equal(before[1], G.net[1].gain.weight)
    with pytest.raises(ValueError, match="num_classes"):
        gan_step(G, D, opt_G, opt_D, real, 8, labels=labels)
    with pytest.raises(ValueError, match="label batches"):
        gan_step(G, D, opt_G, opt_D, [real, real], 8, labels=[labels], num_classes=2)


# ------------------------------------------------------------------------------------ AC-GAN


def test_aux_class_loss_is_the_mean_negative_log_softmax_of_the_label() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 1])
    # -(log softmax(logits_0)[0] + log softmax(logits_1)[1]) / 2, written out
    lse = [np.log(np.exp(2.0) + np.exp(0.0) + np.exp(-1.0)), np.log(2 * np.exp(0.5) + np.exp(3.0))]
    expected = -((2.0 - lse[0]) + (0.5 - lse[1])) / 2
    assert aux_class_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("model,sn", [("dcgan", False), ("dcgan", True), ("resnet_gan", True)])
def test_aux_head_returns_class_logits_beside_the_same_logits(model: str, sn: bool) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(model=model, resolution=28, width=8, z_dim=8, spectral_norm=sn, conditional=True,
                      aux_class_weight=1.0)
    D = build_networks(cfg, 1, num_classes=3)["D"].eval()
    x, c = torch.rand(5, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        logits, cls = D(x, c, aux=True)
        assert torch.equal(logits, D(x, c)) and cls.shape == (5, 3)
        assert not torch.allclose(cls[0], cls[1])  # per image, from the image's features
    plain = build_networks(TrainConfig(model=model, resolution=28, width=8, z_dim=8, conditional=True), 1,
                           num_classes=3)["D"]
    assert plain.aux is None
    with pytest.raises(ValueError, match="no auxiliary class head"):
        plain(x, c, aux=True)


def test_aux_class_weight_needs_a_conditional_gan() -> None:
    with pytest.raises(ConfigError, match="needs a conditional dcgan or resnet_gan"):
        TrainConfig(model="dcgan", aux_class_weight=1.0)
    with pytest.raises(ConfigError, match="needs a conditional dcgan or resnet_gan"):
        TrainConfig(model="vae", conditional=True, aux_class_weight=1.0)
    with pytest.raises(ConfigError, match=">= 0"):
        TrainConfig(model="dcgan", conditional=True, aux_class_weight=-1.0)
    from latentforge.models.dcgan import DCGANConfig

    with pytest.raises(ValueError, match="num_classes > 0"):
        DCGANConfig(resolution=28, aux_classifier=True)


def test_gan_step_adds_the_class_losses_to_d_and_g() -> None:
    """D's logged class loss is the cross-entropy of the real batch under D before the step, the
    aux head learns, and G's update changes with the weight (the class loss reaches G)."""
    import copy

    torch.manual_seed(0)
    cfg = TrainConfig(model="dcgan", resolution=28, width=8, z_dim=8, conditional=True, aux_class_weight=1.0)
    nets = build_networks(cfg, 1, num_classes=2)
    real, labels = torch.rand(8, 1, 28, 28) * 2 - 1, torch.tensor([0, 1] * 4)
    G_after = {}
    for w in (0.0, 1.0):
        G, D = copy.deepcopy(nets["G"]), copy.deepcopy(nets["D"])
        with torch.no_grad():
            expected = aux_class_loss(copy.deepcopy(D)(real, labels, aux=True)[1], labels).item()
        head = D.aux.weight.detach().clone()
        opt_G, opt_D = torch.optim.Adam(G.parameters(), lr=1e-3), torch.optim.Adam(D.parameters(), lr=1e-3)
        torch.manual_seed(1)  # the same noise and fake classes for both weights
        out = gan_step(G, D, opt_G, opt_D, real, 8, labels=labels, num_classes=2, aux_weight=w)
        G_after[w] = torch.cat([p.detach().flatten() for p in G.parameters()])
        if w == 0:
            assert "loss/aux_D" not in out and torch.equal(head, D.aux.weight)  # no class loss: the head is untouched
        else:
            assert out["loss/aux_D"] == pytest.approx(expected, rel=1e-5) and np.isfinite(out["loss/aux_G"])
            assert not torch.equal(head, D.aux.weight)
    assert not torch.allclose(G_after[0.0], G_after[1.0])


def test_aux_run_saves_loads_and_resumes(tiny_npz: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    quiet_train(tiny_cfg(tiny_npz, tmp_path / "straight", aux_class_weight=1.0))
    quiet_train(tiny_cfg(tiny_npz, tmp_path / "split", steps=3, aux_class_weight=1.0))
    quiet_train(tiny_cfg(tiny_npz, tmp_path / "split", aux_class_weight=1.0), resume=True)
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("straight", "split"))
    assert "D.aux.weight" in a and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    logged = [r for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl") if r.get("kind") == "train"]
    assert logged and all("loss/aux_D" in r and "loss/aux_G" in r for r in logged)
    m = latentforge.load(tmp_path / "straight", device="cpu")
    assert m.sample(4, classes="disc").shape == (4, 28, 28, 1)


def test_sample_grid_shows_one_class_per_column() -> None:
    assert sample_grid_nrow(0) == 8 and sample_grid_nrow(2) == 8 and sample_grid_nrow(4) == 8
    assert sample_grid_nrow(10) == 10 and sample_grid_nrow(3) == 3
    assert sample_grid_nrow(20) == 8  # too many classes for one row: cycling goes on across rows


# ------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, make_tiny_npz) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cond")
    npz = make_tiny_npz(root / "tiny.npz")
    out = {"npz": npz}
    for model in ("dcgan", "vae"):
        out[model] = root / model
        quiet_train(tiny_cfg(npz, out[model], model))
    out["plain"] = root / "plain"
    quiet_train(tiny_cfg(npz, out["plain"], conditional=False))
    return out


def test_run_records_its_conditioning(runs) -> None:
    payload = json.loads((runs["dcgan"] / "config.json").read_text())
    assert payload["conditional"] is True
    assert payload["data_info"]["num_classes"] == 2 and payload["data_info"]["class_names"] == ["square", "disc"]
    plain = json.loads((runs["plain"] / "config.json").read_text())
    assert plain["conditional"] is False and "num_classes" not in plain["data_info"]
    assert [r["step"] for r in read_jsonl(runs["dcgan"] / "metrics.jsonl")] == [2, 4, 6]


@pytest.mark.parametrize("model", ("dcgan", "vae"))
def test_save_load_round_trip(runs, model: str) -> None:
    """The loaded model reproduces the training run's last sample grid (seeds 0-63, image i of
    class i mod 2) exactly, and a second load gives the same images."""
    m = latentforge.load(runs[model])
    assert m.conditional and m.num_classes == 2 and m.class_names == ["square", "disc"]
    imgs = m.sample_tensor(64, seed=0)
    grid = np.asarray(Image.open(runs[model] / "samples" / "step_000006.png"))[::2, ::2]  # saved at 2x
    assert np.array_equal(grid, make_grid(imgs, nrow=8)[0].numpy())
    assert torch.equal(latentforge.load(runs[model]).sample_tensor(64, seed=0), imgs)


@pytest.mark.parametrize("model", ("dcgan", "vae"))
def test_sample_class_contract(runs, model: str) -> None:
    m = latentforge.load(runs[model])
    if model == "dcgan":
        randomize_class_parameters(m.nets["G"])
    assert m.class_labels(4, "disc").tolist() == [1, 1, 1, 1]
    assert m.class_labels(3, "DISC").tolist() == m.class_labels(3, 1).tolist() == m.class_labels(3, "1").tolist()
    assert m.class_labels(4, ["square", "Disc", 0, 1]).tolist() == [0, 1, 0, 1]
    assert m.class_labels(5).tolist() == [0, 1, 0, 1, 0]  # no classes: image i gets class i mod K
    discs = m.sample(4, seed=3, classes="disc")
    assert discs.shape == (4, 28, 28, 1) and discs.dtype == np.uint8
    # the images are those of class 1 ...
    want = to_uint8(m.generate(latents_for_seeds(range(3, 7), m.z_dim), [1] * 4)).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(discs, want)
    assert np.array_equal(discs, m.sample(4, seed=3, classes=[1, "disc", "DISC", 1]))
    # ... not those of class 0; and cycling gives class i mod 2
    squares = m.sample(4, seed=3, classes="square")
    assert not np.array_equal(discs, squares)
    cycled = m.sample(4, seed=3)
    assert np.array_equal(cycled[0::2], squares[0::2]) and np.array_equal(cycled[1::2], discs[1::2])
    # image i depends only on its seed and class
    assert np.array_equal(m.sample(2, seed=4, classes="disc"), discs[1:3])


def test_class_errors(runs) -> None:
    m = latentforge.load(runs["dcgan"])
    with pytest.raises(ConfigError, match="unknown class 'Sneaker'; this model's classes are: square, disc"):
        m.sample(2, classes="Sneaker")
    with pytest.raises(ConfigError, match="class index 2 is out of range"):
        m.sample(2, classes=2)
    with pytest.raises(ConfigError, match="got 3 classes for 2 images"):
        m.sample(2, classes=["disc", "disc", "square"])
    plain = latentforge.load(runs["plain"])
    assert not plain.conditional and plain.class_labels(3) is None
    with pytest.raises(ConfigError, match=r"unconditional.*classes are square, disc"):
        plain.sample(2, classes="disc")
    with pytest.raises(ValueError, match="unconditional"):
        generate_images(plain.nets, plain.config, [0, 1], plain.device, labels=[0, 1])
    with pytest.raises(ValueError, match="one class label per seed"):
        generate_images(m.nets, m.config, [0, 1], m.device, labels=[0, 1, 1])



@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name", ["dcgan", "vae"])
def test_conditional_export_takes_the_class_as_a_second_input(runs, tmp_path: Path, fmt: str, name: str) -> None:
    """The exported graph of a conditional run maps (z, class) to the images the run generates
    for those classes (export() itself checks this on other latents and classes, or refuses)."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="onnxruntime not installed")  # installed in this project's .venv
    from latentforge.export import _run_exported

    m = latentforge.load(runs[name])
    path = tmp_path / ("g.pt" if fmt == "torchscript" else "g.onnx")
    meta = export(m, path)
    assert meta["class_input"]["name"] == "class" and meta["class_names"] == ["square", "disc"]
    z = m.latents(range(3)).cpu()
    for classes in ([1, 1, 0], [0, 0, 1]):
        got = _run_exported(path, fmt, (z, torch.tensor(classes)))
        want = m.generate(z, classes=classes).cpu()
        assert got.shape == want.shape and (got - want).abs().max() < 1e-4
    assert not torch.allclose(_run_exported(path, fmt, (z, torch.tensor([1, 1, 0]))),
                              _run_exported(path, fmt, (z, torch.tensor([0, 0, 1]))))


def test_conditional_vae_decodes_the_requested_class(runs, tiny_npz: Path) -> None:
    m = latentforge.load(runs["vae"])
    z = torch.randn(3, m.z_dim, generator=torch.Generator().manual_seed(0))
    discs = m.decode(z, classes="disc")
    assert discs.shape == (3, 1, 28, 28) and discs.min() >= -1 and discs.max() <= 1
    torch.testing.assert_close(discs, m.nets["vae"].decode(z, torch.ones(3, dtype=torch.long)))
    assert not torch.allclose(discs, m.decode(z, classes="square"))
    x = torch.from_numpy(np.load(tiny_npz)["images"][:4]).unsqueeze(1)  # uint8 (4, 1, 28, 28)
    labels = torch.from_numpy(np.load(tiny_npz)["labels"][:4])
    with pytest.raises(ConfigError, match="needs the images' classes"):
        m.encode(x)
    mu, _ = m.encode(x, labels)
    rec = m.reconstruct(x, labels)
    assert rec.shape == x.shape and torch.equal(rec, to_uint8(m.decode(mu, labels)).cpu())


def test_conditional_needs_labelled_data(tmp_path: Path) -> None:
    npz = tmp_path / "unlabelled.npz"
    np.savez(npz, images=np.zeros((16, 28, 28), np.uint8))
    with pytest.raises(ConfigError, match="--conditional needs labelled data.*has no labels"):
        quiet_train(tiny_cfg(npz, tmp_path / "run"))
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("model", ("dcgan", "vae"))
def test_labels_follow_their_images(tiny_npz: Path, tmp_path: Path, model: str, monkeypatch) -> None:
    """Every batch's labels are those of its images: in the tiny data set squares (label 0) are
    drawn at 230 and discs (label 1) at 160, so a batch's labels can be read off its pixels."""
    import latentforge.train as lt

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(step_fn):
        def wrapped(*args, **kw):
            if model == "dcgan":
                reals, labels = args[4], kw["labels"]
                assert kw["num_classes"] == 2 and len(reals) == len(labels) == 2  # n_critic = 2
                seen.extend(zip(reals, labels))
            else:
                seen.append((args[2], kw["labels"]))
            return step_fn(*args, **kw)
        return wrapped

    name = "gan_step" if model == "dcgan" else "vae_step"
    monkeypatch.setattr(lt, name, spy(getattr(lt, name)))
    quiet_train(tiny_cfg(tiny_npz, tmp_path / "run", model, steps=5, n_critic=2 if model == "dcgan" else 1))
    assert len(seen) == (10 if model == "dcgan" else 5)
    for real, labels in seen:
        assert labels.dtype == torch.long and labels.shape == (8,)
        brightest = to_uint8(real).flatten(1).max(1).values  # 230 for a square, 160 for a disc
        assert torch.equal(labels, (brightest < 200).long())


@pytest.mark.parametrize("model", MODELS)
def test_resume_is_exact_for_a_conditional_run(tiny_npz: Path, tmp_path: Path, model: str) -> None:
    """6 steps at once == 3 steps, stop, resume to 6: bit-identical weights (labels follow the
    same deterministic batch order as the images; the fake classes come from the saved RNG)."""
    from safetensors.torch import load_file

    kw = {"n_critic": 2} if model != "vae" else {}
    quiet_train(tiny_cfg(tiny_npz, tmp_path / "straight", model, **kw))
    quiet_train(tiny_cfg(tiny_npz, tmp_path / "split", model, steps=3, **kw))
    quiet_train(tiny_cfg(tiny_npz, tmp_path / "split", model, steps=6, **kw), resume=True)
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("straight", "split"))
    assert a.keys() == b.keys() and any("embed" in k or "gain" in k or "from_z" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli():
    import latentforge.cli as lfcli
    from latentforge.cli_explore import register

    register(lfcli.app)
    runner = CliRunner()
    return lambda *args: runner.invoke(lfcli.app, [str(a) for a in args])


def test_cli_sample_and_generate_with_classes(cli, runs, tmp_path: Path) -> None:
    m = latentforge.load(runs["dcgan"])
    r = cli("sample", runs["dcgan"], "--class", "Disc", "--n", "4", "--seed", "2", "--out", tmp_path / "d.png")
    assert r.exit_code == 0, (r.output, r.exception)
    assert read_png_metadata(tmp_path / "d.png")["classes"] == "disc"
    got = np.asarray(Image.open(tmp_path / "d.png"))[::2, ::2]
    assert np.array_equal(got, make_grid(m.sample_tensor(4, seed=2, classes="disc"), nrow=8)[0].numpy())
    r = cli("sample", runs["dcgan"], "--class", "square,disc", "--class", "1", "--n", "3", "--outdir", tmp_path / "each")
    assert r.exit_code == 0, (r.output, r.exception)
    assert [read_png_metadata(tmp_path / "each" / f"seed{i:06d}.png")["class"] for i in range(3)] == \
        ["square", "disc", "disc"]
    r = cli("generate", runs["dcgan"], "--seeds", "0-3", "--class", "square", "--out", tmp_path / "g.png")
    assert r.exit_code == 0, (r.output, r.exception)
    assert read_png_metadata(tmp_path / "g.png")["classes"] == "square"
    r = cli("generate", runs["dcgan"], "--n", "2", "--class", "disc", "--outdir", tmp_path / "bulk", "--quiet")
    assert r.exit_code == 0, (r.output, r.exception)
    assert read_png_metadata(tmp_path / "bulk" / "seed000001.png")["class"] == "disc"
    for args, match in [
        (("sample", runs["dcgan"], "--class", "Sneaker", "--out", tmp_path / "x.png"), "square, disc"),
        (("sample", runs["plain"], "--class", "disc", "--out", tmp_path / "x.png"), "unconditional"),
        (("generate", runs["plain"], "--seeds", "0-3", "--class", "disc", "--out", tmp_path / "x.png"), "unconditional"),
    ]:
        r = cli(*args)
        assert r.exit_code != 0 and isinstance(r.exception, ConfigError), (args, r.output, r.exception)
        assert match in str(r.exception) and "\n" not in str(r.exception)


def test_cli_train_conditional(cli, tiny_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = cli("train", "--model", "resnet_gan", "--data", tiny_npz, "--res", "28", "--steps", "2", "--batch-size", "8",
            "--width", "8", "--z-dim", "8", "--loss", "hinge", "--conditional", "--quiet", "--out", run)
    assert r.exit_code == 0, (r.output, r.exception)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "resnet_gan" and cfg["conditional"] is True and cfg["data_info"]["num_classes"] == 2
    assert latentforge.load(run).sample(2, classes="disc").shape == (2, 28, 28, 1)


@pytest.mark.integration
def test_cli_eval_of_a_conditional_run_reports_class_accuracy(cli, runs, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """eval generates image i with class i mod K and scores, with a classifier trained on the run's own
    (labelled) data, how often each image is recognized as the class it asked for."""
    monkeypatch.setenv("LATENTFORGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "eval.json"
    r = cli("eval", runs["dcgan"], "--n", "16", "--metrics", "kid", "--json", out)
    assert r.exit_code == 0, (r.output, r.exception)
    assert "class accuracy:" in r.output
    ca = json.loads(out.read_text())["class_accuracy"]
    assert ca["n"] == 16 and ca["chance"] == 0.5 and 0.0 <= ca["accuracy"] <= 1.0
    assert ca["per_class_n"] == {"square": 8, "disc": 8}
    assert ca["classifier"]["held_out_accuracy"] > 0.9  # two easy classes: the judge itself must be good
    r = cli("eval", runs["plain"], "--n", "16", "--metrics", "kid", "--json", tmp_path / "plain.json")
    assert r.exit_code == 0, (r.output, r.exception)
    assert "class_accuracy" not in json.loads((tmp_path / "plain.json").read_text())  # unconditional: no labels
