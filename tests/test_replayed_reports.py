"""A restarted trial replays the epochs up to its checkpoint; both consumers that key by epoch
must treat the replays right: Optuna's intermediate values are keyed by epoch (not Tune's
``training_iteration``, which replays inflate), and the tracker's score bookkeeping sees a
replayed epoch the driver had logged but not yet saved. No Ray runtime is started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")


def test_optuna_hears_each_epoch_once_at_its_epoch_even_when_replayed():
    import reidsearch
    from reidsearch.internals.ray_internals import optuna_search_study
    from reidsearch.search.driver.searcher import build_searcher

    space = reidsearch.load_space(Path(__file__).parents[1] / "search_spaces/quickstart.yaml")
    searcher = build_searcher(space, max_concurrent=1).searcher
    searcher.suggest("t1")
    reports = [(1, 1, 0.10), (2, 2, 0.20), (3, 1, 0.10), (4, 2, 0.20), (5, 3, 0.30)]
    for iteration, epoch, score in reports:  # iterations 3-4 replay epochs 1-2 after a restart
        searcher.on_trial_result(
            "t1", {"score": score, "epoch": epoch, "training_iteration": iteration}
        )
    values = optuna_search_study(searcher).trials[0].intermediate_values
    assert values == {1: 0.10, 2: 0.20, 3: 0.30}


def _result(epoch: int, score_epoch: int, score: float, **extra) -> dict:
    return {
        "epoch": epoch,
        "loss": 1.0 / epoch,
        "mAP": score if score_epoch == epoch else 0.0,
        "score": score,
        "score_epoch": score_epoch,
        "checkpoint_path": f"/ck/epoch_{epoch:04d}",
        **extra,
    }


def test_a_replayed_epoch_the_driver_logged_but_did_not_save_keeps_its_score(tmp_path):
    from types import SimpleNamespace

    from tests.conftest import tiny_tracker as tracker

    trial = SimpleNamespace(trial_id="t1", config={}, status="RUNNING")
    first = tracker(tmp_path)
    first.setup()
    first.on_trial_start(0, [], trial)
    first.on_trial_result(0, [], trial, _result(1, 1, 0.1))
    first.on_trial_result(0, [], trial, _result(2, 2, 0.2))
    state_file = Path(first._state_path())
    saved_at_epoch_2 = state_file.read_text()
    first.on_trial_result(0, [], trial, _result(3, 3, 0.3))  # logged to MLflow ...
    state_file.write_text(saved_at_epoch_2)  # ... but the driver died before saving its state

    second = tracker(tmp_path)  # the resumed search's driver: MLflow has epoch 3, the state epoch 2
    second.setup()
    for epoch in (1, 2, 3):  # the restarted trial replays up to its checkpoint (epoch 3)
        second.on_trial_result(0, [], trial, _result(epoch, epoch, 0.1 * epoch, replayed=1))
    entry = json.loads(state_file.read_text())["trials"]["t1"]
    assert (entry["score"], entry["score_epoch"]) == (pytest.approx(0.3), 3)
    assert entry["score_checkpoint"] == "/ck/epoch_0003"
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(entry["run_id"], "loss")] == [1, 2, 3]
