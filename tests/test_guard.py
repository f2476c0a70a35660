"""The divergence guard: the diversity measure on hand-checkable cases, an injected NaN rolled
back (the run completes with a lower lr), repeated NaNs ending in a clear error with the last
good state checkpointed, a collapsed generator detected, exact resume across a recovery, and
healthy runs bit-identical with the guard on or off."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import latentforge.train as train_module
from latentforge.checkpoint import load_state, read_jsonl
from latentforge.config import ConfigError, TrainConfig
from latentforge.guard import TrainingDiverged, diversity, is_collapsed
from latentforge.train import train


def tiny_cfg(data: Path, out: Path, model: str = "dcgan", **kw) -> TrainConfig:
    base = dict(model=model, data=str(data), out=str(out), resolution=28, steps=8, batch_size=8, width=8, z_dim=8,
                log_every=2, sample_every=4, checkpoint_every=4, seed=0, guard_every=2)
    base.update(kw)
    return TrainConfig(**base)


def weights_of(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def quiet_train(cfg: TrainConfig, **kw) -> object:
    return train(cfg, progress=False, log=lambda m: None, **kw)


ORIGINAL_STEPS = {"gan_step": train_module.gan_step, "vae_step": train_module.vae_step}


class Injector:
    """Wraps the loop's step function: on the given call numbers (1-based, counting replays after
    a rollback) it either reports a NaN loss and poisons a weight of G, as a real blow-up does,
    or zeroes every weight of G (a generator whose images are all the same)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, nan_at: set[int] = frozenset(),
                 zero_at: set[int] = frozenset(), nan_from: int | None = None):
        self.calls, self.nan_at, self.zero_at, self.nan_from = 0, set(nan_at), set(zero_at), nan_from
        self.orig = ORIGINAL_STEPS
        monkeypatch.setattr(train_module, "gan_step", self.wrap("gan_step"))
        monkeypatch.setattr(train_module, "vae_step", self.wrap("vae_step"))

    def wrap(self, name: str):
        def step(net, *args, **kw):
            self.calls += 1
            out = self.orig[name](net, *args, **kw)
            if self.calls in self.nan_at or (self.nan_from is not None and self.calls >= self.nan_from):
                with torch.no_grad():
                    next(net.parameters()).fill_(math.nan)
                out[next(iter(out))] = math.nan
            if self.calls in self.zero_at:
                with torch.no_grad():
                    for p in net.parameters():
                        p.zero_()
            return out

        return step


def guard_rows(run: Path) -> list[dict]:
    return [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "guard"]


# ------------------------------------------------------------------------------------ the measure


def test_diversity_of_constant_images_is_the_mean_gap() -> None:
    # image i is the constant c_i: ||x_i - x_j|| / sqrt(D) = |c_i - c_j|; pairs (0,1) (0,-1) (1,-1) -> 1, 1, 2
    x = torch.tensor([0.0, 1.0, -1.0]).view(3, 1, 1, 1).expand(3, 2, 4, 4)
    assert diversity(x) == pytest.approx(4 / 3)
    assert diversity(torch.full((5, 1, 3, 3), 0.3)) == 0.0  # all images identical
    noise = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert diversity(noise) == pytest.approx(diversity(noise + 0.7))  # shifts do not matter
    assert diversity(2 * noise) == pytest.approx(2 * diversity(noise))  # scales linearly
    with pytest.raises(ValueError, match="K >= 2"):
        diversity(noise[:1])


def test_collapse_rule() -> None:
    assert is_collapsed(0.01, best=0.5, real=0.8, fraction=0.25)  # far below both
    assert not is_collapsed(0.2, best=0.5, real=0.8, fraction=0.25)  # 0.2 >= 0.25 * 0.5
    assert not is_collapsed(0.002, best=0.003, real=0.8, fraction=0.25)  # untrained G: never diverse yet
    assert not is_collapsed(0.3, best=0.5, real=0.8, fraction=0.0)  # 0 = off


def test_guard_config_is_validated() -> None:
    for bad in (dict(guard_every=0), dict(guard_max_retries=-1), dict(guard_lr_factor=1.0),
                dict(guard_lr_factor=0.0), dict(guard_min_diversity=1.0)):
        with pytest.raises(ConfigError, match="guard_"):
            TrainConfig(**bad)


# ------------------------------------------------------------------------------------ recovery


def test_injected_nan_is_rolled_back_and_the_run_completes_with_a_lower_lr(tiny_npz, tmp_path, monkeypatch) -> None:
    run = tmp_path / "nan"
    Injector(monkeypatch, nan_at={5})  # step 5 blows up; the last check passed at step 4
    res = quiet_train(tiny_cfg(tiny_npz, run))
    assert res.step == 8
    (row,) = guard_rows(run)
    assert row["event"] == "non-finite" and row["detail"] == "loss/D became nan"
    assert (row["step"], row["detected_step"], row["rolled_back_to"]) == (4, 5, 4)
    assert row["lr/G"] == row["lr/D"] == pytest.approx(1e-4) and row["lr_scale"] == 0.5 and not row["gave_up"]
    train_rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8]
    assert all(math.isfinite(v) for r in train_rows for k, v in r.items() if k.startswith("loss/"))
    assert all(torch.isfinite(t).all() for t in weights_of(run).values())
    st = load_state(run / "state.pt")
    assert st["optim"]["G"]["param_groups"][0]["lr"] == pytest.approx(1e-4)  # the lowered lr is what Adam uses
    assert st["optim"]["D"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert (st["guard"]["lr_scale"], st["guard"]["retries"], st["guard"]["recoveries"]) == (0.5, 0, 1)


def test_vae_nan_is_rolled_back_too(tiny_npz, tmp_path, monkeypatch) -> None:
    run = tmp_path / "vae"
    Injector(monkeypatch, nan_at={3})
    quiet_train(tiny_cfg(tiny_npz, run, model="vae", steps=4))
    (row,) = guard_rows(run)
    assert (row["detected_step"], row["rolled_back_to"], row["lr/vae"]) == (3, 2, pytest.approx(5e-4))
    assert load_state(run / "state.pt")["optim"]["vae"]["param_groups"][0]["lr"] == pytest.approx(5e-4)


def test_repeated_nans_stop_with_a_clear_error_and_the_last_good_state(tiny_npz, tmp_path, monkeypatch) -> None:
    good = tmp_path / "good"
    quiet_train(tiny_cfg(tiny_npz, good, steps=4))  # the same run, healthy, stopped at step 4
    run = tmp_path / "bad"
    Injector(monkeypatch, nan_from=5)  # every step from the 5th call on blows up
    with pytest.raises(TrainingDiverged, match=r"loss/D became nan at step 5, and 2 recoveries .* \(step 4\)"):
        quiet_train(tiny_cfg(tiny_npz, run, guard_max_retries=2))
    rows = guard_rows(run)
    assert [r["attempt"] for r in rows] == [1, 2, 3] and [r["gave_up"] for r in rows] == [False, False, True]
    assert [r["lr_scale"] for r in rows] == [0.5, 0.25, 0.125]
    # the checkpoint left behind is the last good state, bit for bit, with the lowered lr
    a, b = weights_of(good), weights_of(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    st = load_state(run / "state.pt")
    assert st["step"] == 4 and st["guard"]["retries"] == 0  # --resume gets a fresh retry budget
    assert st["optim"]["G"]["param_groups"][0]["lr"] == pytest.approx(2e-4 * 0.125)


def test_a_collapsed_generator_is_detected_and_rolled_back(tiny_npz, tmp_path, monkeypatch) -> None:
    run = tmp_path / "collapse"
    inj = Injector(monkeypatch, zero_at={4})  # G's weights zeroed after step 4: every image the same
    res = quiet_train(tiny_cfg(tiny_npz, run, steps=6))
    assert res.step == 6
    (row,) = guard_rows(run)
    assert row["event"] == "collapse" and "collapsed" in row["detail"]
    assert (row["detected_step"], row["rolled_back_to"]) == (4, 2)  # found at the check after the damage
    assert row["diversity"] == 0.0 and row["best_diversity"] > 0 and row["real_diversity"] > 0.3
    assert inj.calls == 6 + 2  # steps 3 and 4 ran twice
    assert any(t.abs().sum() > 0 for k, t in weights_of(run).items() if k.startswith("G."))


def test_without_the_guard_a_nan_still_stops_the_run(tiny_npz, tmp_path, monkeypatch) -> None:
    Injector(monkeypatch, nan_at={3})
    with pytest.raises(FloatingPointError, match="loss/D became nan at step 3"):
        quiet_train(tiny_cfg(tiny_npz, tmp_path / "off", guard=False))


# ------------------------------------------------------------------------------------ resume, identity


def test_resume_after_a_recovery_is_exact_and_keeps_the_lower_lr(tiny_npz, tmp_path, monkeypatch) -> None:
    straight = tmp_path / "straight"
    Injector(monkeypatch, nan_at={5})
    quiet_train(tiny_cfg(tiny_npz, straight))
    split = tmp_path / "split"
    Injector(monkeypatch, nan_at={5})  # a fresh count: the same failure at the same step
    quiet_train(tiny_cfg(tiny_npz, split, steps=6))
    quiet_train(tiny_cfg(tiny_npz, split, steps=8), resume=True)  # calls 8, 9: no more failures
    a, b = weights_of(straight), weights_of(split)
    assert all(torch.equal(a[k], b[k]) for k in a), "resume after a recovery is not exact"
    st = load_state(split / "state.pt")
    assert st["guard"]["lr_scale"] == 0.5 and st["optim"]["D"]["param_groups"][0]["lr"] == pytest.approx(1e-4)


@pytest.mark.parametrize("model,extra", [("dcgan", dict(ema_decay=0.9, spectral_norm=True, loss="hinge")),
                                         ("vae", {})])
def test_healthy_runs_are_bit_identical_with_the_guard_on_or_off(tiny_npz, tmp_path, model, extra) -> None:
    on = tmp_path / "on"
    quiet_train(tiny_cfg(tiny_npz, on, model, steps=6, guard_every=1, **extra))  # a check after every step
    off = tmp_path / "off"
    quiet_train(tiny_cfg(tiny_npz, off, model, steps=6, guard=False, **extra))
    a, b = weights_of(on), weights_of(off)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("time", "images_per_s")}  # noqa: E731
    assert [strip(r) for r in read_jsonl(on / "metrics.jsonl")] == [strip(r) for r in read_jsonl(off / "metrics.jsonl")]
    assert not guard_rows(on)
    assert load_state(on / "state.pt")["rng_cpu"].equal(load_state(off / "state.pt")["rng_cpu"])
