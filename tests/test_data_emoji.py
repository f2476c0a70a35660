"""The built-in emoji data set (data_emoji.py): the build from a (fake, local) npm tarball, the
split rule, labels in the fixed category order; `-m integration` checks the real data set."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentforge import data as D
from latentforge import data_emoji as E
from latentforge.data import BUILTIN, EMOJI_CLASSES, Builtin, DataError, fetch, load_images


@pytest.fixture(autouse=True)
def _isolated(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if request.node.get_closest_marker("integration"):
        return
    monkeypatch.setenv("LATENTFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LATENTFORGE_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("LATENTFORGE_MIRROR", raising=False)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _codes() -> tuple[list[str], list[str]]:
    """Code points (as emoji.json writes them) that the split rule sends to train / to test."""
    codes = [f"1F{i:03X}" for i in range(0x600, 0x700)]
    return [c for c in codes if not E.is_test(c)], [c for c in codes if E.is_test(c)]


def _png(mode: str, color: tuple[int, ...]) -> bytes:
    """64x64: a transparent background with an opaque 32x32 square of `color` in the middle."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = (*color, 255)
    img = Image.fromarray(rgba, mode="RGBA")
    buf = io.BytesIO()
    if mode == "P":  # a palette image with a transparent index, as some of the real files are
        img = img.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        img.save(buf, format="PNG", transparency=int(np.asarray(img)[0, 0]))
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def _fake_package(path: Path) -> dict[str, object]:
    """A tarball laid out like emoji-datasource-twitter: emoji.json + img/twitter/64/*.png (+ a sheet)."""
    train, test = _codes()
    emojis = [
        {"unified": train[0], "image": "a.png", "category": "Smileys & Emotion", "sort_order": 2,
         "has_img_twitter": True, "skin_variations": {
             "1F3FC": {"image": "a-2.png", "has_img_twitter": True},
             "1F3FB": {"image": "a-1.png", "has_img_twitter": True},
             "1F3FD": {"image": "a-3.png", "has_img_twitter": False}}},
        {"unified": train[1], "image": "b.png", "category": "Flags", "sort_order": 1, "has_img_twitter": True},
        {"unified": train[2], "image": "c.png", "category": "Objects", "sort_order": 3, "has_img_twitter": False},
        {"unified": test[0], "image": "t.png", "category": "Animals & Nature", "sort_order": 4,
         "has_img_twitter": True, "skin_variations": {"1F3FB": {"image": "t-1.png", "has_img_twitter": True}}},
    ]
    pngs = {"a.png": _png("RGBA", (255, 0, 0)), "a-1.png": _png("RGBA", (200, 0, 0)),
            "a-2.png": _png("RGBA", (150, 0, 0)), "b.png": _png("P", (0, 0, 255)),
            "t.png": _png("RGBA", (0, 255, 0)), "t-1.png": _png("RGBA", (0, 128, 0))}
    with tarfile.open(path, "w:gz") as tar:
        members = {"package/emoji.json": json.dumps(emojis).encode(), "package/img/twitter/sheets/64.png": b"x"}
        members.update({f"package/img/twitter/64/{k}": v for k, v in pngs.items()})
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return {"train": train, "test": test}


@pytest.fixture
def fake_emoji(http_root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake tarball served locally under the real name, its checksums and counts registered."""
    www, base = http_root
    tgz = www / E.TARBALL
    _fake_package(tgz)
    blob = tgz.read_bytes()
    monkeypatch.setattr(E, "TARBALL_URL", base + E.TARBALL)
    monkeypatch.setattr(E, "TARBALL_MD5", hashlib.md5(blob).hexdigest())
    monkeypatch.setattr(E, "TARBALL_SHA256", hashlib.sha256(blob).hexdigest())
    real = BUILTIN["emoji"]
    files = {s: tuple(D.IdxFile(f.filename, f.md5) for f in pair) for s, pair in real.splits.items()}
    monkeypatch.setitem(BUILTIN, "emoji", Builtin(name="emoji", class_names=real.class_names, splits=files,
                                                  counts={"train": 4, "test": 2}, resolution=64, channels=3,
                                                  fallback=real.fallback))
    return tgz


def test_split_rule_is_a_stated_hash() -> None:
    # sha256 of the code points, as text, mod 10: the rule the docs state, on a few known values.
    for code in ("1F600", "1F431", "0023-FE0F-20E3"):
        assert E.is_test(code) == (int(hashlib.sha256(code.encode()).hexdigest(), 16) % 10 == 0)
    train, test = _codes()
    assert 0.05 < len(test) / (len(train) + len(test)) < 0.15  # about a tenth


def test_fetch_builds_idx_files_from_the_tarball(fake_emoji: Path, tmp_path: Path) -> None:
    dest = fetch("emoji", progress=False)
    assert dest == tmp_path / "cache" / "datasets" / "emoji"
    assert sorted(p.name for p in dest.glob("*.gz")) == sorted(f.filename for f in BUILTIN["emoji"].files)
    assert "CC-BY 4.0" in (dest / "ATTRIBUTION.txt").read_text()
    train = load_images("emoji", progress=False)
    test = load_images("emoji:test", progress=False)
    assert train.name == "emoji:train" and train.images.shape == (4, 3, 64, 64) and test.images.shape == (2, 3, 64, 64)
    assert train.class_names == list(EMOJI_CLASSES) and EMOJI_CLASSES[0] == "Smileys & Emotion"
    # Unicode order (sort_order): the flag first, then the face and its variations in key order;
    # a variation without a Twitter image and an emoji without one are left out.
    flags, smileys, animals = (EMOJI_CLASSES.index(c) for c in ("Flags", "Smileys & Emotion", "Animals & Nature"))
    assert train.labels.tolist() == [flags, smileys, smileys, smileys]
    assert train.images[:, :, 32, 32].tolist() == [[0, 0, 255], [255, 0, 0], [200, 0, 0], [150, 0, 0]]
    # Transparency composited on white, for RGBA and palette files alike.
    assert (train.images[:, :, :16, :] == 255).all() and (train.images[:, :, :, 48:] == 255).all()
    # An emoji and its skin-tone variation stay together, in the held-out split.
    assert test.labels.tolist() == [animals, animals]
    assert test.images[:, :, 32, 32].tolist() == [[0, 255, 0], [0, 128, 0]]
    # The PNGs stay as a folder data set: same pixels through the folder loader.
    folder = load_images(dest / "png" / "test", progress=False)
    assert folder.class_names == ["Animals & Nature"]  # files sorted by name: t-1.png, t.png
    assert torch.equal(folder.images, test.images[[1, 0]])
    assert load_images("emoji:test", res=32, channels=1, progress=False).images.shape == (2, 1, 32, 32)
    with pytest.raises(DataError, match="on-disk storage"):
        load_images("emoji", storage="disk")


def test_tarball_checksum_mismatch_is_refused(fake_emoji: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(E, "TARBALL_SHA256", "0" * 64)
    with pytest.raises(DataError, match="refusing to use it"):
        fetch("emoji", progress=False)
    assert not list((tmp_path / "cache" / "datasets" / "emoji").glob("*.gz"))


def test_unreachable_source_says_what_to_do(fake_emoji: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(E, "TARBALL_URL", "http://127.0.0.1:9/nothing.tgz")
    monkeypatch.setenv("PATH", "/nonexistent")  # no npm either
    with pytest.raises(DataError, match=f"could not get {E.TARBALL}.*LATENTFORGE_MIRROR"):
        fetch("emoji", progress=False)


# ------------------------------------------------------------------------------------ real data


@pytest.mark.integration
def test_emoji_real(tmp_path: Path) -> None:
    # No skip: `make data` fetches it (npm registry); without it the loader fetches it itself.
    train = load_images("emoji", progress=False)
    test = load_images("emoji:test", progress=False)
    assert train.images.shape == (3388, 3, 64, 64) and test.images.shape == (398, 3, 64, 64)
    assert train.class_names == list(EMOJI_CLASSES)
    assert torch.bincount(train.labels, minlength=10).tolist() == [150, 2042, 5, 143, 121, 190, 75, 223, 198, 241]
    assert torch.bincount(test.labels, minlength=10).tolist() == [19, 219, 0, 16, 10, 28, 10, 41, 26, 29]
    assert (train.images[:, :, 0, 0] == 255).float().mean() > 0.9  # transparent corners became white
    # The held-out PNG folder through the folder loader, memory-mapped: the same 398 images.
    folder = load_images(D.locate("emoji") / "png" / "test", storage="disk", cache_dir=tmp_path, progress=False)
    assert folder.on_disk and folder.images.shape == test.images.shape

    def rows(x: torch.Tensor) -> list[bytes]:
        return sorted(r.numpy().tobytes() for r in x)

    assert rows(folder.images) == rows(test.images)
