"""Re-ranking equals a straightforward dense implementation written from the paper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidsearch.evaluation.rerank import re_rank, re_rank_dist


def dense_reference(dist: np.ndarray, num_q: int, k1: int, k2: int, lam: float) -> np.ndarray:
    """Textbook k-reciprocal re-ranking on the full (N, N) distance matrix (float64, loops)."""
    d = dist.astype(np.float64)
    d = d / d.max(axis=1, keepdims=True)
    n = d.shape[0]
    order = np.argsort(d, axis=1, kind="stable")

    def recip_set(i: int, k: int) -> np.ndarray:
        fwd = order[i, : k + 1]
        return np.array([j for j in fwd if i in order[j, : k + 1]], dtype=np.int64)

    half = int(np.around(k1 / 2.0))
    v = np.zeros((n, n))
    for i in range(n):
        base = recip_set(i, k1)
        expanded = list(base)
        for c in base:
            cset = recip_set(c, half)
            if len(np.intersect1d(cset, base)) > 2.0 / 3.0 * len(cset):
                expanded.extend(cset)
        idx = np.unique(np.asarray(expanded, dtype=np.int64))
        w = np.exp(-d[i, idx])
        v[i, idx] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[order[i, :k2]].mean(axis=0) for i in range(n)])
    jac = np.zeros((num_q, n))
    for i in range(num_q):
        m = np.minimum(v[i][None, :], v).sum(axis=1)
        jac[i] = 1.0 - m / (2.0 - m)
    final = (1.0 - lam) * jac + lam * d[:num_q]
    return final[:, num_q:]


def _features(rng: np.random.Generator, n: int, dim: int, ids: int) -> np.ndarray:
    centres = rng.standard_normal((ids, dim))
    x = centres[rng.integers(0, ids, n)] + 0.8 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(("k1", "k2", "lam"), [(20, 6, 0.3), (7, 1, 0.5), (5, 3, 0.0)])
def test_rerank_features_match_dense_reference(k1: int, k2: int, lam: float) -> None:
    rng = np.random.default_rng(k1)
    num_q, num_g = 25, 140
    feats = _features(rng, num_q + num_g, 24, 30)
    qf, gf = feats[:num_q], feats[num_q:]
    full = 2.0 - 2.0 * (feats.astype(np.float64) @ feats.T.astype(np.float64))
    expected = dense_reference(full, num_q, k1, k2, lam)
    got = re_rank(qf, gf, k1=k1, k2=k2, lambda_value=lam, chunk_size=37, max_pairs=500)
    assert isinstance(got, np.ndarray) and got.shape == (num_q, num_g)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_rerank_from_distance_blocks_and_torch_input() -> None:
    rng = np.random.default_rng(1)
    num_q, num_g = 20, 90
    feats = _features(rng, num_q + num_g, 16, 15)
    full = (2.0 - 2.0 * (feats @ feats.T)).astype(np.float32)
    expected = dense_reference(full, num_q, 20, 6, 0.3)
    got = re_rank_dist(full[:num_q, num_q:], full[:num_q, :num_q], full[num_q:, num_q:])
    np.testing.assert_allclose(got, expected, atol=2e-5)
    as_torch = re_rank(torch.from_numpy(feats[:num_q]), torch.from_numpy(feats[num_q:]))
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_allclose(as_torch.numpy(), expected, atol=2e-5)


def test_rerank_with_duplicate_items_is_deterministic() -> None:
    rng = np.random.default_rng(2)
    feats = _features(rng, 60, 8, 6)
    feats[10] = feats[3]
    feats[40] = feats[3]
    feats[41] = feats[20]
    num_q = 12
    full = (2.0 - 2.0 * (feats.astype(np.float64) @ feats.T.astype(np.float64))).astype(np.float32)
    expected = dense_reference(full, num_q, 6, 3, 0.3)
    got = re_rank_dist(full[:num_q, num_q:], full[:num_q, :num_q], full[num_q:, num_q:], 6, 3)
    np.testing.assert_allclose(got, expected, atol=2e-5)


@pytest.mark.parametrize("stored", [0, 64])
def test_many_ties_and_few_stored_neighbours(stored: int) -> None:
    from reidsearch.evaluation.rerank import _FeatureDistance, _rerank

    rng = np.random.default_rng(3)
    feats = _features(rng, 70, 8, 5)
    feats[20:32] = feats[5]  # 13 identical items: ties across the k1 cut
    num_q = 15
    full = 2.0 - 2.0 * (feats.astype(np.float64) @ feats.T.astype(np.float64))
    # Identical features give bit-identical float32 similarities; mirror that in float64.
    expected = dense_reference(full, num_q, 6, 3, 0.3)
    dist = _FeatureDistance(torch.from_numpy(feats))
    got = _rerank(dist, num_q, 6, 3, 0.3, chunk=16, max_pairs=300, stored_neighbours=stored)
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-5)
