"""Exact ranks of positives from 16-bit keys sorted by numpy's radix sort (the CPU default).

Why: on the 2-core AMD dev machines numpy sorts float32 rows at ~17 ns per item (its SIMD sort
is not used there), while a stable sort of 16-bit integers is a radix sort at ~4 ns per item.
So each score becomes a 16-bit key by a monotone map (non-decreasing in the score: every
float step rounds monotonically), spread over the row's range of positive scores:

    key = trunc(clip(score * scale + (1 - lowest positive * scale), 0, 65002)),
    scale = 65000 / (highest positive - lowest positive)   (capped: see ``_keys``).

Items below the lowest positive all get key 0, items above the highest one the top key; the
lowest positive gets key 1. Because the map is monotone, an item whose key is larger than a
positive's scores higher, a smaller key scores lower: two binary searches in the sorted keys
count the items above each positive. Only when another item shares a positive's key is the
order undecided; for those positives (a few percent) the items of that key are compared on
their float scores. When few items score at or above a row's lowest positive (good features),
only those keys are sorted (``_sorted_keys``). A row where
an item scores exactly like a positive is a tie row, returned for the exact (index-ordered)
path, as ``ranking._ranks_sorted`` does.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

_LEVELS = 65000.0
_TOP = 65002.0
_BELOW = np.int16(-32768)  # the key of every item below the row's lowest positive


def _positive_order(
    pq: torch.Tensor, pvals: torch.Tensor, pg: torch.Tensor, num_c: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's positives in a (num_c, pmax) table sorted by score ascending (+inf padding),
    their gallery columns (-1 padding), the row counts and the real-slot mask."""
    counts = torch.bincount(pq, minlength=num_c)
    pmax = max(int(counts.max()) if len(counts) else 0, 1)
    off = torch.cumsum(counts, 0) - counts
    within = torch.arange(len(pq)) - off[pq]
    ps = torch.full((num_c, pmax), float("inf"), dtype=pvals.dtype)
    ps[pq, within] = pvals
    cols = torch.full((num_c, pmax), -1, dtype=torch.long)
    cols[pq, within] = pg
    ps, order = torch.sort(ps, dim=1, stable=True)
    real = torch.arange(pmax)[None, :] < counts[:, None]
    return ps, cols.gather(1, order), counts, real


class _Buffers(threading.local):
    """Per-thread scratch arrays reused from chunk to chunk: a fresh 16 MB array per step cost
    its page faults every time."""

    def get(self, name: str, size: int, dtype: type) -> np.ndarray:
        buf = getattr(self, name, None)
        if buf is None or buf.size < size:
            buf = np.empty(size, dtype=dtype)
            setattr(self, name, buf)
        return buf[:size]


_BUFFERS = _Buffers()


def _keys(scores: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Monotone 16-bit keys of a (C, G) score block (see the module docstring), as int16 whose
    order is the keys' order (uint16 shifted by 32768), in this thread's scratch array.

    One multiply and one add per score: x = s * scale + (1 - lo * scale), both rounded in
    float32 (monotone steps). The scale is capped so that |s| * scale stays under 2**22 over the
    positives' range: then the lowest positive's x is exactly 1 (A + (1 - A) is exact for such
    A), never in the key 0 of the items below it.
    """
    with np.errstate(invalid="ignore"):  # rows without positives: inf - inf
        span = hi - lo
        big = np.maximum(np.abs(lo), np.abs(hi))
    ok = np.isfinite(span) & (span > 1e-30)
    scale = np.where(ok, _LEVELS / np.where(ok, span, 1), 1)
    scale = np.minimum(scale, np.where(ok & (big > 0), 2.0**22 / np.where(big > 0, big, 1), 1))
    scale = scale.astype(np.float32)
    base = np.where(np.isfinite(lo), lo, 0).astype(np.float32)
    offset = np.float32(1.0) - base * scale  # float32 throughout, as in the pass below
    x = _BUFFERS.get("floats", scores.size, np.float32).reshape(scores.shape)
    np.multiply(scores, scale[:, None], out=x)
    x += offset[:, None]
    np.clip(x, 0.0, _TOP, out=x)
    keys = _BUFFERS.get("keys", scores.size, np.uint16).reshape(scores.shape)
    np.copyto(keys, x, casting="unsafe")
    keys ^= np.uint16(0x8000)
    return keys.view(np.int16)


def _sorted_keys(keys: np.ndarray) -> np.ndarray:
    """Each row's keys at or above its lowest positive's, sorted, padded in front with the
    lowest key (``keys`` itself is left as it is).

    numpy's radix sort for 16-bit integers. When at most a quarter of the chunk scores at or
    above the row's lowest positive (good features: ~2 %), only those keys are gathered and
    sorted, in a (C, longest row) table.
    """
    num_c, num_g = keys.shape
    above = keys > _BELOW
    total = int(np.count_nonzero(above))
    if total > keys.size // 4:
        table = _BUFFERS.get("sorted", keys.size, np.int16).reshape(keys.shape)
        np.copyto(table, keys)
        table.sort(axis=1, kind="stable")
        return table
    flat = np.flatnonzero(above)
    start = np.searchsorted(flat, np.arange(num_c + 1) * num_g)
    counts = np.diff(start)
    width = max(int(counts.max()), 1)
    table = np.full((num_c, width), _BELOW, dtype=np.int16)
    row = np.repeat(np.arange(num_c), counts)
    # Right-aligned: the padding (lowest key) sorts first and stays first.
    col = np.arange(total) - start[row] + (width - counts)[row]
    table[row, col] = keys.reshape(-1)[flat]
    table.sort(axis=1, kind="stable")
    return table


def ranks_by_keys(
    scores: torch.Tensor, pq: torch.Tensor, pg: torch.Tensor, pvals: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, rank, at_or_above, tie_rows) of a CPU chunk, as ``ranking._ranks_sorted``."""
    num_c, num_g = scores.shape
    ps, cols, counts, real = _positive_order(pq, pvals, pg, num_c)
    has = counts > 0
    lo = torch.where(has, ps[:, 0], torch.inf)
    hi = ps.gather(1, (counts - 1).clamp(min=0)[:, None])[:, 0]
    sn = scores.numpy()
    keys = _keys(sn, lo.numpy(), torch.where(has, hi, torch.inf).numpy())
    pkeys = torch.from_numpy(keys[np.arange(num_c)[:, None], cols.clamp(min=0).numpy()])
    table = _sorted_keys(keys)
    rows = torch.from_numpy(table)
    right = torch.searchsorted(rows, pkeys, right=True)
    same = right - torch.searchsorted(rows, pkeys)
    # Every key above a positive's is in the table (padding is the lowest key, below all).
    greater = table.shape[1] - right
    tie = torch.zeros(num_c, dtype=torch.bool)
    # Undecided positives: only the row's items with the same key need their float score
    # compared (one 16-bit compare finds them); an equal score is a tie.
    amb_r, amb_s = torch.nonzero(real & (same > 1), as_tuple=True)
    if len(amb_r):
        values = ps[amb_r, amb_s].tolist()
        kk = pkeys[amb_r, amb_s].tolist()
        found = greater[amb_r, amb_s].numpy().copy()
        for i, (r, v, k) in enumerate(zip(amb_r.tolist(), values, kk, strict=True)):
            cell = sn[r, np.flatnonzero(keys[r] == k)]
            found[i] += np.count_nonzero(cell > v)
            if np.count_nonzero(cell == v) > 1:
                tie[r] = True
        greater[amb_r, amb_s] = torch.from_numpy(found)
    slot = torch.arange(ps.shape[1])[None, :]
    ok = real & ~tie[:, None]
    prow = torch.nonzero(ok)[:, 0]
    rank = (greater + 1)[ok]
    at_or_above = (counts[:, None] - slot).expand_as(ps)[ok]
    return prow, rank, at_or_above, torch.nonzero(tie).squeeze(1)
