"""Re-ID metrics (mAP, CMC, mINP) under the Market-1501 protocol, exact on the full ranking.

Per chunk of queries, one matmul gives the scores and ``ranking.chunk_ranks`` the exact rank of
every positive (no top-k list, no argsort; see that module). Scores are float32; a float64
``distmat`` is ranked after casting to float32.

Besides the means, the per-query values (over valid queries) are returned, so that callers can
put a bootstrap interval on each metric (``bootstrap.query_intervals``).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from reidsearch.errors import DatasetError
from reidsearch.evaluation.ranking import chunk_ranks
from reidsearch.evaluation.rerank import re_rank
from reidsearch.evaluation.tensors import (
    ArrayLike,
    as_float_tensor,
    as_numpy_ids,
    blas_single,
    blas_single_available,
    matmul_t,
    single_thread,
)

# Names of the per-query metrics, in the order of ``reidsearch.config.QUERY_METRICS`` (a test
# checks they agree; config is not imported: it needs pydantic, the core must not).
PER_QUERY_METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")
RETRIEVALS = ("auto", "exact", "faiss")  # what makes CMC / rank-k (``evaluate``)


def _pairs(
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    use_camera: bool,
    q_paths: Sequence[str] | None,
    g_paths: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(query, gallery) index pairs of positives and of excluded items, sorted by query.

    Gallery indices refer to the gallery with junk (pid -1) already removed.
    """
    num_q, num_g = len(q_pids), len(g_pids)
    order = np.argsort(g_pids, kind="stable")
    uniq, start, count = np.unique(g_pids[order], return_index=True, return_counts=True)
    if len(uniq):
        slot = np.clip(np.searchsorted(uniq, q_pids), 0, len(uniq) - 1)
        found = uniq[slot] == q_pids
    else:
        slot = np.zeros(num_q, dtype=np.int64)
        found = np.zeros(num_q, dtype=bool)
    cnt = np.where(found, count[slot] if len(uniq) else 0, 0)
    total = int(cnt.sum())
    qi = np.repeat(np.arange(num_q), cnt)
    within = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    gi = order[np.repeat(start[slot] if len(uniq) else slot, cnt) + within]

    if use_camera:
        same_cam = g_camids[gi] == q_camids[qi]
        return qi[~same_cam], gi[~same_cam], qi[same_cam], gi[same_cam]

    if q_paths is None or g_paths is None:
        empty = np.zeros(0, dtype=np.int64)
        return qi, gi, empty, empty
    by_path: dict[str, list[int]] = {}
    for j, p in enumerate(g_paths):
        by_path.setdefault(str(p), []).append(j)
    eq, eg = [], []
    for i, p in enumerate(q_paths):
        for j in by_path.get(str(p), ()):
            eq.append(i)
            eg.append(j)
    ex_q = np.asarray(eq, dtype=np.int64)
    ex_g = np.asarray(eg, dtype=np.int64)
    if len(ex_q):
        excluded = np.isin(qi * num_g + gi, ex_q * num_g + ex_g)
        qi, gi = qi[~excluded], gi[~excluded]
    return qi, gi, ex_q, ex_g


# Without control of numpy's BLAS threads, the CPU scores come in blocks of at least this many
# rows: its 2-thread matmul of 256-row chunks measured 1.3x the whole query x gallery matmul, of
# 1,024-row blocks 1.02x. (With one BLAS thread per worker, each chunk's matmul has a core.)
CPU_BLOCK_ROWS = 1024


def compute_metrics(
    scores_fn: Any,
    num_q: int,
    num_g: int,
    pos_q: np.ndarray,
    pos_g: np.ndarray,
    ex_q: np.ndarray,
    ex_g: np.ndarray,
    max_rank: int,
    device: torch.device,
    chunk_size: int = 256,
    path: str = "auto",
    workers: int = 1,
) -> dict[str, Any]:
    """Metrics from a row-block score provider ``scores_fn(start, stop) -> (B, num_g)`` tensor.

    Rows are ranked in chunks of ``chunk_size``. On a CPU with ``workers`` > 1 each worker
    thread scores (numpy's BLAS on one thread) and ranks its own chunks; without control of
    the BLAS threads, several chunks share one score block (``CPU_BLOCK_ROWS``) that the workers
    rank side by side (the ranking ops run on one torch thread each and release the GIL, numpy's
    sort too). Returns the keys documented in ``evaluate``.
    """
    index_bits = max(1, (max(num_g, 1) - 1).bit_length())
    if index_bits > 28:
        raise ValueError(f"gallery of {num_g} items is too large to rank exactly")
    chunk_size = max(1, min(chunk_size, 1 << (31 - index_bits)))
    block = chunk_size
    if device.type == "cpu":
        block *= -(-CPU_BLOCK_ROWS // chunk_size)

    ap = np.zeros(num_q, dtype=np.float64)
    inp = np.zeros(num_q, dtype=np.float64)
    first = np.zeros(num_q, dtype=np.int64)
    npos = np.zeros(num_q, dtype=np.int64)

    def rank_rows(scores: torch.Tensor, start: int, stop: int, offset: int) -> None:
        """Rank query rows [start, stop) (rows ``start - offset`` on of ``scores``)."""
        pa, pb = np.searchsorted(pos_q, [start, stop])
        if pa == pb:
            return
        with torch.inference_mode():  # thread-local: the pool's threads need it too
            pq = torch.from_numpy(pos_q[pa:pb] - start).to(device)
            pg = torch.from_numpy(pos_g[pa:pb]).to(device)
            rows = scores[start - offset : stop - offset]
            prow, rank, above = chunk_ranks(rows, pq, pg, index_bits, path)
            num_c = stop - start
            counts = torch.bincount(prow, minlength=num_c)
            ap_sum = torch.zeros(num_c, dtype=torch.float64, device=device)
            ap_sum.index_add_(0, prow, above.double() / rank.double())
            first_rank = torch.zeros(num_c, dtype=torch.long, device=device)
            first_rank.scatter_reduce_(0, prow, rank, reduce="amin", include_self=False)
            hardest = torch.ones(num_c, dtype=torch.long, device=device)
            hardest.scatter_reduce_(0, prow, rank, reduce="amax", include_self=False)
        sl = slice(start, stop)
        cnt = counts.cpu().numpy()
        npos[sl] = cnt
        first[sl] = first_rank.cpu().numpy()
        ap[sl] = ap_sum.cpu().numpy() / np.maximum(cnt, 1)
        inp[sl] = cnt / hardest.cpu().numpy()

    def score_rows(start: int, stop: int) -> torch.Tensor | None:
        """The (stop - start, num_g) scores, excluded items at -inf; None without positives."""
        pa, pb = np.searchsorted(pos_q, [start, stop])
        if pa == pb:
            return None
        scores = scores_fn(start, stop)
        ea, eb = np.searchsorted(ex_q, [start, stop])
        if eb > ea:
            eq = torch.from_numpy(ex_q[ea:eb] - start).to(device)
            eg = torch.from_numpy(ex_g[ea:eb]).to(device)
            scores[eq, eg] = float("-inf")
        return scores

    def own_chunk(start: int) -> None:
        """One worker's chunk: its own (one-thread) matmul, then its ranking."""
        stop = min(start + chunk_size, num_q)
        with torch.inference_mode():
            scores = score_rows(start, stop)
        if scores is not None:
            rank_rows(scores, start, stop, start)

    if device.type == "cpu" and workers > 1 and blas_single_available():
        # Each worker thread scores and ranks whole chunks, numpy's BLAS on one thread: no
        # BLAS thread spins beside the ranking (see ``tensors.blas_single``).
        with blas_single(), ThreadPoolExecutor(workers) as pool:
            list(pool.map(own_chunk, range(0, num_q, chunk_size)))
    else:
        pool = ThreadPoolExecutor(workers) if workers > 1 else None
        try:
            for start in range(0, num_q, block):
                stop = min(start + block, num_q)
                scores = score_rows(start, stop)
                if scores is None:
                    continue
                jobs = [
                    (scores, a, min(a + chunk_size, stop), start)
                    for a in range(start, stop, chunk_size)
                ]
                if pool is None:
                    for job in jobs:
                        rank_rows(*job)
                else:
                    list(pool.map(lambda job: rank_rows(*job), jobs))
        finally:
            if pool is not None:
                pool.shutdown()
    valid = npos > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise DatasetError(
            "no query has a valid match in the gallery (same-pid matches from another camera); "
            "check pids and cameras, or evaluate without cameras (use_camera=False / --no-camera)"
        )
    per_query = {"mAP": ap[valid], "mINP": inp[valid]}
    return {
        "num_valid_queries": num_valid,
        "num_queries": num_q,
        "per_query_ap": np.where(valid, ap, np.nan),
        **with_first_matches(per_query, np.where(valid, first, 0), valid, max_rank),
    }


def with_first_matches(
    per_query: dict[str, np.ndarray], first: np.ndarray, valid: np.ndarray, max_rank: int
) -> dict[str, Any]:
    """The metrics that follow from each query's first-match rank (``first``: 1-based, 0 when
    invalid or, from a top-k list, beyond ``max_rank``): CMC, rank-k per query and mean, joined
    to ``per_query`` (AP, INP) and their means."""
    num_valid = int(valid.sum())
    first_valid = np.where(first[valid] == 0, max_rank + 1, first[valid])
    hist = np.bincount(np.minimum(first_valid, max_rank + 1), minlength=max_rank + 2)
    cmc = np.cumsum(hist[1 : max_rank + 1]) / num_valid
    per_query = dict(per_query)
    for k in (1, 5, 10):
        # A rank beyond max_rank is not reported (NaN), as in the scalar metrics.
        hit = (first_valid <= k).astype(np.float64) if max_rank >= k else np.full(num_valid, np.nan)
        per_query[f"rank{k}"] = hit
    per_query = {name: per_query[name] for name in PER_QUERY_METRICS}
    return {
        **{name: float(values.mean()) for name, values in per_query.items()},
        "cmc": cmc.astype(np.float64),
        "per_query": per_query,
        "first_match_rank": np.where(valid, first, 0),
    }


def evaluate(
    qf: ArrayLike | None,
    gf: ArrayLike | None,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    *,
    use_camera: bool = True,
    distmat: ArrayLike | None = None,
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    q_paths: Sequence[str] | None = None,
    g_paths: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    chunk_size: int = 256,
    retrieval: str = "auto",
) -> dict[str, Any]:
    """mAP, CMC, mINP of L2-normalised features (inner product) or of a distance matrix.

    AP and mINP always come from the exact rank of every positive in the full ranking. CMC and
    rank-k come from the same counting (``retrieval="exact"``) or from FAISS ranked lists
    (``"faiss"``, features only, not re-ranked); ``"auto"`` takes FAISS when it has a GPU and
    the features are on one (the lists cost milliseconds there; on a CPU they would repeat the
    matmul for the same numbers). Both give the same CMC (a test checks it).

    Protocol: junk gallery items (pid -1) are dropped; per query, same-pid-same-camera items are
    dropped (``use_camera=False``: only gallery items whose path equals the query's path);
    queries without a remaining match are skipped and counted. AP is over the full ranking.
    Metrics are fractions in [0, 1]; ``cmc[k-1]`` is rank-k accuracy.

    Returns ``mAP``, ``rank1``, ``rank5``, ``rank10``, ``mINP`` (floats; a rank beyond
    ``max_rank`` is NaN), ``cmc`` (``max_rank`` values), ``num_valid_queries``, ``num_queries``,
    ``per_query`` (for each of those five metrics, float64 values over the valid queries in query
    order: AP, 0/1 hit of the first match within rank k, INP; their means are the metrics, to the
    bit), ``per_query_ap`` (all queries, NaN when invalid), ``first_match_rank`` (0 when
    invalid; from FAISS lists, also 0 beyond ``max_rank``) and ``retrieval`` (the path used).
    """
    if retrieval not in RETRIEVALS:
        raise ValueError(f"retrieval must be one of {RETRIEVALS}, not {retrieval!r}")
    q_pids_np, g_pids_np = as_numpy_ids(q_pids), as_numpy_ids(g_pids)
    q_cam_np, g_cam_np = as_numpy_ids(q_camids), as_numpy_ids(g_camids)
    num_q, num_g_all = len(q_pids_np), len(g_pids_np)
    if len(q_cam_np) != num_q or len(g_cam_np) != num_g_all:
        raise ValueError("pids and camids must have one entry per query/gallery item")

    if device is None:
        src = distmat if distmat is not None else qf
        device = src.device if isinstance(src, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)

    if rerank:
        if qf is None or gf is None:
            raise ValueError("rerank=True needs query and gallery features")
        distmat = re_rank(
            as_float_tensor(qf, device),
            as_float_tensor(gf, device),
            k1=k1,
            k2=k2,
            lambda_value=lambda_value,
        )

    keep = np.flatnonzero(g_pids_np != -1)
    g_pids_k, g_cam_k = g_pids_np[keep], g_cam_np[keep]
    g_paths_k = None if g_paths is None else [g_paths[i] for i in keep]
    if q_paths is not None and len(q_paths) != num_q:
        raise ValueError("q_paths must have one entry per query")
    pos_q, pos_g, ex_q, ex_g = _pairs(
        q_pids_np, g_pids_k, q_cam_np, g_cam_k, use_camera, q_paths, g_paths_k
    )
    keep_t = torch.from_numpy(keep).to(device)
    all_kept = len(keep) == num_g_all

    if distmat is not None:
        dist = as_float_tensor(distmat, None)
        if tuple(dist.shape) != (num_q, num_g_all):
            raise ValueError(
                f"distmat has shape {tuple(dist.shape)}, expected {(num_q, num_g_all)}"
            )

        def scores_fn(start: int, stop: int) -> torch.Tensor:
            rows = dist[start:stop].to(device)
            if not all_kept:
                rows = rows.index_select(1, keep_t)
            return rows.neg()

    else:
        if qf is None or gf is None:
            raise ValueError("give features (qf, gf) or distmat")
        q = as_float_tensor(qf, device)
        g = as_float_tensor(gf, device)
        if q.shape[0] != num_q or g.shape[0] != num_g_all:
            raise ValueError("features and pids disagree on the number of items")
        if all_kept:
            g_k = g.contiguous()
        elif g.device.type == "cpu":  # numpy's row gather: ~3x torch's index_select here
            g_k = torch.from_numpy(np.take(g.numpy(), keep, axis=0))
        else:
            g_k = g.index_select(0, keep_t).contiguous()

        def scores_fn(start: int, stop: int) -> torch.Tensor:
            return matmul_t(q[start:stop], g_k)

    workers = torch.get_num_threads() if device.type == "cpu" else 1
    with torch.inference_mode(), single_thread(device.type == "cpu"):
        result = compute_metrics(
            scores_fn,
            num_q,
            len(keep),
            pos_q,
            pos_g,
            ex_q,
            ex_g,
            max_rank,
            device,
            chunk_size=chunk_size,
            workers=workers,
        )
    features_only = distmat is None and not rerank
    if retrieval == "auto":
        from reidsearch.evaluation.retrieval import has_gpu

        gpu = device.type == "cuda"
        retrieval = "faiss" if features_only and gpu and has_gpu() else "exact"
    if retrieval == "faiss":
        if not features_only:
            raise ValueError("retrieval='faiss' ranks features: not a distmat or re-ranking")
        from reidsearch.evaluation.retrieval import first_match_ranks

        first = first_match_ranks(q, g_k, q_pids_np, g_pids_k, ex_q, ex_g, max_rank)
        valid = result["first_match_rank"] > 0
        exact_part = {name: result["per_query"][name] for name in ("mAP", "mINP")}
        result.update(with_first_matches(exact_part, np.where(valid, first, 0), valid, max_rank))
    result["retrieval"] = retrieval
    return result
