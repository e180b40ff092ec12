"""Decoded-image cache: every manifest image decoded and resized once into a memory-mapped array.

Why: JPEG/PNG decoding and resizing would otherwise be paid by every trial and every epoch; a
uint8 ``N x H x W x 3`` ``.npy`` is shared through the page cache by all processes on a node and
feeds batched (GPU) augmentation directly.

An image that cannot be decoded stops the build with one line naming it, unless the caller
asks to skip such images: their rows are then left out of the array (no hole: row i of the
cache is row i of the manifest without them), and the file name carries a hash of the
skipped names, so the array and its list of skipped images can never disagree.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from reidsearch.data.manifest import manifest_root
from reidsearch.errors import DatasetError, some_names
from reidsearch.storage import default_cache_root, write_text

CACHE_VERSION = 1


@dataclass
class ImageCache:
    """The decoded images of one manifest, in manifest row order (its unreadable rows left out
    when they were skipped)."""

    path: Path
    images: np.ndarray  # N x H x W x 3 uint8, memory-mapped read-only
    unreadable: tuple[str, ...] = ()  # manifest paths skipped as undecodable: they have no row

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """A uint8 ``N,H,W,3`` tensor (a copy, so it can be pinned or moved to a device)."""
        return torch.from_numpy(np.ascontiguousarray(self.images[np.asarray(indices)]))


def _decode(path: Path, height: int, width: int) -> np.ndarray:
    """Decode one image to RGB and resize it (bicubic) to ``height x width``."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def cache_key(root: Path, paths: Sequence[str], height: int, width: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}\n{root}\n{height}x{width}\n".encode())
    for p in paths:
        h.update(p.encode())
        h.update(b"\n")
    return h.hexdigest()[:24]


def _open(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return arr if arr.shape == shape and arr.dtype == np.uint8 else None


def _partial_path(final: Path, unreadable: Sequence[str]) -> Path:
    """The cache file of the images of ``final``'s manifest minus ``unreadable``."""
    digest = hashlib.sha256("\n".join(unreadable).encode()).hexdigest()[:12]
    return final.with_name(f"{final.stem}-u{digest}.npy")


def _fill(out: np.ndarray, root: Path, paths: Sequence[str], workers: int, skip: bool) -> list[int]:
    """Decode ``root / paths[i]`` into ``out[i]`` with a small thread pool (PIL drops the GIL);
    returns the rows that could not be decoded (``skip``) or raises on the first one."""
    height, width = out.shape[1:3]

    def load(i: int) -> bool:
        image = root / paths[i]
        try:
            out[i] = _decode(image, height, width)
        except (OSError, ValueError, SyntaxError) as exc:
            if skip:
                return False
            raise DatasetError(f"{image}: cannot read image ({exc})") from None
        return True

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [i for i, ok in enumerate(pool.map(load, range(len(paths)))) if not ok]


def _reuse(
    final: Path, paths: Sequence[str], shape: tuple[int, ...], skip: bool
) -> ImageCache | None:
    """The existing cache of this manifest, if any: the complete one, else (``skip``) one
    that leaves out unreadable images, recognised by its build record."""
    cached = _open(final, shape) if final.is_file() else None
    if cached is not None:
        return ImageCache(final, cached)
    if not skip:
        return None
    known = set(paths)
    for candidate in sorted(final.parent.glob(f"{final.stem}-u*.npy")):
        try:
            unreadable = tuple(json.loads(candidate.with_suffix(".json").read_text())["unreadable"])
            trusted = candidate == _partial_path(final, unreadable) and set(unreadable) <= known
        except (OSError, ValueError, KeyError, TypeError):
            trusted = False  # no record yet (an interrupted build), or not this manifest's
        if not trusted:
            continue
        cached = _open(candidate, (len(paths) - len(unreadable), *shape[1:]))
        if cached is not None:
            return ImageCache(candidate, cached, unreadable)
    return None


def build_image_cache(
    table: pa.Table,
    height: int,
    width: int,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    *,
    skip_unreadable: bool = False,
) -> ImageCache:
    """Decode every row of ``table`` into a cached array (reused if it already exists).

    ``skip_unreadable`` leaves images that cannot be decoded out of the array and lists them in
    ``ImageCache.unreadable`` (drop them from the manifest: ``manifest.drop_unreadable``);
    otherwise the first one is an error naming it. A complete cache serves both.

    Builders on one machine take a file lock, so concurrent trials decode the dataset once:
    the first decodes, the others wait and reuse its file. The file is written under a
    temporary name and renamed into place, so readers never see a half-written file. A small
    ``.json`` record beside it says who decoded it, when and how long it took.
    Edited images under unchanged paths are not detected: delete the cache file.
    """
    root = manifest_root(table)
    paths = table.column("path").to_pylist()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_root() / "images"
    final = cache_dir / f"{cache_key(root, paths, height, width)}_{height}x{width}.npy"
    shape = (len(paths), height, width, 3)
    found = _reuse(final, paths, shape, skip_unreadable)
    if found is not None:
        return found

    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(final.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        found = _reuse(final, paths, shape, skip_unreadable)
        if found is not None:
            return found
        started = time.perf_counter()
        workers = workers or min(4, os.cpu_count() or 1)
        written, unreadable = _decode_into(final, shape, root, paths, workers, skip_unreadable)
        record = {
            "images": len(paths) - len(unreadable),
            "root": str(root),
            "size": [height, width],
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "seconds": round(time.perf_counter() - started, 3),
            "unreadable": list(unreadable),
        }
        # Written after the array (atomically): a skipping cache without it is not reused.
        write_text(str(written.with_suffix(".json")), json.dumps(record, indent=1))
    return ImageCache(written, np.load(written, mmap_mode="r"), unreadable)


def _decode_into(
    final: Path,
    shape: tuple[int, ...],
    root: Path,
    paths: Sequence[str],
    workers: int,
    skip: bool,
) -> tuple[Path, tuple[str, ...]]:
    """Decode into a temporary file renamed into place; returns the file and the skipped."""
    tmps: list[Path] = []

    def temporary(rows: int) -> np.ndarray:
        fd, name = tempfile.mkstemp(prefix=f".{final.stem}-", suffix=".npy", dir=final.parent)
        os.close(fd)
        tmps.append(Path(name))
        return np.lib.format.open_memmap(name, mode="w+", dtype=np.uint8, shape=(rows, *shape[1:]))

    try:
        out = temporary(len(paths))
        bad = _fill(out, root, paths, workers, skip)
        if bad and len(bad) == len(paths):
            names = some_names([paths[i] for i in bad], shown=3)
            raise DatasetError(f"{root}: none of the {len(paths)} images can be read ({names})")
        target, unreadable = final, tuple(paths[i] for i in bad)
        if bad:  # copy the readable rows into an array without holes
            keep = np.delete(np.arange(len(paths)), bad)
            target, full, out = _partial_path(final, unreadable), out, temporary(len(keep))
            for start in range(0, len(keep), 256):
                out[start : start + 256] = full[keep[start : start + 256]]
            del full
        out.flush()
        del out
        os.replace(tmps[-1], target)
        return target, unreadable
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
