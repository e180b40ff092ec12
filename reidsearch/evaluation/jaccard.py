"""The re-ranking's last pass: the query x gallery output, written in place.

out = (1 - lambda) * (1 - acc / (2 - acc)) + lambda * d / rowmax, with acc = sum(min(Vq, Vg))
zero for most pairs (no shared column of V). So the dense part, (1 - lambda) + lambda * d /
rowmax, is two in-place passes over the output rows, and the Jaccard term is subtracted only
where acc > 0 (acc: one zeroed buffer per worker, cleared where it was written).

Why workers: at MSMT17 scale this pass is ~6 s of scattered reads and writes on one thread, the
largest part of the re-ranking after the neighbours; query chunks write disjoint output rows,
so two threads (torch's ops release the GIL) each take every other chunk with their own buffer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from reidsearch.evaluation.tensors import segment_sum


@dataclass(frozen=True)
class SparseV:
    """The query rows of V (``q_ptr`` indexes them by query) and an inverted index over the
    gallery rows' columns (``col_ptr``), as ``_rerank`` builds them."""

    qr: torch.Tensor
    qc: torch.Tensor
    qv: torch.Tensor
    q_ptr: torch.Tensor
    gr: torch.Tensor
    gval: torch.Tensor
    col_ptr: torch.Tensor


def expand_rows(ptr: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each entry of ``which`` (row ids), the positions of that row's elements."""
    cnt = ptr[which + 1] - ptr[which]
    owner = torch.repeat_interleave(torch.arange(len(which), device=ptr.device), cnt)
    start = torch.cumsum(cnt, 0) - cnt
    pos = ptr[which][owner] + torch.arange(int(cnt.sum()), device=ptr.device) - start[owner]
    return owner, pos


def query_chunks(work: np.ndarray, rows_max: int, max_pairs: int) -> list[tuple[int, int]]:
    """Consecutive query ranges of at most ``rows_max`` rows and ``max_pairs`` expanded pairs
    (a single query over the budget is a range of its own)."""
    chunks, start, n = [], 0, len(work)
    while start < n:
        stop, total = start + 1, int(work[start])
        while stop < n and stop - start < rows_max and total + work[stop] <= max_pairs:
            total += int(work[stop])
            stop += 1
        chunks.append((start, stop))
        start = stop
    return chunks


def write_output(
    out: torch.Tensor,
    v: SparseV,
    rowmax: torch.Tensor,
    lam: float,
    dense_part_: Callable[[torch.Tensor, torch.Tensor, float], None],
    max_pairs: int,
    chunk: int,
    workers: int = 1,
) -> None:
    """Turn ``out`` (Q, G closeness rows) into the re-ranked distances, in place;
    ``dense_part_`` (the distance's own) makes rows (1 - lam) + lam * d / rowmax."""
    num_q, num_g = out.shape
    work = segment_sum((v.col_ptr[1:] - v.col_ptr[:-1])[v.qc], v.qr, num_q)  # pairs per query
    rows_max = max(1, min(chunk, num_q, (1 << 24) // max(num_g, 1)))  # acc: 64 MB at most
    workers = max(1, workers if out.device.type == "cpu" else 1)
    chunks = query_chunks(work.cpu().numpy(), rows_max, max(1, max_pairs // workers))
    local = threading.local()

    def one(se: tuple[int, int]) -> None:
        with torch.inference_mode():  # thread-local: a pool's threads start outside it
            _one(se)

    def _one(se: tuple[int, int]) -> None:
        if not hasattr(local, "acc"):
            local.acc = torch.zeros(rows_max * num_g, dtype=torch.float32, device=out.device)
        start, stop = se
        acc = local.acc
        a, b = int(v.q_ptr[start]), int(v.q_ptr[stop])
        owner, pos = expand_rows(v.col_ptr, v.qc[a:b])
        mins = torch.minimum(v.qv[a:b][owner], v.gval[pos])
        flat = (v.qr[a:b][owner] - start) * num_g + v.gr[pos]
        del owner, pos
        acc.index_add_(0, flat, mins.float())
        del mins
        rows = out[start:stop]
        dense_part_(rows, rowmax[start:stop], lam)
        # Written per pair entry; a pair listed twice gets the same value twice.
        shared = acc[flat].double()
        flat_rows = rows.view(-1)
        flat_rows[flat] = flat_rows[flat] - ((1.0 - lam) * shared / (2.0 - shared)).float()
        acc[flat] = 0.0

    if workers == 1:
        for se in chunks:
            one(se)
        return
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, chunks))
