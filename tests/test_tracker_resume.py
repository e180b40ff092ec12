"""The MLflow tracker across driver restarts, on a real sqlite store (no Ray runtime): one run
per trial, every epoch once, a failed trial that --resume takes up again finishes."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from tests.conftest import tiny_tracker  # noqa: E402


def _trial(trial_id: str, status: str = "RUNNING", done: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        trial_id=trial_id,
        config={"model.lam": 2.0},
        status=status,
        run_metadata=SimpleNamespace(last_result={"done": True} if done else {}),
        pickled_error_file=None,
        error_file=None,
    )


def _result(epoch: int, **extra) -> dict:
    return {"epoch": epoch, "loss": 1.0 / epoch, "mAP": 0.1 * epoch, **extra}


@pytest.mark.fault("fault")
def test_the_tracker_keeps_one_run_per_trial_and_every_epoch_once_across_restarts(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tiny_tracker(tmp_path)
    pickled = pickle.dumps(tracker)  # Tune keeps the callback as it was at the start
    tracker.setup()
    failed, lost, cut = _trial("failed"), _trial("lost"), _trial("cut")
    for trial in (failed, lost, cut):
        tracker.on_trial_start(0, [], trial)
        for epoch in (1, 2):
            tracker.on_trial_result(0, [], trial, _result(epoch))
    failed.status = "ERROR"
    tracker.on_trial_error(0, [], failed)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = {tid: entry["run_id"] for tid, entry in tracker._state["trials"].items()}
    assert client.get_run(runs["failed"]).data.tags["reidsearch.failure"]
    # The driver dies after MLflow got epoch 3 of "cut" but before the tracker saved that.
    client.log_metric(runs["cut"], "epoch", 3.0, step=3)

    resumed = pickle.loads(pickled)  # --resume: Tune knows "failed" and "cut", not "lost"
    resumed.setup()
    failed.status, cut.status = "PENDING", "PENDING"
    resumed.on_step_begin(0, [failed, cut])
    assert client.get_run(runs["lost"]).info.lifecycle_stage == "deleted"
    for trial, epochs in ((failed, (2, 3, 4)), (cut, (3, 4))):  # each replays its resume epoch
        trial.status = "RUNNING"
        resumed.on_trial_start(0, [failed, cut], trial)
        for epoch in epochs:
            resumed.on_trial_result(0, [], trial, _result(epoch, start_epoch=epochs[0]))
        trial.status, trial.run_metadata.last_result = "TERMINATED", {"done": True}
        resumed.on_trial_complete(0, [failed, cut], trial)
    resumed.on_experiment_end([failed, cut])

    for trial_id in ("failed", "cut"):
        run = client.get_run(runs[trial_id])
        steps = [m.step for m in client.get_metric_history(runs[trial_id], "epoch")]
        assert steps == [1, 2, 3, 4], (trial_id, steps)
        assert run.info.status == "FINISHED"
        assert "reidsearch.failure" not in run.data.tags
    assert client.get_run(runs["cut"]).data.tags["reidsearch.resumed_from_epochs"] == "3"
    ended = client.get_run(runs["failed"]).info.end_time
    resumed.on_trial_complete(0, [], failed)  # Tune telling an end again changes nothing
    assert client.get_run(runs["failed"]).info.end_time == ended
    assert client.get_run(resumed.parent_run_id).info.status == "FINISHED"
