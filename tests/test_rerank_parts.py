"""The CPU re-ranking's parts against plain references: the symmetric nearest-neighbour pass,
the numpy k-reciprocal sets, the sparse query expansion and the pair-distance lookups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidsearch.evaluation import rerank, sets
from reidsearch.evaluation.jaccard import query_chunks
from reidsearch.evaluation.neighbours import key_similarity, nearest_symmetric, order_keys


def _grid_features(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Features on a 1/8 grid: every dot product is exact in float32 whatever the summation
    order, so a brute-force product is a bit-exact reference; many exact ties."""
    x = rng.integers(-2, 3, (n, dim)).astype(np.float32) / 8
    x[rng.integers(0, n, n // 5)] = x[0]  # duplicates: whole rows of ties
    return x


@pytest.mark.parametrize("seed", range(6))
def test_nearest_symmetric_is_the_brute_force_top_w(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 260))
    x = _grid_features(rng, n, int(rng.integers(2, 12)))
    width = int(rng.integers(1, min(n, 70) + 1))
    block = int(rng.integers(1, 90))
    num_q = int(rng.integers(0, n))
    full = x @ x.T
    idx = np.broadcast_to(np.arange(n, dtype=np.int64), (n, n))
    ref = np.sort(order_keys(full, idx), axis=1)[:, :width]  # similarity desc, index asc
    for workers in (1, 2):
        keep = np.full((num_q, n - num_q), np.nan, dtype=np.float32)
        got_idx, got_sim, low = nearest_symmetric(x, width, block, workers, keep)
        np.testing.assert_array_equal(got_idx, ref & 0xFFFFFFFF)
        np.testing.assert_array_equal(got_sim, key_similarity(ref))
        np.testing.assert_array_equal(low, full.min(1))
        np.testing.assert_array_equal(keep, full[:num_q, num_q:])


def _loop_sets(ranks: np.ndarray, k1: int) -> set[tuple[int, int]]:
    """Expanded k-reciprocal sets by loops over Python sets, as the paper states them."""
    n = len(ranks)
    half = int(np.around(k1 / 2.0))

    def recip(i: int, k: int) -> set[int]:
        return {int(j) for j in ranks[i, : k + 1] if i in ranks[j, : k + 1]}

    pairs = set()
    for i in range(n):
        base = recip(i, k1)
        members = set(base)
        for c in base:
            cset = recip(c, half)
            if len(cset & base) > 2.0 / 3.0 * len(cset):
                members |= cset
        pairs |= {(i, j) for j in members}
    return pairs


@pytest.mark.parametrize("k1", [3, 8, 20])
def test_numpy_sets_match_loops_and_the_torch_twin(k1: int) -> None:
    rng = np.random.default_rng(k1)
    x = _grid_features(rng, 90, 6)
    full = x @ x.T
    idx = np.broadcast_to(np.arange(90, dtype=np.int64), (90, 90))
    ranks = (np.sort(order_keys(full, idx), axis=1) & 0xFFFFFFFF)[:, : min(90, k1 + 5)]
    rows, cols = sets.expanded_sets(ranks, k1)
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == _loop_sets(ranks, k1)
    assert np.all(np.diff(rows * 90 + cols) > 0)  # sorted by row, then column
    t_rows, t_cols = rerank._expanded_sets(torch.from_numpy(ranks), k1, 7)
    np.testing.assert_array_equal(rows, t_rows.numpy())
    np.testing.assert_array_equal(cols, t_cols.numpy())


def test_sparse_query_expansion_is_the_mean_of_neighbour_rows() -> None:
    rng = np.random.default_rng(3)
    n, k2 = 40, 4
    dense = np.where(rng.random((n, n)) < 0.15, rng.random((n, n)), 0.0).astype(np.float32)
    ranks = np.argsort(rng.random((n, n)), axis=1)[:, :10]
    vr, vc = np.nonzero(dense)
    got_r, got_c, got_v = rerank._query_expansion(
        torch.from_numpy(vr),
        torch.from_numpy(vc),
        torch.from_numpy(dense[vr, vc]),
        torch.from_numpy(ranks),
        k2,
        n,
    )
    expected = np.stack([dense[ranks[i, :k2]].mean(0) for i in range(n)])
    out = np.zeros((n, n), dtype=np.float64)
    out[got_r.numpy(), got_c.numpy()] = got_v.numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.all(np.diff(got_r.numpy()) >= 0)  # grouped by row


def test_pair_distances_are_looked_up_both_ways_or_computed() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((60, 5)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dist = rerank._FeatureDistance(torch.from_numpy(x))
    full = torch.from_numpy(2.0 - 2.0 * (x @ x.T))
    near, ranks = torch.sort(full, dim=1)
    ranks, near = ranks[:, :6].contiguous(), near[:, :6].contiguous()
    i = torch.from_numpy(rng.integers(0, 60, 500))
    j = torch.from_numpy(rng.integers(0, 60, 500))
    got = rerank._pair_dist(dist, ranks, near, i, j)
    torch.testing.assert_close(got, full[i, j], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("k1", "k2"), [(20, 6), (6, 1)])
def test_cpu_paths_equal_the_device_neutral_code(k1: int, k2: int) -> None:
    """The CPU paths (symmetric neighbour pass, numpy sets, sparse query expansion) and the
    torch code a GPU runs give the same re-ranking on a CPU."""
    rng = np.random.default_rng(k1)
    centres = rng.standard_normal((12, 16))
    x = centres[rng.integers(0, 12, 150)] + 0.9 * rng.standard_normal((150, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    dist = rerank._FeatureDistance(torch.from_numpy(x))
    args = (dist, 30, k1, k2, 0.3, 16, 400)
    with torch.inference_mode():
        cpu = rerank._rerank(*args, workers=2)
        neutral = rerank._rerank(*args, workers=2, cpu_paths=False)
    torch.testing.assert_close(cpu, neutral, atol=1e-6, rtol=0)


def test_output_pass_in_worker_threads_equals_one_thread() -> None:
    """The last pass split over worker threads (each its own buffer, every other query chunk)
    writes exactly what one thread writes, and chunks honour their row and pair budgets."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((10, 12))
    x = centres[rng.integers(0, 10, 200)] + 0.8 * rng.standard_normal((200, 12))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    dist = rerank._FeatureDistance(torch.from_numpy(x))
    with torch.inference_mode():
        one = rerank._rerank(dist, 40, 20, 6, 0.3, 8, 500, workers=1)
        two = rerank._rerank(dist, 40, 20, 6, 0.3, 8, 500, workers=2)
    assert torch.equal(one, two)
    work = rng.integers(0, 50, 300)
    chunks = query_chunks(work, rows_max=7, max_pairs=120)
    assert [c for ab in chunks for c in range(*ab)] == list(range(300))  # every row, once
    for a, b in chunks:
        assert b - a <= 7 and (b - a == 1 or work[a:b].sum() <= 120)
