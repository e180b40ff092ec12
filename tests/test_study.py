"""A search's Optuna study in its own journal: real Optuna, a real search, a real
optuna-dashboard server; a study on S3 is checked by tests/test_cluster_e2e.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from tests.cluster_harness import free_port  # noqa: E402
from tests.conftest import tiny_space  # noqa: E402


def _space(folder: Path) -> Path:
    return tiny_space(folder, "studied", epochs=2)


def _get(url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_the_study_lives_in_the_search_and_the_dashboard_serves_it(search_ray, tmp_path):
    import optuna

    import reidsearch
    from reidsearch.search.keys import STUDY_FILE
    from reidsearch.search.results.state_files import state_path

    plan, results = reidsearch.run_search(_space(tmp_path))
    assert results.num_errors == 0
    journal = Path(state_path(plan.experiment_dir, STUDY_FILE))
    assert journal.is_file()
    # Read with plain Optuna, as any user would: the trials' values are MLflow's scores.
    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    study = optuna.load_study(study_name=Path(plan.experiment_dir).name, storage=storage)
    values = sorted(t.value for t in study.trials if t.state.name == "COMPLETE")
    board = reidsearch.leaderboard(plan.tracking_uri, search=Path(plan.experiment_dir).name)
    assert len(values) == 2 and values == pytest.approx(sorted(r["score"] for r in board.rows))
    assert all(len(t.intermediate_values) == 2 for t in study.trials)  # one per epoch

    port = free_port()
    command = [sys.executable, "-m", "reidsearch.cli", "dashboard", "--port", str(port)]
    command += ["--tracking-uri", plan.tracking_uri]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        summaries = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        (summary,) = [s for s in summaries if s["study_name"] == Path(plan.experiment_dir).name]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")
        served = sorted(t["values"][0] for t in detail["trials"] if t["state"] == "Complete")
        assert served == pytest.approx(values)
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    link = f"http://127.0.0.1:{port}/dashboard/studies/{summary['study_id']}"
    assert f"{Path(plan.experiment_dir).name}: its Optuna study on {link}" in out


def test_a_restored_searcher_fails_the_trials_it_never_asked(tmp_path):
    """Asked after Tune's last save of the searcher, before the driver went down: the journal
    has them, the restored searcher does not; they must not stay RUNNING for ever."""
    import reidsearch
    from reidsearch.internals.ray_internals import optuna_search_study
    from reidsearch.search.driver.searcher import build_searcher

    space = reidsearch.load_space(_space(tmp_path))
    folder = str(tmp_path / "runs" / "studied-1")
    first = build_searcher(space, max_concurrent=4, experiment_dir=folder).searcher
    first.suggest("a"), first.suggest("b")
    first.save(str(tmp_path / "searcher.pkl"))
    first.suggest("c")  # the driver went down before Tune saved this

    again = build_searcher(space, max_concurrent=4, experiment_dir=folder).searcher
    again.restore(str(tmp_path / "searcher.pkl"))
    states = [t.state.name for t in optuna_search_study(again).trials]
    assert states == ["RUNNING", "RUNNING", "FAIL"]
    again.on_trial_complete("a", {"score": 0.5, "epoch": 2})
    assert [t.value for t in optuna_search_study(again).trials][0] == 0.5


def test_the_dashboard_of_a_missing_search_is_one_line(tmp_path, capsys):
    from reidsearch.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["dashboard", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow store there yet" in err[0]


def test_a_trial_told_after_the_last_save_is_not_told_again(tmp_path):
    """The driver went down after telling the journal a trial's end, before Tune saved the
    searcher: the restored searcher hears the trial end again (it replays its outcome), and
    Optuna refuses to update a finished trial; it must be let be, not fail the trial."""
    import reidsearch
    from reidsearch.internals.ray_internals import optuna_search_study
    from reidsearch.search.driver.searcher import build_searcher

    space = reidsearch.load_space(_space(tmp_path))
    folder = str(tmp_path / "runs" / "studied-1")
    first = build_searcher(space, max_concurrent=4, experiment_dir=folder).searcher
    first.suggest("a"), first.suggest("b")
    first.save(str(tmp_path / "searcher.pkl"))
    first.on_trial_result("a", {"score": 0.7, "epoch": 2})
    first.on_trial_complete("a", {"score": 0.7, "epoch": 2})

    again = build_searcher(space, max_concurrent=4, experiment_dir=folder).searcher
    again.restore(str(tmp_path / "searcher.pkl"))
    again.on_trial_result("a", {"score": 0.7, "epoch": 2})  # replayed: no error
    again.on_trial_complete("a", {"score": 0.7, "epoch": 2})
    again.on_trial_complete("b", {"score": 0.4, "epoch": 2})
    trials = optuna_search_study(again).trials
    assert [(t.state.name, t.value) for t in trials] == [("COMPLETE", 0.7), ("COMPLETE", 0.4)]
