"""Training loop, run directory, resume, load/sample, and the CLI, on tiny data; plus one
integration test on real Fashion-MNIST."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import latentforge
from latentforge.checkpoint import load_state, read_jsonl
from latentforge.config import ConfigError, TrainConfig
from latentforge.images import read_png_metadata
from latentforge.train import BatchOrder, latents_for_seeds, train


def tiny_cfg(data: Path, out: Path, model: str = "dcgan", **kw) -> TrainConfig:
    base = dict(model=model, data=str(data), out=str(out), resolution=28, steps=6, batch_size=8, width=8, z_dim=8,
                log_every=2, sample_every=3, checkpoint_every=3, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def weights_of(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_run_directory_contents(tiny_npz: Path, tmp_path: Path, model: str) -> None:
    run = tmp_path / model
    result = train(tiny_cfg(tiny_npz, run, model), progress=False, log=lambda m: None)
    assert result.step == 6 and not result.interrupted
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == model and cfg["data_info"]["channels"] == 1
    assert cfg["data_info"]["class_names"] == ["square", "disc"]
    rows = read_jsonl(run / "metrics.jsonl")
    if model == "vae":  # a VAE run ends with its count of active latent units
        assert rows[-1]["kind"] == "active_units" and rows[-1]["step"] == 6
        rows = rows[:-1]
    assert [r["step"] for r in rows] == [2, 4, 6]
    keys = {"loss/D", "loss/G", "D(x)", "D(G(z))"} if model == "dcgan" else {"loss/total", "loss/recon", "loss/kl"}
    assert keys <= set(rows[0]) and rows[0]["images_per_s"] > 0 and rows[0]["kind"] == "train"
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_000000.png", "step_000003.png", "step_000006.png"]
    meta = read_png_metadata(run / "samples" / "step_000006.png")
    assert meta["model"] == model and meta["synthetic image"] == "true"
    state = load_state(run / "state.pt")  # weights_only=True inside: must succeed
    assert state["step"] == 6
    assert not list(run.glob("*.tmp"))  # atomic writes leave no temporaries


def test_existing_run_needs_resume(tiny_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    train(tiny_cfg(tiny_npz, run), progress=False, log=lambda m: None)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_cfg(tiny_npz, run), progress=False, log=lambda m: None)
    with pytest.raises(ConfigError, match="holds no run"):
        train(tiny_cfg(tiny_npz, tmp_path / "nothing"), resume=True, progress=False, log=lambda m: None)


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_resume_is_exact(tiny_npz: Path, tmp_path: Path, model: str) -> None:
    """6 steps at once == 3 steps, stop, resume to 6: bit-identical weights and logs."""
    straight = tmp_path / "straight"
    train(tiny_cfg(tiny_npz, straight, model), progress=False, log=lambda m: None)
    split = tmp_path / "split"
    train(tiny_cfg(tiny_npz, split, model, steps=3), progress=False, log=lambda m: None)
    train(tiny_cfg(tiny_npz, split, model, steps=6), resume=True, progress=False, log=lambda m: None)
    a, b = weights_of(straight), weights_of(split)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda r: {k: v for k, v in r.items() if k not in ("time", "images_per_s")}  # noqa: E731
    la = {r["step"]: strip(r) for r in read_jsonl(straight / "metrics.jsonl") if r["kind"] == "train"}
    lb = {r["step"]: strip(r) for r in read_jsonl(split / "metrics.jsonl") if r["kind"] == "train"}
    # the split run also logged its last step (3); steps 2 and 6 average the same steps in both runs
    assert sorted(la) == [2, 4, 6] and sorted(lb) == [2, 3, 4, 6]
    assert la[2] == lb[2] and la[6] == lb[6]


def test_load_sample_is_deterministic_and_matches_training_grid(tiny_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "g"
    train(tiny_cfg(tiny_npz, run), progress=False, log=lambda m: None)
    m = latentforge.load(run)
    a, b = m.sample(5, seed=3), m.sample(5, seed=3)
    assert a.dtype == np.uint8 and a.shape == (5, 28, 28, 1)
    assert np.array_equal(a, b)
    # image i depends only on its seed, not on the batch it is in
    assert np.array_equal(m.sample(2, seed=4), a[1:3])
    assert not np.array_equal(m.sample(5, seed=100), a)
    # a reload gives identical outputs
    assert np.array_equal(latentforge.load(run).sample(5, seed=3), a)


def test_vae_encode_decode_reconstruct(tiny_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "v"
    train(tiny_cfg(tiny_npz, run, "vae"), progress=False, log=lambda m: None)
    m = latentforge.load(run)
    x = torch.from_numpy(np.load(tiny_npz)["images"][:4]).unsqueeze(1)  # uint8 (4, 1, 28, 28)
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (4, 8)
    rec = m.reconstruct(x)
    assert rec.dtype == torch.uint8 and rec.shape == x.shape
    assert torch.equal(to_u8(m.decode(mu)), rec)
    gan = tmp_path / "gan"
    train(tiny_cfg(tiny_npz, gan), progress=False, log=lambda m: None)
    with pytest.raises(ValueError, match="has no encoder"):
        latentforge.load(gan).encode(x)


def to_u8(x: torch.Tensor) -> torch.Tensor:
    from latentforge.images import to_uint8

    return to_uint8(x)


def test_batch_order_is_a_permutation_per_epoch() -> None:
    order = BatchOrder(n=10, batch_size=3, seed=0)
    epoch0 = torch.cat([order.indices(s) for s in range(3)])
    assert len(set(epoch0.tolist())) == 9  # no repeats inside an epoch (drop-last leaves one out)
    assert not torch.equal(epoch0, torch.cat([order.indices(s) for s in range(3, 6)]))  # reshuffled
    assert torch.equal(BatchOrder(10, 3, 0).indices(4), order.indices(4))  # a pure function of the step


def test_latents_depend_only_on_the_seed() -> None:
    a = latents_for_seeds([1, 2, 3], 6)
    assert torch.equal(latents_for_seeds([3], 6)[0], a[2])
    assert not torch.equal(a[0], a[1])


# ------------------------------------------------------------------------------------ CLI


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentforge", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    """A folder of 20 PNGs in two class subfolders, plus one corrupt file."""
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            arr = (rng.random((40, 36, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    (root / "dogs" / "broken.png").write_bytes(b"this is not a png")
    return root


def test_cli_smoke_on_a_folder(image_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = run_cli("train", "--model", "dcgan", "--data", str(image_folder), "--res", "32", "--steps", "4",
                "--batch-size", "8", "--width", "8", "--out", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "skipped 1" in (r.stderr + r.stdout)  # the corrupt file is reported, not fatal
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data_info"]["channels"] == 3 and cfg["data_info"]["class_names"] == ["cats", "dogs"]
    r = run_cli("sample", str(run), "--n", "6", "--seed", "1", "--out", str(tmp_path / "grid.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "grid.png").size[0] > 32
    r = run_cli("sample", str(run), "--n", "3", "--outdir", str(tmp_path / "each"))
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "each").glob("*.png"))
    assert len(files) == 3 and Image.open(files[0]).size == (32, 32)
    assert read_png_metadata(files[0])["seed"] == "0"
    r = run_cli("data", "info", str(image_folder), "--res", "32", "--out", str(tmp_path / "info.png"))
    assert r.returncode == 0, r.stderr
    assert "20" in r.stderr and (tmp_path / "info.png").is_file()


def test_cli_user_errors_are_one_line(tmp_path: Path) -> None:
    r = run_cli("train", "--model", "gpt", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown model 'gpt'" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("sample", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png"))
    assert r.returncode == 2 and "not a latentforge run directory" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("train", "--bogus-flag")
    assert r.returncode == 2 and "No such option" in r.stderr
    r = run_cli("train", "--data", "no-such-dataset", "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "fashion-mnist" in r.stderr


def test_ctrl_c_saves_and_resume_finishes(tiny_npz: Path, tmp_path: Path) -> None:
    """SIGINT during training: a checkpoint is written, exit code 130; --resume then completes."""
    import signal
    import time

    run = tmp_path / "intr"
    args = ["train", "--model", "dcgan", "--data", str(tiny_npz), "--res", "28", "--steps", "100000",
            "--batch-size", "8", "--width", "8", "--z-dim", "8", "--log-every", "1", "--out", str(run), "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "latentforge", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_jsonl(run / "metrics.jsonl")) < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint written" in err and "--resume" in err
    step = load_state(run / "state.pt")["step"]
    assert 3 <= step < 100000
    logged = max(r["step"] for r in read_jsonl(run / "metrics.jsonl"))
    assert logged == step  # nothing logged beyond the checkpoint
    # resuming needs only the run and how far to go: the run's own settings are used
    r = run_cli("train", "--out", str(run), "--steps", str(step + 2), "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    assert load_state(run / "state.pt")["step"] == step + 2
    assert json.loads((run / "config.json").read_text())["width"] == 8
    r = run_cli("train", "--out", str(run), "--model", "vae", "--resume")
    assert r.returncode == 2 and "cannot change to vae" in r.stderr


# ------------------------------------------------------------------------------------ real data


@pytest.mark.integration
def test_real_fashion_mnist_dcgan_learns(tmp_path: Path) -> None:
    """400 DCGAN steps on Fashion-MNIST: losses stay finite; samples are diverse and have learned
    the data's dark background, which an untrained generator (mid-grey noise) does not have."""
    run = tmp_path / "fm"
    cfg = TrainConfig(model="dcgan", data="fashion-mnist:train", out=str(run), resolution=28, steps=400,
                      batch_size=64, width=16, log_every=50, sample_every=400, checkpoint_every=400, seed=0)
    border = np.ones((28, 28), bool)
    border[3:-3, 3:-3] = False  # the 3-pixel frame of each image

    def border_mean(x: np.ndarray) -> float:
        return float(x[:, border].mean())

    from latentforge.models import build_networks

    torch.manual_seed(cfg.seed)
    untrained = build_networks(cfg, channels=1)["G"].eval()
    with torch.no_grad():
        x0 = (untrained(latents_for_seeds(range(64), cfg.z_dim)).squeeze(1).numpy() + 1) / 2
    train(cfg, progress=False, log=lambda m: None)
    rows = read_jsonl(run / "metrics.jsonl")
    assert all(np.isfinite(r["loss/D"]) and np.isfinite(r["loss/G"]) for r in rows)
    x = latentforge.load(run).sample(64, seed=0)[..., 0].astype(np.float32) / 255  # (64, 28, 28)
    real = latentforge.load_images("fashion-mnist:test").images[:2000, 0].float().numpy() / 255
    b_real, b0, b = border_mean(real), border_mean(x0), border_mean(x)
    assert b0 - b_real > 0.2  # untrained: grey frame (~0.5); real data: mostly black (~0.12)
    assert abs(b - b_real) < 0.5 * abs(b0 - b_real), (b0, b, b_real)  # learned the dark background
    assert x.reshape(64, -1).std(1).min() > 0.05  # no blank images
    flat = x.reshape(64, -1)
    pair = np.abs(flat[:, None, :] - flat[None, :, :]).mean(-1)
    assert pair[~np.eye(64, dtype=bool)].min() > 0.01  # no two samples identical (no full collapse)


@pytest.mark.integration
def test_real_fashion_mnist_vae_lowers_loss(tmp_path: Path) -> None:
    run = tmp_path / "vae"
    cfg = TrainConfig(model="vae", data="fashion-mnist:train", out=str(run), resolution=28, steps=120, batch_size=64,
                      width=16, log_every=20, sample_every=120, checkpoint_every=120, seed=0)
    train(cfg, progress=False, log=lambda m: None)
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    assert rows[-1]["loss/total"] < 0.8 * rows[0]["loss/total"]
    x = latentforge.load(run).sample(32, seed=0).astype(np.float32)
    assert x.reshape(32, -1).std(1).min() > 5  # not blank
    assert np.abs(x[0] - x[1:]).mean() > 2  # samples differ from each other


@pytest.mark.integration
def test_in_training_evaluation_logs_and_keeps_best(tiny_npz: Path, tmp_path: Path, monkeypatch) -> None:
    """--eval-every: FID/KID rows in metrics.jsonl (real Inception weights), a best checkpoint that
    matches the lowest FID logged, and load(checkpoint="best")."""
    monkeypatch.setenv("LATENTFORGE_CACHE", str(tmp_path / "cache"))  # keep the user's cache clean
    run = tmp_path / "ev"
    cfg = tiny_cfg(tiny_npz, run, steps=6, eval_every=3, eval_n=24, eval_ref=str(tiny_npz))
    train(cfg, progress=False, log=lambda m: None)
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(r["n"] == 24 and np.isfinite(r["fid"]) and r["fid"] > 0 and np.isfinite(r["kid"]) for r in evals)
    best = min(evals, key=lambda r: r["fid"])
    from safetensors import safe_open

    with safe_open(str(run / "best" / "model.safetensors"), "pt") as f:
        assert int(f.metadata()["step"]) == best["step"]
    assert load_state(run / "state.pt")["best_step"] == best["step"]
    assert latentforge.load(run, checkpoint="best").sample(2).shape == (2, 28, 28, 1)
    with pytest.raises(ConfigError, match="no best weights"):
        latentforge.load(_run_without_best(tiny_npz, tmp_path), checkpoint="best")


def _run_without_best(tiny_npz: Path, tmp_path: Path) -> Path:
    run = tmp_path / "nobest"
    train(tiny_cfg(tiny_npz, run, steps=2), progress=False, log=lambda m: None)
    return run


@pytest.mark.integration
def test_cli_eval_on_a_run_and_on_two_image_sets(tiny_npz: Path, tmp_path: Path) -> None:
    """`latentforge eval RUN` and `eval --real --fake` print the metrics with their protocol and
    write JSON; the real Inception weights are used, on 20 images a side."""
    import os

    env = {**os.environ, "LATENTFORGE_CACHE": str(tmp_path / "cache")}
    run = tmp_path / "g"
    train(tiny_cfg(tiny_npz, run), progress=False, log=lambda m: None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "latentforge", *args], capture_output=True, text=True,
                              timeout=600, env=env)

    r = cli("eval", str(run), "--ref", str(tiny_npz), "--n", "20", "--metrics", "fid,kid,memorization",
            "--json", str(tmp_path / "run.json"))
    assert r.returncode == 0, r.stderr
    assert "FID" in r.stdout and "n_fake: 20" in r.stdout and "sha256" in r.stdout
    res = json.loads((tmp_path / "run.json").read_text())
    assert res["fid"] > 0 and res["protocol"]["n_fake"] == 20 and res["run"] == str(run)
    assert "memorization" in res and (tmp_path / "memorization_pairs.png").is_file()

    fake_dir = tmp_path / "fakes"
    assert cli("sample", str(run), "--n", "20", "--outdir", str(fake_dir)).returncode == 0
    r = cli("eval", "--real", str(tiny_npz), "--fake", str(fake_dir), "--n", "20", "--metrics", "fid,pr",
            "--json", str(tmp_path / "sets.json"))
    assert r.returncode == 0, r.stderr
    sets = json.loads((tmp_path / "sets.json").read_text())
    assert sets["fid"] > 0 and 0 <= sets["precision"] <= 1 and 0 <= sets["recall"] <= 1
    # a set against itself (all 64 images, so both sides are the same set): FID ~ 0, precision = recall = 1
    r = cli("eval", "--real", str(tiny_npz), "--fake", str(tiny_npz), "--n", "64", "--metrics", "fid,pr",
            "--json", str(tmp_path / "self.json"))
    assert r.returncode == 0, r.stderr
    same = json.loads((tmp_path / "self.json").read_text())
    assert abs(same["fid"]) < 1e-3 and same["precision"] == 1 and same["recall"] == 1

    r = cli("eval", str(run), "--metrics", "fid,sharpness")
    assert r.returncode == 2 and "unknown metric" in r.stderr
    r = cli("eval", "--real", str(tiny_npz))
    assert r.returncode == 2 and "--fake" in r.stderr


def test_max_minutes_stops_with_a_checkpoint(tmp_path, tiny_npz):
    """A tiny budget stops the run early, with a checkpoint and the last samples written."""
    cfg = tiny_cfg(tiny_npz, tmp_path / "run", model="vae", steps=1000, sample_every=500, max_minutes=1e-4)
    res = train(cfg, progress=False, log=lambda m: None)
    assert 1 <= res.step < 1000
    assert load_state(tmp_path / "run" / "state.pt")["step"] == res.step
    assert (tmp_path / "run" / "samples" / f"step_{res.step:06d}.png").is_file()
    assert latentforge.load(tmp_path / "run", device="cpu").trained_steps == res.step  # not the bound of 1000


# ---------------------------------------------------------------------------- learning-rate decay


def test_lr_factor_follows_the_schedule() -> None:
    from latentforge.train import lr_factor_at

    cfg = TrainConfig(model="dcgan", steps=100)
    assert cfg.lr_decay_steps is None and lr_factor_at(57, cfg) == 1.0  # none: the learning rate stays
    lin = TrainConfig(model="dcgan", steps=100, lr_decay="linear")
    assert lin.lr_decay_steps == 100  # default: the run's steps, fixed in the config
    assert [lr_factor_at(s, lin) for s in (0, 25, 50, 100, 150)] == [1.0, 0.75, 0.5, 0.0, 0.0]
    cos = TrainConfig(model="dcgan", steps=100, lr_decay="cosine", lr_decay_steps=40)
    assert lr_factor_at(0, cos) == 1.0 and lr_factor_at(40, cos) == 0.0 and lr_factor_at(80, cos) == 0.0
    assert lr_factor_at(20, cos) == pytest.approx(0.5)
    assert lr_factor_at(10, cos) == pytest.approx((1 + 2 ** -0.5) / 2)  # cos(pi / 4)
    with pytest.raises(ConfigError, match="lr_decay must be one of"):
        TrainConfig(lr_decay="step")
    with pytest.raises(ConfigError, match="lr_decay_steps must be positive"):
        TrainConfig(lr_decay="linear", lr_decay_steps=0)


def test_lr_decay_reaches_the_optimizers_and_resumes_exactly(tiny_npz: Path, tmp_path: Path) -> None:
    """Logged lrs are base * (1 - t) of the step just taken; 3 steps + resume == 6 steps at once."""
    kw = dict(lr=1e-3, lr_decay="linear", log_every=1)
    train(tiny_cfg(tiny_npz, tmp_path / "a", **kw), progress=False, log=lambda m: None)
    rows = {r["step"]: r for r in read_jsonl(tmp_path / "a" / "metrics.jsonl") if r["kind"] == "train"}
    assert [rows[s]["lr"] for s in range(1, 7)] == pytest.approx([1e-3 * (1 - (s - 1) / 6) for s in range(1, 7)], rel=1e-5)  # logged to 6 digits
    train(tiny_cfg(tiny_npz, tmp_path / "b", steps=3, lr_decay_steps=6, **kw), progress=False, log=lambda m: None)
    train(tiny_cfg(tiny_npz, tmp_path / "b", steps=6, **kw), resume=True, progress=False, log=lambda m: None)
    a, b = weights_of(tmp_path / "a"), weights_of(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_with_more_steps_keeps_the_decay_length(tiny_npz: Path, tmp_path: Path) -> None:
    run, logs = tmp_path / "run", []
    train(tiny_cfg(tiny_npz, run, steps=2, lr_decay="cosine"), progress=False, log=lambda m: None)
    train(tiny_cfg(tiny_npz, run, steps=4), resume=True, progress=False, log=logs.append)
    assert json.loads((run / "config.json").read_text())["lr_decay_steps"] == 2
    assert any("ends at step 2" in m and "learning rate is 0" in m for m in logs)


def test_a_preset_with_lr_decay_decays_over_the_presets_steps() -> None:
    """The decay's default length is derived from --steps after a preset sets them."""
    from latentforge.presets import apply_preset

    cfg = apply_preset(TrainConfig(lr_decay="cosine"), "quality", explicit={"lr_decay"})
    assert cfg.steps == 100_000 and cfg.lr_decay_steps == 100_000
    cfg = apply_preset(TrainConfig(lr_decay="cosine", lr_decay_steps=500), "quality", explicit={"lr_decay", "lr_decay_steps"})
    assert cfg.lr_decay_steps == 500
