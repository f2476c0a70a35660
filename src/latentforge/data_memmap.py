"""The on-disk, memory-mapped image cache: folders of images that need not fit in memory.

A folder is decoded once into the cache root; afterwards it is opened with `np.load(mmap_mode="c")`
and only the rows a batch needs are read from disk (`ImageData.batch`). The entry is the very one
the in-memory folder cache uses (same key, same `.npy` + `.json`), so a folder cached one way
opens the other way without decoding again, and both give the same bytes.

Layout, under `<cache root>/decoded/`:

    <key>.npy            uint8 (N, C, H, W), a standard .npy file (np.lib.format)
    <key>.json           the index: version, shape, settings, files (path, size, mtime_ns), labels,
                         class names, skipped files with reasons. Written last: it marks the entry complete.
    <key>.build/         only while a build runs or after one was interrupted:
        images.npy       uint8 (N_files, C, H, W); row i is file i. Workers write their rows straight
                         into it (np.lib.format.open_memmap), nothing travels back through a pipe
        build.json       the build's plan (shape, chunk size, settings), checked when resuming
        chunks.jsonl     one line per finished chunk: {"chunk", "skipped": [[row, reason], ...], "gray"}
        lock             held (flock) by the building process; a second process waits for it

Build: the file list is cut into chunks of `chunk_size` files; a process pool (`workers`) decodes
the chunks with the folder loader's own decoder (`data._decode_or_reason`: EXIF, transparency on
white, resize, crop or pad) and writes the rows. A chunk is recorded in chunks.jsonl only after its
rows are flushed, so an interrupted build (Ctrl-C, a killed process) resumes where it stopped and
decodes only the chunks not recorded. At the end the rows of unreadable files are dropped and, when
every image is grayscale and channels were not given, the channels reduced to 1, exactly as the
in-memory path does; without either, images.npy is simply renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import data as _data
from .data import DataError, ImageData

__all__ = ["DEFAULT_CHUNK_SIZE", "IN_RAM_LIMIT_BYTES", "build_folder_cache", "decoded_bytes", "load_folder_memmap"]

logger = logging.getLogger(__name__)

# storage="auto": a folder whose decoded uint8 array (N * C * H * W bytes) is larger than this is
# memory-mapped from disk instead of read into memory. 1 GiB: the in-memory path briefly holds
# about two copies while it stacks the decoded images, and training may copy the set to the GPU.
IN_RAM_LIMIT_BYTES = 1 << 30
# Files per chunk: the unit of work of one worker task and of resuming.
DEFAULT_CHUNK_SIZE = 256
# Rows copied at a time when compacting the build array (skipped files, channel reduction).
_COPY_ROWS = 1024


# ------------------------------------------------------------------------------------ public entry points


def decoded_bytes(cache: Path, key: str, root: Path, entries: Sequence[tuple[str, int, int]], res: int | None,
                  channels: int | None) -> int:
    """Size in bytes of the folder's decoded uint8 array: the cache entry's shape when it exists,
    else an estimate (C = channels or 3; H x W = res x res or the first file's header size)."""
    _, meta_path = _data._cache_paths(cache, key)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return int(np.prod(json.loads(meta_path.read_text())["shape"], dtype=np.int64))
    c = channels or 3
    if res is not None:
        return len(entries) * c * res * res
    try:
        with Image.open(root / entries[0][0]) as img:  # reads the header only
            w, h = img.size
    except Exception:  # noqa: BLE001 - unreadable first file: the decoder will report it
        return 0
    return len(entries) * c * w * h


def build_folder_cache(folder: str | os.PathLike[str], res: int | None = None, channels: int | None = None,
                       crop: str = "center", cache_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                       workers: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                       on_chunk: Callable[[int], None] | None = None) -> ImageData:
    """Build (or resume, or just open) the on-disk cache of a folder and return it memory-mapped.

    The same as `load_images(folder, res, channels, crop, storage="disk")`, with the build's knobs:
    workers: decoding processes (None = min(8, CPUs); 0 = decode in this process).
    chunk_size: files per chunk (a new build only; a resumed one keeps its own).
    on_chunk: called with the chunk index after each chunk is recorded (progress hooks, tests).
    """
    if crop not in _data.CROP_MODES:
        raise DataError(f"crop must be one of {', '.join(_data.CROP_MODES)}, got {crop!r}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")
    if res is not None and (isinstance(res, bool) or not isinstance(res, int) or res < 1):
        raise DataError(f"res must be a positive integer or None, got {res!r}")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"{folder} is not a folder; the on-disk cache is built from a folder of images")
    root = root.resolve()
    entries = _data._list_images(root)
    if not entries:
        raise DataError(f"no images ({', '.join(e[1:] for e in _data.IMAGE_EXTENSIONS)}) found in {root}")
    key = _data._cache_key({"kind": "folder", "path": str(root), "res": res, "channels": channels, "crop": crop},
                           entries)
    return load_folder_memmap(root, entries, key, res, channels, crop, _data.cache_root(cache_dir), progress,
                              workers=workers, chunk_size=chunk_size, on_chunk=on_chunk)


def load_folder_memmap(root: Path, entries: Sequence[tuple[str, int, int]], key: str, res: int | None,
                       channels: int | None, crop: str, cache: Path, progress: bool, *, workers: int | None = None,
                       chunk_size: int = DEFAULT_CHUNK_SIZE,
                       on_chunk: Callable[[int], None] | None = None) -> ImageData:
    """The folder's cache entry `key` memory-mapped, built first (resumably) when missing."""
    opened = _open_entry(cache, key, root, len(entries))
    if opened is None:
        if chunk_size < 1:
            raise DataError(f"chunk_size must be positive, got {chunk_size}")
        if workers is not None and workers < 0:
            raise DataError(f"workers must be >= 0 (0 = decode in this process), got {workers}")
        _build(root, entries, key, res, channels, crop, cache, progress, workers, chunk_size, on_chunk)
        opened = _open_entry(cache, key, root, len(entries))
        assert opened is not None, "a finished build left no readable cache entry"
    return opened


# ------------------------------------------------------------------------------------ opening


def _open_entry(cache: Path, key: str, root: Path, total_files: int) -> ImageData | None:
    """A complete entry as memory-mapped ImageData (copy-on-write: writes never reach the file), or None."""
    npy, meta_path = _data._cache_paths(cache, key)
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arr = np.load(npy, mmap_mode="c", allow_pickle=False)  # (N, C, H, W) uint8, pages read on demand
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable cache entry %s (%s)", npy, _data._one_line(err))
        return None
    if meta.get("version") != _data._CACHE_VERSION or arr.dtype != np.uint8 or list(arr.shape) != meta.get("shape"):
        return None
    skipped = [(str(p), str(r)) for p, r in meta["skipped"]]
    _data._warn_skipped(skipped, total_files)
    labels = torch.tensor(meta["labels"], dtype=torch.int64) if meta["labels"] is not None else None
    return ImageData(torch.from_numpy(arr), labels, meta["class_names"], str(root), skipped, memmap_path=str(npy))


# ------------------------------------------------------------------------------------ building


def _build(root: Path, entries: Sequence[tuple[str, int, int]], key: str, res: int | None, channels: int | None,
           crop: str, cache: Path, progress: bool, workers: int | None, chunk_size: int,
           on_chunk: Callable[[int], None] | None) -> None:
    build = cache / "decoded" / f"{key}.build"
    try:
        build.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the image cache in {build.parent} ({_data._one_line(err)}); "
                        f"set LATENTFORGE_CACHE to a writable folder with room for the decoded images") from err
    with _exclusive(build / "lock"):
        if _open_entry(cache, key, root, len(entries)) is not None:
            return  # another process finished it while we waited for the lock
        paths = [str(root / rel) for rel, _, _ in entries]
        plan = _plan(build, paths, root, res, channels, crop, chunk_size)
        n, c_alloc, h, w = plan["shape"]
        cs = plan["chunk_size"]
        chunks = [(i, start, min(start + cs, n)) for i, start in enumerate(range(0, n, cs))]
        done = _read_done(build / "chunks.jsonl", len(chunks))
        todo = [c for c in chunks if c[0] not in done]
        if done:
            logger.info("resuming the cache build of %s: %d of %d chunks already done", root, len(done), len(chunks))
        workers = min(8, _data._cpu_count()) if workers is None else workers
        images = build / "images.npy"
        with open(build / "chunks.jsonl", "a", encoding="utf-8") as log:
            if done_text := (build / "chunks.jsonl").read_text(encoding="utf-8"):
                if not done_text.endswith("\n"):
                    log.write("\n")  # end a torn last line: the next record starts on its own line

            def record(result: dict[str, Any]) -> None:
                if result["mismatch"] is not None:
                    row, rw, rh = result["mismatch"]
                    first = plan["shape_from"]
                    raise DataError(f"images in {root} have different sizes ({os.path.relpath(paths[first], root)}: "
                                    f"{w}x{h}, {os.path.relpath(paths[row], root)}: {rw}x{rh}); pass res (--res N) "
                                    f"to resize them all to N x N")
                log.write(json.dumps({"chunk": result["chunk"], "skipped": result["skipped"],
                                      "gray": result["gray"]}) + "\n")
                log.flush()
                os.fsync(log.fileno())
                done[result["chunk"]] = result
                if on_chunk is not None:
                    on_chunk(result["chunk"])

            args = [(i, start, paths[start:stop], res, channels, crop) for i, start, stop in todo]
            if workers == 0 or len(todo) <= 1 or len(paths) < _data._POOL_MIN_FILES:
                mm = np.load(images, mmap_mode="r+")
                try:
                    with _data._progress_bar(f"cache {n} images", n, progress) as advance:
                        advance(n - sum(stop - start for _, start, stop in todo))
                        for a in args:
                            record(_decode_chunk(mm, *a))
                            advance(len(a[2]))
                finally:
                    del mm
            else:
                _run_pool(images, args, min(workers, len(args)), n, progress, record)
        _finish(build, root, entries, paths, plan, done, key, cache, channels)


def _run_pool(images: Path, args: list[tuple[Any, ...]], workers: int, n: int, progress: bool,
              record: Callable[[dict[str, Any]], None]) -> None:
    """Decode chunks in `workers` processes, recording each as it finishes (in any order)."""
    # fork where there is one: the workers need no fresh interpreter (nor a torch import); they run
    # only PIL and numpy, never the parent's threads' locks.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=_worker_init, initargs=(str(images),))
    try:
        futures = {pool.submit(_worker_chunk, *a): len(a[2]) for a in args}  # starts the processes before any bar thread
        with _data._progress_bar(f"cache {n} images ({workers} processes)", n, progress) as advance:
            advance(n - sum(futures.values()))
            recorded = set()
            try:
                for fut in as_completed(futures):
                    recorded.add(fut)
                    record(fut.result())
                    advance(futures[fut])
            except KeyboardInterrupt:  # Ctrl-C: start no new chunk, but keep what the running ones finish
                for fut in futures:
                    fut.cancel()  # only chunks not started can be cancelled
                for fut in futures:
                    if fut not in recorded and not fut.cancelled():
                        with contextlib.suppress(Exception):
                            record(fut.result())  # waits for that chunk
                raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_worker_images: np.memmap | None = None  # the build array, opened once per worker process


def _worker_init(images: str) -> None:
    global _worker_images
    # Ctrl-C is the parent's to handle: it cancels the chunks not started, waits for the running ones
    # (not recorded: the next run redoes them) and stops; workers dying mid-write would gain nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_images = np.load(images, mmap_mode="r+")


def _worker_chunk(chunk: int, start: int, paths: list[str], res: int | None, channels: int | None,
                  crop: str) -> dict[str, Any]:
    assert _worker_images is not None, "worker used before _worker_init"
    return _decode_chunk(_worker_images, chunk, start, paths, res, channels, crop)


def _decode_chunk(mm: np.ndarray, chunk: int, start: int, paths: list[str], res: int | None, channels: int | None,
                  crop: str) -> dict[str, Any]:
    """Decode paths into rows start.. of mm (N, C, H, W); flush; report skipped rows and grayness."""
    h, w = mm.shape[2:]
    skipped: list[list[Any]] = []
    gray, mismatch = True, None
    for j, p in enumerate(paths):
        a = _data._decode_or_reason(p, res, channels, crop)  # (H, W, 1|3) uint8, or why it failed
        if isinstance(a, str):
            skipped.append([start + j, a])
            continue
        if a.shape[:2] != (h, w):  # only without res: files of different sizes
            mismatch = [start + j, a.shape[1], a.shape[0]]
            break
        mm[start + j] = a.transpose(2, 0, 1)  # (C, H, W); 1 -> 3 channels broadcasts (gray replicated)
        gray = gray and a.shape[2] == 1
    mm.flush()  # the rows are on disk before the chunk is recorded as done
    return {"chunk": chunk, "skipped": skipped, "gray": gray, "mismatch": mismatch}


def _plan(build: Path, paths: list[str], root: Path, res: int | None, channels: int | None, crop: str,
          chunk_size: int) -> dict[str, Any]:
    """The build's plan: the one on disk when it matches these settings (resume), else a fresh one
    with an empty images.npy (a new build)."""
    settings = {"path": str(root), "res": res, "channels": channels, "crop": crop, "files": len(paths)}
    plan_path, images = build / "build.json", build / "images.npy"
    with contextlib.suppress(OSError, ValueError):
        plan = json.loads(plan_path.read_text())
        if plan.get("settings") == settings and images.is_file():
            arr = np.load(images, mmap_mode="r")
            if list(arr.shape) == plan["shape"] and arr.dtype == np.uint8:
                return plan
    (build / "chunks.jsonl").unlink(missing_ok=True)  # a fresh build: nothing is done
    shape_from = 0
    if res is None:  # native size: the first readable file sets it
        for shape_from, p in enumerate(paths):
            first = _data._decode_or_reason(p, None, channels, crop)
            if not isinstance(first, str):
                h, w = first.shape[:2]
                break
        else:
            raise DataError(f"none of the {len(paths)} image files in {root} could be read (first: {paths[0]}: "
                            f"{_data._decode_or_reason(paths[0], None, channels, crop)})")
    else:
        h = w = res
    plan = {"shape": [len(paths), channels or 3, h, w], "chunk_size": chunk_size, "settings": settings,
            "shape_from": shape_from}
    _check_room(build, int(np.prod(plan["shape"], dtype=np.int64)))
    try:
        np.lib.format.open_memmap(images, mode="w+", dtype=np.uint8, shape=tuple(plan["shape"])).flush()
    except OSError as err:
        raise DataError(f"cannot create {images} ({_data._one_line(err)}); the cache needs "
                        f"{np.prod(plan['shape']) / 2**30:.1f} GiB; set LATENTFORGE_CACHE to a folder with room") from err
    _data._atomic_write_bytes(plan_path, json.dumps(plan).encode())
    return plan


def _check_room(folder: Path, nbytes: int) -> None:
    """Refuse to start writing nbytes into folder's disk when it has not that much free: a memory-mapped
    write to a full disk kills the writing process (SIGBUS) instead of raising an error."""
    free = shutil.disk_usage(folder).free
    if nbytes > free:
        raise DataError(f"the image cache needs {nbytes / 2**30:.2f} GiB in {folder.parent}, only {free / 2**30:.2f} "
                        f"GiB are free; free some space or set LATENTFORGE_CACHE to a larger disk")


def _read_done(path: Path, num_chunks: int) -> dict[int, dict[str, Any]]:
    """Finished chunks from chunks.jsonl; a torn last line (an interrupted write) is ignored."""
    done: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            chunk = int(rec["chunk"])
            if 0 <= chunk < num_chunks:
                done[chunk] = {"chunk": chunk, "skipped": list(rec["skipped"]), "gray": bool(rec["gray"])}
        except (ValueError, KeyError, TypeError):
            continue
    return done


def _finish(build: Path, root: Path, entries: Sequence[tuple[str, int, int]], paths: list[str], plan: dict[str, Any],
            done: dict[int, dict[str, Any]], key: str, cache: Path, channels: int | None) -> None:
    """Drop unreadable rows, reduce all-gray data to 1 channel, move into place, write the index."""
    n, c_alloc, h, w = plan["shape"]
    reasons = {int(row): str(why) for rec in done.values() for row, why in rec["skipped"]}
    kept = [i for i in range(n) if i not in reasons]
    if not kept:
        first = min(reasons)
        raise DataError(f"none of the {n} image files in {root} could be read (first: {paths[first]}: {reasons[first]})")
    c_out = channels or (1 if all(rec["gray"] for rec in done.values()) else 3)
    npy, meta_path = _data._cache_paths(cache, key)
    src = build / "images.npy"
    if len(kept) == n and c_out == c_alloc:
        os.replace(src, npy)  # nothing to drop: the build array is the cache
    else:
        arr = np.load(src, mmap_mode="r")
        _check_room(build, len(kept) * c_out * h * w)
        tmp = npy.with_name(f"{npy.name}.{os.getpid()}.tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(kept), c_out, h, w))
        for a in range(0, len(kept), _COPY_ROWS):
            rows = kept[a:a + _COPY_ROWS]
            out[a:a + len(rows)] = arr[rows, :c_out]  # (rows, C, H, W); gray rows hold 3 equal channels
        out.flush()
        del out, arr
        os.replace(tmp, npy)
    rels = [e[0] for e in entries]
    class_names = sorted({r.split("/", 1)[0] for r in rels}) if all("/" in r for r in rels) else None
    labels = None
    if class_names is not None:
        index = {c: i for i, c in enumerate(class_names)}
        labels = [index[rels[i].split("/", 1)[0]] for i in kept]
    meta = {"version": _data._CACHE_VERSION, "shape": [len(kept), c_out, h, w], "labels": labels,
            "class_names": class_names, "skipped": [[paths[i], reasons[i]] for i in sorted(reasons)],
            "name": str(root), "settings": plan["settings"], "files": [list(e) for e in entries]}
    _data._atomic_write_bytes(meta_path, json.dumps(meta).encode())
    shutil.rmtree(build, ignore_errors=True)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on lock_path (waiting for another builder); a no-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            logger.warning("another process is building the cache in %s; waiting for it", lock_path.parent)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
