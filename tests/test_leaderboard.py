"""The leaderboard's table: rows that cannot be told apart from the best, and its columns."""

from __future__ import annotations

from reidsearch.config import ObjectiveConfig
from reidsearch.search.results.leaderboard import (
    Leaderboard,
    format_leaderboard,
    mark_indistinguishable,
)


def _row(name: str, score: float, low: float, high: float) -> dict:
    return {
        "run": name,
        "run_id": name,
        "status": "FINISHED",
        "stopped_early": False,
        "search": "s-1",
        "score": score,
        "score_epoch": 3.0,
        "scored": {"rank1": score, "rank1_ci_low": low, "rank1_ci_high": high, "mAP": 0.5},
        "untrained_mAP": 0.02,
        "params": {"model.lam": "8.0"},
    }


def test_rows_whose_interval_overlaps_the_best_are_marked():
    objective = ObjectiveConfig(metric="rank1")
    rows = [
        _row("best", 0.60, 0.50, 0.70),
        _row("close", 0.55, 0.45, 0.65),  # overlaps 0.50-0.70
        _row("apart", 0.30, 0.20, 0.49),  # ends below the best's lower end
        {**_row("no-interval", 0.20, 0, 0), "scored": {}},
    ]
    mark_indistinguishable(rows, objective)
    assert [r["tied"] for r in rows] == [True, True, False, False]
    board = Leaderboard("exp", ["s-1"], objective, rows, untrained={"s-1": 0.02})
    lines = format_leaderboard(board).splitlines()
    assert lines[1].split()[:2] == ["#", "rank1"]  # the objective's column first
    assert lines[2].split()[:4] == ["1", "60.0", "50.0-70.0", "~"]
    assert lines[4].split()[:3] == ["3", "30.0", "20.0-49.0"] and "~" not in lines[4].split()
    assert "2.0% (mean over the trials of s-1)" in lines[-1]


def test_a_failed_trial_reads_failed_not_stopped():
    objective = ObjectiveConfig(metric="rank1")
    failed = {**_row("nan", 0.1, 0.0, 0.2), "status": "FAILED", "stopped_early": True}
    stopped = {**_row("asha", 0.2, 0.1, 0.3), "stopped_early": True}
    rows = [stopped, failed]
    mark_indistinguishable(rows, objective)
    text = format_leaderboard(Leaderboard("exp", ["s-1"], objective, rows))
    assert "stopped" in text.splitlines()[2] and "failed" in text.splitlines()[3]


def test_minimised_objective_overlap_uses_the_same_rule():
    objective = ObjectiveConfig(metric="rank1", mode="min")
    rows = [_row("best", 0.2, 0.1, 0.3), _row("worse", 0.5, 0.31, 0.6)]
    mark_indistinguishable(rows, objective)
    assert [r["tied"] for r in rows] == [True, False]
