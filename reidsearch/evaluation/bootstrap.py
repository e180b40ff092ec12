"""Percentile-bootstrap confidence intervals of re-ID metrics over the queries (and seeds).

Why: a small validation set is noisy (28 queries: one query is 3.6 points of rank-1), so a score
is reported with the interval a resampling of its queries gives; several training seeds add
their own spread, so a multi-seed score resamples the seeds as well.

The draws, exactly (so an independent implementation reproduces the interval), for values of
S seeds x Q queries (one seed: S = 1) and B = ``num_samples``::

    rng = np.random.default_rng(seed)
    query_idx = rng.integers(0, Q, size=(B, Q))   # row b: the queries of sample b
    seed_idx = rng.integers(0, S, size=(B, S))    # drawn only when S > 1
    stat[b] = mean over j of (mean over i of values[seed_idx[b, j], query_idx[b, i]])
    low, high = np.quantile(stat, [(1 - confidence) / 2, (1 + confidence) / 2])

Every seed is resampled with the same query draw, because all seeds are scored on the same
queries. The query draw is made in row chunks (the same numbers as one call) and turned into
per-query counts, so a sample's mean is one row of a (B, Q) @ (Q, S * metrics) product: no
(B, Q) gather per metric. Constant values give the interval (value, value); NaN gives NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

# Multiply-adds per chunk of samples ((rows x Q) @ (Q x seeds * metrics)). Small chunks keep
# OpenBLAS on one thread (it starts threads from 2 * 2**18): on a busy 2-core machine its two
# threads made the product 5-10x slower (300 ms instead of 40 ms at Market scale). They also keep
# the draws in cache.
_MAX_PRODUCT = 1 << 18


def _check(confidence: float, num_samples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")


def _intervals(
    stack: np.ndarray, confidence: float, num_samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per metric of ``stack`` (seeds, queries, metrics), with the module's draws."""
    num_s, num_q, num_m = stack.shape
    rng = np.random.default_rng(seed)
    flat = stack.transpose(1, 0, 2).reshape(num_q, num_s * num_m)
    means = np.empty((num_samples, num_s * num_m))
    rows = max(1, _MAX_PRODUCT // (num_q * num_s * num_m))
    for start in range(0, num_samples, rows):
        b = min(rows, num_samples - start)
        idx = rng.integers(0, num_q, size=(b, num_q))
        idx += np.arange(0, b * num_q, num_q)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * num_q).reshape(b, num_q)
        means[start : start + b] = counts.astype(np.float64) @ flat
    means = (means / num_q).reshape(num_samples, num_s, num_m)
    if num_s > 1:
        seed_idx = rng.integers(0, num_s, size=(num_samples, num_s))
        stats = np.take_along_axis(means, seed_idx[:, :, None], axis=1).mean(axis=1)
    else:
        stats = means[:, 0]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, (1.0 + confidence) / 2.0], axis=0)
    # Exact collapse: the count-weighted sums above can round a constant by one ulp.
    first = stack[0, 0]
    const = (stack == first).all(axis=(0, 1))
    low[const], high[const] = first[const], first[const]
    bad = np.isnan(stack).any(axis=(0, 1))
    low[bad], high[bad] = np.nan, np.nan
    return low, high


def bootstrap_interval(
    values: ArrayLike,
    *,
    confidence: float = 0.95,
    num_samples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of per-query ``values``.

    ``values`` is 1-D (queries) or 2-D (seeds x queries: the statistic is the mean over seeds of
    the mean over queries; seeds and queries are both resampled, see the module docstring for
    the exact draws).
    """
    _check(confidence, num_samples)
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"values must be 1-D (queries) or 2-D (seeds x queries), got {arr.ndim}-D")
    if arr.size == 0:
        raise ValueError(f"no values to bootstrap (shape {arr.shape})")
    low, high = _intervals(arr[:, :, None], confidence, int(num_samples), seed)
    return float(low[0]), float(high[0])


def query_intervals(
    per_query_by_seed: Sequence[Mapping[str, ArrayLike]],
    *,
    confidence: float = 0.95,
    num_samples: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Interval of every metric of ``evaluate()["per_query"]``, one such dict per seed.

    Why one shared draw: every metric is resampled with the same queries (and seeds), so the
    intervals describe the same resampled evaluations. The metrics are the first dict's keys (from
    ``evaluate``: ``reidsearch.config.QUERY_METRICS``); every dict must have them, with arrays of
    one common length (the same valid queries). One dict: the 1-D case of ``bootstrap_interval``.
    """
    _check(confidence, num_samples)
    if len(per_query_by_seed) == 0:
        raise ValueError("no per-query values: give one dict of per-query arrays per seed")
    names = list(per_query_by_seed[0])
    if not names:
        raise ValueError("no metrics in the per-query values")
    columns = []
    for s, per_query in enumerate(per_query_by_seed):
        if set(per_query) != set(names):
            raise ValueError(f"seed {s} has metrics {sorted(per_query)}, expected {sorted(names)}")
        arrays = [np.asarray(per_query[name], dtype=np.float64) for name in names]
        for name, arr in zip(names, arrays, strict=True):
            if arr.ndim != 1:
                raise ValueError(f"seed {s}: {name}: per-query values must be 1-D")
        columns.append(arrays)
    lengths = {arr.shape[0] for arrays in columns for arr in arrays}
    if len(lengths) != 1:
        raise ValueError(
            f"per-query arrays differ in length {sorted(lengths)}: same queries needed"
        )
    if lengths == {0}:
        raise ValueError("no queries to bootstrap (per-query arrays are empty)")
    stack = np.stack([np.stack(arrays, axis=1) for arrays in columns])  # (seeds, queries, metrics)
    low, high = _intervals(stack, confidence, int(num_samples), seed)
    return {name: (float(low[m]), float(high[m])) for m, name in enumerate(names)}
