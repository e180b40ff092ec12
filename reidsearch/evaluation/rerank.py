"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) with memory bounded on large galleries.

Same result as the dense textbook algorithm over all N = Q + G items:

- original distance d(i, j), divided by the maximum of row i (over all N items);
- R(i, k): the k nearest items of i (ascending distance, ties by index; i itself included);
  k-reciprocal set = {j in R(i, k1+1) : i in R(j, k1+1)};
- expansion: each member c whose own set at round(k1/2) overlaps the current set in more than
  2/3 of its size adds that set;
- V[i, j] = exp(-d(i, j)) over the expanded set, normalised to sum 1;
- local query expansion: V[i] = mean of V over R(i, k2) (skipped when k2 == 1);
- Jaccard distance 1 - sum(min(Vi, Vj)) / sum(max(Vi, Vj)); final = (1 - lambda) * Jaccard +
  lambda * d.

Why it fits in memory: the sets only need each item's top max(k1+1, k2) neighbours, found in row
chunks (matmul + top-k; 64 are kept so most distances V needs are looked up, not recomputed); V
is kept as sparse (row, col, value) lists; the query x gallery Jaccard part is accumulated per
query chunk through an inverted index over V's columns. Nothing N x N is ever stored. The same
torch code runs on CPU or CUDA tensors.

With features, d is the squared Euclidean distance of L2-normalised features, 2 - 2 * cos.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import torch

from reidsearch.evaluation.tensors import as_float_tensor, matmul_t, orderable_bits, single_thread


class _FeatureDistance:
    """Squared Euclidean distances of L2-normalised features, 2 - 2 * <x, y>.

    Rows are produced as similarities (larger = closer): ranking on them needs no extra pass
    over the (chunk, N) block, and 2 - 2 * s is decreasing in s.
    """

    def __init__(self, feats: torch.Tensor) -> None:
        self.feats = feats
        self.device = feats.device
        self.n = feats.shape[0]

    def closeness_rows(self, start: int, stop: int) -> torch.Tensor:
        return matmul_t(self.feats[start:stop], self.feats)

    @staticmethod
    def to_dist(closeness: torch.Tensor) -> torch.Tensor:
        return 2.0 - 2.0 * closeness

    @staticmethod
    def to_dist_(closeness: torch.Tensor) -> torch.Tensor:
        return closeness.mul_(-2.0).add_(2.0)

    def pairs(self, i: torch.Tensor, j: torch.Tensor, step: int = 16384) -> torch.Tensor:
        out = torch.empty(len(i), device=self.feats.device, dtype=self.feats.dtype)
        for s in range(0, len(i), step):
            a, b = self.feats[i[s : s + step]], self.feats[j[s : s + step]]
            out[s : s + step] = 2.0 - 2.0 * (a * b).sum(1)
        return out


class _MatrixDistance:
    """Distances given as the three blocks of the (Q + G) x (Q + G) matrix."""

    def __init__(self, q_g: torch.Tensor, q_q: torch.Tensor, g_g: torch.Tensor) -> None:
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.device = q_g.device
        self.nq = q_q.shape[0]
        self.n = self.nq + g_g.shape[0]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        parts = []
        nq = self.nq
        if start < nq:
            e = min(stop, nq)
            parts.append(torch.cat([self.q_q[start:e], self.q_g[start:e]], 1))
        if stop > nq:
            s = max(start, nq) - nq
            parts.append(torch.cat([self.q_g[:, s : stop - nq].t(), self.g_g[s : stop - nq]], 1))
        return torch.cat(parts, 0)

    def closeness_rows(self, start: int, stop: int) -> torch.Tensor:
        return self.rows(start, stop).neg_()

    @staticmethod
    def to_dist(closeness: torch.Tensor) -> torch.Tensor:
        return -closeness

    @staticmethod
    def to_dist_(closeness: torch.Tensor) -> torch.Tensor:
        return closeness.neg_()

    def pairs(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        nq = self.nq
        out = torch.empty(len(i), device=self.q_g.device, dtype=self.q_g.dtype)
        iq, jq = i < nq, j < nq
        for mi, mj, mat, oi, oj in (
            (iq, jq, self.q_q, 0, 0),
            (iq, ~jq, self.q_g, 0, nq),
            (~iq, jq, self.q_g.t(), nq, 0),
            (~iq, ~jq, self.g_g, nq, nq),
        ):
            m = mi & mj
            out[m] = mat[i[m] - oi, j[m] - oj]
        return out


def _order_keys(closeness: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """int64 keys sorting by closeness descending, then index ascending (no ties)."""
    return ((orderable_bits(-closeness) - (1 << 31)) << 32) | idx


def _nearest(
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
    """``_nearest`` for a block of closeness rows."""
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


def _pair_dist(
    dist: Any,
    ranks: torch.Tensor,
    near: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    step: int = 1 << 18,
) -> torch.Tensor:
    """d(i, j), looked up among i's stored nearest items when there, computed otherwise."""
    out = torch.empty(len(i), dtype=near.dtype, device=near.device)
    for s in range(0, len(i), step):
        ii, jj = i[s : s + step], j[s : s + step]
        hit = ranks[ii] == jj[:, None]
        found = hit.any(1)
        d = near[ii, hit.to(torch.uint8).argmax(1)]
        if not bool(found.all()):
            miss = ~found
            d[miss] = dist.pairs(ii[miss], jj[miss])
        out[s : s + step] = d
    return out


def _reciprocal(ranks: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Mask (N, k): is ranks[i, j] in turn having i among its k nearest?"""
    n = ranks.shape[0]
    top = ranks[:, :k]
    out = torch.empty(n, k, dtype=torch.bool, device=ranks.device)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        me = torch.arange(s, e, device=ranks.device)[:, None, None]
        out[s:e] = (top[top[s:e]] == me).any(2)
    return out


def _expanded_sets(ranks: torch.Tensor, k1: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) of every item's expanded k-reciprocal set, sorted by row then col."""
    n = ranks.shape[0]
    k = min(k1 + 1, n)
    kh = min(int(np.around(k1 / 2.0)) + 1, n)
    recip = _reciprocal(ranks, k, chunk)
    recip_h = _reciprocal(ranks, kh, chunk)
    top, top_h = ranks[:, :k], ranks[:, :kh]
    rows_out, cols_out = [], []
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        fwd, rec = top[s:e], recip[s:e]  # (c, k)
        cand, cand_ok = top_h[fwd], recip_h[fwd]  # (c, k, kh): each member's half set
        in_set = ((cand[..., None] == fwd[:, None, None, :]) & rec[:, None, None, :]).any(-1)
        inter = (in_set & cand_ok).sum(-1).double()
        size = cand_ok.sum(-1).double()
        take = rec & (inter > (2.0 / 3.0) * size)
        add_ok = cand_ok & take[..., None]
        members = torch.cat([fwd.masked_fill(~rec, n), cand.masked_fill(~add_ok, n).flatten(1)], 1)
        members, _ = torch.sort(members, dim=1)
        keep = members < n
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]
        r, c = torch.nonzero(keep, as_tuple=True)
        rows_out.append(r + s)
        cols_out.append(members[r, c])
    return torch.cat(rows_out), torch.cat(cols_out)


def _segment_sum(values: torch.Tensor, seg: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    return out.index_add_(0, seg, values)


def _row_ptr(rows: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([rows.new_zeros(1), torch.cumsum(torch.bincount(rows, minlength=n), 0)])


def _expand_rows(ptr: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each entry of ``which`` (row ids), the positions of that row's elements."""
    cnt = ptr[which + 1] - ptr[which]
    owner = torch.repeat_interleave(torch.arange(len(which), device=ptr.device), cnt)
    start = torch.cumsum(cnt, 0) - cnt
    pos = ptr[which][owner] + torch.arange(int(cnt.sum()), device=ptr.device) - start[owner]
    return owner, pos


def _query_expansion(
    vr: torch.Tensor, vc: torch.Tensor, vv: torch.Tensor, ranks: torch.Tensor, k2: int, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """V[i] <- mean of V over i's k2 nearest items, as sorted sparse triplets."""
    ptr = _row_ptr(vr, n)
    nb = ranks[:, :k2]
    src_row = torch.arange(n, device=ranks.device).repeat_interleave(nb.shape[1])
    owner, pos = _expand_rows(ptr, nb.reshape(-1))
    key = src_row[owner] * n + vc[pos]
    key, order = torch.sort(key)
    val = vv[pos][order]
    uniq, inverse = torch.unique_consecutive(key, return_inverse=True)
    summed = _segment_sum(val, inverse, len(uniq)) / float(k2)
    return uniq // n, uniq % n, summed


def _rerank(
    dist: Any,
    num_q: int,
    k1: int,
    k2: int,
    lambda_value: float,
    chunk: int,
    max_pairs: int,
    stored_neighbours: int = 64,
    workers: int = 1,
) -> torch.Tensor:
    n = dist.n
    num_g = n - num_q
    width = min(n, max(k1 + 1, k2, stored_neighbours))
    # The output starts as the query x gallery closeness, turned into distances in place.
    out = torch.empty(num_q, num_g, dtype=torch.float32, device=dist.device)
    ranks, near, rowmax = _nearest(dist, width, chunk, workers, keep=out)

    vr, vc = _expanded_sets(ranks, k1, chunk)
    w = torch.exp(-(_pair_dist(dist, ranks, near, vr, vc) / rowmax[vr]))
    vv = w / _segment_sum(w, vr, n)[vr]
    if k2 != 1:
        vr, vc, vv = _query_expansion(vr, vc, vv, ranks, min(k2, n), n)

    # Inverted index over columns, gallery rows only.
    g_sel = vr >= num_q
    gr, gcol, gval = vr[g_sel] - num_q, vc[g_sel], vv[g_sel]
    order = torch.argsort(gcol * num_g + gr)
    gr, gcol, gval = gr[order], gcol[order], gval[order]
    col_ptr = _row_ptr(gcol, n)
    col_cnt = col_ptr[1:] - col_ptr[:-1]

    q_sel = vr < num_q
    qr, qc, qv = vr[q_sel], vc[q_sel], vv[q_sel]
    q_ptr = _row_ptr(qr, num_q)
    work = _segment_sum(col_cnt[qc], qr, num_q).cpu().numpy()  # expanded pairs per query

    start = 0
    while start < num_q:
        stop = start + 1
        acc_work = int(work[start])
        while stop < num_q and stop - start < chunk and acc_work + work[stop] <= max_pairs:
            acc_work += int(work[stop])
            stop += 1
        a, b = int(q_ptr[start]), int(q_ptr[stop])
        owner, pos = _expand_rows(col_ptr, qc[a:b])
        mins = torch.minimum(qv[a:b][owner], gval[pos])
        flat = (qr[a:b][owner] - start) * num_g + gr[pos]
        acc = torch.zeros((stop - start) * num_g, dtype=mins.dtype, device=mins.device)
        acc = acc.index_add_(0, flat, mins).view(stop - start, num_g)
        del owner, pos, mins, flat
        # (1 - lambda) * (1 - acc / (2 - acc)) + lambda * d / rowmax, in place (no temporaries
        # of the chunk's size beyond acc).
        rows = dist.to_dist_(out[start:stop]).div_(rowmax[start:stop, None]).mul_(lambda_value)
        acc.div_(acc.neg().add_(2.0))
        rows.add_(acc, alpha=-(1.0 - lambda_value)).add_(1.0 - lambda_value)
        del acc
        start = stop
    return out


def _finish(out: torch.Tensor, like: Any) -> Any:
    return out if isinstance(like, torch.Tensor) else out.cpu().numpy()


def re_rank(
    qf: np.ndarray | torch.Tensor,
    gf: np.ndarray | torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    device: str | torch.device | None = None,
    chunk_size: int = 1024,
    max_pairs: int = 1 << 23,
) -> np.ndarray | torch.Tensor:
    """Re-ranked (Q, G) float32 distance matrix from L2-normalised features.

    Returns numpy for numpy input, else a tensor on the compute device (default: the input's).
    """
    if device is None:
        device = qf.device if isinstance(qf, torch.Tensor) else torch.device("cpu")
    q, g = as_float_tensor(qf, torch.device(device)), as_float_tensor(gf, torch.device(device))
    workers = torch.get_num_threads() if q.device.type == "cpu" else 1
    with torch.inference_mode(), single_thread(q.device.type == "cpu"):
        dist = _FeatureDistance(torch.cat([q, g], 0))
        out = _rerank(
            dist, q.shape[0], k1, k2, lambda_value, chunk_size, max_pairs, workers=workers
        )
    return _finish(out, qf)


def re_rank_dist(
    q_g_dist: np.ndarray | torch.Tensor,
    q_q_dist: np.ndarray | torch.Tensor,
    g_g_dist: np.ndarray | torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    device: str | torch.device | None = None,
    chunk_size: int = 1024,
    max_pairs: int = 1 << 23,
) -> np.ndarray | torch.Tensor:
    """Re-ranking from given (symmetric) distance blocks, used as they are (not squared)."""
    if device is None:
        device = q_g_dist.device if isinstance(q_g_dist, torch.Tensor) else torch.device("cpu")
    dev = torch.device(device)
    workers = torch.get_num_threads() if dev.type == "cpu" else 1
    with torch.inference_mode(), single_thread(dev.type == "cpu"):
        dist = _MatrixDistance(
            as_float_tensor(q_g_dist, dev),
            as_float_tensor(q_q_dist, dev),
            as_float_tensor(g_g_dist, dev),
        )
        out = _rerank(dist, dist.nq, k1, k2, lambda_value, chunk_size, max_pairs, workers=workers)
    return _finish(out, q_g_dist)
