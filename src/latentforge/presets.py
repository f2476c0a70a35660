"""Presets: named sets of TrainConfig values for a common goal, each saying where its values come from.

A preset fills in the fields the user did not set: a flag given on the command line (or a keyword
given to `preset_config`) always wins over the preset. The preset's name is kept in config.json
(`"preset"`), as a record; a resumed run uses its own config.json, never the preset again.

    latentforge presets                                   # what each preset sets, and why
    latentforge train --preset fast-cpu --out runs/fm     # the preset as it is
    latentforge train --preset fast-cpu --width 32 ...    # the preset, but width 32

One function per preset returns its values; its docstring is what `latentforge presets` prints.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .config import ConfigError, TrainConfig


def fast_cpu() -> dict[str, Any]:
    """Aim: the best GAN on a small grayscale data set (Fashion-MNIST size) in half an hour on a CPU.

    The DCGAN recipe (Radford et al. 2016): width 64, non-saturating loss, batch norm in G and D,
    Adam with lr 2e-4 and betas (0.5, 0.999), batch 64, at 28 px (nothing resized), with samples
    from an EMA of G's weights, decay 0.999 (Yazici et al. 2019). Chosen by measurement
    (benchmarks/budget_search): at the ~10,000 steps 2 AMD EPYC cores did in 30 minutes, this scored
    FID 23.4 against 26.6 without the EMA, 28.4 for the SN-GAN recipe (hinge loss, spectral norm
    in D, betas (0, 0.9)) and 47 for it with TTUR. The time budget decides when to stop (30 min of
    training); steps is only an upper bound, so speed is quality here: --precision auto trains in
    bfloat16 on CPUs that compute it natively (AMX / AVX-512 BF16: ~1.4x the steps), else in fp32.
    With --conditional, add --aux-class-weight 1 (the AC-GAN class loss; Odena et al. 2017): class
    accuracy 82.7% -> 95.3% at the same FID and step count. On a 2-core Xeon with AMX, 30 minutes
    (52,136 steps in bf16) scored FID 10.8 (10k samples vs the Fashion-MNIST test set) and 96.3%
    class accuracy (benchmarks/quality.md).
    """
    return dict(model="dcgan", resolution=28, width=64, loss="ns", spectral_norm=False, ema_decay=0.999,
                lr=2e-4, beta1=0.5, beta2=0.999, n_critic=1, batch_size=64, steps=1_000_000, max_minutes=30.0,
                precision="auto")


def quality() -> dict[str, Any]:
    """Aim: sample quality over speed (a GPU is advised): a ResNet GAN at 32 px.

    The ResNet generator and discriminator of SN-GAN (Miyato et al. 2018), trained with their
    CIFAR-10 recipe: hinge loss, spectral norm in D, Adam with lr 2e-4 and betas (0, 0.9), batch
    64. Two D steps per G step, as in BigGAN (Brock et al. 2019), where SN-GAN takes 5 (the
    alternative, one D step with a faster D, --lr-d 4e-4, is SAGAN's TTUR, Zhang et al. 2019).
    EMA of G with decay 0.9999 as in BigGAN. 100 000 G steps, the length of the SN-GAN baselines
    of Mimicry (Lee & Town 2020). Not yet measured here.
    """
    return dict(model="resnet_gan", resolution=32, loss="hinge", spectral_norm=True, ema_decay=0.9999,
                lr=2e-4, beta1=0.0, beta2=0.9, n_critic=2, batch_size=64, steps=100_000)


PRESETS: dict[str, Callable[[], dict[str, Any]]] = {"fast-cpu": fast_cpu, "quality": quality}
NO_PRESET = "none"


def preset_values(name: str) -> dict[str, Any]:
    """The TrainConfig values of preset `name`; an unknown name is a ConfigError listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join([NO_PRESET, *PRESETS])} "
                          "(`latentforge presets` lists what each sets)")
    return PRESETS[name]()


def preset_config(name: str, **fields: Any) -> TrainConfig:
    """TrainConfig from preset `name`, with `fields` (TrainConfig field values) overriding it.

    Example: preset_config("fast-cpu", data="mnist", out="runs/m", width=32)
    """
    values = {**preset_values(name), **fields, "preset": name}
    from . import config

    model = values.get("model", TrainConfig.model)
    if model not in config.MODEL_NAMES:  # read at call time: model families can be added
        raise ConfigError(f"preset {name!r} trains model {model!r}, which this version of latentforge does not have "
                          f"(it has: {', '.join(config.MODEL_NAMES)}); pick one with --model, or another preset")
    return TrainConfig(**values)


def apply_preset(cfg: TrainConfig, name: str, explicit: set[str] | frozenset[str] = frozenset()) -> TrainConfig:
    """`cfg` with preset `name` applied, for the CLI: every field named in `explicit` (the flags the
    user gave) keeps its value from `cfg`; every other field the preset sets takes the preset's
    value; a field whose default is None (lr, lr_d, beta1, z_dim, ...: derived from others) is
    derived again, so that --lr given alone still sets the discriminator's lr too."""
    preset = preset_values(name)
    kept = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in explicit or (f.name not in preset and f.default is not None):
            kept[f.name] = getattr(cfg, f.name)
    kept.pop("preset", None)
    return preset_config(name, **kept)


def describe_presets() -> str:
    """Every preset: its name, its docstring, and its values, as `latentforge presets` prints them."""
    import inspect

    blocks = []
    for name, fn in PRESETS.items():
        values = "\n".join(f"    {k} = {v!r}" for k, v in fn().items())
        blocks.append(f"{name}\n{_indent(inspect.getdoc(fn) or '')}\n  values:\n{values}")
    return "\n\n".join(blocks) + "\n\nExplicit flags override a preset's values, e.g. --preset fast-cpu --width 32."


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line else "" for line in text.splitlines())
