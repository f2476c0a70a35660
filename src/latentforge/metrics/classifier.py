"""Class accuracy of a conditional generator: does a sample asked for class k look like class k?

    from latentforge.metrics.classifier import get_classifier, class_accuracy
    clf = get_classifier("fashion-mnist", res=28)        # trained once (a few minutes on CPU), then cached
    result = class_accuracy(fake_u8, requested_labels, clf)
    result["accuracy"], result["per_class"]["Sneaker"], result["classifier"]["held_out_accuracy"]

The judge is a small CNN trained on the real data (`ClassifierNet`). Its own held-out accuracy is
part of every result, because it bounds what the metric can say: a classifier that is right 93% of
the time on real test images cannot certify a generator beyond that, and its mistakes are not
uniform over classes (on Fashion-MNIST, Shirt vs T-shirt/top vs Pullover vs Coat).

Protocol (`CLASSIFIER_VERSION`; bump it when anything below changes, so old caches are not reused):
- Data: `load_images(data, res, channels)`, i.e. resized exactly as training data at that `res`.
  Built-in sets (any split given) train on `<name>:train` and are scored on `<name>:test`; folders
  and `.npz` files are split 90/10 per class with a seeded shuffle (`split_indices`).
- Input: uint8 -> x / 127.5 - 1; images above `max_side` (32) px are average-pooled by 2 until at
  most 32 px (a class is readable at 32 px, and it keeps 64/128 px as cheap as 32 px).
- Network (`ClassifierNet`): a stride-2 conv4x4 stem, two conv3x3 blocks with max-pooling, widths
  w, 2w, 4w (w = 32: about 100k parameters), batch norm and ReLU after every conv, then dropout
  and one linear layer.
- Training: Adam, a linear warm-up then a cosine decay of the learning rate to 0, cross-entropy;
  light augmentation: each image shifted by up to `shift` px (edge pixels replicated); a fixed
  number of epochs (raised on small data sets so that at least `min_steps` steps are taken);
  seeded, on the global RNG of a forked state (the caller's RNG is left as it was).

Cache: `<cache root>/classifiers/<key>/` with `model.safetensors` and `classifier.json` (class
names, held-out accuracy overall and per class, n_train, n_test, epochs, seconds, settings). The
key hashes the data's identity (a built-in's name; for folders and `.npz` a SHA-256 of the loaded
images, labels and class names, so an edited folder gets a new classifier), res, channels, the
version and the settings. A build is written to a temporary folder and renamed into place, so an
interrupted build never leaves an entry behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CLASSIFIER_VERSION", "Classifier", "ClassifierError", "ClassifierNet", "ClassifierSettings",
           "DEFAULT_SETTINGS", "class_accuracy", "classifier_dir", "find_classifier", "get_classifier",
           "load_classifier", "split_indices", "train_classifier"]

CLASSIFIER_VERSION = 1
CACHE_SUBDIR = "classifiers"
WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "classifier.json"  # written last: its presence marks a complete entry
MIN_RES = 8  # below this, three 2x downsamplings leave nothing to classify
_PREDICT_BATCH = 512  # images per forward pass at prediction time


class ClassifierError(ValueError):
    """A user-facing problem with the classifier's data or inputs: one line saying what to change."""


# ------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class ClassifierSettings:
    """How the classifier is built. Part of the cache key: any change trains a new one."""

    width: int = 32  # channels of the first conv block; the others have 2x and 4x
    dropout: float = 0.1  # before the linear layer
    max_side: int = 32  # images larger than this are average-pooled by 2 until they fit (px)
    epochs: int = 5  # passes over the training split
    min_steps: int = 300  # small data sets get more epochs so that at least this many steps run
    batch_size: int = 256  # images per step (capped at the training split's size)
    lr: float = 3e-3  # peak Adam learning rate
    warmup: float = 0.05  # fraction of the steps with a linear warm-up to `lr`; cosine decay to 0 after
    shift: int = 2  # augmentation: random translation of up to this many px (at the working size); 0 = off
    holdout: float = 0.1  # folders / .npz: fraction of each class held out for the accuracy check
    seed: int = 0  # weights, data order, augmentation and the held-out split

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ClassifierError(f"ClassifierSettings: {msg}")

        need(self.width >= 1, f"width must be at least 1, got {self.width}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.max_side >= MIN_RES, f"max_side must be at least {MIN_RES}, got {self.max_side}")
        need(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        need(self.min_steps >= 0, f"min_steps must be >= 0, got {self.min_steps}")
        need(self.batch_size >= 2, f"batch_size must be at least 2 (batch norm), got {self.batch_size}")
        need(self.lr > 0, f"lr must be positive, got {self.lr}")
        need(0.0 <= self.warmup < 1.0, f"warmup must be in [0, 1), got {self.warmup}")
        need(self.shift >= 0, f"shift must be >= 0, got {self.shift}")
        need(0.0 < self.holdout < 1.0, f"holdout must be in (0, 1), got {self.holdout}")


DEFAULT_SETTINGS = ClassifierSettings()


# ------------------------------------------------------------------------------------ the network


def working_side(res: int, max_side: int) -> int:
    """Side length the conv blocks see: res halved (floor, as avg_pool2d) until <= max_side."""
    side = res
    while side > max_side:
        side //= 2
    return side


class ClassifierNet(nn.Module):
    """Float (N, C, res, res) in [-1, 1] -> logits (N, num_classes).

    stem: conv4x4 stride 2 (C -> w), BN, ReLU                  side s -> s/2 (28 -> 14)
    block: conv3x3 (w -> 2w), BN, ReLU, maxpool 2               s/2 -> s/4   (14 -> 7)
    block: conv3x3 (2w -> 4w), BN, ReLU, maxpool 2              s/4 -> s/8   (7 -> 3)
    head: flatten, dropout, linear (4w * (s/8)^2 -> num_classes)
    The strided stem keeps every activation at half resolution or less: on CPU the memory-bound
    batch norm / ReLU / pooling passes over full-resolution maps cost more than the convolutions.
    """

    def __init__(self, channels: int, res: int, num_classes: int, width: int = 32, dropout: float = 0.1,
                 max_side: int = 32) -> None:
        super().__init__()
        self.channels, self.res, self.num_classes, self.max_side = channels, res, num_classes, max_side
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(channels, w, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        final = working_side(res, max_side) // 8  # three floor-halvings, e.g. 28 -> 14 -> 7 -> 3
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w * final * final, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while x.shape[-1] > self.max_side:  # (N, C, r, r) -> (N, C, r/2, r/2) until <= max_side
            x = F.avg_pool2d(x, 2)
        return self.head(self.features(x))  # (N, num_classes)


def _build_net(channels: int, res: int, num_classes: int, settings: ClassifierSettings) -> ClassifierNet:
    return ClassifierNet(channels, res, num_classes, settings.width, settings.dropout, settings.max_side)


# ------------------------------------------------------------------------------------ Classifier


class Classifier:
    """A trained classifier plus what a reader needs to judge its verdicts (`info`)."""

    def __init__(self, net: ClassifierNet, info: dict[str, Any], path: Path | None = None,
                 built: bool = False, device: str | torch.device = "cpu") -> None:
        self.net = net.eval()
        self.info = info
        self.path = path  # the cache folder it was loaded from or saved to
        self.built = built  # True when trained by this call, False when loaded from the cache
        self.device = torch.device(device)
        self.net.to(self.device, memory_format=torch.channels_last)

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.info["class_names"])

    @property
    def res(self) -> int:
        return int(self.info["res"])

    @property
    def channels(self) -> int:
        return int(self.info["channels"])

    @property
    def held_out_accuracy(self) -> float:
        return float(self.info["held_out_accuracy"])

    def protocol(self) -> dict[str, Any]:
        """What the classifier is: enough to know whether two class accuracies are comparable."""
        keys = ("data", "train_split", "test_split", "res", "channels", "classifier_version", "key",
                "held_out_accuracy", "n_train", "n_test")
        return {k: self.info[k] for k in keys if k in self.info}

    def check_images(self, images: torch.Tensor) -> None:
        """Raise ClassifierError unless `images` is uint8 (N, channels, res, res)."""
        want = f"uint8 (N, {self.channels}, {self.res}, {self.res})"
        if not isinstance(images, torch.Tensor):
            raise ClassifierError(f"images must be a torch tensor {want}, got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise ClassifierError(f"images must be {want}, got dtype {images.dtype}; convert [-1, 1] floats "
                                  f"with latentforge.images.to_uint8")
        if images.ndim != 4 or tuple(images.shape[1:]) != (self.channels, self.res, self.res):
            raise ClassifierError(f"images must be {want} for this classifier (trained on {self.info['data']} at "
                                  f"{self.res} px), got {tuple(images.shape)}; generate at {self.res} px with "
                                  f"{self.channels} channel(s), or get a classifier for your images' size")

    @torch.inference_mode()
    def logits(self, images: torch.Tensor, batch_size: int = _PREDICT_BATCH) -> torch.Tensor:
        """uint8 (N, C, res, res) -> float32 logits (N, num_classes) on the CPU."""
        self.check_images(images)
        self.net.eval()
        out = [self.net(_channels_last(_to_input(images[i:i + batch_size], self.device))).float().cpu()
               for i in range(0, images.shape[0], batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.num_classes)

    def predict(self, images: torch.Tensor, batch_size: int = _PREDICT_BATCH) -> torch.Tensor:
        """uint8 (N, C, res, res) -> int64 (N,) predicted class indices (argmax of the logits)."""
        return self.logits(images, batch_size).argmax(dim=1)

    def __repr__(self) -> str:
        return (f"Classifier({self.info['data']!r}, res={self.res}, channels={self.channels}, "
                f"classes={self.num_classes}, held_out_accuracy={self.held_out_accuracy:.4f})")


def _to_input(images_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [-1, 1] on `device` (as latentforge.images.to_float)."""
    return images_u8.to(device).float().div_(127.5).sub_(1.0)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """NHWC memory layout: oneDNN's CPU convolutions run 1.2-1.4x faster on it for this network."""
    return x.contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------ class accuracy


def class_accuracy(images: torch.Tensor, labels: torch.Tensor | np.ndarray | list[int],
                   classifier: Classifier, class_names: list[str] | None = None) -> dict[str, Any]:
    """How often `images[i]` is classified as its requested class `labels[i]`.

    accuracy = (1/N) sum_i [argmax_k f(x_i)_k == y_i], and the same within each requested class.
    class_names: the generator's classes, in label order; when given they must be the classifier's.
    Returns {"accuracy", "n", "chance" (1 / num_classes), "per_class" {name: accuracy or None when
    no image asked for it}, "per_class_n" {name: count}, "classifier_accuracy" (the classifier's own
    held-out accuracy on real images: the ceiling to read the number against), "classifier" (its
    protocol: data, splits, res, channels, version, held-out accuracy, n_train, n_test)}.
    """
    classifier.check_images(images)
    if class_names is not None and list(class_names) != classifier.class_names:
        raise ClassifierError(f"the images' classes ({', '.join(map(str, class_names))}) are not this classifier's "
                              f"({', '.join(classifier.class_names)}); use a classifier trained on the generator's data")
    y = (labels.detach().cpu() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels)))
    n = int(images.shape[0])
    if y.ndim != 1 or y.shape[0] != n:
        raise ClassifierError(f"labels must have shape ({n},) to match the {n} images, got {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ClassifierError(f"labels must be integer class indices, got {y.dtype}")
    if n == 0:
        raise ClassifierError("no images to score; pass at least one image")
    y = y.to(torch.int64)
    k = classifier.num_classes
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ClassifierError(f"labels must be in [0, {k - 1}] for this classifier's {k} classes "
                              f"({', '.join(classifier.class_names)}), got values in [{int(y.min())}, {int(y.max())}]")
    hit = (classifier.predict(images) == y).to(torch.float64)  # (N,)
    counts = torch.bincount(y, minlength=k)
    hits = torch.bincount(y, weights=hit, minlength=k)
    per_class = {name: (float(hits[i] / counts[i]) if counts[i] > 0 else None)
                 for i, name in enumerate(classifier.class_names)}
    return {
        "accuracy": float(hit.mean()),
        "n": n,
        "chance": 1.0 / k,
        "per_class": per_class,
        "per_class_n": {name: int(counts[i]) for i, name in enumerate(classifier.class_names)},
        "classifier_accuracy": classifier.held_out_accuracy,
        "classifier": classifier.protocol(),
    }


# ------------------------------------------------------------------------------------ data


def split_indices(labels: torch.Tensor, num_classes: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split -> (train indices, test indices), each sorted.

    Class c with n_c >= 2 images holds out max(1, round(holdout * n_c)) of them, chosen by
    numpy.random.default_rng(seed).permutation over that class's indices (classes in order);
    a class with one image keeps it for training.
    """
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    test: list[np.ndarray] = []
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        if len(idx) >= 2:
            k = max(1, round(holdout * len(idx)))
            test.append(idx[rng.permutation(len(idx))[:k]])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    mask = np.ones(len(y), bool)
    mask[test_idx] = False
    return torch.from_numpy(np.flatnonzero(mask)), torch.from_numpy(test_idx.astype(np.int64))


def _builtin_name(data: str) -> str | None:
    """'fashion-mnist', 'fashion-mnist:test', ... -> 'fashion-mnist'; None for folders and .npz."""
    from ..data import BUILTIN

    base = os.fspath(data).partition(":")[0].strip().lower()
    return base if base in BUILTIN else None


def _check_labelled(d: Any, spec: str) -> None:
    if d.labels is None or not d.class_names:
        raise ClassifierError(f"{spec} has no labels, and the class-accuracy classifier needs them: use a folder "
                              f"with one subfolder per class, or an .npz with a 'labels' array")
    if len(d.class_names) < 2:
        raise ClassifierError(f"{spec} has only one class ({d.class_names[0]!r}); class accuracy needs at least two")


@dataclass
class _Data:
    """Train and held-out images for one classifier, plus its identity for the cache key."""

    train_x: torch.Tensor  # uint8 (N, C, res, res)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    channels: int
    identity: str  # a built-in's name, or "sha256:<hex>" of a folder's / .npz's content
    display: str  # what the user asked for, as a readable name
    train_split: str
    test_split: str


def _load_data(data: str, res: int, channels: int | None, cache_dir: str | os.PathLike[str] | None,
               settings: ClassifierSettings, progress: bool) -> _Data:
    from ..data import load_images

    name = _builtin_name(data)
    if name is not None:
        tr = load_images(f"{name}:train", res=res, channels=channels, cache_dir=cache_dir, progress=progress)
        te = load_images(f"{name}:test", res=res, channels=channels, cache_dir=cache_dir, progress=progress)
        assert tr.labels is not None and te.labels is not None and tr.class_names is not None
        return _Data(tr.images, tr.labels, te.images, te.labels, list(tr.class_names), tr.channels, name, name,
                     f"{name}:train", f"{name}:test")
    d = load_images(data, res=res, channels=channels, cache_dir=cache_dir, progress=progress)
    _check_labelled(d, os.fspath(data))
    assert d.labels is not None and d.class_names is not None
    train_idx, test_idx = split_indices(d.labels, len(d.class_names), settings.holdout, settings.seed)
    if len(test_idx) == 0 or len(train_idx) < 2:
        raise ClassifierError(f"{data} has too few labelled images ({len(d)}) to train and check a classifier; "
                              f"give each class at least 2 images (better: dozens)")
    split = f"seeded {1 - settings.holdout:.0%}/{settings.holdout:.0%} per-class split (seed {settings.seed})"
    return _Data(d.images[train_idx], d.labels[train_idx], d.images[test_idx], d.labels[test_idx],
                 list(d.class_names), d.channels, _content_digest(d.images, d.labels, d.class_names),
                 d.name, f"{split}: train part", f"{split}: held-out part")


def _content_digest(images: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"shape": list(images.shape), "class_names": class_names}).encode())
    h.update(images.contiguous().numpy().tobytes())
    h.update(labels.contiguous().numpy().astype("<i8").tobytes())
    return "sha256:" + h.hexdigest()


# ------------------------------------------------------------------------------------ cache


def _key(identity: str, res: int, channels: int, settings: ClassifierSettings) -> str:
    fields = {"version": CLASSIFIER_VERSION, "data": identity, "res": int(res), "channels": int(channels),
              "settings": dataclasses.asdict(settings)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def classifier_dir(data: str, res: int, channels: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
                   settings: ClassifierSettings = DEFAULT_SETTINGS, progress: bool = False) -> Path:
    """The cache folder for this classifier, built or not. Built-ins need no data loading to know it;
    folders and .npz files are loaded (their content is part of the key)."""
    from ..data import cache_root

    _check_res(res)
    name = _builtin_name(data)
    if name is not None:
        identity, ch = name, channels or 1  # built-ins are grayscale: None means 1
    else:
        d = _load_data(data, res, channels, cache_dir, settings, progress)
        identity, ch = d.identity, d.channels
    return cache_root(cache_dir) / CACHE_SUBDIR / _key(identity, res, ch, settings)


def load_classifier(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Classifier:
    """Load a classifier folder written by `get_classifier` (model.safetensors + classifier.json)."""
    from safetensors.torch import load_file

    path = Path(path)
    info_path, weights_path = path / INFO_FILE, path / WEIGHTS_FILE
    if not (info_path.is_file() and weights_path.is_file()):
        raise FileNotFoundError(f"{path} is not a classifier folder (needs {INFO_FILE} and {WEIGHTS_FILE})")
    info = json.loads(info_path.read_text())
    settings = ClassifierSettings(**info["settings"])
    net = _build_net(int(info["channels"]), int(info["res"]), len(info["class_names"]), settings)
    net.load_state_dict(load_file(str(weights_path)), strict=True)
    return Classifier(net, info, path=path, built=False, device=device)


def find_classifier(data: str, res: int, channels: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
                    settings: ClassifierSettings = DEFAULT_SETTINGS, device: str | torch.device = "cpu") -> Classifier | None:
    """The cached classifier for these arguments, or None when it has not been built."""
    path = classifier_dir(data, res, channels, cache_dir, settings)
    return _load_if_complete(path, device)


def _load_if_complete(path: Path, device: str | torch.device) -> Classifier | None:
    if not (path / INFO_FILE).is_file():
        return None
    try:
        clf = load_classifier(path, device)
    except Exception as err:  # noqa: BLE001 - any damage (truncated file, bad JSON, wrong shapes): rebuild
        import warnings

        warnings.warn(f"ignoring the unreadable classifier cache {path} ({_one_line(err)}); it will be rebuilt",
                      RuntimeWarning, stacklevel=3)
        return None
    if clf.info.get("classifier_version") != CLASSIFIER_VERSION:
        return None
    return clf


def _check_res(res: int) -> None:
    if isinstance(res, bool) or not isinstance(res, int) or res < MIN_RES:
        raise ClassifierError(f"res must be an integer of at least {MIN_RES} px, got {res!r}")


# ------------------------------------------------------------------------------------ get / train


def get_classifier(data: str, res: int, channels: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
                   progress: bool = False, log: Callable[[str], None] | None = print,
                   settings: ClassifierSettings = DEFAULT_SETTINGS, device: str = "auto") -> Classifier:
    """The classifier for `data` at `res` px: loaded from the cache, else trained now and cached.

    data: a built-in name (any split: trains on :train, scored on :test), a labelled folder or .npz.
    channels: 1 or 3; None = the data's own (built-ins: 1).
    log: called with one line per epoch and a summary when training (None = silent).
    device: where to train and predict: "auto" (CUDA if available, else CPU), "cpu", "cuda", ...
    """
    from ..data import cache_root

    _check_res(res)
    dev = _device(device)
    say = log or (lambda msg: None)
    name = _builtin_name(data)
    loaded: _Data | None = None
    if name is not None:
        identity, ch = name, channels or 1
    else:
        loaded = _load_data(data, res, channels, cache_dir, settings, progress)
        identity, ch = loaded.identity, loaded.channels
    key = _key(identity, res, ch, settings)
    path = cache_root(cache_dir) / CACHE_SUBDIR / key
    cached = _load_if_complete(path, dev)
    if cached is not None:
        return cached
    if path.exists():  # damaged or from an older version: set it aside so that the new build can take its place
        _remove_dir(path)
    if loaded is None:
        loaded = _load_data(data, res, channels, cache_dir, settings, progress)
    say(f"training the class-accuracy classifier for {loaded.display} at {res} px (cached in {path})")
    net, info = train_classifier(loaded, res, settings, dev, progress, say)
    info.update({"key": key, "data": loaded.display, "identity": identity})
    _save_atomic(path, net, info)
    say(f"classifier: held-out accuracy {info['held_out_accuracy']:.2%} on {info['n_test']} images "
        f"({loaded.test_split}), {info['seconds']:.0f} s")
    return Classifier(net, info, path=path, built=True, device=dev)


def _device(name: str | torch.device) -> torch.device:
    """The device to train/run on, as `latentforge train --device` resolves it (auto: CUDA, MPS, CPU)."""
    from ..train import resolve_device

    return resolve_device(str(name))


def _save_atomic(path: Path, net: nn.Module, info: dict[str, Any]) -> None:
    """Write weights and JSON into a temporary sibling folder, then rename it to `path`."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / INFO_FILE).is_file():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_dir(path: Path) -> None:
    """Remove a folder by first renaming it away, so that no reader sees it half deleted."""
    trash = path.with_name(f"{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:  # removed meanwhile by another process
        return
    shutil.rmtree(trash, ignore_errors=True)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction of steps, then cosine decay to 0:
    lr(t) = peak * t / w for t < w, else peak * (1 + cos(pi * (t - w) / (T - w))) / 2 (Loshchilov & Hutter 2017)."""
    w = max(1, int(round(warmup * total))) if warmup > 0 else 0
    if step < w:
        return peak * (step + 1) / w
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - w) / max(1, total - w)))


def _shift_batch(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image of float (n, C, H, W) by its own (dy, dx) in [-shift, shift] px; the edge
    pixels are replicated into the uncovered border."""
    if shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")  # (n, C, H + 2s, W + 2s)
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=gen).tolist()  # top, left in the padded image
    return torch.stack([padded[i, :, t:t + h, l:l + w] for i, (t, l) in enumerate(offsets)])  # (n, C, H, W)


@torch.no_grad()
def _evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
              device: torch.device) -> tuple[float, list[float | None]]:
    """(accuracy, per-class accuracy) of `net` on uint8 images `x` with labels `y`."""
    net.eval()
    pred = torch.cat([net(_channels_last(_to_input(x[i:i + _PREDICT_BATCH], device))).argmax(1).cpu()
                      for i in range(0, x.shape[0], _PREDICT_BATCH)])
    hit = (pred == y).to(torch.float64)
    counts = torch.bincount(y, minlength=num_classes)
    hits = torch.bincount(y, weights=hit, minlength=num_classes)
    per = [float(hits[c] / counts[c]) if counts[c] > 0 else None for c in range(num_classes)]
    return float(hit.mean()), per


def train_classifier(d: _Data, res: int, settings: ClassifierSettings, device: torch.device,
                     progress: bool = False, log: Callable[[str], None] = print) -> tuple[ClassifierNet, dict[str, Any]]:
    """Train a ClassifierNet on d.train_x and score it on d.test_x -> (net in eval mode, info dict).

    The loop is plain: shuffle, shift-augment, cross-entropy, Adam with the `_lr_at` schedule.
    Seeded: the global RNG is forked, so the caller's random state does not change.
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    n_train, k = int(d.train_x.shape[0]), len(d.class_names)
    batch = min(settings.batch_size, n_train)
    steps_per_epoch = n_train // batch  # drop the last partial batch: batch norm dislikes tiny batches
    epochs = max(settings.epochs, math.ceil(settings.min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(settings.seed)
        net = _build_net(d.channels, res, k, settings).to(device, memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(settings.seed)  # data order and shifts, drawn on the CPU
        opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
        step = 0
        from ..data import _progress_bar

        with _progress_bar("training classifier", total, progress) as advance:
            for epoch in range(epochs):
                net.train()
                perm = torch.randperm(n_train, generator=gen)
                loss_sum, seen, te = 0.0, 0, time.perf_counter()
                for i in range(steps_per_epoch):
                    idx = perm[i * batch:(i + 1) * batch]
                    x = _channels_last(_shift_batch(_to_input(d.train_x[idx], device), settings.shift, gen))  # (B, C, res, res)
                    y = d.train_y[idx].to(device)
                    for group in opt.param_groups:
                        group["lr"] = _lr_at(step, total, settings.lr, settings.warmup)
                    loss = F.cross_entropy(net(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    loss_sum += float(loss.detach()) * len(idx)
                    seen += len(idx)
                    advance(1)
                if epochs <= 20 or epoch + 1 == epochs or (epoch + 1) % max(1, epochs // 10) == 0:
                    log(f"classifier epoch {epoch + 1}/{epochs}: loss {loss_sum / max(1, seen):.4f}, "
                        f"{seen / max(1e-9, time.perf_counter() - te):.0f} images/s")
    acc, per = _evaluate(net, d.test_x, d.test_y, k, device)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    info: dict[str, Any] = {
        "classifier_version": CLASSIFIER_VERSION,
        "class_names": list(d.class_names),
        "res": int(res),
        "channels": int(d.channels),
        "held_out_accuracy": acc,
        "held_out_per_class": dict(zip(d.class_names, per)),
        "n_train": n_train,
        "n_test": int(d.test_x.shape[0]),
        "train_split": d.train_split,
        "test_split": d.test_split,
        "epochs": epochs,
        "steps": total,
        "seconds": seconds,  # wall time of training + scoring
        "cpu_seconds": cpu_seconds,  # CPU time of this process over the same span (all threads)
        "threads": torch.get_num_threads(),
        "device": str(device),
        "parameters": sum(p.numel() for p in net.parameters()),
        "settings": dataclasses.asdict(settings),
        "torch": torch.__version__,
    }
    return net.eval(), info
