"""Exact ranks of every positive in a chunk of score rows, without sorting the rows.

Why not a top-k list: FAISS GPU search caps k at 2048, and full-gallery AP needs the rank of
every positive. Why not argsort: sorting every similarity row is the slow part of the usual
implementation. Instead, per chunk of queries, each positive's rank is counted:

- dense path (weak features, many items above the hardest positive): one binary search of every
  score into its row's sorted positive scores, then a per-row histogram;
- compact path (few such items): only the items scoring >= the hardest positive are kept and
  compared, as int64 keys, against the positives;
- sorted path: numpy's sort of each float row, then two binary searches per positive. numpy
  sorts a 256 x 15,913 float32 chunk in 35-75 ms on one core of the 2-core dev machines, torch's
  CPU sort in ~370 ms; the dense path takes ~150 ms there;
- keys path (the CPU default, ``key_ranks``): the same on monotone 16-bit keys, which numpy
  radix-sorts in ~16 ms per such chunk; positives whose key another item shares are counted on
  their float row.

Ranking order (also the tie rule): score descending, then gallery index ascending, i.e. what a
stable sort of ``-score`` gives. The compact path packs (score, index) into one int64 key
(order-preserving bits of the float32 score, then the reversed index), so keys never tie; the
dense and sorted paths detect rows where an item scores exactly like a positive and send them
to the compact path.
"""

from __future__ import annotations

import numpy as np
import torch

from reidsearch.evaluation.key_ranks import ranks_by_keys
from reidsearch.evaluation.tensors import orderable_bits


def _ranks_compact(
    scores: torch.Tensor,
    pq: torch.Tensor,
    pg: torch.Tensor,
    thr: torch.Tensor,
    index_bits: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact ranks (ties included) from the few candidates scoring >= the hardest positive.

    Returns (row, rank, at_or_above) per positive; rank is 1-based among valid items and
    at_or_above counts the row's positives ranked at or before this one.
    """
    num_c, num_g = scores.shape
    device = scores.device
    row_shift = 32 + index_bits
    gmax = (1 << index_bits) - 1

    mask = scores >= thr[:, None]
    flat = mask.view(-1).nonzero().squeeze(1)
    rows = torch.repeat_interleave(torch.arange(num_c, device=device), mask.sum(1))
    cols = flat - rows * num_g
    ckeys = (rows << row_shift) | (orderable_bits(scores.view(-1)[flat]) << index_bits)
    ckeys |= gmax - cols
    pvals = scores[pq, pg]
    pkeys = (pq << row_shift) | (orderable_bits(pvals) << index_bits) | (gmax - pg)
    pkeys, _ = torch.sort(pkeys)
    prow = pkeys >> row_shift

    counts = torch.bincount(prow, minlength=num_c)
    off = torch.cumsum(counts, 0) - counts
    # Bucket of a candidate = number of its row's positives with a smaller key; row r owns the
    # (counts[r] + 1) slots starting at off[r] + r.
    bucket = torch.searchsorted(pkeys, ckeys) + rows
    hist = torch.bincount(bucket, minlength=len(pkeys) + num_c)
    suffix = torch.cat([hist.flip(0).cumsum(0).flip(0), hist.new_zeros(1)])
    pos = torch.arange(len(pkeys), device=device)
    seg_end = off[prow] + counts[prow] + prow + 1
    rank = suffix[pos + prow + 1] - suffix[seg_end] + 1
    at_or_above = off[prow] + counts[prow] - pos
    return prow, rank, at_or_above


def _ranks_dense(
    scores: torch.Tensor, pq: torch.Tensor, pvals: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ranks by one binary search of every score into its row's sorted positive scores.

    Faster than ``_ranks_compact`` when many items score above the hardest positive. A row where
    some item scores exactly like one of its positives (other than that positive itself) has a
    tie; such rows are returned in ``tie_rows`` for the exact path. Returns (row, rank,
    at_or_above, tie_rows).
    """
    num_c = scores.shape[0]
    device = scores.device
    ps, counts, pmax = _positive_table(pq, pvals, num_c)
    ps = torch.cat([ps, ps.new_full((num_c, 1), float("inf"))], dim=1)
    width = pmax + 1
    bucket = torch.searchsorted(ps[:, :pmax].contiguous(), scores)
    # An item equal to a positive lands in that positive's bucket (left search).
    equal = (torch.gather(ps, 1, bucket) == scores).sum(1)
    bucket += torch.arange(0, num_c * width, width, device=device)[:, None]
    hist = torch.bincount(bucket.view(-1), minlength=num_c * width).view(num_c, width)
    greater = hist.flip(1).cumsum(1).flip(1)[:, 1:]  # items > ps[:, k]
    slot = torch.arange(pmax, device=device)[None, :]
    real = slot < counts[:, None]
    tie = (equal != counts) | ((ps[:, 1:pmax] == ps[:, : pmax - 1]) & real[:, 1:]).any(1)
    ok = real & ~tie[:, None]
    prow = torch.nonzero(ok)[:, 0]
    rank = (greater + 1)[ok]
    at_or_above = (counts[:, None] - slot).expand(num_c, pmax)[ok]
    return prow, rank, at_or_above, torch.nonzero(tie).squeeze(1)


def _positive_table(
    pq: torch.Tensor, pvals: torch.Tensor, num_c: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Each row's positive scores sorted ascending in a (num_c, pmax) table padded with +inf,
    and the row counts."""
    counts = torch.bincount(pq, minlength=num_c)
    pmax = int(counts.max())
    off = torch.cumsum(counts, 0) - counts
    within = torch.arange(len(pq), device=pq.device) - off[pq]
    ps = torch.full((num_c, pmax), float("inf"), device=pvals.device, dtype=pvals.dtype)
    ps[pq, within] = pvals
    return torch.sort(ps, dim=1)[0], counts, pmax


def _ranks_sorted(
    scores: torch.Tensor, pq: torch.Tensor, pvals: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ranks from each row sorted by numpy (CPU only): items above a positive are the row's
    length minus a right binary search of its score. A row where an item or another positive
    scores exactly like a positive is a tie, returned in ``tie_rows`` for the exact path."""
    num_c, num_g = scores.shape
    ps, counts, pmax = _positive_table(pq, pvals, num_c)
    rows = torch.from_numpy(np.sort(scores.numpy(), axis=1))
    right = torch.searchsorted(rows, ps, right=True)
    equal = right - torch.searchsorted(rows, ps)
    slot = torch.arange(pmax)[None, :]
    real = slot < counts[:, None]
    tie = ((equal != 1) & real).any(1)
    ok = real & ~tie[:, None]
    prow = torch.nonzero(ok)[:, 0]
    rank = (num_g - right + 1)[ok]
    at_or_above = (counts[:, None] - slot).expand(num_c, pmax)[ok]
    return prow, rank, at_or_above, torch.nonzero(tie).squeeze(1)


PATHS = ("auto", "compact", "dense", "sorted", "keys")


def chunk_ranks(
    scores: torch.Tensor,
    pq: torch.Tensor,
    pg: torch.Tensor,
    index_bits: int,
    path: str = "auto",
    dense_above: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, rank, at_or_above) per positive of one chunk; excluded items are already -inf.

    ``path="auto"``: the keys path (``key_ranks``) on the CPU; on a GPU the compact path when
    at most ``dense_above`` of the chunk scores at or above its row's hardest positive, else the
    dense one (every path gives the same ranks; a test checks it)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, not {path!r}")
    num_c = scores.shape[0]
    pvals = scores[pq, pg]
    thr = torch.full((num_c,), float("inf"), device=scores.device, dtype=scores.dtype)
    thr.scatter_reduce_(0, pq, pvals, reduce="amin")
    if path == "auto":
        if scores.device.type == "cpu":
            path = "keys"
        else:
            density = float((scores >= thr[:, None]).sum()) / max(scores.numel(), 1)
            path = "compact" if density <= dense_above else "dense"
    if path == "compact":
        return _ranks_compact(scores, pq, pg, thr, index_bits)
    if path == "keys":
        prow, rank, above, tie_rows = ranks_by_keys(scores, pq, pg, pvals)
    else:
        split = _ranks_sorted if path == "sorted" else _ranks_dense
        prow, rank, above, tie_rows = split(scores, pq, pvals)
    if len(tie_rows):
        remap = torch.full((num_c,), -1, dtype=torch.long, device=scores.device)
        remap[tie_rows] = torch.arange(len(tie_rows), device=scores.device)
        sel = remap[pq] >= 0
        trow, trank, tabove = _ranks_compact(
            scores[tie_rows], remap[pq][sel], pg[sel], thr[tie_rows], index_bits
        )
        prow = torch.cat([prow, tie_rows[trow]])
        rank = torch.cat([rank, trank])
        above = torch.cat([above, tabove])
    return prow, rank, above
