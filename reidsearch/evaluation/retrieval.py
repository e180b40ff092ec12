"""Top-k retrieval with a FAISS inner-product index (GPU when faiss has it and a GPU is present).

Only for ranked-list pictures and top-k lists: metrics never come from here, because FAISS GPU
search returns at most 2048 neighbours. ``faiss`` is imported lazily so the core runs without it;
without faiss a chunked torch matmul + top-k gives the same lists.
"""

from __future__ import annotations

import logging
import os

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
    faiss = _faiss()
    if faiss is None:
        return _torch_topk(q, g, k)
    has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    gpu = has_gpu if use_gpu is None else (use_gpu and has_gpu)
    index = faiss.IndexFlatIP(g.shape[1])
    if gpu:
        k = min(k, GPU_MAX_K)
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(g)
    scores, indices = index.search(q, k)
    return scores, indices.astype(np.int64)


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
