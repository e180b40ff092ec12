"""Expanded k-reciprocal sets on a CPU, in numpy (``rerank._expanded_sets`` is the torch twin
that runs on a GPU; a test checks they agree).

Why numpy: the sets are gathers of small rows (each member's half set) and membership tests;
numpy's ``take`` along rows measured ~20x torch's CPU indexing for these shapes (3 ms vs 60 ms
for 8,192 x 21 rows of 11), which made the torch version several seconds at MSMT17 scale.
"""

from __future__ import annotations

import numpy as np


def reciprocal(top: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Mask (N, k): does item ``top[i, m]`` have i among its own first k items?"""
    n, k = top.shape
    out = np.empty((n, k), dtype=bool)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        theirs = np.take(top, top[s:e], axis=0)  # (c, k, k)
        me = np.arange(s, e)[:, None, None]
        out[s:e] = (theirs == me).any(2)
    return out


def expanded_sets(ranks: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of every item's expanded k-reciprocal set, sorted by row then col.

    A member c of i's k-reciprocal set adds its own half set (k = round(k1 / 2)) when more
    than 2/3 of it lies in i's set. Membership is looked up in a (rows, N) marker set and
    cleared per chunk of rows.
    """
    n = ranks.shape[0]
    k = min(k1 + 1, n)
    kh = min(int(np.around(k1 / 2.0)) + 1, n)
    top = np.ascontiguousarray(ranks[:, :k])
    top_h = np.ascontiguousarray(ranks[:, :kh])
    recip, recip_h = reciprocal(top), reciprocal(top_h)
    chunk = max(1, min(n, (1 << 24) // n))
    marker = np.zeros(chunk * n, dtype=bool)
    rows_out, cols_out = [], []
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        fwd, rec = top[s:e], recip[s:e]  # (c, k)
        cand = np.take(top_h, fwd, axis=0)  # (c, k, kh): each member's half set
        cand_ok = np.take(recip_h, fwd, axis=0)
        at = np.arange(e - s)[:, None] * n
        mine = (at + fwd)[rec]
        marker[mine] = True
        in_set = marker[at[..., None] + cand]
        marker[mine] = False
        inter = np.count_nonzero(in_set & cand_ok, axis=2)
        size = np.count_nonzero(cand_ok, axis=2)
        take = rec & (inter > (2.0 / 3.0) * size)
        add_ok = cand_ok & take[..., None]
        members = np.concatenate(
            [np.where(rec, fwd, n), np.where(add_ok, cand, n).reshape(e - s, -1)], axis=1
        )
        members.sort(axis=1)
        keep = members < n
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]
        r, c = np.nonzero(keep)
        rows_out.append(r + s)
        cols_out.append(members[r, c])
    return np.concatenate(rows_out), np.concatenate(cols_out)
