"""Training, sampling and evaluation on several processes (torchrun, gloo on the CPU), compared
with one process; plus the single-process behaviour of the helpers in distributed.py and
acceleration.py.

Two torchrun launches of 2 processes: one runs every training and command the comparisons need
and ends with a crashing rank (tests/distributed_worker.py, mode "job"), one is stopped with Ctrl-C.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import write_tiny_npz
from distributed_worker import PoolExtractor, run_trainings
from latentforge import acceleration, distributed
from latentforge.checkpoint import load_state, read_jsonl
from latentforge.config import ConfigError, TrainConfig
from latentforge.train import BatchOrder

WORKER = Path(__file__).with_name("distributed_worker.py")
SRC = Path(__file__).resolve().parents[1] / "src"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]


def torchrun_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **extra}


def torchrun(nproc: int, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, str(nproc), *map(str, args)], capture_output=True, text=True,
                          env=torchrun_env(**env), timeout=timeout)


def write_id_npz(path: Path) -> Path:
    """The tiny test images with each image's index in pixel (0, 0) (value 4 * index), so that a
    training step's batch tells which images it holds."""
    write_tiny_npz(path)
    d = dict(np.load(path))
    d["images"][:, 0, 0] = np.arange(len(d["images"])) * 4
    np.savez(path, **d)
    return path


def cfg(data: Path, out: Path, **kw: Any) -> dict[str, Any]:
    base = dict(model="dcgan", data=str(data), out=str(out), resolution=28, steps=4, batch_size=8, width=8, z_dim=8,
                log_every=1, sample_every=100, checkpoint_every=100, seed=0)
    return {**base, **kw}


def records(prefix: Path, world: int = 2) -> list[dict[str, Any]]:
    return [torch.load(f"{prefix}.rank{r}.pt", weights_only=True) for r in range(world)]


def losses(run: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k.startswith("loss/") or k.startswith("D(")}
            for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]


# ----------------------------------------------------------------------------- one launch, many checks


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Trainings and commands run by 2 processes, and their one-process counterparts."""
    root = tmp_path_factory.mktemp("dist")
    data = write_id_npz(root / "ids.npz")
    # one process: the reference run, and a 3-step checkpoint for two processes to resume
    run_trainings([{"config": cfg(data, root / "one", steps=6, sync_bn=True), "record": str(root / "rec_one")},
                   {"config": cfg(data, root / "one_then_two", steps=3, sync_bn=True), "record": str(root / "rec_x")}])
    spec = {
        "runs": [
            {"config": cfg(data, root / "gan2", sync_bn=True), "record": str(root / "rec_gan2")},
            {"config": cfg(data, root / "gan2_nosync", steps=2), "record": str(root / "rec_nosync")},
            {"config": cfg(data, root / "one_then_two", steps=6, sync_bn=True), "resume": True,
             "record": str(root / "rec_resumed")},
            {"config": cfg(data, root / "vae2", model="vae", steps=3), "record": str(root / "rec_vae")},
            {"config": cfg(data, root / "vae2_split", model="vae", steps=2), "record": str(root / "rec_vae_a")},
            {"config": cfg(data, root / "vae2_split", model="vae", steps=3), "resume": True,
             "record": str(root / "rec_vae_b")},
            {"config": cfg(data, root / "tricks2", steps=2, spectral_norm=True, r1_gamma=1.0, n_critic=2,
                           augment="translation", ema_decay=0.9), "record": str(root / "rec_tricks")},
            # the models with their own step: a stage and a fade-in every step (stage_images = one batch)
            {"config": cfg(data, root / "progan2", model="progan", steps=4, stage_images=8, ema_decay=0.9),
             "record": str(root / "rec_progan")},
            {"config": cfg(data, root / "up2", model="upsampler", steps=2), "record": str(root / "rec_upsampler")},
            {"config": cfg(data, root / "vaegan2", model="vae_gan", steps=3, adv_start=1),
             "record": str(root / "rec_vaegan")},
        ],
        "commands": [
            ["sample", str(root / "gan2"), "--n", "300", "--seed", "5", "--outdir", str(root / "png2")],
            ["sample", str(root / "gan2"), "--n", "40", "--out", str(root / "grid2.png")],
            ["eval", str(root / "gan2"), "--ref", str(data), "--n", "64", "--metrics", "fid,kid,pr",
             "--json", str(root / "eval2.json")],
        ],
        # last, through the real CLI entry point: rank 1 fails in its second step
        "crash": {"step": 2, "args": ["train", "--data", str(data), "--res", "28", "--steps", "50", "--batch-size", "8",
                                      "--width", "8", "--z-dim", "8", "--out", str(root / "crashed"), "--quiet"]},
    }
    (root / "job.json").write_text(json.dumps(spec))
    t0 = time.perf_counter()
    r = torchrun(2, WORKER, "job", root / "job.json", LATENTFORGE_CACHE=str(root / "cache2"))
    out = r.stdout + r.stderr
    assert (root / "eval2.json").is_file(), out[-5000:]  # everything before the crash ran
    return {"root": root, "data": data, "seconds": time.perf_counter() - t0, "returncode": r.returncode,
            "output": out}


@pytest.mark.parametrize("name,n_critic", [("gan2", 1), ("vae", 1), ("tricks", 2), ("upsampler", 1), ("vaegan", 1)])
def test_ranks_train_on_disjoint_slices_of_the_global_batch(job: dict[str, Any], name: str, n_critic: int) -> None:
    rank0, rank1 = records(job["root"] / f"rec_{name}")
    order = BatchOrder(64, 8, seed=0)
    assert len(rank0["ids"]) == len(rank1["ids"]) > 0
    for step, (ids0, ids1) in enumerate(zip(rank0["ids"], rank1["ids"])):
        assert len(ids0) == len(ids1) == n_critic  # one batch per D step
        for i, (a, b) in enumerate(zip(ids0, ids1)):
            assert len(a) == len(b) == 4 and not set(a) & set(b)
            assert a + b == order.indices(step * n_critic + i).tolist()  # rank r: slice r of the global batch


@pytest.mark.parametrize("name", ["gan2", "nosync", "vae", "tricks", "progan", "upsampler", "vaegan"])
def test_replicas_hold_identical_weights_after_every_step(job: dict[str, Any], name: str) -> None:
    rank0, rank1 = records(job["root"] / f"rec_{name}")
    w0, w1 = rank0["weights"], rank1["weights"]
    assert torch.equal(w0, w1)
    assert not torch.equal(w0[0], w0[-1])  # and they did change
    # each rank computed its own loss on its own half; the logged loss is their mean
    if name == "gan2":
        logged = losses(job["root"] / "gan2")
        for s in range(len(logged)):
            local = (rank0["loss"][s]["loss/D"], rank1["loss"][s]["loss/D"])
            assert local[0] != local[1]
            assert logged[s]["loss/D"] == pytest.approx(sum(local) / 2, abs=1e-6)


def test_two_processes_with_sync_bn_train_like_one(job: dict[str, Any]) -> None:
    """The same global batch, the same z: 2 processes with --sync-bn give 1 process's losses and
    weights up to float rounding. Without --sync-bn the batch statistics are per half batch."""
    root = job["root"]
    one, two = losses(root / "one"), losses(root / "gan2")
    assert len(two) == 4
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], abs=2e-5), k
    w_one, w_two = records(root / "rec_one", world=1)[0]["weights"], records(root / "rec_gan2")[0]["weights"]
    assert torch.allclose(w_one[3], w_two[3], atol=1e-5)  # after step 4
    nosync = losses(root / "gan2_nosync")
    assert max(abs(nosync[0][k] - one[0][k]) for k in one[0]) > 1e-3


def test_resume_on_the_same_number_of_processes_is_exact(job: dict[str, Any]) -> None:
    """VAE, 2 processes: 3 steps straight == 2 steps, stop, resume to 3, bit for bit: the data
    order, every rank's own random stream (the reparameterization noise) and the optimizer
    state all continue."""
    from safetensors.torch import load_file

    root = job["root"]
    straight, split = load_file(str(root / "vae2" / "model.safetensors")), \
        load_file(str(root / "vae2_split" / "model.safetensors"))
    assert straight.keys() == split.keys() and all(torch.equal(straight[k], split[k]) for k in straight)
    assert torch.equal(records(root / "rec_vae_b")[1]["weights"][0], records(root / "rec_vae")[1]["weights"][2])
    assert losses(root / "vae2") == losses(root / "vae2_split")


def test_resume_across_numbers_of_processes(job: dict[str, Any]) -> None:
    """A 1-process checkpoint continued by 2 processes, and a 2-process checkpoint continued by
    1 process, end where 1 process trained straight through ends (GAN, --sync-bn: the data
    order, the z stream, and the batch statistics do not depend on the number of processes)."""
    root = job["root"]
    straight = records(root / "rec_one", world=1)[0]["weights"]  # (6 steps, n weights)
    resumed_by_two = records(root / "rec_resumed")[0]["weights"]  # steps 4..6
    assert resumed_by_two.shape[0] == 3
    assert torch.allclose(resumed_by_two, straight[3:], atol=1e-5)
    state = load_state(root / "one_then_two" / "state.pt")
    assert state["step"] == 6 and state["rng_ranks_cpu"].shape[0] == 2

    shutil.copytree(root / "gan2", root / "gan2_then_one")  # gan2 itself stays as 2 processes left it
    run_trainings([{"config": cfg(job["data"], root / "gan2_then_one", steps=6, sync_bn=True), "resume": True,
                    "record": str(root / "rec_gan2_then_one")}])
    resumed_by_one = records(root / "rec_gan2_then_one", world=1)[0]["weights"]
    assert resumed_by_one.shape[0] == 2
    assert torch.allclose(resumed_by_one, straight[4:], atol=1e-5)
    assert losses(root / "gan2_then_one")[5]["loss/D"] == pytest.approx(losses(root / "one")[5]["loss/D"], abs=2e-5)


def test_sharded_sample_and_eval_equal_one_process(job: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """`sample --outdir`, `sample --out` and `eval` of the same run: 2 processes (each generating
    and extracting features for its share) write the same files and numbers as 1 process."""
    ev = importlib.import_module("latentforge.metrics.evaluate")  # the module, not the function of that name
    from latentforge.cli import app

    root, data = job["root"], job["data"]
    monkeypatch.setattr(ev, "default_extractor", lambda device="cpu": PoolExtractor())
    monkeypatch.setenv("LATENTFORGE_CACHE", str(root / "cache1"))
    for command in (["sample", str(root / "gan2"), "--n", "300", "--seed", "5", "--outdir", str(root / "png1")],
                    ["sample", str(root / "gan2"), "--n", "40", "--out", str(root / "grid1.png")],
                    ["eval", str(root / "gan2"), "--ref", str(data), "--n", "64", "--metrics", "fid,kid,pr",
                     "--json", str(root / "eval1.json")]):
        app(command, standalone_mode=False)
    one = sorted(p.name for p in (root / "png1").glob("*.png"))
    two = sorted(p.name for p in (root / "png2").glob("*.png"))
    assert one == two and len(one) == 300 and one[0] == "seed000005.png" and one[-1] == "seed000304.png"
    for name in one[::17] + one[-3:]:  # rank 0 wrote seeds 5..260, rank 1 the rest
        assert (root / "png1" / name).read_bytes() == (root / "png2" / name).read_bytes(), name
    assert np.array_equal(np.asarray(Image.open(root / "grid1.png")), np.asarray(Image.open(root / "grid2.png")))
    r1, r2 = json.loads((root / "eval1.json").read_text()), json.loads((root / "eval2.json").read_text())
    for k in ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage"):
        assert r2[k] == pytest.approx(r1[k], rel=1e-9, abs=1e-12), k
    assert r1["fid"] > 0 and r1["protocol"]["n_fake"] == r2["protocol"]["n_fake"] == 64
    assert r2["protocol"]["features"]["processes"] == 2


# ----------------------------------------------------------------------------- failures and Ctrl-C


def test_a_crashing_rank_ends_the_job_with_a_clear_message(job: dict[str, Any]) -> None:
    out = job["output"]
    assert job["returncode"] != 0, out[-3000:]
    assert "rank 1 failed: RuntimeError: injected failure" in out, out[-3000:]
    assert "Traceback" in out  # a bug, not a user error: its traceback is kept
    assert not (job["root"] / "crashed" / "state.pt").exists()  # rank 0 did not go on alone
    # and nobody waited for the 30-minute collective timeout: torchrun() would have timed out


def test_ctrl_c_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    """SIGINT to torchrun reaches every rank; they agree on the step to stop at, rank 0 writes the
    checkpoint, and one process can continue from it."""
    data = write_id_npz(tmp_path / "ids.npz")
    run = tmp_path / "run"
    proc = subprocess.Popen([*TORCHRUN, "2", "-m", "latentforge", "train", "--data", str(data), "--res", "28",
                             "--steps", "100000", "--batch-size", "8", "--width", "8", "--z-dim", "8", "--log-every",
                             "1", "--out", str(run), "--quiet"], env=torchrun_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 150
    while time.time() < deadline and proc.poll() is None and len(read_jsonl(run / "metrics.jsonl")) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "interrupted: checkpoint written at step" in err, (out + err)[-3000:]
    step = load_state(run / "state.pt")["step"]
    assert 2 <= step < 100000
    assert max(r["step"] for r in read_jsonl(run / "metrics.jsonl")) == step
    run_trainings([{"config": cfg(data, run, steps=step + 1), "resume": True, "record": str(tmp_path / "rec")}])
    assert load_state(run / "state.pt")["step"] == step + 1


# ----------------------------------------------------------------------------- one process


def test_one_process_helpers_are_the_identity() -> None:
    assert not distributed.is_distributed() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.shard_range(10, align=4) == range(10)
    t = torch.arange(6).view(3, 2)
    assert distributed.gather_rows(t) is t and distributed.batch_slice(t) is t
    assert distributed.mean_over_ranks({"a": 1.5}) == {"a": 1.5}
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    torch.manual_seed(3)
    a = distributed.noise(4, 5, torch.device("cpu"))
    torch.manual_seed(3)
    assert torch.equal(a, torch.randn(4, 5))
    assert distributed.evaluate_on_main(lambda ext: ("ran", ext), lambda: 1 / 0) == ("ran", None)
    net = nn.Linear(3, 2)
    assert distributed.unwrap(net) is net and distributed.ddp(net, torch.device("cpu")) is net
    net(torch.ones(1, 3)).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    distributed.average_gradients(list(net.parameters()))
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, net.parameters()))


def test_grad_averaging_scaler_steps_like_the_scaler_it_wraps() -> None:
    """In one process GradAveragingScaler is its inner scaler (the 2-process behaviour is tested
    by the progan run of the torchrun job: identical replicas although each rank has its own data)."""
    torch.manual_seed(0)
    a = nn.Linear(3, 2)
    b = copy.deepcopy(a)
    inner = torch.amp.GradScaler("cpu", enabled=False)
    for net, scaler in ((a, inner), (b, distributed.GradAveragingScaler(inner))):
        opt = torch.optim.Adam(net.parameters(), lr=0.1)
        scaler.scale(net(torch.ones(4, 3)).pow(2).sum()).backward()
        scaler.step(opt)
        scaler.update()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    wrapped = distributed.GradAveragingScaler(inner)
    assert not wrapped.is_enabled() and wrapped.state_dict() == inner.state_dict()


def test_shards_cover_the_range_once_aligned_to_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    for world, n, align in [(2, 600, 256), (3, 10, 1), (4, 5, 2), (2, 20, 32), (3, 1000, 7)]:
        monkeypatch.setattr(distributed, "is_distributed", lambda: True)
        monkeypatch.setattr(distributed, "world_size", lambda w=world: w)
        shards = []
        for r in range(world):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            shards.append(distributed.shard_range(n, align))
        assert [i for s in shards for i in s] == list(range(n))  # in order, each index once
        assert all(s.start % align == 0 for s in shards if len(s))  # every batch starts where 1 process's does
    assert [len(s) for s in shards] == [329, 336, 335]  # 143 blocks of 7: 47, 48, 48 (the last one short)
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ConfigError, match="multiple of 3"):
        distributed.check_batch_size(8)
    distributed.check_batch_size(9)


def test_sync_batchnorm_is_batchnorm_in_one_process_and_keeps_the_weights() -> None:
    import copy

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4)))
    ref = copy.deepcopy(net)
    params = [id(p) for p in net.parameters()]
    keys = list(net.state_dict())
    distributed.convert_sync_batchnorm(net)
    assert isinstance(net[1], distributed.SyncBatchNorm) and isinstance(net[3][0], distributed.SyncBatchNorm)
    assert [id(p) for p in net.parameters()] == params and list(net.state_dict()) == keys
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(net(x), ref(x))  # training mode: batch statistics, running stats updated alike
    assert torch.equal(net[1].running_var, ref[1].running_var)
    net.eval(), ref.eval()
    assert torch.equal(net(x), ref(x))


def test_bf16_and_channels_last_train_and_keep_float32_weights(tmp_path: Path) -> None:
    """--precision bf16 (CPU autocast) and --channels-last: a few steps run, losses are close to
    fp32's, weights stay float32 (checkpoints do not depend on the option)."""
    from safetensors.torch import load_file

    from latentforge.train import train

    data = write_id_npz(tmp_path / "ids.npz")
    runs = {}
    for name, kw in {"fp32": {}, "bf16": {"precision": "bf16"}, "cl": {"channels_last": True}}.items():
        train(TrainConfig(**cfg(data, tmp_path / name, steps=2, **kw)), progress=False, log=lambda m: None)
        runs[name] = (losses(tmp_path / name), load_file(str(tmp_path / name / "model.safetensors")))
    (l32, w32), (l16, w16), (lcl, wcl) = runs["fp32"], runs["bf16"], runs["cl"]
    assert all(v.dtype == torch.float32 for v in w16.values() if v.is_floating_point())
    assert l16[0]["loss/D"] == pytest.approx(l32[0]["loss/D"], abs=0.05) and l16[0] != l32[0]
    for k in l32[1]:
        assert lcl[1][k] == pytest.approx(l32[1][k], abs=1e-4), k
    assert all(torch.allclose(wcl[k].float(), w32[k].float(), atol=1e-4) for k in w32)


def test_precision_auto_resolves_once_and_config_json_keeps_the_choice(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """--precision auto trains exactly as the precision it resolves to (bf16 where the device has native
    bfloat16, else fp32), writes that precision into config.json, and a resume keeps it."""
    from safetensors.torch import load_file

    from latentforge.config import read_run_config
    from latentforge.train import train

    data = write_id_npz(tmp_path / "ids.npz")
    quiet = {"progress": False, "log": lambda m: None}
    for name, precision in {"fp32": "fp32", "bf16": "bf16"}.items():
        train(TrainConfig(**cfg(data, tmp_path / name, steps=2, precision=precision)), **quiet)
    for native, same_as in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(acceleration, "native_bf16", lambda device, native=native: native)
        out, logged = tmp_path / f"auto-{same_as}", []
        train(TrainConfig(**cfg(data, out, steps=2, precision="auto")), progress=False, log=logged.append)
        assert read_run_config(out)[0].precision == same_as
        assert any(m.startswith(f"precision auto -> {same_as}: ") for m in logged), logged
        w, ref = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / same_as / "model.safetensors"))
        assert set(w) == set(ref) and all(torch.equal(w[k], ref[k]) for k in w), same_as
        assert losses(out) == losses(tmp_path / same_as)
    monkeypatch.setattr(acceleration, "native_bf16", lambda device: False)  # resumed on a machine without bf16
    train(TrainConfig(**cfg(data, tmp_path / "auto-bf16", steps=3, precision="auto")), resume=True, **quiet)
    assert read_run_config(tmp_path / "auto-bf16")[0].precision == "bf16"  # the run's own choice, not re-resolved


def test_precision_auto_choices() -> None:
    cpu = torch.device("cpu")
    assert acceleration.resolve_precision(TrainConfig(precision="fp32"), cpu) == ("fp32", "as asked")
    for native in (True, False):  # every model, vae_gan included, takes what the device computes natively
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(acceleration, "native_bf16", lambda device: native)
            for model in ("dcgan", "vae", "vae_gan", "progan"):
                got = acceleration.resolve_precision(TrainConfig(model=model, precision="auto"), cpu)[0]
                assert got == ("bf16" if native else "fp32"), (model, native)
    with pytest.raises(ConfigError, match="model vae_gan does not support precision fp16"):  # auto never picks it
        TrainConfig(model="vae_gan", precision="fp16")
    assert not acceleration.native_bf16(torch.device("meta"))
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else None
    if flags is not None:  # torch's CPUID probes agree with the kernel's view of this CPU
        assert acceleration.native_bf16(cpu) == bool({"amx_tile", "avx512_bf16"} & set(flags))
    with pytest.raises(ValueError, match="resolved first"):
        acceleration.autocast_view(nn.Conv2d(1, 1, 1), "auto", channels_last=False, device=cpu)


def test_autocast_view_and_refusals() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    view = acceleration.autocast_view(net, "bf16", channels_last=False, device=torch.device("cpu"))
    out = view(torch.randn(2, 1, 5, 5))
    assert out.dtype == torch.float32 and list(view.parameters()) == list(net.parameters())
    assert acceleration.autocast_view(net, "fp32", channels_last=False, device=torch.device("cpu")) is net
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        acceleration.check(TrainConfig(precision="fp16"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="bf16"):
        TrainConfig(precision="fp16", gp_weight=10.0)
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainConfig(precision="fp8")
    assert not acceleration.grad_scaler("bf16", torch.device("cpu")).is_enabled()
