"""The rules every process applies to trials: which scores count, best-first order, what
"stopped early" and "ended" mean.

One home for each: the live progress table, the tracker, the searcher, the leaderboard, the
parent run's table, the analyses and the CLI all apply them. Imports only ``keys``.
"""

from __future__ import annotations

import math
from typing import Any

from reidsearch.search.keys import FAILED_STATUS, FINISHED_STATUS


def finite(value: Any) -> bool:
    """A number that can be logged and ranked (not None, NaN, inf or text)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def best_first(score: float | None, mode: str) -> tuple[bool, float]:
    """Sort key that puts the best score first (``mode`` "max" or "min") and unscored last."""
    if score is None or not finite(score):
        return (True, 0.0)
    return (False, -float(score) if mode == "max" else float(score))


def board_rank(status: str, score: float | None, mode: str) -> tuple[int, bool, float]:
    """Sort key of a trial on a leaderboard: only a finished trial (MLflow status ``FINISHED``,
    ASHA-stopped ones included) can be best, so finished trials come first, then running or
    interrupted ones, failed ones last; best score first within each."""
    group = {FINISHED_STATUS: 0, FAILED_STATUS: 2}.get(status, 1)
    return (group, *best_first(score, mode))


def stopped_early(epochs: Any, full_epochs: int | None, failed: bool = False) -> bool:
    """A trial that ended before its full length without failing: a scheduler (ASHA) stopped it.
    (A failed trial also ran short, but it failed.)"""
    if failed or not full_epochs or epochs is None:
        return False
    return int(epochs) < int(full_epochs)


def ended(failed: bool, last_result: dict[str, Any] | None) -> bool:
    """Whether a Tune trial really ended: it failed, or its last result is ``done`` (finished,
    or stopped by the scheduler). Ctrl-C ends a search with its running and pending trials
    marked TERMINATED as well, but not done: they were interrupted, and ``--resume`` goes on."""
    return failed or bool((last_result or {}).get("done"))
