"""latentforge.metrics.classifier: the class-accuracy classifier, its cache, class_accuracy, the CLI.

Trained tests use the tiny two-class .npz (squares vs discs) and a narrow network (width 8) so
that a build takes about a second; the Fashion-MNIST numbers are measured, not tested here.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import typer
from typer.testing import CliRunner

from latentforge.data import load_images

C = importlib.import_module("latentforge.metrics.classifier")
from latentforge.metrics.classifier import (Classifier, ClassifierError, ClassifierNet, ClassifierSettings,
                                            class_accuracy, get_classifier, split_indices)

# A narrow, short build: ~1 s on a busy CPU. min_steps drives the step count on tiny data.
FAST = ClassifierSettings(width=8, epochs=2, min_steps=40, batch_size=32, lr=1e-2)


def quiet(msg: str) -> None:
    pass


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: with several threads the synchronisation costs more than the work,
    and on a busy machine a build takes minutes instead of a fraction of a second."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def npz(tmp_path: Path, make_tiny_npz) -> Path:
    return make_tiny_npz(tmp_path / "tiny200.npz", n=200)


@pytest.fixture(scope="module")
def built(tmp_path_factory, make_tiny_npz) -> tuple[Path, Path, Classifier, int]:
    """One build shared by the tests that only read it: (npz, cache root, classifier, RNG check)."""
    root = tmp_path_factory.mktemp("built")
    data = make_tiny_npz(root / "tiny200.npz", n=200)
    state = torch.random.get_rng_state()
    clf = get_classifier(str(data), 28, cache_dir=root / "cache", log=quiet, settings=FAST)
    rng_untouched = int(torch.equal(torch.random.get_rng_state(), state))
    return data, root / "cache", clf, rng_untouched


def entries(cache: Path) -> list[str]:
    d = cache / C.CACHE_SUBDIR
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# ------------------------------------------------------------------------------------ pure parts


@pytest.mark.parametrize("res,channels", [(28, 1), (32, 1), (32, 3), (64, 3), (128, 1), (8, 1)])
def test_net_shapes_at_every_resolution(res: int, channels: int) -> None:
    net = ClassifierNet(channels, res, num_classes=7, width=4).eval()
    assert net(torch.zeros(3, channels, res, res)).shape == (3, 7)
    assert C.working_side(res, 32) <= 32


def test_working_side_halves_until_at_most_max_side() -> None:
    assert [C.working_side(r, 32) for r in (28, 32, 33, 64, 100, 128)] == [28, 32, 16, 32, 25, 32]


def test_split_indices_is_per_class_seeded_and_a_partition() -> None:
    labels = torch.tensor([0] * 50 + [1] * 20 + [2] * 1 + [3] * 3)
    train, test = split_indices(labels, 5, holdout=0.1, seed=3)
    assert sorted(torch.cat([train, test]).tolist()) == list(range(74))  # disjoint and complete
    per_class = torch.bincount(labels[test], minlength=5).tolist()
    assert per_class == [5, 2, 0, 1, 0]  # round(10%), at least 1 when a class has >= 2 images
    again = split_indices(labels, 5, holdout=0.1, seed=3)
    assert torch.equal(again[1], test)
    assert not torch.equal(split_indices(labels, 5, holdout=0.1, seed=4)[1], test)


def test_lr_schedule_closed_form() -> None:
    peak, total = 2.0, 100  # warm-up 10 steps, then cosine over 90
    assert C._lr_at(0, total, peak, 0.1) == pytest.approx(0.2)
    assert C._lr_at(9, total, peak, 0.1) == pytest.approx(2.0)
    assert C._lr_at(10, total, peak, 0.1) == pytest.approx(2.0)
    assert C._lr_at(55, total, peak, 0.1) == pytest.approx(1.0)  # half-way through the cosine
    assert C._lr_at(99, total, peak, 0.1) == pytest.approx(peak * 0.5 * (1 + np.cos(np.pi * 89 / 90)))


def test_shift_batch_translates_each_image_within_the_limit() -> None:
    x = torch.zeros(64, 1, 12, 12)
    x[:, 0, 6, 6] = 1.0  # one bright pixel in the middle: after a shift it is somewhere within 2 px
    y = C._shift_batch(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(C._shift_batch(x, 0, torch.Generator()), x)
    pos = [divmod(int(img.flatten().argmax()), 12) for img in y]
    assert all(img.sum() == 1.0 for img in y)  # a translation, not a blur
    assert all(abs(r - 6) <= 2 and abs(c - 6) <= 2 for r, c in pos)
    assert len(set(pos)) > 10  # per image, not one shift per batch


def test_settings_are_validated() -> None:
    with pytest.raises(ClassifierError, match="epochs"):
        ClassifierSettings(epochs=0)
    with pytest.raises(ClassifierError, match="holdout"):
        ClassifierSettings(holdout=1.0)


# ------------------------------------------------------------------------------------ class_accuracy


class _Fixed(nn.Module):
    """Stand-in network: predicts the class stored in pixel (0, 0) of each image."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = ((x[:, 0, 0, 0] + 1) * 127.5).round().long()  # back to the uint8 value
        return torch.nn.functional.one_hot(cls, self.k).float()


def _fixed_classifier(k: int = 3) -> Classifier:
    info = {"class_names": ["a", "b", "c"][:k], "res": 8, "channels": 1, "held_out_accuracy": 0.9,
            "data": "stand-in", "classifier_version": C.CLASSIFIER_VERSION, "n_test": 10}
    return Classifier(_Fixed(k), info)  # type: ignore[arg-type]


def _images_predicting(preds: list[int]) -> torch.Tensor:
    x = torch.zeros(len(preds), 1, 8, 8, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.tensor(preds, dtype=torch.uint8)
    return x


def test_class_accuracy_counts_overall_and_per_class() -> None:
    clf = _fixed_classifier()
    images = _images_predicting([0, 0, 1, 2, 2, 2])
    r = class_accuracy(images, torch.tensor([0, 1, 1, 2, 2, 0]), clf)
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"] == {"a": 0.5, "b": 0.5, "c": 1.0}
    assert r["per_class_n"] == {"a": 2, "b": 2, "c": 2}
    assert r["chance"] == pytest.approx(1 / 3) and r["n"] == 6
    assert r["classifier"]["held_out_accuracy"] == 0.9 and r["classifier"]["data"] == "stand-in"
    assert r["classifier_accuracy"] == 0.9
    assert class_accuracy(images, [0, 1, 1, 2, 2, 0], clf, class_names=["a", "b", "c"])["accuracy"] == r["accuracy"]
    # a class nobody asked for has no accuracy (not 0, not 1); numpy labels are accepted
    r = class_accuracy(images[:2], np.array([0, 0]), clf)
    assert r["per_class"] == {"a": 1.0, "b": None, "c": None}
    assert clf.predict(images).tolist() == [0, 0, 1, 2, 2, 2]


def test_class_accuracy_rejects_bad_inputs() -> None:
    clf = _fixed_classifier()
    images = _images_predicting([0, 1, 2])
    with pytest.raises(ClassifierError, match=r"labels must have shape \(3,\)"):
        class_accuracy(images, torch.tensor([0, 1]), clf)
    with pytest.raises(ClassifierError, match=r"labels must be in \[0, 2\]"):
        class_accuracy(images, torch.tensor([0, 1, 3]), clf)
    with pytest.raises(ClassifierError, match=r"classes \(a, c, b\) are not this classifier's \(a, b, c\)"):
        class_accuracy(images, torch.tensor([0, 1, 2]), clf, class_names=["a", "c", "b"])
    with pytest.raises(ClassifierError, match="integer"):
        class_accuracy(images, torch.tensor([0.0, 1.0, 2.0]), clf)
    with pytest.raises(ClassifierError, match=r"uint8 \(N, 1, 8, 8\).*got \(3, 1, 16, 16\)"):
        class_accuracy(torch.zeros(3, 1, 16, 16, dtype=torch.uint8), torch.tensor([0, 1, 2]), clf)
    with pytest.raises(ClassifierError, match=r"got \(3, 3, 8, 8\)"):
        clf.predict(torch.zeros(3, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ClassifierError, match="to_uint8"):
        clf.predict(torch.zeros(3, 1, 8, 8))


# ------------------------------------------------------------------------------------ training + cache


def test_learns_the_tiny_set_and_records_how(built) -> None:
    npz, cache, clf, rng_untouched = built
    assert rng_untouched  # seeded on a forked RNG: the caller's random state is as it was
    assert clf.built and clf.held_out_accuracy > 0.95
    info = json.loads((clf.path / C.INFO_FILE).read_text())
    assert info["class_names"] == ["square", "disc"] and info["n_train"] + info["n_test"] == 200
    assert info["n_test"] == 20 and info["epochs"] == 8 and info["steps"] == 40  # min_steps: 40 / (180 // 32)
    assert info["seconds"] > 0 and info["held_out_accuracy"] == clf.held_out_accuracy
    assert info["held_out_per_class"]["square"] > 0.9 and info["held_out_per_class"]["disc"] > 0.9
    assert (clf.path / C.WEIGHTS_FILE).is_file() and entries(cache) == [clf.path.name]


def test_the_cache_is_reused(built, monkeypatch) -> None:
    npz, cache, clf, _ = built

    def no_training(*a, **k):
        raise AssertionError("trained again instead of using the cache")

    monkeypatch.setattr(C, "train_classifier", no_training)
    again = get_classifier(str(npz), 28, cache_dir=cache, log=quiet, settings=FAST)
    assert not again.built and again.path == clf.path
    d = load_images(npz, res=28)
    assert torch.equal(again.logits(d.images), clf.logits(d.images))  # the same weights
    assert C.find_classifier(str(npz), 28, cache_dir=cache, settings=FAST) is not None
    assert C.find_classifier(str(npz), 32, cache_dir=cache, settings=FAST) is None  # another res: another key
    other = dataclasses.replace(FAST, epochs=3)
    assert C.find_classifier(str(npz), 28, cache_dir=cache, settings=other) is None  # other settings: another key


def test_class_accuracy_of_real_and_of_shuffled_labels(built) -> None:
    npz, _, clf, _ = built
    d = load_images(npz, res=28)
    # On its own held-out images class_accuracy agrees with the recorded held-out accuracy ...
    _, test_idx = split_indices(d.labels, 2, FAST.holdout, FAST.seed)
    r = class_accuracy(d.images[test_idx], d.labels[test_idx], clf)
    assert r["accuracy"] == pytest.approx(clf.held_out_accuracy) and r["accuracy"] > 0.95
    assert min(r["per_class"].values()) > 0.9
    assert r["classifier"]["held_out_accuracy"] == clf.held_out_accuracy and r["classifier"]["n_test"] == 20
    # ... and with the labels shuffled it is near chance (1/2 for two balanced classes).
    shuffled = d.labels[torch.randperm(len(d.labels), generator=torch.Generator().manual_seed(1))]
    r_shuffled = class_accuracy(d.images, shuffled, clf)
    assert abs(r_shuffled["accuracy"] - 0.5) < 0.12 and r_shuffled["chance"] == 0.5


def test_same_settings_same_weights_and_the_key_follows_the_content(built, tmp_path: Path, make_tiny_npz) -> None:
    npz, _, a, _ = built
    b = get_classifier(str(npz), 28, cache_dir=tmp_path, log=quiet, settings=FAST)
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.path.name == b.path.name
    # Different content under the same file name: a new key (not a stale classifier).
    changed = make_tiny_npz(tmp_path / npz.name, n=180)
    assert C.classifier_dir(str(changed), 28, cache_dir=tmp_path, settings=FAST).name != a.path.name


@pytest.mark.parametrize("res,channels", [(64, 3)])  # 64 px: average-pooled to 32 first
def test_works_at_larger_resolutions(npz: Path, tmp_path: Path, res: int, channels) -> None:
    clf = get_classifier(str(npz), res, channels=channels, cache_dir=tmp_path, log=quiet, settings=FAST)
    assert clf.res == res and clf.channels == (channels or 1) and clf.held_out_accuracy > 0.95
    d = load_images(npz, res=res, channels=channels)
    assert clf.predict(d.images).shape == (200,)
    with pytest.raises(ClassifierError, match=f"got \\(200, 1, 28, 28\\)"):
        clf.predict(load_images(npz, res=28).images)


def test_interrupted_training_leaves_no_cache_entry(npz: Path, tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real = C._lr_at

    def interrupt_at_step_5(step, *a):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(step, *a)

    monkeypatch.setattr(C, "_lr_at", interrupt_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        get_classifier(str(npz), 28, cache_dir=tmp_path, log=quiet, settings=FAST)
    assert entries(tmp_path) == [] and calls["n"] == 5
    assert C.find_classifier(str(npz), 28, cache_dir=tmp_path, settings=FAST) is None


def test_interrupted_save_leaves_no_cache_entry(npz: Path, tmp_path: Path, monkeypatch) -> None:
    # Interrupted after both files are written, just before the rename that publishes them.
    def interrupted_rename(src, dst):
        assert (Path(src) / C.INFO_FILE).is_file() and (Path(src) / C.WEIGHTS_FILE).is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(C.os, "rename", interrupted_rename)
    with pytest.raises(KeyboardInterrupt):
        get_classifier(str(npz), 28, cache_dir=tmp_path, log=quiet, settings=FAST)
    assert entries(tmp_path) == []  # no entry and no temporary folder left behind
    assert C.find_classifier(str(npz), 28, cache_dir=tmp_path, settings=FAST) is None


def test_a_damaged_entry_is_rebuilt(built, tmp_path: Path) -> None:
    npz, cache, clf, _ = built
    shutil.copytree(cache, tmp_path / "cache")
    damaged = tmp_path / "cache" / C.CACHE_SUBDIR / clf.path.name
    (damaged / C.WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.warns(RuntimeWarning, match="unreadable classifier cache"):
        again = get_classifier(str(npz), 28, cache_dir=tmp_path / "cache", log=quiet, settings=FAST)
    assert again.built and again.path == damaged and again.held_out_accuracy == clf.held_out_accuracy
    assert C.load_classifier(damaged).held_out_accuracy == clf.held_out_accuracy  # replaced by a good entry
    assert entries(tmp_path / "cache") == [clf.path.name]  # the damaged copy is gone, not set aside forever


def test_data_errors(tmp_path: Path, make_tiny_npz) -> None:
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, images=np.zeros((20, 28, 28), np.uint8))
    with pytest.raises(ClassifierError, match="no labels"):
        get_classifier(str(unlabelled), 28, cache_dir=tmp_path, log=quiet, settings=FAST)
    one_class = tmp_path / "one.npz"
    np.savez(one_class, images=np.zeros((20, 28, 28), np.uint8), labels=np.zeros(20, np.int64))
    with pytest.raises(ClassifierError, match="only one class"):
        get_classifier(str(one_class), 28, cache_dir=tmp_path, log=quiet, settings=FAST)
    few = make_tiny_npz(tmp_path / "few.npz", n=2)
    with pytest.raises(ClassifierError, match="too few labelled images"):
        get_classifier(str(few), 28, cache_dir=tmp_path, log=quiet, settings=FAST)
    with pytest.raises(ClassifierError, match="res must be"):
        get_classifier("fashion-mnist", 4, cache_dir=tmp_path, log=quiet)
    assert entries(tmp_path) == []


def test_builtin_key_ignores_the_split_and_needs_no_loading(tmp_path: Path) -> None:
    paths = {C.classifier_dir(s, 28, cache_dir=tmp_path) for s in ("fashion-mnist", "fashion-mnist:test",
                                                                   "Fashion-MNIST:train")}
    assert len(paths) == 1
    assert C.classifier_dir("fashion-mnist", 28, channels=1, cache_dir=tmp_path) in paths  # None means 1
    assert C.classifier_dir("fashion-mnist", 28, channels=3, cache_dir=tmp_path) not in paths
    assert C.classifier_dir("fashion-mnist", 32, cache_dir=tmp_path) not in paths
    assert C.classifier_dir("mnist", 28, cache_dir=tmp_path) not in paths


# ------------------------------------------------------------------------------------ CLI


@pytest.fixture()
def cli(monkeypatch):
    from latentforge.cli_classifier import register

    monkeypatch.setattr(C, "DEFAULT_SETTINGS", FAST)  # the CLI reads it at call time
    app = typer.Typer()
    register(app)
    register(app)  # idempotent
    assert len(app.registered_groups) == 1
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_cli_build_then_info(cli, npz: Path, tmp_path: Path) -> None:
    from latentforge.cli import UserError

    cache = tmp_path / "cache"
    r = cli("classifier", "info", "--data", npz, "--res", "28", "--cache-dir", cache)
    assert r.exit_code != 0 and isinstance(r.exception, UserError) and "latentforge classifier build" in str(r.exception)
    r = cli("classifier", "build", "--data", npz, "--res", "28", "--cache-dir", cache, "--quiet")
    assert r.exit_code == 0, r.output
    built = json.loads(r.output)
    assert built["built_now"] and built["held_out_accuracy"] > 0.95 and built["class_names"] == ["square", "disc"]
    r = cli("classifier", "info", "--data", npz, "--res", "28", "--cache-dir", cache)
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    assert not shown["built_now"] and shown["path"] == built["path"]
    assert shown["held_out_accuracy"] == built["held_out_accuracy"]
    r = cli("classifier", "build", "--data", tmp_path / "missing.npz", "--res", "28", "--cache-dir", cache)
    assert r.exit_code != 0 and "unknown data" in str(r.exception)


def test_cli_is_registered_on_the_main_app() -> None:
    from latentforge.cli import app

    r = CliRunner().invoke(app, ["classifier", "--help"])
    assert r.exit_code == 0 and "build" in r.output and "info" in r.output
