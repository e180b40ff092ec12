"""The search's MLflow writes run off Tune's event loop (issue 24): a trial event returns without
waiting for MLflow or storage, and by the search's end MLflow holds exactly what the synchronous
tracker wrote (runs, params, metrics, tags, pictures, statuses, the leaderboard).

No Ray runtime: the tracker is driven as Tune drives it, on real sqlite stores; the store is made
slow by holding every client call at a gate."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from reidsearch.search.driver.background import BackgroundWriter  # noqa: E402
from reidsearch.search.driver.tracker import MLflowSearchTracker  # noqa: E402
from tests.conftest import tiny_tracker  # noqa: E402


def test_calls_run_in_order_off_the_callers_thread_and_errors_come_back():
    writer = BackgroundWriter("test")
    gate, done = threading.Event(), []
    writer.submit(gate.wait)
    started = time.perf_counter()
    for i in range(5):
        writer.submit(done.append, i)
    assert time.perf_counter() - started < 0.5 and done == []  # nothing waited for the gate
    assert writer.flush(timeout=0.2) is False and writer.pending == 6
    gate.set()
    assert writer.flush(timeout=10) and done == [0, 1, 2, 3, 4]  # in the order submitted

    gate.clear()  # a keyed call still queued absorbs the next one with its key
    writer.submit(gate.wait)
    writer.submit(done.append, "copy", key="journal")
    writer.submit(done.append, "copy again", key="journal")
    gate.set()
    writer.flush(timeout=10)
    assert done[5:] == ["copy"]

    def fails() -> None:
        raise OSError("store down")

    writer.submit(fails)
    writer.submit(done.append, "after")  # later calls still run (the first error is kept)
    with pytest.raises(OSError, match="store down"):
        writer.flush(timeout=10)
    assert done[-1] == "after"
    writer.flush(timeout=10)  # raised once
    writer.close()  # the search's end: no thread left behind
    assert not [t for t in threading.enumerate() if t.name == "test"]

    inline = BackgroundWriter("inline", inline=True)
    inline.submit(done.append, "now")
    assert done[-1] == "now"


class GatedClient:
    """An MLflow client whose every call waits at ``gate`` (a slow store or tracking server),
    for at most 5 s: a tracker that waits on its store is slow, not stuck."""

    def __init__(self, client: Any, gate: threading.Event) -> None:
        self._client, self._gate = client, gate

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def gated(*args: Any, **kwargs: Any) -> Any:
            self._gate.wait(timeout=5)
            return method(*args, **kwargs)

        return gated


def _trial(trial_id: str, lam: float) -> SimpleNamespace:
    return SimpleNamespace(
        trial_id=trial_id,
        config={"model.lam": lam},
        status="RUNNING",
        run_metadata=SimpleNamespace(last_result={}),
    )


def _results(folder: Path, trial_id: str) -> list[dict]:
    """Two epochs; the second scored, with a checkpoint holding a picture."""
    checkpoint = folder / "search" / "train" / f"train_{trial_id}" / "epoch_0002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "ranked_list.png").write_bytes(b"\x89PNG picture")
    scored = {"mAP": 0.3, "rank1": 0.5, "score": 0.3, "score_epoch": 2.0, "epoch_score": 0.3}
    return [
        {"epoch": 1, "loss": 2.0, "startup_s": 0.1, "node_id": "n1"},
        {"epoch": 2, "loss": 1.5, **scored, "checkpoint_path": str(checkpoint)},
    ]


def _drive(tracker: MLflowSearchTracker, folder: Path, gate: threading.Event) -> tuple:
    """A search of two trials as Tune reports it. A background tracker's store is held shut
    until the search ends; returns the longest time a trial event took to return and when the
    gate opened (ms)."""
    tracker.setup()
    tracker._client = GatedClient(tracker.client, gate)
    if tracker.background:
        gate.clear()
    trials = [_trial("a", 2.0), _trial("b", 5.0)]
    slowest = 0.0
    tracker.on_step_begin(0, trials)
    for trial in trials:
        events = [lambda t=trial: tracker.on_trial_start(0, trials, t)]
        events += [
            lambda t=trial, r=result: tracker.on_trial_result(0, trials, t, r)
            for result in _results(folder, trial.trial_id)
        ]
        events.append(lambda t=trial: tracker.on_trial_complete(0, trials, t))
        for event in events:
            started = time.perf_counter()
            event()
            slowest = max(slowest, time.perf_counter() - started)
        trial.status, trial.run_metadata.last_result = "TERMINATED", {"done": True}
    opened = int(time.time() * 1000)
    gate.set()
    tracker.on_experiment_end(trials)
    return slowest, opened


def _snapshot(folder: Path) -> dict:
    """What MLflow holds of the search, without ids, paths and times."""
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("t")
    snapshot = {}
    for run in client.search_runs([experiment.experiment_id]):
        tags = {
            k: v
            for k, v in run.data.tags.items()
            if k not in {"mlflow.parentRunId", "reidsearch.experiment_dir", "reidsearch.checkpoint"}
            and not k.startswith("mlflow.user")
        }
        history = {
            key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            for key in run.data.metrics
        }

        def files(path: str | None = None, run_id: str = run.info.run_id) -> list[str]:
            found = []
            for item in client.list_artifacts(run_id, path):
                found += files(item.path) if item.is_dir else [item.path]
            return found

        snapshot[run.info.run_name] = {
            "status": run.info.status,
            "params": run.data.params,
            "tags": tags,
            "metrics": history,
            "artifacts": sorted(files()),
        }
    return snapshot


def test_trial_events_do_not_wait_for_mlflow_and_everything_is_written_by_the_end(tmp_path):
    sync_dir, async_dir = tmp_path / "sync", tmp_path / "async"
    sync_dir.mkdir()
    async_dir.mkdir()
    gate = threading.Event()
    gate.set()
    _drive(tiny_tracker(sync_dir, epochs=2), sync_dir, gate)

    tracker = tiny_tracker(async_dir, epochs=2, background=True)
    before = int(time.time() * 1000)
    slowest, opened = _drive(tracker, async_dir, gate)
    assert slowest < 1.0  # every event returned while no MLflow call could run

    written = _snapshot(async_dir)
    assert written == _snapshot(sync_dir)  # the same runs, params, metrics, tags, pictures
    kinds = {name: run["tags"].get("reidsearch.kind") for name, run in written.items()}
    trial_runs = {name: run for name, run in written.items() if kinds[name] == "trial"}
    assert len(trial_runs) == 2
    for run in trial_runs.values():
        assert run["status"] == "FINISHED"
        assert run["metrics"]["epoch"] == [(1, 1.0), (2, 2.0)]
        assert "pictures/ranked_list.png" in run["artifacts"]
    parent = next(run for name, run in written.items() if kinds[name] == "search")
    assert parent["status"] == "FINISHED" and "leaderboard.json" in parent["artifacts"]
    # The runs carry the events' times, not the times their writes ran (after the gate).
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{async_dir / 'mlflow.db'}")
    for trial_id, entry in tracker._state["trials"].items():
        run = client.get_run(entry["run_id"])
        assert before <= run.info.start_time <= run.info.end_time <= opened, trial_id


def test_the_study_upload_does_not_wait_for_the_bucket(monkeypatch):
    from reidsearch.search.driver import study_upload

    gate, copying, uploads = threading.Event(), threading.Event(), []

    def slow_upload(experiment_dir: str) -> None:
        copying.set()
        gate.wait(timeout=5)
        uploads.append(experiment_dir)

    monkeypatch.setattr(study_upload, "upload_journal", slow_upload)
    callback = study_upload.StudyUpload("s3://bucket/search")
    started = time.perf_counter()
    callback.on_trial_complete(0, [], None)
    assert copying.wait(timeout=5)  # the first copy runs (and waits on the bucket)
    for _ in range(2):  # two more trials end meanwhile
        callback.on_trial_complete(0, [], None)
    assert time.perf_counter() - started < 1.0 and uploads == []
    gate.set()
    callback.on_experiment_end([])
    # The first copy, one for the two trials that ended while it ran, and the final one.
    assert uploads == ["s3://bucket/search"] * 3


def test_a_run_the_driver_died_before_recording_is_deleted_on_resume(tmp_path):
    """Queued writes widen the moment between creating a trial's run and saving the state that
    names it; a driver killed there leaves a run no state names. The resumed search deletes it
    (nothing but params is ever logged to it first), and the trial gets one run."""
    tracker = tiny_tracker(tmp_path, epochs=2, background=True)
    tracker.setup()
    trial = _trial("a", 2.0)
    tracker.on_trial_start(0, [trial], trial)
    tracker.writer.flush()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    state = tracker._state
    lost = client.create_run(  # what a killed driver's queue had done, unrecorded
        state["experiment_id"], tags={"mlflow.parentRunId": state["parent"]}
    ).info.run_id

    resumed = tiny_tracker(tmp_path, epochs=2, background=True)
    resumed.setup()
    assert client.get_run(lost).info.lifecycle_stage == "deleted"
    kept = state["trials"]["a"]["run_id"]
    assert client.get_run(kept).info.lifecycle_stage == "active"
    resumed.on_step_begin(0, [trial])
    resumed.on_trial_start(0, [trial], trial)
    resumed.writer.flush()
    assert resumed._state["trials"]["a"]["run_id"] == kept  # the trial keeps its one run
