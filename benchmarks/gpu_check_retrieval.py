"""The retrieval checks of ``gpu_check.py``: FAISS GPU lists and CMC, re-ranking on the device.

Each reports one line through the ``report(name, ok, line)`` it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from reidsearch.evaluation.metrics import evaluate

Report = Callable[[str, bool, str], None]


def faiss_check(report: Report, qf: torch.Tensor, gf: torch.Tensor) -> None:
    """FAISS GPU top-k against torch, and FAISS-listed CMC against the exact one."""
    try:
        import faiss
    except ImportError as exc:
        report("faiss GPU", True, f"skipped (faiss does not import: {exc})")
        return
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        report("faiss GPU", True, "skipped (this faiss has no GPU support or sees no GPU)")
        return
    from reidsearch.evaluation.retrieval import faiss_topk

    started = time.perf_counter()
    _, ranked = faiss_topk(qf, gf, 100, use_gpu=True)
    seconds = time.perf_counter() - started
    agree = float(np.mean(ranked[:, 0] == (qf @ gf.T).argmax(dim=1).cpu().numpy()))
    line = f"top-100 of {len(qf):,} x {len(gf):,} in {seconds:.2f} s; top-1 = torch's: {agree:.4f}"
    report("faiss GPU", agree > 0.99, line)
    # CMC from FAISS lists against the exact counting, on the device (what a GPU trial logs).
    rng = np.random.default_rng(0)
    ids = (rng.integers(0, 50, len(qf)), rng.integers(0, 50, len(gf)))
    cams = (rng.integers(0, 6, len(qf)), rng.integers(0, 6, len(gf)))
    started = time.perf_counter()
    listed = evaluate(qf, gf, ids[0], ids[1], cams[0], cams[1], retrieval="faiss")
    seconds = time.perf_counter() - started
    exact = evaluate(qf, gf, ids[0], ids[1], cams[0], cams[1], retrieval="exact")
    same = bool(np.array_equal(listed["cmc"], exact["cmc"]))
    report("faiss CMC", same, f"FAISS-listed CMC == exact CMC: {same}; evaluate {seconds:.2f} s")


def rerank_check(report: Report, qf: torch.Tensor, gf: torch.Tensor) -> None:
    """k-reciprocal re-ranking on the features' device, against the CPU on a subset."""
    from reidsearch.evaluation.rerank import re_rank

    started = time.perf_counter()
    dist = re_rank(qf, gf)
    if qf.device.type == "cuda":
        torch.cuda.synchronize(qf.device)
    seconds = time.perf_counter() - started
    ok = tuple(dist.shape) == (len(qf), len(gf)) and bool(torch.isfinite(dist).all())
    line = f"{len(qf):,} x {len(gf):,} on {qf.device.type} in {seconds:.2f} s"
    if qf.device.type != "cpu":
        sub_q, sub_g = qf[:256], gf[:1024]
        gap = (re_rank(sub_q, sub_g).cpu() - re_rank(sub_q.cpu(), sub_g.cpu())).abs().max()
        ok = ok and float(gap) < 1e-3
        line += f"; 256 x 1,024 against the cpu: max |diff| {float(gap):.1e}"
    report("re-ranking", ok, line)
