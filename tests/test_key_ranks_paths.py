"""The keys path's two sorts (compacted rows for good features, whole rows otherwise), its
capped scale and its undecided positives, against a stable-argsort loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidsearch.evaluation import key_ranks
from reidsearch.evaluation.ranking import chunk_ranks
from tests.test_key_ranks import _loop_ranks


def _ranks(scores: np.ndarray, pq: np.ndarray, pg: np.ndarray) -> list[tuple[int, int, int]]:
    row, rank, above = chunk_ranks(
        torch.from_numpy(scores), torch.from_numpy(pq), torch.from_numpy(pg), 12, "keys"
    )
    return sorted(zip(row.tolist(), rank.tolist(), above.tolist(), strict=True))


@pytest.mark.parametrize("top", [True, False])
def test_compacted_and_whole_rows_rank_exactly(top: bool, monkeypatch) -> None:
    """``top``: positives near the top of their rows (few items above the lowest: the
    compacted sort); else spread over the rows (the whole-row sort). Values on a coarse grid
    give exact ties, between items and positives and among positives."""
    rng = np.random.default_rng(int(top))
    num_c, num_g = 30, 500
    scores = rng.integers(0, 400, (num_c, num_g)).astype(np.float32) / 400
    pq, pg = np.nonzero(rng.random((num_c, num_g)) < 0.03)
    if top:
        scores[pq, pg] += 2.0
        scores[rng.random((num_c, num_g)) < 0.01] += 2.0  # a few items among them
    scores[rng.random((num_c, num_g)) < 0.05] = -np.inf
    scores[pq, pg] = np.where(np.isinf(scores[pq, pg]), 0.5, scores[pq, pg])
    seen = []
    real = key_ranks._sorted_keys

    def spy(keys: np.ndarray) -> np.ndarray:
        table = real(keys)
        seen.append(table.shape[1] < keys.shape[1])
        return table

    monkeypatch.setattr(key_ranks, "_sorted_keys", spy)
    assert _ranks(scores, pq, pg) == _loop_ranks(scores, pq, pg)
    assert seen == [top]  # the compacted table when positives are on top


def test_positives_far_narrower_than_their_magnitude() -> None:
    """Positives 1 and 3 ulps above 0.9 with items on every ulp in between and around: the
    scale is capped (|score| * scale < 2**22), so many items share keys; still exact."""
    ulps = np.nextafter(np.float32(0.9), np.float32(2), dtype=np.float32)
    grid = [np.float32(0.9)]
    for _ in range(8):
        grid.append(np.nextafter(grid[-1], np.float32(2), dtype=np.float32))
    row = np.array(grid * 3 + [0.1, 0.95, -0.5], dtype=np.float32)
    scores = np.stack([row, row[::-1].copy()])
    pos = [1, 3]
    pq = np.array([0, 0, 1, 1])
    pg = np.array([pos[0], pos[1], len(row) - 1 - pos[0], len(row) - 1 - pos[1]])
    assert ulps > 0.9
    assert _ranks(scores, pq, pg) == _loop_ranks(scores, pq, pg)


def test_keys_are_monotone_and_the_lowest_positive_is_above_key_zero() -> None:
    rng = np.random.default_rng(5)
    scores = np.sort(rng.standard_normal((6, 2000)).astype(np.float32), axis=1)
    lo = scores[:, 700].copy()
    hi = scores[:, [700, 701, 1500, 1999, 1000, 700]].max(1).astype(np.float32)
    hi[1] = np.nextafter(lo[1], np.float32(9), dtype=np.float32)  # a 1-ulp range
    keys = key_ranks._keys(scores, lo, hi).astype(np.int32)
    assert np.all(np.diff(keys, axis=1) >= 0)
    assert np.all(keys[:, 700] == -32767)  # key 1: above every item below it
    assert np.all(keys[:, 699] <= -32767)
