"""One score per trial, end to end: Optuna's recorded value, the MLflow value and the
leaderboard's score are one number for ``reduce: best`` and ``reduce: last``; each search has its
own leaderboard sorted by its objective; ``repeats`` trains seeds side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from tests.conftest import tiny_config_dict, tiny_space  # noqa: E402


def _space(folder: Path, **fields) -> Path:
    # Same-camera matches kept: a 3-epoch tiny model ranks every cross-camera match below
    # its own camera's images (rank-1 0 everywhere), and rank-1 should differ between trials.
    fixed = tiny_config_dict(epochs=3, **{"eval.use_camera": False})
    return tiny_space(folder, "scores", fixed=fixed, trials=3, **fields)


def _optuna_values(experiment_dir: str) -> dict[str, float]:
    """Each Tune trial's value as Optuna recorded it (the searcher state Tune saved)."""
    from reidsearch.internals.ray_internals import optuna_search_study, optuna_search_trials
    from reidsearch.search.driver.searcher import PruneAwareOptunaSearch

    searcher = PruneAwareOptunaSearch(max_epochs=1)
    searcher.restore_from_dir(experiment_dir)
    study = optuna_search_study(searcher)
    asked = optuna_search_trials(searcher)
    return {tid: study.trials[trial.number].value for tid, trial in asked.items()}


def _mlflow_trials(uri: str, search_folder: str) -> dict[str, object]:
    import reidsearch

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    board = reidsearch.leaderboard(uri, "scores", search=search_folder, top=100)
    return {row["trial"]: client.get_run(row["run_id"]) for row in board.rows}, board


def _check_one_score(plan, reduce: str, metric: str) -> object:
    client = mlflow.tracking.MlflowClient(tracking_uri=plan.tracking_uri)
    optuna = _optuna_values(plan.experiment_dir)
    runs, board = _mlflow_trials(plan.tracking_uri, Path(plan.experiment_dir).name)
    assert set(runs) == set(optuna) and len(runs) == 3
    for row in board.rows:
        run = runs[row["trial"]]
        history = client.get_metric_history(run.info.run_id, metric)
        per_epoch = {m.step: m.value for m in history}
        expected_epoch = max(per_epoch, key=per_epoch.get) if reduce == "best" else 3
        if reduce == "best":  # the first epoch reaching the best value
            expected_epoch = min(e for e, v in per_epoch.items() if v == max(per_epoch.values()))
        # Optuna, MLflow and the leaderboard hold the same number, from the same epoch.
        assert optuna[row["trial"]] == pytest.approx(row["score"], abs=1e-12)
        assert run.data.metrics["score"] == pytest.approx(row["score"], abs=1e-12)
        assert row["score"] == pytest.approx(per_epoch[expected_epoch], abs=1e-12)
        assert row["score_epoch"] == expected_epoch
        # The row's other metrics are that epoch's too, not a mix of epochs.
        map_history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "mAP")}
        assert row["scored"]["mAP"] == pytest.approx(map_history[expected_epoch], abs=1e-12)
    scores = [row["score"] for row in board.rows]
    assert scores == sorted(scores, reverse=True)  # sorted by the objective, maximised
    return board


def test_one_score_everywhere_and_a_leaderboard_per_search(search_ray, tmp_path):
    import reidsearch
    from reidsearch.search.results.leaderboard import format_leaderboard

    # Search 1: rank-1, best epoch, three seeds per configuration.
    space_file = _space(tmp_path, objective={"metric": "rank1", "reduce": "best"}, repeats=3)
    first, results = reidsearch.run_search(reidsearch.load_space(space_file), verbose=0)
    assert len(results) == 3 and not results.errors
    board = _check_one_score(first, "best", "rank1")
    assert board.objective.metric == "rank1"
    text = format_leaderboard(board)
    assert text.splitlines()[1].split()[1] == "rank1"  # the objective's column comes first
    for row in board.rows:  # the mean of three seeds, and their spread, reached MLflow
        assert "rank1_std" in row["scored"] and "mAP_std" in row["scored"]
        low, high = row["scored"]["rank1_ci_low"], row["scored"]["rank1_ci_high"]
        assert low <= row["score"] <= high
    assert board.rows[0]["tied"]  # the best row is indistinguishable from itself
    client = mlflow.tracking.MlflowClient(tracking_uri=first.tracking_uri)
    run = client.get_run(board.rows[0]["run_id"])
    assert run.data.params["repeats"] == "3" and run.data.params["seed"] == "0"

    # Search 2 of the same space: the last epoch, one seed.
    space_file = _space(tmp_path, objective={"metric": "rank1", "reduce": "last"})
    second, results = reidsearch.run_search(reidsearch.load_space(space_file), verbose=0)
    assert not results.errors and second.experiment_dir != first.experiment_dir
    board = _check_one_score(second, "last", "rank1")
    assert all("rank1_std" not in row["scored"] for row in board.rows)

    # Each leaderboard shows its own search only, unless asked for all of them.
    newest = reidsearch.leaderboard(second.tracking_uri, "scores")
    older = reidsearch.leaderboard(
        second.tracking_uri, "scores", search=Path(first.experiment_dir).name
    )
    both = reidsearch.leaderboard(second.tracking_uri, "scores", all_searches=True, top=100)
    assert {r["trial"] for r in newest.rows} == set(_optuna_values(second.experiment_dir))
    assert {r["trial"] for r in older.rows} == set(_optuna_values(first.experiment_dir))
    assert len(both.rows) == 6 and len(both.searches) == 2
    assert newest.objective.reduce == "last" and older.objective.reduce == "best"

    # What mattered: the parent run carries the leaderboard table and Optuna's pictures.
    import json

    parent = client.get_run(newest.rows[0]["run_id"]).data.tags["mlflow.parentRunId"]
    assert "leaderboard.json" in {a.path for a in client.list_artifacts(parent)}
    table = json.loads(Path(client.download_artifacts(parent, "leaderboard.json")).read_text())
    assert len(table["data"]) == 3
    pictures = {a.path for a in client.list_artifacts(parent, "analysis")}
    assert {"analysis/param_importances.png", "analysis/slice_model.lam.png"} <= pictures
    assert "analysis/optimization_history.png" in pictures
