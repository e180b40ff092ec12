"""Extending a finished search (``run --resume --trials N``) on real Ray Tune, Optuna and MLflow:
the searcher continues from what it learned, nothing finished runs again, one parent run."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from reidsearch.cli import main  # noqa: E402
from reidsearch.search.keys import KIND_TAG, PARENT_TAG, TRIAL_TAG  # noqa: E402
from tests.conftest import tiny_space  # noqa: E402


def _space(folder: Path) -> Path:
    return tiny_space(folder, "grow")


def _trial_runs(uri: str) -> dict[str, object]:
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`{KIND_TAG}` = 'trial'",
    )
    return {run.data.tags[TRIAL_TAG]: run for run in runs}


def _study_values(experiment_dir: str) -> list[float | None]:
    from reidsearch.internals.ray_internals import optuna_search_study
    from reidsearch.search.driver.searcher import PruneAwareOptunaSearch

    searcher = PruneAwareOptunaSearch(max_epochs=1)
    searcher.restore_from_dir(experiment_dir)
    return [trial.value for trial in optuna_search_study(searcher).trials]


def test_a_finished_search_is_extended_to_more_trials(search_ray, tmp_path, capsys):
    import reidsearch

    path = _space(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plan, results = reidsearch.run_search(path)
    assert len(results) == 2 and results.num_errors == 0
    before = _trial_runs(uri)
    assert len(before) == 2
    first_values = _study_values(plan.experiment_dir)

    assert main(["run", str(path), "--resume", "--trials", "4"]) == 0
    after = _trial_runs(uri)
    assert len(after) == 4 and set(before) < set(after)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    for trial_id, run in before.items():  # the finished trials were not run again
        again = after[trial_id]
        assert again.info.run_id == run.info.run_id and again.info.end_time == run.info.end_time
        assert len(client.get_metric_history(run.info.run_id, "epoch")) == 1
    parents = {run.data.tags[PARENT_TAG] for run in after.values()}
    assert len(parents) == 1  # one parent run for all
    assert all(run.info.status == "FINISHED" for run in after.values())
    # The searcher continued: its study holds the first two trials' values, then two more.
    values = _study_values(plan.experiment_dir)
    assert len(values) == 4 and values[:2] == first_values and None not in values
    board = reidsearch.leaderboard(uri, "grow", search=Path(plan.experiment_dir).name)
    assert len(board.rows) == 4
    capsys.readouterr()

    # Never shortened; and a plain resume keeps the raised total (nothing more to run).
    assert main(["run", str(path), "--resume", "--trials", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 is fewer than the 4 trials this search already has" in err[0]
    assert main(["run", str(path), "--resume"]) == 0
    assert len(_trial_runs(uri)) == 4
