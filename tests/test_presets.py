"""Presets: their values are TrainConfig fields with a stated source, explicit flags beat them,
unknown names and unknown models are clear errors, and the name is kept in config.json."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from latentforge import config
from latentforge.cli import app
from latentforge.config import ConfigError, TrainConfig
from latentforge.presets import PRESETS, apply_preset, describe_presets, preset_config, preset_values

FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_set_known_fields_and_say_where_their_values_come_from(name: str) -> None:
    values = preset_values(name)
    assert set(values) <= FIELDS and "preset" not in values
    doc = inspect.getdoc(PRESETS[name]) or ""
    assert "et al." in doc  # cites where the values come from
    assert name in describe_presets() and f"loss = {values['loss']!r}" in describe_presets()


def test_fast_cpu_values_and_name_are_in_the_config() -> None:
    cfg = preset_config("fast-cpu", data="mnist", out="runs/x")
    assert (cfg.model, cfg.resolution, cfg.width, cfg.loss, cfg.spectral_norm) == ("dcgan", 28, 64, "ns", False)
    assert (cfg.lr, cfg.lr_d, cfg.beta1, cfg.beta2, cfg.ema_decay) == (2e-4, 2e-4, 0.5, 0.999, 0.999)
    assert (cfg.batch_size, cfg.max_minutes, cfg.preset, cfg.data) == (64, 30.0, "fast-cpu", "mnist")
    assert cfg.precision == "auto"  # bf16 where the CPU has native bfloat16 (acceleration.resolve_precision)
    assert preset_config("fast-cpu", width=16, lr=1e-4).width == 16  # keywords beat the preset


def test_explicit_flags_beat_the_preset_and_derived_values_follow() -> None:
    # what the CLI builds from its flags: the user gave --width 16 and --lr 1e-4, the rest are defaults
    cli_cfg = TrainConfig(width=16, lr=1e-4, out="runs/p")
    cfg = apply_preset(cli_cfg, "fast-cpu", explicit={"width", "lr", "out"})
    assert cfg.width == 16 and cfg.lr == 1e-4  # given: kept
    assert cfg.lr_d == 1e-4  # not given, not in the preset: follows --lr, as without a preset
    assert cfg.resolution == 28 and cfg.ema_decay == 0.999 and cfg.max_minutes == 30.0  # not given: the preset's
    assert cfg.out == "runs/p" and cfg.preset == "fast-cpu"
    assert apply_preset(TrainConfig(), "fast-cpu").width == 64 and TrainConfig().preset == "none"
    # a flag given with the default's own value still wins over the preset
    cfg = apply_preset(TrainConfig(resolution=32), "fast-cpu", explicit={"resolution"})
    assert cfg.resolution == 32


def test_values_derived_from_a_preset_value_are_derived_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import latentforge.presets as presets

    monkeypatch.setitem(presets.PRESETS, "slow", lambda: {"lr": 5e-5})
    cli_cfg = TrainConfig()  # no flags given: lr and lr_d both derived as 2e-4
    cfg = apply_preset(cli_cfg, "slow", explicit=set())
    assert cfg.lr == cfg.lr_d == 5e-5  # lr_d follows the preset's lr, not the 2e-4 derived before it
    assert apply_preset(TrainConfig(lr_d=3e-4), "slow", explicit={"lr_d"}).lr_d == 3e-4


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'turbo'; choose one of: none, fast-cpu, quality"):
        preset_values("turbo")


def test_a_preset_for_a_model_this_version_lacks_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "MODEL_NAMES", ("vae", "dcgan"))
    with pytest.raises(ConfigError, match="preset 'quality' trains model 'resnet_gan', which this version"):
        preset_config("quality")
    cfg = preset_config("quality", model="dcgan")  # --model overrides it
    assert (cfg.n_critic, cfg.ema_decay, cfg.resolution, cfg.preset) == (2, 0.9999, 32, "quality")


def test_cli_preset_with_overrides_trains_and_records_the_preset(tiny_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--preset", "fast-cpu", "--data", str(tiny_npz), "--width", "8",
                                 "--z-dim", "8", "--batch-size", "8", "--steps", "2", "--res", "28",
                                 "--guard-every", "1", "--guard-lr-factor", "0.25", "--out", str(run), "--quiet"])
    assert r.exit_code == 0, r.output
    saved = json.loads((run / "config.json").read_text())
    assert saved["preset"] == "fast-cpu"
    assert (saved["width"], saved["batch_size"], saved["steps"]) == (8, 8, 2)  # the flags given
    assert (saved["guard"], saved["guard_every"], saved["guard_lr_factor"]) == (True, 1, 0.25)
    assert (saved["loss"], saved["spectral_norm"], saved["ema_decay"], saved["max_minutes"]) == ("ns", False, 0.999, 30.0)
    assert (saved["beta1"], saved["beta2"]) == (0.5, 0.999)  # the preset's
    run2 = tmp_path / "run2"  # --beta1/--beta2 given: they beat the preset's
    r = CliRunner().invoke(app, ["train", "--preset", "fast-cpu", "--data", str(tiny_npz), "--width", "8", "--z-dim", "8",
                                 "--batch-size", "8", "--steps", "1", "--beta1", "0", "--beta2", "0.9", "--out", str(run2),
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    saved2 = json.loads((run2 / "config.json").read_text())
    assert (saved2["beta1"], saved2["beta2"], saved2["ema_decay"]) == (0.0, 0.9, 0.999)
    # a resume may not switch presets
    r = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--preset", "quality"])
    assert r.exit_code != 0 and "cannot change to quality" in str(r.exception)


def test_cli_lists_presets_and_rejects_unknown_ones(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["presets"])
    assert r.exit_code == 0 and "fast-cpu" in r.output and "quality" in r.output and "Miyato" in r.output
    r = CliRunner().invoke(app, ["train", "--preset", "list"])
    assert r.exit_code == 0 and "fast-cpu" in r.output
    r = subprocess.run([sys.executable, "-m", "latentforge", "train", "--preset", "turbo", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown preset 'turbo'" in r.stderr and "Traceback" not in r.stderr
