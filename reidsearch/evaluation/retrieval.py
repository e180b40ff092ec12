"""Retrieval with a FAISS inner-product index (GPU when faiss has it and a GPU is present).

FAISS makes the ranked lists: the protocol-filtered lists behind CMC / rank-k when
``evaluate(retrieval="faiss")`` (``first_match_ranks``), the ranked-list pictures and the
single-image queries. AP and mINP need the rank of every positive in the full ranking, which a
top-k list cannot give (FAISS GPU returns at most 2048 neighbours), so they come from the exact
counting in ``metrics``/``ranking``. ``faiss`` is imported lazily so the core runs without it;
without faiss a chunked torch matmul + top-k gives the same lists.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

GPU_MAX_K = 2048


def _as_float32(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _faiss():
    # faiss logs every CPU-feature probe at INFO; Ray workers show INFO, so quieten it.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError:
        return None
    # faiss (OpenMP) and torch (its own pool) each default to all cores; oversubscribing
    # 2-core machines is much slower than sharing, so faiss gets torch's thread count.
    faiss.omp_set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    return faiss


def faiss_topk(
    qf: np.ndarray | torch.Tensor,
    gf: np.ndarray | torch.Tensor,
    k: int,
    use_gpu: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices) of each query's k most similar gallery items, best first.

    ``use_gpu=None`` uses a GPU when faiss has GPU support and sees one; there k is capped at
    2048. Falls back to torch when faiss is not installed.
    """
    q, g = _as_float32(qf), _as_float32(gf)
    k = max(0, min(int(k), g.shape[0]))
    index = flat_index(g, use_gpu)
    if index is None:
        return _torch_topk(q, g, k)
    if not isinstance(index, _faiss().IndexFlatIP):  # on a GPU
        k = min(k, GPU_MAX_K)
    scores, indices = index.search(q, k)
    return scores, indices.astype(np.int64)


def flat_index(gf: np.ndarray | torch.Tensor, use_gpu: bool | None = None) -> Any:
    """A FAISS exact inner-product index holding the gallery rows (on a GPU where faiss has
    one and ``use_gpu`` allows it), or None when faiss is not installed."""
    faiss = _faiss()
    if faiss is None:
        return None
    g = _as_float32(gf)
    has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    index = faiss.IndexFlatIP(g.shape[1])
    if has_gpu if use_gpu is None else (use_gpu and has_gpu):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(g)
    return index


def available() -> bool:
    """Whether ``faiss`` imports (either wheel: faiss-cpu, or the official faiss-gpu)."""
    return _faiss() is not None


def has_gpu() -> bool:
    """Whether faiss was built with GPU support and sees a GPU."""
    faiss = _faiss()
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def excluded_in_lists(
    ranked: np.ndarray, num_g: int, ex_q: np.ndarray, ex_g: np.ndarray
) -> np.ndarray:
    """Mask of the entries of ranked lists (rows = queries, gallery indices) that are among
    the (query, gallery) pairs ``ex_q``/``ex_g`` the protocol drops."""
    rows = np.arange(ranked.shape[0])[:, None]
    ignored = np.zeros(ranked.shape, dtype=bool)
    if len(ex_q):
        pairs = np.sort(ex_q * num_g + ex_g)
        keys = rows * num_g + ranked
        slot = np.clip(np.searchsorted(pairs, keys), 0, len(pairs) - 1)
        ignored |= pairs[slot] == keys
    return ignored


def first_match_ranks(
    qf: np.ndarray | torch.Tensor,
    gf: np.ndarray | torch.Tensor,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    ex_q: np.ndarray,
    ex_g: np.ndarray,
    max_rank: int,
    use_gpu: bool | None = None,
) -> np.ndarray:
    """Rank (1-based, among the items the protocol keeps) of each query's first true match in
    its FAISS ranked list, 0 when none is within ``max_rank``.

    ``gf``/``g_pids`` are the gallery without junk; ``ex_q``/``ex_g`` the (query, gallery) pairs
    the protocol drops. Each list is searched ``max_rank`` plus the query's most excluded items
    deep, so it always holds ``max_rank`` kept items."""
    num_q, num_g = len(q_pids), len(g_pids)
    most_excluded = int(np.bincount(ex_q, minlength=num_q).max()) if len(ex_q) else 0
    depth = min(num_g, max_rank + most_excluded)
    if depth > GPU_MAX_K:
        use_gpu = False  # FAISS GPU lists are at most 2048 deep: the CPU index has no limit
    _, ranked = faiss_topk(qf, gf, depth, use_gpu=use_gpu)
    ignored = excluded_in_lists(ranked, num_g, ex_q, ex_g)
    kept_rank = np.cumsum(~ignored, axis=1)
    hit = (g_pids[ranked] == q_pids[:, None]) & ~ignored & (kept_rank <= max_rank)
    first_col = hit.argmax(axis=1)
    found = hit[np.arange(num_q), first_col]
    return np.where(found, kept_rank[np.arange(num_q), first_col], 0).astype(np.int64)


def _torch_topk(q: np.ndarray, g: np.ndarray, k: int, chunk: int = 1024):
    gt = torch.from_numpy(g).t()
    scores, indices = [], []
    for s in range(0, q.shape[0], chunk):
        v, i = torch.topk(torch.from_numpy(q[s : s + chunk]) @ gt, k, dim=1)
        scores.append(v.numpy())
        indices.append(i.numpy())
    if not scores:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(scores), np.concatenate(indices)
