"""Each item's nearest items over all N = Q + G items, for the k-reciprocal re-ranking.

Exact, with ties broken by index: rows are ranked by int64 keys (closeness descending, then
index ascending). Two ways to get them:

- row by row (distances given as blocks): per chunk of rows, the top-k of the full row;
- symmetric (features): the closeness matrix is symmetric, so only the panels on and above the
  diagonal are computed (half the matmul, which is most of the re-ranking's time at MSMT17
  scale), and each panel is ranked along its rows and along its columns. Every row keeps a
  running candidate list that each panel's top-k is merged into.

A block's top-k is taken by value with a few spare places; a row whose width-th and last
fetched values tie may have lost an equal item at the cut, so it is ranked again on its full
row at the end.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from reidsearch.evaluation.tensors import orderable_bits

SPARE = 4  # extra places fetched per block beyond the width, so ties at the cut are rare


def order_keys(closeness: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """int64 keys sorting by closeness descending, then index ascending (no ties)."""
    return ((orderable_bits(-closeness) - (1 << 31)) << 32) | idx


def nearest(
    dist: Any, width: int, chunk: int, workers: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each item's ``width`` nearest items, their distances, and the item's maximum distance
    over all N items (the row normaliser). ``dist`` gives ``closeness_rows(start, stop)`` and
    ``to_dist``; with ``closeness_panel`` (symmetric distances) only half is computed.

    Rows of each block are split between ``workers`` threads: torch's CPU top-k runs on one
    thread each (inside ``single_thread``); the matmul keeps numpy's own threads."""
    n = dist.n
    extra = min(n, width + SPARE)
    vals = torch.full((n, extra), float("-inf"), device=dist.device)
    idx = torch.zeros((n, extra), dtype=torch.long, device=dist.device)
    lowest = torch.full((n,), float("inf"), device=dist.device)
    unsure = torch.zeros(n, dtype=torch.bool, device=dist.device)
    state = (vals, idx, lowest, unsure, width)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    parts = workers if pool else 1
    symmetric = getattr(dist, "closeness_panel", None) is not None
    try:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            if symmetric:
                panel = dist.closeness_panel(start, stop)  # rows start..stop, columns start..n
                jobs = _splits(panel, start, start, parts, transpose=False)
                jobs += _splits(panel[:, stop - start :], stop, start, parts, transpose=True)
            else:
                jobs = _splits(dist.closeness_rows(start, stop), start, 0, parts, transpose=False)
            run = pool.map if pool else map
            list(run(lambda job: _merge_block(*job, state), jobs))
    finally:
        if pool is not None:
            pool.shutdown()
    order = torch.sort(order_keys(vals, idx), dim=1)[1][:, :width]
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    rows = torch.nonzero(unsure).squeeze(1)
    for s in range(0, len(rows), chunk):
        part = rows[s : s + chunk]
        idx[part], vals[part] = _full_row_top(dist.closeness_rows_at(part), width)
    return idx, dist.to_dist(vals), dist.to_dist(lowest)


def _splits(
    block: torch.Tensor, row0: int, col0: int, parts: int, transpose: bool
) -> list[tuple[torch.Tensor, int, int, bool]]:
    """(sub-block, first row, first column, transposed) jobs splitting the rows to rank."""
    rows = block.shape[1] if transpose else block.shape[0]
    edges = np.linspace(0, rows, parts + 1).astype(int)
    jobs = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b > a:
            sub = block[:, a:b] if transpose else block[a:b]
            jobs.append((sub, row0 + int(a), col0, transpose))
    return jobs


def _merge_block(block: torch.Tensor, row0: int, col0: int, transpose: bool, state: tuple) -> None:
    """Merge one block's top-k into its rows' running candidates (rows of different jobs are
    disjoint, so threads never write the same row)."""
    vals, idx, lowest, unsure, width = state
    with torch.inference_mode():  # thread-local: the pool's threads need it too
        if transpose:
            block = block.t().contiguous()
        rows = slice(row0, row0 + block.shape[0])
        k = min(vals.shape[1], block.shape[1])
        top_v, top_i = torch.topk(block, k, dim=1, largest=True, sorted=True)
        if block.shape[1] > k > width:  # some items were not fetched: is the cut clear?
            unsure[rows] |= top_v[:, width - 1] == top_v[:, k - 1]
        all_v = torch.cat([vals[rows], top_v], 1)
        all_i = torch.cat([idx[rows], top_i + col0], 1)
        keep = torch.topk(order_keys(all_v, all_i), vals.shape[1], dim=1, largest=False)[1]
        vals[rows], idx[rows] = all_v.gather(1, keep), all_i.gather(1, keep)
        lowest[rows] = torch.minimum(lowest[rows], block.min(1).values)


def _full_row_top(c: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top ``width`` (index, closeness) of full closeness rows, by key."""
    n = c.shape[1]
    keys = order_keys(c, torch.arange(n, device=c.device).expand(c.shape[0], n))
    best = torch.topk(keys, width, dim=1, largest=False).values.sort(1)[0] & 0xFFFFFFFF
    return best, c.gather(1, best)
