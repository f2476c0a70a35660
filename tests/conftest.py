"""Fixtures shared by several test files."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

TINY_CLASSES = ("square", "disc")


def write_tiny_npz(path: Path, n: int = 64, class_names: tuple[str, ...] | list[str] = TINY_CLASSES) -> Path:
    """n grayscale 28x28 images of two kinds with labels: bright squares (label 0) and dimmer
    discs (label 1) at random places on a dark background. Small enough to train on in seconds,
    structured enough that a trained model's outputs depend on the data."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:28, :28]
    imgs = []
    for i in range(n):
        img = np.full((28, 28), 20, np.uint8)
        if i % 2 == 0:
            a, b = rng.integers(4, 10, 2)
            img[a : a + 12, b : b + 12] = 230
        else:
            cy, cx = rng.integers(10, 18, 2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 160
        imgs.append(img)
    np.savez(path, images=np.stack(imgs), labels=np.arange(n) % 2, class_names=np.array(list(class_names)))
    return path


@pytest.fixture(scope="session")
def make_tiny_npz() -> Callable[..., Path]:
    """`make_tiny_npz(path, n=64, class_names=...)` writes the tiny labelled data set (usable from module fixtures)."""
    return write_tiny_npz


@pytest.fixture()
def tiny_npz(tmp_path: Path) -> Path:
    return write_tiny_npz(tmp_path / "tiny.npz")
