"""Bootstrap intervals against plain-loop and analytic references; per-query metric values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from reidsearch.config import QUERY_METRICS
from reidsearch.evaluation import bootstrap, evaluate
from reidsearch.evaluation.bootstrap import bootstrap_interval, query_intervals
from reidsearch.evaluation.metrics import PER_QUERY_METRICS
from tests.test_metrics import _random_case

# Hand-made per-query values: APs, and a rank-1 column with a few misses.
HAND_AP = np.array(
    [1.0, 0.5, 0.25, 0.8, 0.9, 1 / 3, 0.7, 0.05, 1.0, 0.6, 0.45, 0.95, 0.2, 0.75, 0.99, 0.1, 0.66]
)
HAND_R1 = np.array([1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1], dtype=float)


def _loop_bootstrap(values: np.ndarray, confidence: float, num_samples: int, seed: int):
    """The documented draws, with plain loops and a hand-written linear-interpolation quantile."""
    num_s, num_q = values.shape
    rng = np.random.default_rng(seed)
    query_idx = rng.integers(0, num_q, size=(num_samples, num_q))
    seed_idx = rng.integers(0, num_s, size=(num_samples, num_s)) if num_s > 1 else None
    stats = []
    for b in range(num_samples):
        seed_means = []
        for j in range(num_s):
            s = seed_idx[b, j] if seed_idx is not None else 0
            total = 0.0
            for i in range(num_q):
                total += values[s, query_idx[b, i]]
            seed_means.append(total / num_q)
        stats.append(sum(seed_means) / num_s)
    stats.sort()

    def quantile(p: float) -> float:
        pos = p * (num_samples - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, num_samples - 1)
        return stats[lo] + (stats[hi] - stats[lo]) * (pos - lo)

    return quantile((1 - confidence) / 2), quantile((1 + confidence) / 2)


@pytest.mark.parametrize(("confidence", "seed"), [(0.95, 0), (0.9, 7)])
def test_1d_matches_plain_loop(confidence: float, seed: int) -> None:
    for values in (HAND_AP, HAND_R1):
        got = bootstrap_interval(values, confidence=confidence, num_samples=300, seed=seed)
        want = _loop_bootstrap(values[None, :], confidence, 300, seed)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        assert got[0] < values.mean() < got[1]


def test_2d_matches_plain_loop() -> None:
    values = np.stack([HAND_AP, np.clip(HAND_AP + 0.1, 0, 1), HAND_AP[::-1]])
    got = bootstrap_interval(values, num_samples=200, seed=3)
    want = _loop_bootstrap(values, 0.95, 200, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_chunked_draws_are_the_documented_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(0).random((2, 50))
    whole = bootstrap_interval(values, num_samples=400, seed=5)
    monkeypatch.setattr(bootstrap, "_MAX_PRODUCT", 7 * 50 * 2 + 3)  # 7 rows per chunk
    chunked = bootstrap_interval(values, num_samples=400, seed=5)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-15)


def test_agrees_with_large_bootstrap_and_normal_approximation() -> None:
    values = np.random.default_rng(11).beta(2, 3, size=500)
    low, high = bootstrap_interval(values)
    width = high - low
    big_low, big_high = bootstrap_interval(values, num_samples=20000, seed=12345)
    assert abs(low - big_low) < 0.1 * width and abs(high - big_high) < 0.1 * width
    half = 1.959964 * values.std() / math.sqrt(len(values))
    assert abs(low - (values.mean() - half)) < 0.1 * width
    assert abs(high - (values.mean() + half)) < 0.1 * width


def test_interval_narrows_as_queries_are_added() -> None:
    rng = np.random.default_rng(2)
    widths = []
    for n in (20, 200, 2000):
        low, high = bootstrap_interval(rng.beta(2, 2, size=n))
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] > 0
    assert 2.0 < widths[1] / widths[2] < 5.0  # about sqrt(10)


def test_2d_widens_when_seeds_disagree() -> None:
    base = np.random.default_rng(4).random(100)
    one = bootstrap_interval(base)
    agree = bootstrap_interval(np.tile(base, (3, 1)))
    np.testing.assert_allclose(agree, one, rtol=0, atol=1e-12)  # same query draw for every seed
    disagree = bootstrap_interval(base[None, :] + np.array([[-0.06], [0.0], [0.06]]))
    assert disagree[1] - disagree[0] > 1.3 * (one[1] - one[0])
    assert disagree[0] < base.mean() < disagree[1]


def test_degenerate_inputs() -> None:
    assert bootstrap_interval([0.37]) == (0.37, 0.37)
    assert bootstrap_interval(np.full(57, 0.1)) == (0.1, 0.1)  # exact, no rounding
    assert bootstrap_interval(np.full((3, 20), 0.3)) == (0.3, 0.3)
    low, high = bootstrap_interval([[0.2], [0.4], [0.9]])  # 1 query, seeds disagree
    assert 0.2 <= low < high <= 0.9
    assert all(math.isnan(x) for x in bootstrap_interval([0.5, float("nan")]))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bootstrap_interval([]), "no values"),
        (lambda: bootstrap_interval(np.zeros((2, 0))), "no values"),
        (lambda: bootstrap_interval(np.zeros((2, 2, 2))), "1-D .* or 2-D"),
        (lambda: bootstrap_interval([1.0], confidence=1.0), "confidence"),
        (lambda: bootstrap_interval([1.0], num_samples=0), "num_samples"),
        (lambda: query_intervals([]), "no per-query values"),
        (lambda: query_intervals([{"mAP": np.zeros(0)}]), "no queries"),
        (lambda: query_intervals([{"mAP": np.ones(3)}, {"rank1": np.ones(3)}]), "seed 1"),
        (lambda: query_intervals([{"mAP": np.ones(3), "rank1": np.ones(2)}]), "length"),
        (lambda: query_intervals([{"mAP": np.ones(3)}, {"mAP": np.ones(4)}]), "length"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_query_intervals_share_one_draw() -> None:
    rng = np.random.default_rng(9)
    seeds = [
        {name: rng.random(40) for name in QUERY_METRICS},
        {name: rng.random(40) for name in QUERY_METRICS},
    ]
    one = query_intervals(seeds[:1], num_samples=300, seed=1)
    two = query_intervals(seeds, num_samples=300, seed=1)
    assert list(one) == list(QUERY_METRICS)
    for name in QUERY_METRICS:
        alone = bootstrap_interval(seeds[0][name], num_samples=300, seed=1)
        np.testing.assert_allclose(one[name], alone, rtol=0, atol=1e-15)  # BLAS rounding only
        stacked = np.stack([s[name] for s in seeds])
        np.testing.assert_allclose(
            two[name], bootstrap_interval(stacked, num_samples=300, seed=1), rtol=0, atol=1e-15
        )


def test_metric_names_agree_with_config() -> None:
    from reidsearch import config
    from reidsearch.evaluation import metrics

    assert PER_QUERY_METRICS == QUERY_METRICS
    assert metrics.RETRIEVALS == config.RETRIEVALS  # the copy the GPU box can import


def _check_per_query(res: dict, max_rank: int = 50) -> None:
    per_query = res["per_query"]
    assert tuple(per_query) == QUERY_METRICS
    for name, values in per_query.items():
        assert values.shape == (res["num_valid_queries"],) and values.dtype == np.float64
        mean = values.mean()
        assert mean == res[name] or (math.isnan(mean) and math.isnan(res[name])), name
    valid = ~np.isnan(res["per_query_ap"])
    np.testing.assert_array_equal(per_query["mAP"], res["per_query_ap"][valid])
    first = res["first_match_rank"][valid]
    for k in (1, 5, 10):
        if k <= max_rank:
            np.testing.assert_array_equal(per_query[f"rank{k}"], first <= k)
            assert per_query[f"rank{k}"].mean() == res["cmc"][k - 1]
        else:
            assert np.isnan(per_query[f"rank{k}"]).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_per_query_values_match_sklearn_and_the_scalars(seed: int) -> None:
    qf, gf, qp, gp, qc, gc = _random_case(seed)
    sims = qf @ gf.T
    ap, inp, hit1 = [], [], []
    for i in range(len(qp)):
        keep = (gp != -1) & ~((gp == qp[i]) & (gc == qc[i]))
        y = gp[keep] == qp[i]
        if y.any():
            scores = sims[i, keep].astype(np.float64)
            ap.append(average_precision_score(y, scores))
            hits = np.flatnonzero(y[np.argsort(-scores, kind="stable")]) + 1
            inp.append(len(hits) / hits[-1])
            hit1.append(float(hits[0] == 1))
    for chunk in (7, 256):
        res = evaluate(qf, gf, qp, gp, qc, gc, chunk_size=chunk)
        _check_per_query(res)
        np.testing.assert_allclose(res["per_query"]["mAP"], ap, atol=1e-6)
        np.testing.assert_allclose(res["per_query"]["mINP"], inp, atol=1e-6)
        np.testing.assert_array_equal(res["per_query"]["rank1"], hit1)


def test_per_query_values_with_rerank_no_camera_and_short_cmc() -> None:
    qf, gf, qp, gp, qc, gc = _random_case(6, num_q=30, num_g=150)
    _check_per_query(evaluate(qf, gf, qp, gp, qc, gc, rerank=True, k1=10, k2=3))
    q_paths = [f"q/{i}.png" for i in range(len(qp))]
    g_paths = [f"g/{j}.png" for j in range(len(gp))]
    g_paths[0], gp[0], gc[0], gf[0] = q_paths[0], qp[0], qc[0], qf[0]
    res = evaluate(qf, gf, qp, gp, qc, gc, use_camera=False, q_paths=q_paths, g_paths=g_paths)
    _check_per_query(res)
    _check_per_query(evaluate(qf, gf, qp, gp, qc, gc, max_rank=4), max_rank=4)
    low, high = query_intervals([res["per_query"]])["mAP"]
    assert low < res["mAP"] < high
