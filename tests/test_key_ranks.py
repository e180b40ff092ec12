"""The CPU keys path (16-bit keys, radix sort) ranks exactly like the other paths, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidsearch.evaluation import evaluate
from reidsearch.evaluation.ranking import chunk_ranks


def _loop_ranks(scores: np.ndarray, pq: np.ndarray, pg: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, rank, at_or_above) by a stable sort of -score per row (ties: lower index first)."""
    out = []
    for r in np.unique(pq):
        order = np.argsort(-scores[r], kind="stable")
        where = np.empty_like(order)
        where[order] = np.arange(len(order))
        valid = np.isfinite(scores[r][order])
        pos = np.sort(where[pg[pq == r]])
        for k, p in enumerate(pos):
            out.append((int(r), int(valid[: p + 1].sum()), k + 1))
    return sorted(out)


@pytest.mark.parametrize("levels", [3, 40, 0])
def test_keys_path_exact_with_heavy_ties(levels: int) -> None:
    """Scores drawn from a few values (many exact ties), or continuous ones (levels=0)."""
    rng = np.random.default_rng(levels)
    num_c, num_g = 40, 300
    if levels:
        scores = rng.integers(0, levels, (num_c, num_g)).astype(np.float32) / levels
    else:
        scores = rng.standard_normal((num_c, num_g)).astype(np.float32)
    scores[rng.random((num_c, num_g)) < 0.05] = -np.inf  # excluded items
    pq, pg = np.nonzero((rng.random((num_c, num_g)) < 0.06) & np.isfinite(scores))
    expected = _loop_ranks(scores, pq, pg)
    for path in ("keys", "sorted", "compact"):
        row, rank, above = chunk_ranks(
            torch.from_numpy(scores), torch.from_numpy(pq), torch.from_numpy(pg), 9, path
        )
        got = sorted(zip(row.tolist(), rank.tolist(), above.tolist(), strict=True))
        assert got == expected, path


def test_keys_path_with_positives_sharing_keys_and_extremes() -> None:
    """Positives 1 ulp apart (same 16-bit key), items just above the best positive and just
    below the worst one, and a row whose positives all score the same."""
    base = np.float32(0.25)
    up = np.nextafter(base, np.float32(1))
    down = np.nextafter(base, np.float32(-1))
    scores = np.array(
        [
            [base, up, 0.9, down, 0.1, np.nextafter(np.float32(0.9), np.float32(2)), 0.5],
            [0.3, 0.3, 0.3, 0.7, -np.inf, 0.3, 0.2],
            [0.4, 0.4, 0.8, 0.1, 0.2, 0.6, 0.0],
        ],
        dtype=np.float32,
    )
    pq = np.array([0, 0, 0, 1, 1, 2, 2])
    pg = np.array([0, 1, 2, 1, 5, 0, 1])
    expected = _loop_ranks(scores, pq, pg)
    row, rank, above = chunk_ranks(
        torch.from_numpy(scores), torch.from_numpy(pq), torch.from_numpy(pg), 3, "keys"
    )
    assert sorted(zip(row.tolist(), rank.tolist(), above.tolist(), strict=True)) == expected


def test_evaluate_with_quantised_features_matches_the_sorted_path() -> None:
    """Features on a coarse grid: many exactly tied similarities across whole rows."""
    from reidsearch.evaluation import metrics

    rng = np.random.default_rng(7)
    qf = np.round(rng.standard_normal((60, 8)) * 2) / 2
    gf = np.round(rng.standard_normal((400, 8)) * 2) / 2
    gf[::7] = qf[rng.integers(0, 60, len(gf[::7]))]
    qp, gp = rng.integers(0, 20, 60), rng.integers(-1, 20, 400)
    qc, gc = rng.integers(0, 3, 60), rng.integers(0, 3, 400)
    args = (qf.astype(np.float32), gf.astype(np.float32), qp, gp, qc, gc)
    res = evaluate(*args)
    real = metrics.chunk_ranks
    metrics.chunk_ranks = lambda *a: real(*a[:4], "sorted")
    try:
        ref = evaluate(*args)
    finally:
        metrics.chunk_ranks = real
    assert res["mAP"] == ref["mAP"] and res["mINP"] == ref["mINP"]
    np.testing.assert_array_equal(res["cmc"], ref["cmc"])
    for name in ("mAP", "mINP", "rank1"):
        np.testing.assert_array_equal(res["per_query"][name], ref["per_query"][name])
