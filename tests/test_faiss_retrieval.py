"""FAISS makes the ranked lists behind CMC / rank-k; the exact counting makes AP and mINP.

The FAISS path must give the same CMC as the exact path and as an independent per-query
argsort loop, under both protocols (cameras, or same-path exclusion) and with junk.
"""

from __future__ import annotations

import numpy as np
import pytest

from reidsearch.evaluation import evaluate, retrieval
from tests.test_metrics import _random_case

faiss = pytest.importorskip("faiss")  # a dependency of the dev install: present in CI


def _loop_first_ranks(qf, gf, qp, gp, qc, gc) -> np.ndarray:
    """Independent reference: per query, stable argsort of the kept gallery."""
    sims = qf @ gf.T
    first = np.zeros(len(qp), dtype=np.int64)
    for i in range(len(qp)):
        keep = (gp != -1) & ~((gp == qp[i]) & (gc == qc[i]))
        order = np.argsort(-sims[i, keep], kind="stable")
        hits = np.flatnonzero(gp[keep][order] == qp[i])
        first[i] = hits[0] + 1 if len(hits) else 0
    return first


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_rank", [1, 10, 50])
def test_faiss_cmc_is_the_exact_cmc(seed: int, max_rank: int) -> None:
    qf, gf, qp, gp, qc, gc = _random_case(seed)
    exact = evaluate(qf, gf, qp, gp, qc, gc, max_rank=max_rank, retrieval="exact")
    listed = evaluate(qf, gf, qp, gp, qc, gc, max_rank=max_rank, retrieval="faiss")
    assert exact["retrieval"] == "exact" and listed["retrieval"] == "faiss"
    np.testing.assert_array_equal(listed["cmc"], exact["cmc"])
    for name in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        np.testing.assert_array_equal(listed["per_query"][name], exact["per_query"][name])
    reference = _loop_first_ranks(qf, gf, qp, gp, qc, gc)
    within = np.where(reference <= max_rank, reference, 0)
    np.testing.assert_array_equal(listed["first_match_rank"], within)


def test_faiss_lists_follow_the_same_path_protocol() -> None:
    qf, gf, qp, gp, qc, gc = _random_case(4, num_q=40, num_g=200)
    gf[:40] = qf  # the queries are in the gallery: only the identical path is dropped
    gp[:40] = qp
    paths_q = [f"img_{i}.jpg" for i in range(40)]
    paths_g = [f"img_{i}.jpg" for i in range(200)]
    kw = dict(use_camera=False, q_paths=paths_q, g_paths=paths_g, max_rank=20)
    exact = evaluate(qf, gf, qp, gp, qc, gc, retrieval="exact", **kw)
    listed = evaluate(qf, gf, qp, gp, qc, gc, retrieval="faiss", **kw)
    np.testing.assert_array_equal(listed["cmc"], exact["cmc"])


def test_the_faiss_path_really_asks_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    qf, gf, qp, gp, qc, gc = _random_case(5)
    calls = []
    real = retrieval.faiss_topk

    def spy(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(retrieval, "faiss_topk", spy)
    monkeypatch.setattr(retrieval, "_torch_topk", None)  # no silent fallback to torch
    evaluate(qf, gf, qp, gp, qc, gc, retrieval="faiss", max_rank=10)
    assert len(calls) == 1 and 10 <= calls[0] < len(gp)  # max_rank + the most excluded
    assert evaluate(qf, gf, qp, gp, qc, gc)["retrieval"] == "exact"  # auto on a CPU
    assert len(calls) == 1


def test_faiss_path_refuses_a_distance_matrix() -> None:
    qf, gf, qp, gp, qc, gc = _random_case(6, num_q=10, num_g=50)
    with pytest.raises(ValueError, match="retrieval='faiss' ranks features"):
        evaluate(None, None, qp, gp, qc, gc, distmat=1 - qf @ gf.T, retrieval="faiss")
