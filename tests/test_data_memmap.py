"""The on-disk memory-mapped folder cache (data_memmap.py), storage choice, the --fit policy, and
training from a memory-mapped data set. Tiny folders in tmp_path, an isolated cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentforge import data as D
from latentforge import data_memmap as M
from latentforge.config import ConfigError, TrainConfig
from latentforge.data import DataError, load_images
from latentforge.data_memmap import build_folder_cache
from latentforge.train import train


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LATENTFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LATENTFORGE_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("LATENTFORGE_MIRROR", raising=False)


def _folder(root: Path, n: int = 30, size: tuple[int, int] = (12, 10), corrupt: bool = True) -> Path:
    """n RGB PNGs (W x H = size, each a different colour, a dot in a corner) in two class folders,
    plus one unreadable file."""
    for i in range(n):
        arr = np.zeros((size[1], size[0], 3), np.uint8)
        arr[:] = (i * 7 % 256, i * 3 % 256, 255 - i)
        arr[0, 0] = (255, 255, 255)
        path = root / ("odd" if i % 2 else "even") / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
    if corrupt:
        (root / "even" / "broken.png").write_bytes(b"not an image")
    return root


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = D._decode_or_reason

    def counting(path: str, *args: object) -> object:
        calls.append(path)
        return real(path, *args)

    monkeypatch.setattr(D, "_decode_or_reason", counting)
    return calls


def _mapped_file(address: int) -> str | None:
    """The file mapped at this address of our memory (/proc/self/maps), None for anonymous memory."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= address < hi:
            return parts[5] if len(parts) == 6 and parts[5].startswith("/") else None
    return None


class _Interrupt(Exception):
    pass


def _interrupt_after(k: int):
    seen: list[int] = []

    def hook(chunk: int) -> None:
        seen.append(chunk)
        if len(seen) == k:
            raise _Interrupt

    return hook


# ------------------------------------------------------------------------------------ round trip


def test_memmap_round_trip_equals_in_ram(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs")
    with pytest.warns(D.SkippedFilesWarning, match="skipped 1 of 31"):
        disk = load_images(root, res=8, storage="disk", progress=False)
    with pytest.warns(D.SkippedFilesWarning):
        ram = load_images(root, res=8, storage="ram", cache_dir=tmp_path / "other", progress=False)
    assert disk.on_disk and not ram.on_disk
    assert disk.images.shape == ram.images.shape == (30, 3, 8, 8)
    assert torch.equal(disk.images, ram.images) and torch.equal(disk.labels, ram.labels)
    assert disk.class_names == ram.class_names == ["even", "odd"] and disk.skipped == ram.skipped
    # It really is the file, memory-mapped: same bytes as np.load, and the rows follow the sorted file list.
    npy = Path(disk.memmap_path)
    assert npy.parent == tmp_path / "cache" / "decoded" and _mapped_file(disk.images.data_ptr()) == str(npy)
    assert np.array_equal(np.load(npy), disk.images.numpy())
    assert disk.images[1, :, 4, 4].tolist() == [14, 6, 253]  # file 002.png: colour (2*7, 2*3, 255-2)
    # The index: settings, the file list with sizes and mtimes, skipped files with reasons.
    meta = json.loads(npy.with_suffix(".json").read_text())
    assert meta["settings"] == {"path": str(root.resolve()), "res": 8, "channels": None, "crop": "center", "files": 31}
    assert [f[0] for f in meta["files"]][:2] == ["even/000.png", "even/002.png"] and len(meta["files"]) == 31
    assert all(size > 0 and mtime > 0 for _, size, mtime in meta["files"])
    assert meta["skipped"][0][0].endswith("broken.png") and "UnidentifiedImageError" in meta["skipped"][0][1]
    assert not list(npy.parent.glob("*.build")) and not list(npy.parent.glob("*.tmp"))
    # A batch: a copy of just those rows.
    idx = torch.tensor([29, 0, 7])
    b = disk.batch(idx)
    assert torch.equal(b, ram.images[idx]) and _mapped_file(b.data_ptr()) is None


def test_one_cache_opens_both_ways_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path / "imgs", corrupt=False)
    ram = load_images(root, res=8, storage="ram", progress=False)  # built by the in-memory path
    calls = _count_decodes(monkeypatch)
    disk = load_images(root, res=8, storage="disk", progress=False)
    assert disk.on_disk and torch.equal(disk.images, ram.images) and calls == []
    other = root.parent / "imgs2"
    _folder(other, corrupt=False)
    built = load_images(other, res=8, storage="disk", progress=False)  # built by the memmap builder
    assert len(calls) == 30
    again = load_images(other, res=8, storage="ram", progress=False)
    assert not again.on_disk and torch.equal(again.images, built.images) and len(calls) == 30


def test_memmap_is_copy_on_write(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", corrupt=False)
    d = load_images(root, res=8, storage="disk", progress=False)
    before = np.load(d.memmap_path).copy()
    d.images[0].zero_()  # a careless in-place edit must not reach the cache file
    assert np.array_equal(np.load(d.memmap_path), before)
    assert torch.equal(load_images(root, res=8, storage="disk", progress=False).images, torch.from_numpy(before))


# ------------------------------------------------------------------------------------ resumable build


def test_interrupted_build_resumes_and_equals_one_shot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path / "imgs")  # 31 files -> 8 chunks of 4
    calls = _count_decodes(monkeypatch)
    with pytest.raises(_Interrupt):
        build_folder_cache(root, res=8, workers=0, chunk_size=4, progress=False, on_chunk=_interrupt_after(3))
    assert len(calls) == 12  # 3 chunks decoded, then stopped
    build = next((tmp_path / "cache" / "decoded").glob("*.build"))
    lines = (build / "chunks.jsonl").read_text().splitlines()
    assert [json.loads(x)["chunk"] for x in lines] == [0, 1, 2]
    assert not list((tmp_path / "cache" / "decoded").glob("*.npy"))  # no complete entry yet
    with open(build / "chunks.jsonl", "a") as f:
        f.write('{"chunk": 7, "skipp')  # a record torn by the interruption: chunk 7 is not done
    calls.clear()
    with pytest.warns(D.SkippedFilesWarning):
        resumed = build_folder_cache(root, res=8, workers=0, chunk_size=99, progress=False)  # keeps its chunk size
    assert len(calls) == 31 - 12  # only the chunks not recorded
    assert not build.exists()
    with pytest.warns(D.SkippedFilesWarning):
        one_shot = build_folder_cache(root, res=8, workers=0, cache_dir=tmp_path / "c2", progress=False)
    assert torch.equal(resumed.images, one_shot.images) and torch.equal(resumed.labels, one_shot.labels)
    assert resumed.skipped == one_shot.skipped and len(resumed) == 30
    assert np.load(resumed.memmap_path).tobytes() == np.load(one_shot.memmap_path).tobytes()


def test_process_pool_build_interrupted_and_resumed(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", n=48)  # 49 files: 13 chunks of 4

    def ctrl_c_after_two(chunk: int, seen: list[int] = []) -> None:  # noqa: B006 - a call counter
        seen.append(chunk)
        if len(seen) == 2:
            raise KeyboardInterrupt  # as Ctrl-C would, in the parent

    with pytest.raises(KeyboardInterrupt):
        build_folder_cache(root, res=8, workers=2, chunk_size=4, progress=False, on_chunk=ctrl_c_after_two)
    build = next((tmp_path / "cache" / "decoded").glob("*.build"))
    done = [json.loads(x)["chunk"] for x in (build / "chunks.jsonl").read_text().splitlines()]
    assert 2 <= len(done) < 13 and len(set(done)) == len(done)  # the chunks running at Ctrl-C are kept too
    with pytest.warns(D.SkippedFilesWarning):
        pooled = build_folder_cache(root, res=8, workers=2, progress=False)
    with pytest.warns(D.SkippedFilesWarning):
        ram = load_images(root, res=8, storage="ram", cache_dir=tmp_path / "c2", progress=False)
    assert pooled.on_disk and torch.equal(pooled.images, ram.images) and torch.equal(pooled.labels, ram.labels)


def test_a_second_builder_waits_for_the_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import threading

    root = _folder(tmp_path / "imgs", corrupt=False).resolve()
    key = D._cache_key({"kind": "folder", "path": str(root), "res": 8, "channels": None, "crop": "center"},
                       D._list_images(root))
    build = tmp_path / "cache" / "decoded" / f"{key}.build"
    build.mkdir(parents=True)
    got: dict[str, D.ImageData] = {}
    with M._exclusive(build / "lock"):  # as another process building this entry would hold it
        t = threading.Thread(target=lambda: got.setdefault("d", build_folder_cache(root, res=8, workers=0,
                                                                                   progress=False)))
        t.start()
        t.join(1.0)
        assert t.is_alive() and not got  # waiting for the lock, not building alongside
    t.join(60)
    assert got["d"].on_disk and len(got["d"]) == 30
    assert "another process is building the cache" in caplog.text


def test_gray_folder_native_size_and_size_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    root.mkdir()
    for i in range(5):
        Image.fromarray(np.full((6, 9), 40 * i, np.uint8), mode="L").save(root / f"{i}.png")
    disk = build_folder_cache(root, workers=0, chunk_size=2, progress=False)  # native size, channels from the data
    ram = load_images(root, storage="ram", cache_dir=tmp_path / "c2", progress=False)
    assert disk.images.shape == ram.images.shape == (5, 1, 6, 9) and torch.equal(disk.images, ram.images)
    assert disk.labels is None and disk.class_names is None
    rgb = build_folder_cache(root, channels=3, workers=0, progress=False)  # asked for 3: gray replicated
    assert rgb.images.shape == (5, 3, 6, 9) and torch.equal(rgb.images[:, 2], disk.images[:, 0])
    Image.fromarray(np.zeros((7, 9), np.uint8), mode="L").save(root / "9.png")
    with pytest.raises(DataError, match=r"different sizes \(0.png: 9x6, 9.png: 9x7\); pass res"):
        build_folder_cache(root, workers=0, progress=False)


def test_nothing_readable_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 3 image files"):
        build_folder_cache(root, res=8, workers=0, progress=False)


def test_too_little_disk_space_is_refused_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import collections

    root = _folder(tmp_path / "imgs", corrupt=False)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(M.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DataError, match=r"needs 0.00 GiB .* only 0.00 GiB are free; .*LATENTFORGE_CACHE"):
        build_folder_cache(root, res=8, workers=0, progress=False)  # 30 * 3 * 8 * 8 = 5760 bytes > 1000
    assert not list((tmp_path / "cache" / "decoded").glob("*.build/images.npy"))


# ------------------------------------------------------------------------------------ storage choice


def test_auto_storage_decides_by_decoded_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path / "imgs", corrupt=False)
    assert not load_images(root, res=8, progress=False).on_disk  # 30 * 3 * 8 * 8 bytes: far below 1 GiB
    monkeypatch.setattr(M, "IN_RAM_LIMIT_BYTES", 30 * 3 * 8 * 8 - 1)
    assert load_images(root, res=8, progress=False).on_disk
    assert M.decoded_bytes(tmp_path / "nocache", "nokey", root.resolve(), D._list_images(root.resolve()), None, None) \
        == 30 * 3 * 10 * 12  # no entry yet: estimated from the first file's header, 3 channels
    monkeypatch.setattr(M, "IN_RAM_LIMIT_BYTES", 30 * 3 * 8 * 8)
    assert not load_images(root, res=8, progress=False).on_disk


def test_storage_errors(tmp_path: Path, tiny_npz: Path) -> None:
    with pytest.raises(DataError, match="storage must be one of auto, ram, disk"):
        load_images(tiny_npz, storage="ssd")
    with pytest.raises(DataError, match="on-disk storage .* is for folders"):
        load_images(tiny_npz, storage="disk")
    assert not load_images(tiny_npz, storage="auto").on_disk
    with pytest.raises(DataError, match="is not a folder"):
        build_folder_cache(tiny_npz)
    with pytest.raises(ConfigError, match="data_storage must be one of"):
        TrainConfig(data_storage="ssd")
    with pytest.raises(ConfigError, match="fit must be one of"):
        TrainConfig(fit="stretch")


# ------------------------------------------------------------------------------------ fit policy


def _wide_image(path: Path) -> Path:
    """8 tall x 16 wide on a white frame: red marks at x = 1 and x = 14, a black block at x 6..9."""
    a = np.full((8, 16, 3), 255, np.uint8)
    a[2:6, 1] = (255, 0, 0)
    a[2:6, 14] = (255, 0, 0)
    a[2:6, 6:10] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


@pytest.mark.parametrize("storage", ["ram", "disk"])
def test_fit_crop_keeps_the_center_pad_keeps_everything(tmp_path: Path, storage: str) -> None:
    src = np.asarray(Image.open(_wide_image(tmp_path / "wide" / "a.png")))  # (8, 16, 3)
    # crop at 8 px: the shorter side is already 8, so exactly columns 4..11; the red marks are cut off.
    crop = load_images(tmp_path / "wide", res=8, crop=D.FIT_MODES["crop"], channels=3, storage=storage,
                      progress=False).images
    assert np.array_equal(crop[0].permute(1, 2, 0).numpy(), src[:, 4:12])
    # pad at 16 px: a 16x16 canvas of the border colour (white), the image in rows 4..11, nothing lost.
    pad = load_images(tmp_path / "wide", res=16, crop=D.FIT_MODES["pad"], channels=3, storage=storage,
                     progress=False).images
    hwc = pad[0].permute(1, 2, 0).numpy()
    assert np.array_equal(hwc[4:12], src) and (hwc[:4] == 255).all() and (hwc[12:] == 255).all()


# ------------------------------------------------------------------------------------ training


def _gray_folder(root: Path, make_tiny_npz, n: int = 24) -> Path:
    """The tiny labelled data set (conftest) as a folder of grayscale PNGs in class subfolders."""
    npz = make_tiny_npz(root.parent / "src.npz", n=n)
    with np.load(npz) as z:
        for i, (img, label) in enumerate(zip(z["images"], z["labels"], strict=True)):
            path = root / ("square" if label == 0 else "disc") / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(path)
    return root


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_training_from_disk_equals_training_in_ram(tmp_path: Path, model: str, make_tiny_npz) -> None:
    from safetensors.torch import load_file

    root = _gray_folder(tmp_path / "folder", make_tiny_npz)
    runs = {}
    for storage in ("ram", "disk"):
        cfg = TrainConfig(model=model, data=str(root), out=str(tmp_path / storage), resolution=28, steps=4,
                          batch_size=8, width=8, z_dim=8, log_every=2, sample_every=4, checkpoint_every=4,
                          data_storage=storage)
        train(cfg, progress=False, log=lambda m: None)
        runs[storage] = load_file(str(tmp_path / storage / "model.safetensors"))
        saved = json.loads((tmp_path / storage / "config.json").read_text())
        assert saved["data_storage"] == storage and saved["fit"] == "crop"
    assert runs["ram"].keys() == runs["disk"].keys()
    for k in runs["ram"]:
        assert torch.equal(runs["ram"][k], runs["disk"][k]), k


def test_device_batches_reads_rows_to_the_device(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", corrupt=False)
    d = load_images(root, res=8, storage="disk", progress=False)
    batches = d.for_device("cpu")
    assert isinstance(batches, D.DeviceBatches) and len(batches) == 30
    idx = torch.tensor([3, 1])
    assert torch.equal(batches[idx], d.images[idx]) and batches[idx].device.type == "cpu"
    ram = load_images(root, res=8, storage="ram", progress=False)
    assert isinstance(ram.for_device("cpu"), torch.Tensor)


def test_cli_fit_and_storage_flags(tmp_path: Path, make_tiny_npz) -> None:
    from typer.testing import CliRunner

    from latentforge.cli import UserError, app

    runner = CliRunner()
    _wide_image(tmp_path / "wide" / "x" / "a.png")
    root = _gray_folder(tmp_path / "folder", make_tiny_npz, n=16)
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--data", str(root), "--res", "28", "--steps", "2", "--batch-size", "8",
                            "--width", "8", "--z-dim", "8", "--fit", "pad", "--data-on-disk", "--out", str(run),
                            "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    saved = json.loads((run / "config.json").read_text())
    assert saved["fit"] == "pad" and saved["data_storage"] == "disk"
    r = runner.invoke(app, ["train", "--out", str(run), "--steps", "3", "--resume", "--fit", "crop", "--quiet"])
    assert isinstance(r.exception, UserError) and "--fit pad; it cannot change to crop" in str(r.exception)
    r = runner.invoke(app, ["data", "info", str(tmp_path / "wide"), "--res", "16", "--fit", "pad", "--data-on-disk",
                            "--out", str(tmp_path / "g.png")])
    assert r.exit_code == 0, r.output
    assert "memmap:" in r.output and "count: 1" in r.output and (tmp_path / "g.png").is_file()
    r = runner.invoke(app, ["data", "info", str(tmp_path / "wide"), "--fit", "stretch"])
    assert isinstance(r.exception, UserError) and "--fit must be one of crop, pad" in str(r.exception)
    r = runner.invoke(app, ["data", "cache", str(root), "--res", "28", "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "16 images (1, 28, 28), 0 skipped, 2 classes" in r.output
