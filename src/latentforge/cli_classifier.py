"""CLI for the class-accuracy classifier: `register(app)` adds `latentforge classifier info|build`.

    latentforge classifier build --data fashion-mnist --res 28   train it now (once; then cached)
    latentforge classifier info --data fashion-mnist --res 28    what is cached: accuracy, classes, path

Argument handling only: each command calls latentforge.metrics.classifier and reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

DATA_HELP = ("Labelled data: a built-in name (fashion-mnist, mnist; any split: it trains on :train and is "
             "scored on :test), a folder with one subfolder per class, or an .npz with labels.")
RES_HELP = "Resolution in pixels of the images it will judge (the data is resized as for training at this size)."
CHANNELS_HELP = "1 or 3 channels; default: the data's own (built-ins: 1)."
CACHE_HELP = "Cache root; default $LATENTFORGE_CACHE or ~/.cache/latentforge."


def _fail(msg: str) -> Exception:
    from .cli import UserError  # imported late: cli.py imports this module to register the commands

    return UserError(msg)


def _summary(info: dict[str, Any], path: Path | None, built: bool) -> dict[str, Any]:
    keys = ("data", "res", "channels", "class_names", "held_out_accuracy", "held_out_per_class", "n_train",
            "n_test", "train_split", "test_split", "epochs", "seconds", "parameters", "classifier_version")
    out = {k: info[k] for k in keys if k in info}
    out["path"] = str(path) if path is not None else None
    out["built_now"] = built
    return out


classifier_app = typer.Typer(no_args_is_help=True, help="The classifier behind class accuracy (conditional generators): build it, inspect it.")


@classifier_app.command("build")
def build_cmd(
    data: str = typer.Option("fashion-mnist", help=DATA_HELP),
    res: int = typer.Option(28, "--res", help=RES_HELP),
    channels: Optional[int] = typer.Option(None, help=CHANNELS_HELP),
    cache_dir: Optional[Path] = typer.Option(None, help=CACHE_HELP),
    device: str = typer.Option("auto", help="Where to train: auto (CUDA if available, else CPU), cpu, cuda, cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar and no per-epoch lines; only the JSON summary."),
) -> None:
    """Train the classifier for DATA at RES px and cache it (does nothing when it is cached already).

    Example: latentforge classifier build --data fashion-mnist --res 28
    """
    from .cli import console
    from .metrics import classifier as C

    try:
        clf = C.get_classifier(data, res, channels, cache_dir=cache_dir, progress=not quiet,
                               log=None if quiet else (lambda m: console.print(m, highlight=False)),
                               settings=C.DEFAULT_SETTINGS, device=device)
    except C.ClassifierError as e:
        raise _fail(str(e)) from None
    typer.echo(json.dumps(_summary(clf.info, clf.path, clf.built), indent=2))


@classifier_app.command("info")
def info_cmd(
    data: str = typer.Option("fashion-mnist", help=DATA_HELP),
    res: int = typer.Option(28, "--res", help=RES_HELP),
    channels: Optional[int] = typer.Option(None, help=CHANNELS_HELP),
    cache_dir: Optional[Path] = typer.Option(None, help=CACHE_HELP),
) -> None:
    """Show the cached classifier for DATA at RES px: held-out accuracy, classes, where it lives.

    Example: latentforge classifier info --data fashion-mnist --res 28
    """
    from .metrics import classifier as C

    try:
        path = C.classifier_dir(data, res, channels, cache_dir=cache_dir, settings=C.DEFAULT_SETTINGS)
        clf = C.find_classifier(data, res, channels, cache_dir=cache_dir, settings=C.DEFAULT_SETTINGS)
    except C.ClassifierError as e:
        raise _fail(str(e)) from None
    if clf is None:
        raise _fail(f"no classifier cached for {data} at {res} px (would be {path}); build it with: "
                    f"latentforge classifier build --data {data} --res {res}")
    typer.echo(json.dumps(_summary(clf.info, clf.path, False), indent=2))


def register(app: typer.Typer) -> None:
    """Add the `classifier` command group to `app`. Idempotent."""
    if not any(g.name == "classifier" for g in app.registered_groups):
        app.add_typer(classifier_app, name="classifier")
