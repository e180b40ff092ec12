"""Tensor helpers shared by the metrics and the re-ranking (here, so neither imports the other)."""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]


def as_numpy_ids(x: ArrayLike) -> np.ndarray:
    """1-D int64 numpy array of ids (pids, cameras) from a tensor, array or list."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(np.int64, copy=False).reshape(-1)


def as_float_tensor(x: ArrayLike, device: torch.device | None) -> torch.Tensor:
    """float32 tensor on ``device`` (``None``: where it already is; numpy stays on the CPU)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device, dtype=torch.float32)


def matmul_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` in float32. On CPU through numpy: its OpenBLAS measured ~1.7x faster than
    torch's CPU matmul for these shapes on the 2-core AMD dev machines (0.42 s vs 0.72 s for
    3,368 x 15,913 x 768)."""
    if a.device.type == "cpu" and b.device.type == "cpu":
        return torch.from_numpy(np.matmul(a.numpy(), b.numpy().T))
    return a @ b.t()


class single_thread:
    """Run torch CPU ops on one thread inside the block.

    The rank counting is many short element-wise ops; with 2 intra-op threads each one pays a
    fork/join that cost more than the op itself (measured 17 ms vs 276 ms per chunk on a busy
    2-core machine). The big matmul runs in numpy's OpenBLAS (see ``blas_single``).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads()
        if self.enabled:
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.saved)


@functools.lru_cache(maxsize=1)
def _openblas() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """(set, get) of the thread count of the OpenBLAS bundled in numpy's wheel, or None (another
    BLAS, or none found)."""
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*")
    for path in sorted(glob.glob(libs)):
        try:
            lib = ctypes.CDLL(path)  # already loaded by numpy: the same handle
        except OSError:
            continue
        for name in ("scipy_openblas_%s_num_threads64_", "openblas_%s_num_threads64_"):
            setter = getattr(lib, name % "set", None)
            getter = getattr(lib, name % "get", None)
            if setter is not None and getter is not None:
                return setter, getter
    return None


def blas_single_available() -> bool:
    """Whether ``blas_single`` can put numpy's BLAS on one thread here."""
    return _openblas() is not None


class blas_single:
    """numpy's OpenBLAS on one thread inside the block, so that each of our worker threads runs
    its own matmul on its own core.

    Why: OpenBLAS's idle worker threads spin for a while (~0.1 s) after every call; numpy and
    torch work done on the other core right after a 2-thread matmul shared it with that spinning
    thread (measured: evaluate() with one ranking thread used 2 CPU-seconds per wall second).
    """

    def __enter__(self) -> None:
        blas = _openblas()
        self.saved = None if blas is None else int(blas[1]())
        if blas is not None:
            blas[0](ctypes.c_int64(1))

    def __exit__(self, *exc: object) -> None:
        blas = _openblas()
        if blas is not None and self.saved is not None:
            blas[0](ctypes.c_int64(self.saved))


def segment_sum(values: torch.Tensor, seg: torch.Tensor, n: int) -> torch.Tensor:
    """Sums of ``values`` per segment id ``seg`` in [0, n)."""
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    return out.index_add_(0, seg, values)


def orderable_bits(x: torch.Tensor) -> torch.Tensor:
    """Map float32 values to int64 in [0, 2**32) with the same order (-0.0 == +0.0)."""
    bits = (x.float() + 0.0).contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + (1 << 31)
