"""Latent exploration, provenance, bulk generation, export and their CLI, on tiny runs.

The runs are trained for a few steps on a tiny .npz (as in test_train.py) and shared by the
whole module. One extra GAN run gets re-initialized generator weights: a DCGAN after 6 steps
still outputs an almost constant grey image (its weights start at N(0, 0.02)), which would
make the projection and truncation tests pass for the wrong reason.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import latentforge
from latentforge import explore as ex
from latentforge.checkpoint import load_weights, save_weights
from latentforge.config import TrainConfig, read_run_config
from latentforge.export import ExportError, export, metadata_path
from latentforge.images import read_png_metadata, save_png
from latentforge.models import build_networks
from latentforge.train import train

CLASSES = ["T-shirt/top", "disc"]  # a name with a "-" inside, like Fashion-MNIST's


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks on 2 shared cores: intra-op threads only add contention (10-100x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, make_tiny_npz) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    npz = make_tiny_npz(root / "tiny.npz", class_names=CLASSES)
    out = {"npz": npz}
    for model in ("dcgan", "vae"):
        cfg = TrainConfig(model=model, data=str(npz), out=str(root / model), resolution=28, steps=6, batch_size=8,
                          width=8, z_dim=8, log_every=3, sample_every=6, checkpoint_every=6, seed=0)
        train(cfg, progress=False, log=lambda m: None)
        out[model] = root / model
    # a GAN whose images depend on z: He-initialized generator, batch-norm statistics re-estimated
    lively = root / "lively"
    shutil.copytree(root / "dcgan", lively)
    cfg, _ = read_run_config(lively)
    nets = build_networks(cfg, 1)
    load_weights(nets, lively / "model.safetensors")
    G = nets["G"]
    torch.manual_seed(0)
    for m in G.modules():
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
    G.train()
    with torch.no_grad():
        G(torch.randn(256, 8))
    for m in G.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    save_weights(nets, lively / "model.safetensors")
    out["lively"] = lively
    return out


@pytest.fixture(scope="module")
def gan(runs):
    return latentforge.load(runs["lively"], device="cpu")


@pytest.fixture(scope="module")
def vae(runs):
    return latentforge.load(runs["vae"], device="cpu")


# ------------------------------------------------------------------------------------ seeds


@pytest.mark.parametrize("text,want", [
    ("0-3", [0, 1, 2, 3]),
    ("3,17,42", [3, 17, 42]),
    ("0-3,9", [0, 1, 2, 3, 9]),
    (" 5 ", [5]),
    ("7-7", [7]),
    ("3,17,3", [3, 17, 3]),
    ("0-2, 10-11", [0, 1, 2, 10, 11]),
])
def test_parse_seeds(text: str, want: list[int]) -> None:
    assert ex.parse_seeds(text) == want


@pytest.mark.parametrize("text,match", [
    ("", "no seeds"),
    ("1,,2", "empty item"),
    ("a-3", "bad seed"),
    ("1.5", "bad seed"),
    ("-3", "bad seed"),
    ("3-", "bad seed"),
    ("1-2-3", "bad seed"),
    ("9-3", "reversed range.*3-9"),
    ("0-99999999999", "more than"),
])
def test_parse_seeds_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ex.parse_seeds(text)


def test_format_seeds_inverts_parse() -> None:
    for text in ("0-63", "3,17,42", "0-3,9"):
        assert ex.format_seeds(ex.parse_seeds(text)) == text


# ------------------------------------------------------------------------------------ generation


def test_same_seed_same_image_and_batch_independence(gan) -> None:
    a = ex.generate_from_seeds(gan, [4, 5, 6])
    assert a.dtype == torch.uint8 and a.shape == (3, 1, 28, 28)
    assert torch.equal(a, ex.generate_from_seeds(gan, [4, 5, 6]))
    assert torch.equal(a[1:2], ex.generate_from_seeds(gan, "5"))
    assert torch.equal(a, gan.sample_tensor(3, seed=4))  # truncation 1 == the plain sampler
    assert not torch.equal(a[0], a[1])  # the lively generator does depend on z


def test_truncation_zero_is_the_mean_image(gan, vae) -> None:
    x = ex.generate_from_seeds(gan, [0, 1, 2, 3], truncation=0.0)
    mean_image = ((gan.generate(torch.zeros(1, gan.z_dim)).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert all(torch.equal(x[i], mean_image[0]) for i in range(4))
    full = ex.generate_from_seeds(gan, [0, 1, 2, 3])
    half = ex.generate_from_seeds(gan, [0, 1, 2, 3], truncation=0.5)
    spread = lambda t: t.float().std(0).mean().item()  # noqa: E731
    assert spread(half) < spread(full)  # less diverse, not identical
    assert not torch.equal(half, full)
    # the latent really is scaled: psi * z
    assert torch.allclose(ex.seed_latents(gan, [3], 0.5), 0.5 * gan.latents([3]))
    # VAE temperature 0: decode(0) for every seed
    v = ex.generate_from_seeds(vae, [0, 1, 2], truncation=0.0)
    assert torch.equal(v[0], v[1]) and torch.equal(v[1], v[2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ex.generate_from_seeds(gan, [0], truncation=1.5)
    with pytest.raises(ValueError, match="temperature"):
        ex.generate_from_seeds(vae, [0], truncation=-1)
    ex.generate_from_seeds(vae, [0], truncation=1.5)  # a VAE temperature may exceed 1


# ------------------------------------------------------------------------------------ interpolation


def test_slerp_endpoints_and_norms() -> None:
    g = torch.Generator().manual_seed(0)
    d = 512
    z0, z1 = torch.randn(d, generator=g), torch.randn(d, generator=g)
    assert torch.allclose(ex.slerp(z0, z1, 0.0), z0, atol=1e-5)
    assert torch.allclose(ex.slerp(z0, z1, 1.0), z1, atol=1e-5)
    ts = torch.linspace(0, 1, 11)
    path_s, path_l = ex.slerp(z0, z1, ts), ex.lerp(z0, z1, ts)
    assert path_s.shape == path_l.shape == (11, d)
    lo, hi = min(z0.norm(), z1.norm()).item(), max(z0.norm(), z1.norm()).item()
    ns, nl = path_s.norm(dim=1), path_l.norm(dim=1)
    assert (ns > 0.97 * lo).all() and (ns < 1.03 * hi).all()
    # lerp shrinks the norm: the midpoint of two independent Gaussians has ~1/sqrt(2) of it
    assert nl[5] < 0.8 * lo
    assert abs(nl[5].item() / np.sqrt(d) - np.sqrt(0.5)) < 0.05
    # equal norms: exactly preserved
    u1 = z1 / z1.norm() * z0.norm()
    assert torch.allclose(ex.slerp(z0, u1, ts).norm(dim=1), torch.full((11,), z0.norm().item()), rtol=1e-5)
    # constant angular speed: at t the angle to z0 is t * omega (equal norms: exactly the great circle)
    ang = lambda a, b: torch.arccos((a.double() @ b.double() / (a.double().norm() * b.double().norm()))).item()  # noqa: E731
    omega = ang(z0, u1)
    for t in (0.25, 0.5, 0.9):
        assert abs(ang(ex.slerp(z0, u1, t), z0) - t * omega) < 1e-4


def test_slerp_parallel_falls_back_to_lerp() -> None:
    z = torch.randn(16, generator=torch.Generator().manual_seed(1))
    out = ex.slerp(z, 2 * z, 0.5)
    assert torch.isfinite(out).all() and torch.allclose(out, 1.5 * z)
    assert torch.allclose(ex.slerp(z, -z, 0.25), ex.lerp(z, -z, 0.25))
    with pytest.raises(ValueError):
        ex.slerp(z, torch.randn(8), 0.5)


def test_interpolation_latents_visit_the_keys() -> None:
    keys = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    looped = ex.interpolation_latents(keys, 12, loop=True)  # 3 segments of 4 frames
    assert looped.shape == (12, 8)
    assert torch.equal(looped[0], keys[0]) and torch.equal(looped[4], keys[1]) and torch.equal(looped[8], keys[2])
    assert not any(torch.equal(looped[-1], k) for k in keys)  # stops short of the first: seamless loop
    # the frame before the wrap-around lies on the arc from keys[2] back to keys[0]
    assert torch.allclose(looped[-1], ex.slerp(keys[2], keys[0], 0.75), atol=1e-6)
    open_ = ex.interpolation_latents(keys, 9, loop=False)  # 2 segments
    assert torch.equal(open_[0], keys[0]) and torch.equal(open_[4], keys[1]) and torch.equal(open_[-1], keys[2])
    assert torch.allclose(ex.interpolation_latents(keys, 9, mode="lerp", loop=False)[2], (keys[0] + keys[1]) / 2,
                          atol=1e-6)
    with pytest.raises(ValueError, match="slerp or lerp"):
        ex.interpolation_latents(keys, 9, mode="cubic")
    with pytest.raises(ValueError, match="at least 2"):
        ex.interpolation_latents(keys[:1], 9)


def test_interpolation_path_and_grid_images(gan) -> None:
    frames = ex.interpolation_path(gan, [3, 17, 42], frames=6, loop=False)
    assert frames.shape == (6, 1, 28, 28)
    ends = ex.generate_from_seeds(gan, [3, 42])
    assert torch.equal(frames[0], ends[0]) and torch.equal(frames[-1], ends[1])
    grid = ex.interpolation_grid(gan, "1,2,3,4", size=3)
    corners = ex.generate_from_seeds(gan, [1, 2, 3, 4])
    assert torch.equal(grid[0], corners[0]) and torch.equal(grid[2], corners[1])
    assert torch.equal(grid[6], corners[2]) and torch.equal(grid[8], corners[3])
    with pytest.raises(ValueError, match="exactly 4"):
        ex.interpolation_grid(gan, [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        ex.interpolation_path(gan, [3], frames=4)


def test_writers_gif_png_mp4(gan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = ex.interpolation_path(gan, [1, 2], frames=8)
    meta = ex.provenance(gan, seeds="1,2")
    gif = ex.write_animation(frames, tmp_path / "walk.gif", fps=10, metadata=meta, upscale=2)
    with Image.open(gif) as im:
        assert im.is_animated and im.n_frames == 8 and im.size == (56, 56)
        assert im.info.get("loop") == 0  # loops forever
    assert ex.read_info(gif) == meta
    png = ex.write_animation(frames, tmp_path / "walk.png", metadata=meta)
    with Image.open(png) as im:
        assert im.size == (8 * 30 + 2, 32)  # one row of 8 frames, 2 px padding
    assert ex.read_info(png) == meta
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed
    with pytest.raises(ValueError, match=r"imageio-ffmpeg.*\.gif"):
        ex.write_animation(frames, tmp_path / "walk.mp4")
    with pytest.raises(ValueError, match=r"\.gif, \.png"):
        ex.write_animation(frames, tmp_path / "walk.avi")
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------------------------ provenance


def test_provenance_round_trip_through_png(gan, tmp_path: Path) -> None:
    meta = ex.provenance(gan, seed=7, truncation=0.7, class_=None, direction="a-b")
    assert meta["synthetic image"] == "true" and meta["latentforge"] == latentforge.__version__
    assert meta["model"] == "dcgan" and meta["run"] == str(gan.run_dir)
    assert meta["seed"] == "7" and meta["truncation"] == "0.7" and "class" not in meta  # None is left out
    assert ex.provenance(gan, **{"class": "Sneaker"})["class"] == "Sneaker"
    p = save_png(ex.generate_from_seeds(gan, [7])[0], tmp_path / "x.png", metadata=meta)
    assert ex.read_info(p) == meta == read_png_metadata(p)
    Image.new("L", (4, 4)).save(tmp_path / "plain.png")
    assert ex.read_info(tmp_path / "plain.png") == {}
    Image.new("RGB", (4, 4)).save(tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="PNG and GIF"):
        ex.read_info(tmp_path / "x.jpg")


# ------------------------------------------------------------------------------------ latent arithmetic


def test_direction_parsing() -> None:
    names = ["T-shirt/top", "Trouser", "Sneaker", "Sandal", "Ankle boot"]
    assert ex.parse_direction("Sneaker-Sandal", names) == ("Sneaker", "Sandal")
    assert ex.parse_direction("T-shirt/top-Trouser", names) == ("T-shirt/top", "Trouser")
    assert ex.parse_direction("trouser-t-shirt/top", names) == ("Trouser", "T-shirt/top")
    assert ex.parse_direction("Ankle boot", names) == ("Ankle boot", None)
    with pytest.raises(ValueError, match=r"classes: 'T-shirt/top', 'Trouser', 'Sneaker', 'Sandal', 'Ankle boot'"):
        ex.parse_direction("Sneaker-Boot", names)
    with pytest.raises(ValueError, match="more than one way"):
        ex.parse_direction("a-b-c", ["a", "b", "c", "a-b", "b-c"])


def test_vae_direction_is_difference_of_class_means(vae, runs) -> None:
    means = ex.class_means(vae)
    assert list(means) == CLASSES
    data = np.load(runs["npz"])
    x = torch.from_numpy(data["images"]).unsqueeze(1)
    mu = vae.encode(x)[0]
    lab = torch.from_numpy(data["labels"])
    assert torch.allclose(means["disc"], mu[lab == 1].mean(0), atol=1e-5)
    d = ex.direction(vae, "T-shirt/top-disc")
    assert torch.allclose(d, mu[lab == 0].mean(0) - mu[lab == 1].mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="'T-shirt/top', 'disc'"):
        ex.direction(vae, "Sneaker-Sandal")
    row = ex.edit_row(vae, 5, d, strengths=[-1, 0, 1])
    assert row.shape == (3, 1, 28, 28)
    assert torch.equal(row[1], ex.generate_from_seeds(vae, [5])[0])  # strength 0 = the seed's own image
    z = vae.latents([5]) + d
    assert torch.equal(row[2], ((vae.decode(z).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0])
    assert ex.edit_row(vae, 5, "T-shirt/top-disc", means=means).shape == (7, 1, 28, 28)


def test_gan_directions_are_refused_honestly(gan) -> None:
    with pytest.raises(ValueError, match="no encoder.*VAE"):
        ex.direction(gan, "T-shirt/top-disc")
    with pytest.raises(ValueError, match="classes: 'T-shirt/top', 'disc'"):  # a typo fails first, listing classes
        ex.direction(gan, "Sneaker-disc")
    means = {"a": torch.ones(8), "b": torch.zeros(8)}  # your own means (e.g. from projections) are accepted
    assert torch.equal(ex.direction(gan, "a-b", means=means), torch.ones(8))


# ------------------------------------------------------------------------------------ real images in


def test_prepare_image_converts_size_and_channels(gan, tmp_path: Path) -> None:
    rgb = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    for src in (tmp_path / "rgb.png", Image.fromarray(rgb), rgb, torch.from_numpy(rgb).permute(2, 0, 1)):
        x = ex.prepare_image(gan, src)
        assert x.dtype == torch.uint8 and x.shape == (1, 1, 28, 28)
    assert torch.equal(ex.prepare_image(gan, tmp_path / "rgb.png"), ex.prepare_image(gan, Image.fromarray(rgb)))
    with pytest.raises(FileNotFoundError):
        ex.prepare_image(gan, tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        ex.prepare_image(gan, tmp_path / "bad.png")


def test_vary_samples_around_the_posterior(vae, gan, runs) -> None:
    x = torch.from_numpy(np.load(runs["npz"])["images"][:1]).unsqueeze(1)  # (1, 1, 28, 28)
    v = ex.vary(vae, x, n=4, spread=1.0, seed=0)
    assert v.shape == (4, 1, 28, 28)
    assert torch.equal(v, ex.vary(vae, x, n=4, spread=1.0, seed=0))
    zero = ex.vary(vae, x, n=2, spread=0.0)
    assert torch.equal(zero[0], vae.reconstruct(x)[0]) and torch.equal(zero[1], zero[0])
    mu, logvar = vae.encode(x)
    eps = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    want = ((vae.decode(mu + torch.exp(0.5 * logvar) * eps).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(v, want)
    with pytest.raises(ValueError, match="VAE"):
        ex.vary(gan, x)


def test_projection_lowers_its_loss(gan) -> None:
    target = ex.generate_from_seeds(gan, [12345])  # an image the model can make, from a seed not among the starts
    z, img, rep = ex.project(gan, target, steps=60, lr=0.05, starts=8)
    assert rep["features"] == "discriminator"
    assert rep["final_loss"] < 0.5 * rep["initial_loss"]
    assert rep["mse"] < rep["initial_mse"] and rep["psnr"] > rep["initial_psnr"] + 3
    assert z.shape == (1, 8) and img.shape == (1, 1, 28, 28) and img.dtype == torch.uint8
    # the report describes the returned latent
    assert torch.equal(img, ((gan.generate(z).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    # the generator was left as it was: frozen during the optimization, then restored
    assert all(p.requires_grad for p in gan.nets["G"].parameters())
    assert rep["start_seed"] in range(0, 8)


def test_projection_without_discriminator_uses_random_features(vae, runs) -> None:
    x = torch.from_numpy(np.load(runs["npz"])["images"][:1]).unsqueeze(1)
    _, _, rep = ex.project(vae, x, steps=5, starts=2)
    assert rep["features"] == "random-conv" and rep["final_loss"] <= rep["initial_loss"]


# ------------------------------------------------------------------------------------ bulk generation


class Stop(Exception):
    pass


@pytest.mark.parametrize("workers", [0, 2])
def test_bulk_generate_resumes_without_gaps_or_rewrites(gan, tmp_path: Path, workers: int) -> None:
    out = tmp_path / "bulk"
    n, k = 23, 7

    def interrupt(done: int, total: int) -> None:
        assert total == n
        if done == k:
            raise Stop

    with pytest.raises(Stop):
        ex.bulk_generate(gan, n, out, batch_size=4, progress=False, workers=workers, callback=interrupt)
    first = sorted(p.name for p in out.iterdir())
    assert k <= len(first) < n and all(name.endswith(".png") for name in first)  # nothing half-written
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "seed000020.png.tmp").write_bytes(b"torn")  # what a hard kill mid-write would leave
    res = ex.bulk_generate(gan, n, out, batch_size=4, progress=False, workers=workers)
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"seed{i:06d}.png" for i in range(n)]
    assert res.total == n and res.skipped == len(first) and res.written == n - len(first)
    assert all((out / name).stat().st_mtime_ns == t for name, t in before.items())  # not rewritten
    # every file is the image of its seed, with its provenance
    want = gan.sample_tensor(n, seed=0)
    for i in (0, k, n - 1):
        arr = np.asarray(Image.open(out / f"seed{i:06d}.png"))
        assert np.array_equal(arr, want[i, 0].numpy())
        meta = ex.read_info(out / f"seed{i:06d}.png")
        assert meta["seed"] == str(i) and meta["synthetic image"] == "true" and meta["truncation"] == "1.0"
    again = ex.bulk_generate(gan, n, out, progress=False)
    assert again.written == 0 and again.skipped == n


def test_bulk_generate_seed_offset_and_list(gan, tmp_path: Path) -> None:
    res = ex.bulk_generate(gan, 3, tmp_path / "a", seed=998, progress=False)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["seed000998.png", "seed000999.png",
                                                                  "seed001000.png"]
    assert res.written == 3
    ex.bulk_generate(gan, None, tmp_path / "b", seeds=[5, 2, 5], progress=False)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["seed000002.png", "seed000005.png"]
    with pytest.raises(ValueError, match="positive"):
        ex.bulk_generate(gan, 0, tmp_path / "c", progress=False)


# ------------------------------------------------------------------------------------ export


def _check_export(model, path: Path, fmt: str) -> None:
    meta = export(model, path, format=fmt)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    side = json.loads(metadata_path(path).read_text())
    assert side["z_dim"] == 8 and side["resolution"] == 28 and side["channels"] == 1
    assert side["class_names"] == CLASSES and side["output_range"] == [-1.0, 1.0]
    assert side["check"]["max_abs_diff"] < 1e-4 and meta["format"] == fmt
    z = model.latents(range(200, 207))  # a batch size the export never saw
    want = model.generate(z)
    if fmt == "torchscript":
        got = torch.jit.load(str(path))(z)
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {"z": z.numpy()})[0])
    assert got.shape == (7, 1, 28, 28)
    assert (got - want).abs().max().item() < 1e-4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("family", ["gan", "vae"])
def test_export_torchscript_matches(gan, vae, tmp_path: Path, family: str) -> None:
    _check_export(gan if family == "gan" else vae, tmp_path / "g.pt", "torchscript")


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_export_onnx_matches(gan, vae, tmp_path: Path, family: str) -> None:
    pytest.importorskip("onnx", reason="onnx not installed")  # installed in this project's .venv: runs there
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    _check_export(gan if family == "gan" else vae, tmp_path / "g.onnx", "onnx")


def test_export_check_catches_a_wrong_file(gan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import latentforge.export as lfe

    real = lfe._run_exported
    monkeypatch.setattr(lfe, "_run_exported", lambda p, f, z: real(p, f, z) + 1e-3)
    with pytest.raises(ExportError, match="differs"):
        export(gan, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists() and not metadata_path(tmp_path / "bad.pt").exists()
    with pytest.raises(ValueError, match="format"):
        export(gan, tmp_path / "x.bin")


# ------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli():
    from latentforge.cli_explore import register

    app = typer.Typer()
    register(app)
    register(app)  # idempotent
    assert len(app.registered_commands) == 7
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def test_every_command_has_an_example() -> None:
    from latentforge.cli_explore import COMMANDS

    for name, fn in COMMANDS.items():
        assert f"Example: latentforge {name} " in (fn.__doc__ or ""), name


def test_cli_generate_interpolate_info(cli, runs, tmp_path: Path) -> None:
    run = runs["lively"]
    r = cli("generate", run, "--seeds", "0-5", "--truncation", "0.7", "--out", tmp_path / "grid.png")
    assert r.exit_code == 0, r.output
    meta = read_png_metadata(tmp_path / "grid.png")
    assert meta["seeds"] == "0-5" and meta["truncation"] == "0.7" and meta["synthetic image"] == "true"
    # --scale, the same flag name as `latentforge sample --scale`, enlarges the grid
    r = cli("generate", run, "--seeds", "0-5", "--scale", "3", "--out", tmp_path / "big.png")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "big.png").size == tuple(3 * v for v in Image.open(tmp_path / "grid.png").size)
    r = cli("generate", run, "--seeds", "0-5", "--scale", "0", "--out", tmp_path / "bad.png")
    assert r.exit_code != 0 and "--scale" in str(r.exception)
    r = cli("generate", run, "--n", "5", "--seed", "3", "--outdir", tmp_path / "many", "--quiet")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == [f"seed{i:06d}.png" for i in range(3, 8)]
    r = cli("interpolate", run, "--seeds", "3,17,42", "--frames", "6", "--out", tmp_path / "walk.gif")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "walk.gif") as im:
        assert im.n_frames == 6
    r = cli("interpolate", run, "--seeds", "3,17", "--frames", "4", "--no-loop", "--mode", "lerp",
            "--out", tmp_path / "walk.png")
    assert r.exit_code == 0, r.output
    r = cli("interpolate", run, "--seeds", "1,2,3,4", "--grid", "3", "--out", tmp_path / "g2.png")
    assert r.exit_code == 0, r.output
    r = cli("info", tmp_path / "walk.gif")
    assert r.exit_code == 0 and "synthetic image" in r.stdout and "3,17,42" in r.stdout


def test_cli_edit_vary_project_export(cli, runs, tmp_path: Path) -> None:
    Image.fromarray(np.load(runs["npz"])["images"][0]).resize((40, 40)).save(tmp_path / "x.png")
    r = cli("edit", runs["vae"], "--seed", "5", "--direction", "T-shirt/top-disc", "--strength", "-2..2",
            "--steps", "5", "--out", tmp_path / "row.png")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "row.png") as im:
        assert im.size == (5 * 30 + 2, 32)
    r = cli("vary", runs["vae"], "--image", tmp_path / "x.png", "--n", "3", "--out", tmp_path / "vary.png")
    assert r.exit_code == 0, r.output
    r = cli("project", runs["lively"], "--image", tmp_path / "x.png", "--steps", "3", "--starts", "2",
            "--out", tmp_path / "proj.png")
    assert r.exit_code == 0, r.output
    assert "PSNR" in r.stdout and "dB" in r.stdout
    assert len(read_png_metadata(tmp_path / "proj.png")["latent"].split(",")) == 8
    r = cli("export", runs["vae"], "--format", "torchscript", "--out", tmp_path / "v.pt")
    assert r.exit_code == 0, r.output
    assert metadata_path(tmp_path / "v.pt").is_file()


def test_cli_user_errors_are_one_line(cli, runs, tmp_path: Path) -> None:
    from latentforge.cli import UserError

    cases = [
        (("generate", runs["lively"], "--seeds", "9-3", "--out", tmp_path / "a.png"), "reversed range"),
        (("generate", runs["lively"], "--seeds", "0-3", "--n", "4", "--out", tmp_path / "a.png"), "exactly one"),
        (("generate", runs["lively"], "--seeds", "0-3", "--truncation", "2", "--out", tmp_path / "a.png"), r"\[0, 1\]"),
        (("edit", runs["vae"], "--seed", "1", "--direction", "Sneaker-Sandal"), "classes: 'T-shirt/top', 'disc'"),
        (("edit", runs["lively"], "--seed", "1", "--direction", "disc-T-shirt/top"), "no encoder"),
        (("interpolate", runs["lively"], "--seeds", "3", "--out", tmp_path / "w.gif"), "at least 2"),
        (("interpolate", runs["lively"], "--seeds", "3,4", "--out", tmp_path / "w.avi"), ".gif, .png or .mp4"),
        (("vary", runs["lively"], "--image", runs["lively"] / "samples" / "step_000000.png"), "VAE"),
        (("export", runs["lively"], "--out", tmp_path / "g.bin"), "format"),
    ]
    for args, match in cases:
        r = cli(*args)
        assert r.exit_code != 0 and isinstance(r.exception, UserError), (args, r.output, r.exception)
        msg = str(r.exception)
        assert "\n" not in msg and re.search(match, msg), (args, msg)


def test_cli_main_exit_code_2(runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Through latentforge.cli.main, a user error is one red line and exit code 2."""
    import latentforge.cli as lfcli
    from latentforge.cli_explore import register

    register(lfcli.app)
    monkeypatch.setattr(sys, "argv", ["latentforge", "generate", str(runs["lively"]), "--seeds", "x",
                                      "--out", str(tmp_path / "a.png")])
    with pytest.raises(SystemExit) as e:
        lfcli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "bad seed 'x'" in err and "Traceback" not in err
