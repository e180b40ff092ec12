"""The leaderboard's table: rows that cannot be told apart from the best, and its columns."""

from __future__ import annotations

from reidsearch.config import ObjectiveConfig
from reidsearch.search.results.leaderboard import (
    Leaderboard,
    format_leaderboard,
    mark_indistinguishable,
    order_rows,
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


def test_only_a_finished_trial_can_be_best_failed_ones_go_below_marked():
    """A trial that failed (e.g. diverged after a good epoch) keeps its score, but it is not
    the best: it ranks below every finished one, running ones in between."""
    objective = ObjectiveConfig(metric="rank1")
    rows = [
        {**_row("diverged", 0.90, 0.85, 0.95), "status": "FAILED"},
        {**_row("running", 0.70, 0.60, 0.80), "status": "RUNNING"},
        _row("finished", 0.60, 0.50, 0.70),
        {**_row("stopped", 0.40, 0.30, 0.55), "stopped_early": True},
        {**_row("unscored", 0.0, 0, 0), "score": None, "scored": {}},
    ]
    order_rows(rows, objective)
    assert [r["run"] for r in rows] == ["finished", "stopped", "unscored", "running", "diverged"]
    # Ties are judged against the best finished trial, not the failed one's higher score.
    assert [r["tied"] for r in rows] == [True, True, False, True, False]
    board = Leaderboard("exp", ["s-1"], objective, rows)
    lines = format_leaderboard(board).splitlines()
    assert lines[2].split()[1] == "60.0" and "failed" in lines[-1].split()


def test_export_best_refuses_a_search_whose_only_scored_trial_failed(tmp_path):
    """``best_trial`` (``export --best``) takes the best finished trial, never a failed one."""
    import pytest
    from mlflow.tracking import MlflowClient

    import reidsearch
    from reidsearch.errors import ReidSearchError
    from reidsearch.search.keys import CHECKPOINT_TAG, KIND_TAG, PARENT_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("exp")
    parent = client.create_run(experiment, tags={KIND_TAG: "search"}).info.run_id

    def trial(name: str, score: float, status: str) -> None:
        tags = {KIND_TAG: "trial", PARENT_TAG: parent, CHECKPOINT_TAG: f"/ck/{name}"}
        run = client.create_run(experiment, run_name=name, tags=tags).info.run_id
        client.log_metric(run, "score", score)
        client.set_terminated(run, status=status)

    trial("diverged", 0.9, "FAILED")
    with pytest.raises(ReidSearchError, match="no finished trial has a score"):
        reidsearch.best_trial(uri, "exp")
    trial("finished", 0.5, "FINISHED")
    best = reidsearch.best_trial(uri, "exp")
    assert (best.run_name, best.score, best.checkpoint) == ("finished", 0.5, "/ck/finished")
    assert [r["run"] for r in reidsearch.leaderboard(uri, "exp").rows] == ["finished", "diverged"]
