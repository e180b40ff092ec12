"""evaluate() against independent computations (scikit-learn AP, per-query loops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from reidsearch.errors import DatasetError
from reidsearch.evaluation import evaluate


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _random_case(seed: int, num_q: int = 80, num_g: int = 500, dim: int = 16):
    rng = np.random.default_rng(seed)
    ids = 25
    centres = rng.standard_normal((ids, dim))
    q_pids = rng.integers(0, ids + 3, num_q)  # some query ids absent from the gallery
    g_pids = rng.integers(-1, ids, num_g)  # pid -1 = junk
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    qf = _normalise(centres[q_pids % ids] + 1.5 * rng.standard_normal((num_q, dim)))
    gf = _normalise(centres[np.maximum(g_pids, 0)] + 1.5 * rng.standard_normal((num_g, dim)))
    return qf, gf, q_pids, g_pids, q_cams, g_cams


def _reference(sims, q_pids, g_pids, q_cams, g_cams, max_rank, keep_fn):
    """Per-query loop: sklearn AP; stable-sort ranking for CMC and mINP."""
    aps, inps, cmc, valid = [], [], np.zeros(max_rank), 0
    for i in range(len(q_pids)):
        keep = keep_fn(i)
        y = g_pids[keep] == q_pids[i]
        if not y.any():
            continue
        valid += 1
        scores = sims[i, keep].astype(np.float64)
        aps.append(average_precision_score(y, scores))
        hits = np.flatnonzero(y[np.argsort(-scores, kind="stable")]) + 1
        inps.append(len(hits) / hits[-1])
        if hits[0] <= max_rank:
            cmc[hits[0] - 1 :] += 1
    return np.mean(aps), cmc / valid, np.mean(inps), valid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_and_loop(seed: int) -> None:
    qf, gf, qp, gp, qc, gc = _random_case(seed)
    sims = qf @ gf.T

    def keep(i: int) -> np.ndarray:
        return (gp != -1) & ~((gp == qp[i]) & (gc == qc[i]))

    ap, cmc, inp, valid = _reference(sims, qp, gp, qc, gc, 50, keep)
    for chunk in (7, 256):
        res = evaluate(qf, gf, qp, gp, qc, gc, chunk_size=chunk)
        assert res["num_valid_queries"] == valid < res["num_queries"] == len(qp)
        assert abs(res["mAP"] - ap) < 1e-6
        assert abs(res["mINP"] - inp) < 1e-6
        np.testing.assert_allclose(res["cmc"], cmc, atol=1e-9)
        assert res["rank1"] == res["cmc"][0] and res["rank10"] == res["cmc"][9]
        assert len(res["cmc"]) == 50


@pytest.mark.parametrize("path", ["compact", "dense", "sorted"])
def test_every_counting_path_agrees(path: str) -> None:
    from reidsearch.evaluation import metrics

    qf, gf, qp, gp, qc, gc = _random_case(5)
    base = evaluate(qf, gf, qp, gp, qc, gc)
    keep = np.flatnonzero(gp != -1)
    pos_q, pos_g, ex_q, ex_g = metrics._pairs(qp, gp[keep], qc, gc[keep], True, None, None)
    g_t = torch.from_numpy(gf[keep]).t()
    res = metrics.compute_metrics(
        lambda a, b: torch.from_numpy(qf[a:b]) @ g_t,
        len(qp),
        len(keep),
        pos_q,
        pos_g,
        ex_q,
        ex_g,
        50,
        torch.device("cpu"),
        chunk_size=16,
        path=path,
    )
    assert abs(res["mAP"] - base["mAP"]) < 1e-12
    np.testing.assert_array_equal(res["cmc"], base["cmc"])


def test_torch_and_numpy_inputs_agree() -> None:
    qf, gf, qp, gp, qc, gc = _random_case(3)
    a = evaluate(qf, gf, qp, gp, qc, gc)
    b = evaluate(
        torch.from_numpy(qf),
        torch.from_numpy(gf),
        torch.from_numpy(qp),
        torch.from_numpy(gp),
        torch.from_numpy(qc),
        torch.from_numpy(gc),
    )
    assert a["mAP"] == b["mAP"] and a["mINP"] == b["mINP"]
    np.testing.assert_array_equal(a["cmc"], b["cmc"])
    c = evaluate(None, None, qp, gp, qc, gc, distmat=torch.from_numpy(1.0 - qf @ gf.T))
    assert abs(c["mAP"] - a["mAP"]) < 1e-6


def test_use_camera_false_keeps_same_camera_and_drops_only_the_query_itself() -> None:
    qf, gf, qp, gp, qc, gc = _random_case(4, num_q=40)
    g_paths = [f"g/{j}.png" for j in range(len(gp))]
    q_paths = [f"q/{i}.png" for i in range(len(qp))]
    # Queries 0..9 are also in the gallery (same path, same pid, same camera, same feature).
    for i in range(10):
        g_paths[3 * i] = q_paths[i]
        gp[3 * i], gc[3 * i], gf[3 * i] = qp[i], qc[i], qf[i]
    sims = qf @ gf.T
    path_arr = np.array(g_paths)

    def keep(i: int) -> np.ndarray:
        return (gp != -1) & (path_arr != q_paths[i])

    ap, cmc, inp, valid = _reference(sims, qp, gp, qc, gc, 50, keep)
    res = evaluate(qf, gf, qp, gp, qc, gc, use_camera=False, q_paths=q_paths, g_paths=g_paths)
    assert res["num_valid_queries"] == valid
    assert abs(res["mAP"] - ap) < 1e-6 and abs(res["mINP"] - inp) < 1e-6
    np.testing.assert_allclose(res["cmc"], cmc, atol=1e-9)
    # Without paths nothing is removed: the query finds itself at rank 1.
    no_paths = evaluate(qf[:10], gf, qp[:10], gp, qc[:10], gc, use_camera=False)
    assert no_paths["rank1"] == 1.0
    # With cameras, same-camera matches are gone.
    with_cam = evaluate(qf, gf, qp, gp, qc, gc)
    assert with_cam["mAP"] != res["mAP"]


def test_hand_made_example() -> None:
    # One query (pid 1, cam 0); gallery ranked by score: pos, neg, pos, neg.
    qf = np.array([[1.0, 0.0]], np.float32)
    angles = np.array([0.1, 0.2, 0.3, 0.4, 0.05, 0.0])
    gf = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    g_pids = np.array([1, 2, 1, 3, -1, 1])  # idx 4 junk, idx 5 same pid same cam
    g_cams = np.array([1, 1, 2, 1, 1, 0])
    res = evaluate(qf, gf, [1], g_pids, [0], g_cams, max_rank=4)
    assert res["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2, abs=1e-12)
    assert res["mINP"] == pytest.approx(2 / 3, abs=1e-12)
    np.testing.assert_allclose(res["cmc"], [1, 1, 1, 1])
    assert res["num_valid_queries"] == 1


def test_ties_follow_gallery_order() -> None:
    qf = np.array([[1.0, 0.0]], np.float32)
    gf = np.array([[1.0, 0.0]] * 4, np.float32)  # all tie
    res = evaluate(qf, gf, [1], [2, 1, 3, 1], [0], [1, 1, 1, 1], max_rank=4)
    # Stable order: neg, pos, neg, pos -> AP = (1/2 + 2/4) / 2.
    assert res["mAP"] == pytest.approx(0.5)
    np.testing.assert_allclose(res["cmc"], [0, 1, 1, 1])


def test_positive_beyond_rank_2048_counts() -> None:
    rng = np.random.default_rng(0)
    num_g = 3000
    qf = np.array([[1.0, 0.0, 0.0]], np.float32)
    gf = _normalise(np.c_[np.linspace(0.99, -0.99, num_g), rng.standard_normal((num_g, 2))])
    sims = (gf @ qf.T)[:, 0]
    order = np.argsort(-sims, kind="stable")
    g_pids = np.full(num_g, 7)
    target = order[2500]  # the only positive, at rank 2501
    g_pids[target] = 1
    res = evaluate(qf, gf, [1], g_pids, [0], np.ones(num_g, int))
    assert res["mAP"] == pytest.approx(1 / 2501, rel=1e-12)
    assert res["rank1"] == 0.0 and res["cmc"][-1] == 0.0


@pytest.mark.fault("bad_input")
def test_no_valid_query_raises() -> None:
    qf = np.eye(2, dtype=np.float32)
    with pytest.raises(DatasetError, match="no query has a valid match"):
        evaluate(qf, qf, [1, 2], [1, 2], [0, 0], [0, 0])


def test_rerank_flag_runs_and_returns_metrics() -> None:
    qf, gf, qp, gp, qc, gc = _random_case(6, num_q=30, num_g=150)
    plain = evaluate(qf, gf, qp, gp, qc, gc)
    rr = evaluate(qf, gf, qp, gp, qc, gc, rerank=True, k1=10, k2=3)
    assert 0 < rr["mAP"] <= 1 and rr["num_valid_queries"] == plain["num_valid_queries"]


@pytest.mark.parametrize("path", ["compact", "dense", "sorted"])
def test_ties_exact_on_every_path(path: str) -> None:
    from reidsearch.evaluation.ranking import chunk_ranks

    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5, 0.9], [0.2, 0.2, 0.2, 0.7, 0.0, 0.2]])
    pq = torch.tensor([0, 0, 1, 1])
    pg = torch.tensor([2, 5, 1, 5])
    row, rank, above = chunk_ranks(scores, pq, pg, 3, path)
    got = sorted(zip(row.tolist(), rank.tolist(), above.tolist(), strict=True))
    # Row 0: order 1,5,0,2,4,3 -> positive 5 at rank 2, positive 2 at rank 4.
    # Row 1: order 3,0,1,2,5,4 -> positive 1 at rank 3, positive 5 at rank 5.
    assert got == [(0, 2, 1), (0, 4, 2), (1, 3, 1), (1, 5, 2)]
