"""Each item's nearest items for the re-ranking, two ways.

``nearest_rows`` (GPUs, given distance matrices): per chunk of rows, a matmul and a top-k.

``nearest_symmetric`` (L2-normalised features on a CPU): at MSMT17 scale (N = 93,820, 768-d)
the N x N matmul is most of the re-ranking's time, and the similarity is symmetric, so only the
blocks on and above the diagonal are computed; each serves its rows and its columns. A column's
nearest items are not found by a top-k down the block (that cost more than the halved matmul
saved, issue 11) but by a running threshold per item, the similarity of the W-th nearest item
found so far: only block entries at or above their row's or their column's threshold (well
under 1 % once the thresholds settle) are merged into those items' lists. The diagonal blocks
go first, so every item has a threshold before the rest.

Exact: an entry below an item's threshold can't be among its W nearest (the test is >=, so ties
stay candidates), every pair is seen once, and lists are merged by int64 keys that order by
similarity descending, then index ascending, as ``nearest_rows`` does. The row minimum (the
re-ranking's row normaliser) is a running minimum over rows and columns.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import torch

from reidsearch.evaluation.tensors import blas_single, blas_single_available, orderable_bits

_SENTINEL = np.iinfo(np.int64).max


def order_keys(close: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """int64 keys: similarity descending, then index ascending (``_order_keys``)."""
    bits = (np.negative(close, dtype=np.float32) + np.float32(0.0)).view(np.int32)
    bits = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64)
    return (bits << 32) | idx


def key_similarity(keys: np.ndarray) -> np.ndarray:
    """The similarity a key was made from (``order_keys`` inverted)."""
    bits = (keys >> 32).astype(np.int32)
    bits = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits)
    return -bits.view(np.float32)


class _Lists:
    """Per item: its W best keys so far (sorted), the threshold and the running minimum."""

    def __init__(self, n: int, width: int) -> None:
        self.width = width
        self.best = np.full((n, width), _SENTINEL, dtype=np.int64)
        self.thr = np.full(n, -np.inf, dtype=np.float32)
        self.low = np.full(n, np.inf, dtype=np.float32)

    def merge(self, items: np.ndarray, keys: np.ndarray) -> None:
        """Merge candidate ``keys`` of ``items`` (sorted by item) into the lists."""
        if not len(items):
            return
        start = np.flatnonzero(np.r_[True, items[1:] != items[:-1]])
        counts = np.diff(np.r_[start, len(items)])
        heavy = counts > self.width
        for part in (~heavy, heavy) if heavy.any() else (None,):
            sel = np.arange(len(start)) if part is None else np.flatnonzero(part)
            if len(sel):
                self._merge_rows(items, keys, start[sel], counts[sel])

    def _merge_rows(
        self, items: np.ndarray, keys: np.ndarray, start: np.ndarray, counts: np.ndarray
    ) -> None:
        """Merge rows whose candidates start at ``start`` (``counts`` each): a padded table of
        the old list and the candidates, partitioned and sorted per row."""
        width = self.width
        uniq = items[start]
        cap = int(counts.max())
        table = np.full((len(uniq), width + cap), _SENTINEL, dtype=np.int64)
        table[:, :width] = self.best[uniq]
        group = np.repeat(np.arange(len(uniq)), counts)
        within = np.arange(len(group)) - np.repeat(np.cumsum(counts) - counts, counts)
        table[group, width + within] = keys[np.repeat(start, counts) + within]
        if cap > width:
            table = np.partition(table, width - 1, axis=1)[:, :width]
        table = np.sort(table, axis=1)[:, :width]
        self.best[uniq] = table
        last = table[:, width - 1]
        self.thr[uniq] = np.where(last != _SENTINEL, key_similarity(last), -np.inf)


def _local_thr(c: np.ndarray, thr: np.ndarray, width: int) -> np.ndarray:
    """Thresholds for the rows of ``c``: an item seen for the first time (threshold -inf)
    gets the W-th largest of its first 8 W entries here, a lower bound of its final one."""
    fresh = np.flatnonzero(np.isinf(thr))
    cols = min(c.shape[1], 8 * width)
    if not len(fresh) or cols < width:
        return thr
    sub = c[fresh, :cols]
    out = thr.copy()
    out[fresh] = np.partition(sub, cols - width, axis=1)[:, cols - width]
    return out


def _take_rows(c: np.ndarray, a: int, b: int, lists: _Lists, mask: np.ndarray) -> None:
    """Candidates and minima of block rows [a, a + h) x columns [b, b + w), for the rows."""
    h, w = c.shape
    tr = _local_thr(c, lists.thr[a : a + h], lists.width)
    mask = mask[: h * w].reshape(h, w)
    np.greater_equal(c, tr[:, None], out=mask)
    np.minimum(lists.low[a : a + h], c.min(1), out=lists.low[a : a + h])
    flat = np.flatnonzero(mask)
    r, q = np.divmod(flat, w)
    lists.merge(a + r, order_keys(c.reshape(-1)[flat], b + q))


def _take_cols(c: np.ndarray, a: int, b: int, lists: _Lists, mask: np.ndarray) -> None:
    """The same for the block's columns (items [b, b + w)), grouped by column."""
    h, w = c.shape
    tc = _local_thr(c.T, lists.thr[b : b + w], lists.width)
    mask = mask[: h * w].reshape(h, w)
    np.greater_equal(c, tc[None, :], out=mask)
    np.minimum(lists.low[b : b + w], c.min(0), out=lists.low[b : b + w])
    flat = np.flatnonzero(mask)
    r, q = np.divmod(flat, w)
    # Group by column: a stable radix sort of 16-bit column numbers when they fit.
    order = np.argsort(q.astype(np.int16) if w <= 32767 else q, kind="stable")
    r, q = r[order], q[order]
    lists.merge(b + q, order_keys(c[r, q], a + r))


def nearest_symmetric(
    feats: np.ndarray,
    width: int,
    block: int,
    workers: int = 1,
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, similarities) of each item's ``width`` nearest items, ordered, and each item's
    lowest similarity over all N items; ``keep`` (Q, G) receives the first Q rows' similarities
    to the last G items on the way.

    Blocks of ``block`` x ``block``. With ``workers`` > 1 (and numpy's OpenBLAS found), each
    worker thread makes whole blocks with a one-thread matmul and takes their candidates under
    a lock (the lists' one writer at a time); else numpy's matmul keeps its own threads and the
    candidates are taken in between (``tensors.blas_single`` says why the first is better).
    """
    n = feats.shape[0]
    lists = _Lists(n, width)
    starts = list(range(0, n, block))
    order = [(a, a) for a in starts] + [(a, b) for a in starts for b in starts if b > a]
    nq = 0 if keep is None else keep.shape[0]
    mask = np.empty(block * block, dtype=bool)
    lock = threading.Lock()

    def one(ab: tuple[int, int]) -> None:
        a, b = ab
        c = feats[a : a + block] @ feats[b : b + block].T
        h, w = c.shape
        qa, gb = min(a + h, nq), max(b, nq)
        if keep is not None and qa > a and b + w > gb:  # blocks write disjoint parts
            keep[a:qa, gb - nq : b + w - nq] = c[: qa - a, gb - b :]
        with lock:
            _take_rows(c, a, b, lists, mask)
            if a != b:
                _take_cols(c, a, b, lists, mask)

    if workers > 1 and blas_single_available():
        with blas_single(), ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, order))
    else:
        for ab in order:
            one(ab)
    idx = lists.best & 0xFFFFFFFF
    return idx, key_similarity(lists.best), lists.low


def _order_keys(closeness: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """int64 keys sorting by closeness descending, then index ascending (no ties)."""
    return ((orderable_bits(-closeness) - (1 << 31)) << 32) | idx


def nearest_rows(
    dist: Any, width: int, chunk: int, workers: int = 1, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each item's ``width`` nearest items (ties by index), their distances, and the item's
    maximum distance over all N items (the row normaliser).

    Per chunk of rows, one matmul (numpy's threads on a CPU), then the top-k and the row
    maximum, rows split between ``workers`` threads: torch's CPU top-k and min run on one
    thread each inside ``single_thread``, and are a third of the time at MSMT17 scale.
    ``keep`` (Q, G), when given, receives the query x gallery closeness rows on the way, so
    the final pass needs no second query x gallery matmul."""
    n = dist.n
    extra = min(n, width + 4)
    ranks, near, rowmax = [], [], []
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    rows_fn = partial(_nearest_rows, dist=dist, width=width, extra=extra, n=n)
    try:
        for start in range(0, n, chunk):
            c = dist.closeness_rows(start, min(start + chunk, n))
            if keep is not None and start < keep.shape[0]:
                stop_q = min(start + chunk, keep.shape[0])
                keep[start:stop_q] = c[: stop_q - start, keep.shape[0] :]
            edges = np.linspace(0, c.shape[0], (workers if pool else 1) + 1).astype(int)
            parts = [c[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
            done = list(pool.map(rows_fn, parts)) if pool else list(map(rows_fn, parts))
            ranks += [d[0] for d in done]
            near += [d[1] for d in done]
            rowmax += [d[2] for d in done]
    finally:
        if pool is not None:
            pool.shutdown()
    return torch.cat(ranks), torch.cat(near), torch.cat(rowmax)


def _nearest_rows(
    c: torch.Tensor, dist: Any, width: int, extra: int, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``nearest_rows`` for a block of closeness rows."""
    with torch.inference_mode():  # thread-local: the pool's threads need it too
        rowmax = dist.to_dist(c.min(1).values)
        vals, idx = torch.topk(c, extra, dim=1, largest=True, sorted=True)
        _, order = torch.sort(_order_keys(vals, idx), dim=1)
        idx, vals = idx.gather(1, order), vals.gather(1, order)
        # When the width-th value ties with the last fetched one, the cut may be ambiguous.
        unsure = (vals[:, width - 1] == vals[:, extra - 1]) & (extra < n)
        if bool(unsure.any()):
            rows = torch.nonzero(unsure).squeeze(1)
            full = _order_keys(c[rows], torch.arange(n, device=c.device).expand(len(rows), n))
            best = torch.topk(full, width, dim=1, largest=False).values.sort(1)[0] & 0xFFFFFFFF
            idx[rows, :width] = best
            vals[rows, :width] = c[rows].gather(1, best)
        return idx[:, :width], dist.to_dist(vals[:, :width]), rowmax
