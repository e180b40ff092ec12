"""Decoded-image cache: every manifest image decoded and resized once into a memory-mapped array.

Why: JPEG/PNG decoding and resizing would otherwise be paid by every trial and every epoch; a
uint8 ``N x H x W x 3`` ``.npy`` is shared through the page cache by all processes on a node and
feeds batched (GPU) augmentation directly.
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
from reidsearch.errors import DatasetError
from reidsearch.storage import default_cache_root

CACHE_VERSION = 1


@dataclass
class ImageCache:
    """The decoded images of one manifest, in manifest row order."""

    path: Path
    images: np.ndarray  # N x H x W x 3 uint8, memory-mapped read-only

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


def _fill(out: np.ndarray, root: Path, paths: Sequence[str], workers: int) -> None:
    """Decode ``root / paths[i]`` into ``out[i]`` with a small thread pool (PIL drops the GIL)."""
    height, width = out.shape[1:3]

    def load(i: int) -> None:
        image = root / paths[i]
        try:
            out[i] = _decode(image, height, width)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DatasetError(f"{image}: cannot read image ({exc})") from None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(load, range(len(paths))):
            pass


def build_image_cache(
    table: pa.Table,
    height: int,
    width: int,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> ImageCache:
    """Decode every row of ``table`` into a cached array (reused if it already exists).

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
    cached = _open(final, shape) if final.is_file() else None
    if cached is not None:
        return ImageCache(final, cached)

    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(final.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        cached = _open(final, shape) if final.is_file() else None
        if cached is not None:
            return ImageCache(final, cached)
        started = time.perf_counter()
        _decode_into(final, shape, root, paths, workers or min(4, os.cpu_count() or 1))
        record = {
            "images": len(paths),
            "root": str(root),
            "size": [height, width],
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "seconds": round(time.perf_counter() - started, 3),
        }
        final.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return ImageCache(final, np.load(final, mmap_mode="r"))


def _decode_into(
    final: Path, shape: tuple[int, ...], root: Path, paths: Sequence[str], workers: int
) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}-", suffix=".npy", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _fill(out, root, paths, workers)
        out.flush()
        del out
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
