"""A search that is killed (SIGKILL) and interrupted (Ctrl-C) mid-way loses nothing on --resume.

Real ``reidsearch run`` processes (each with its own private Ray), Optuna, ASHA and a sqlite
MLflow store: finished trials are not run again, unfinished ones continue from their
checkpoints, ASHA's rungs come back, and MLflow ends with exactly one run per trial whose epochs
have no duplicates and no gaps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from tests.conftest import tiny_config_dict  # noqa: E402

TRIALS = 4


def _space(tmp_path: Path) -> Path:
    space = {
        "name": "drill",
        "fixed": tiny_config_dict(epochs=4),
        "search": {"model.lam": {"type": "uniform", "low": 0.5, "high": 10.0}},
        "trials": TRIALS,
        "max_concurrent": 2,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "seed": 0,
        "storage_path": str(tmp_path / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    path = tmp_path / "drill.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def _start(space: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    log_path = tmp_path / f"driver-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "reidsearch.cli", "run", str(space), "--address", "local"]
            + list(extra),
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: the kill takes its Ray along
        )
    process.log_path = log_path
    return process


def _tracker_state(tmp_path: Path) -> dict:
    found = list((tmp_path / "runs").glob("drill-*/reidsearch/mlflow_runs.json"))
    if not found:
        return {}
    try:
        return json.loads(found[0].read_text())["trials"]
    except (ValueError, KeyError):  # caught mid-write
        return {}


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = condition()
        if state:
            return state
        if process.poll() is not None:
            raise AssertionError(f"the driver exited ({process.returncode}) before {what}")
        time.sleep(0.5)
    process.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(3)  # the private Ray's processes go with the group


def _checkpoint_epoch(tmp_path: Path, trial_id: str) -> int:
    """The latest epoch a trial's Train checkpoints reached (0: none)."""
    folders = (tmp_path / "runs").glob(f"drill-*/train/train_{trial_id}/epoch_*")
    return max((int(folder.name.split("_")[1]) for folder in folders), default=0)


def _log_of(process: subprocess.Popen) -> str:
    return process.log_path.read_text()


@pytest.mark.fault("fault")
def test_killed_then_interrupted_search_resumes_without_losing_or_repeating(tmp_path):
    space = _space(tmp_path)

    # 1. SIGKILL the driver right after its first trial finished, while another is mid-way.
    first = _start(space, tmp_path)

    def one_finished_one_midway():
        trials = _tracker_state(tmp_path)
        finished = [t for t in trials.values() if t.get("status") == "FINISHED"]
        midway = [t for t in trials.values() if "status" not in t and t["last_epoch"] >= 1]
        return trials if finished and midway else None

    _wait_for(one_finished_one_midway, first, "a finished and a mid-way trial")
    _kill_group(first)
    before_kill = _tracker_state(tmp_path)  # what the driver had recorded when it died
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    finished_before = {
        tid: client.get_run(t["run_id"]).info.end_time
        for tid, t in before_kill.items()
        if t.get("status") == "FINISHED"
    }
    midway_before = {tid: t["last_epoch"] for tid, t in before_kill.items() if "status" not in t}
    # The epochs their checkpoints had reached: a resumed run replays those first (MLflow may
    # gain them without any new training, e.g. when ASHA then stops the trial at a rung).
    checkpointed = {tid: _checkpoint_epoch(tmp_path, tid) for tid in midway_before}

    # 2. Resume, and press Ctrl-C once it has made progress: Tune saves and stops.
    second = _start(space, tmp_path, "--resume")

    def progressed():
        if "search started" not in _log_of(second):  # Tune is up and handles Ctrl-C
            return None
        trials = _tracker_state(tmp_path)
        grown = [
            tid
            for tid, t in trials.items()
            if t["last_epoch"] > midway_before.get(tid, t["last_epoch"]) or tid not in before_kill
        ]
        return trials if grown else None

    _wait_for(progressed, second, "progress after the resume")
    os.killpg(second.pid, signal.SIGINT)
    assert second.wait(timeout=120) == 130, _log_of(second)
    assert "--resume" in _log_of(second).strip().splitlines()[-1]
    time.sleep(3)
    parent_id = json.loads(
        next((tmp_path / "runs").glob("drill-*/reidsearch/mlflow_runs.json")).read_text()
    )["parent"]
    assert client.get_run(parent_id).info.status == "KILLED"

    # 3. Resume to the end.
    third = _start(space, tmp_path, "--resume")
    assert third.wait(timeout=600) == 0, _log_of(third)

    experiment_dir = next((tmp_path / "runs").glob("drill-*"))
    state = json.loads((experiment_dir / "reidsearch" / "mlflow_runs.json").read_text())
    runs = client.search_runs(
        [state["experiment_id"]], filter_string="tags.`reidsearch.kind` = 'trial'"
    )
    # Exactly one MLflow run per Tune trial, every one ended.
    newest = max(experiment_dir.glob("experiment_state-*.json"))
    trial_states = [json.loads(t[0]) for t in json.loads(newest.read_text())["trial_data"]]
    tune_trials = {t["trial_id"] for t in trial_states}
    assert {t["status"] for t in trial_states} == {"TERMINATED"}
    by_trial = {run.data.tags["reidsearch.trial_id"]: run for run in runs}
    assert len(runs) == len(by_trial) == TRIALS and set(by_trial) == tune_trials
    assert client.get_run(parent_id).info.status == "FINISHED"
    for trial_id, run in by_trial.items():
        assert run.info.status == "FINISHED", (trial_id, run.data.tags)
        # every epoch once, none missing
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert steps == list(range(1, len(steps) + 1)), (trial_id, steps)
        assert len(steps) == state["trials"][trial_id]["last_epoch"]
    # The trials that had finished were not run again (their runs ended once).
    for trial_id, end_time in finished_before.items():
        assert by_trial[trial_id].info.end_time == end_time
    # The trials that were mid-way and trained on continued from a checkpoint, not epoch 0 (a
    # trial started after Tune last saved its state is unknown to the restored search: its
    # run was deleted and a new trial suggested instead).
    midway_before = {tid: e for tid, e in midway_before.items() if tid in by_trial}
    for trial_id, last_epoch in midway_before.items():
        steps = client.get_metric_history(by_trial[trial_id].info.run_id, "epoch")
        if len(steps) > max(last_epoch, checkpointed[trial_id]):  # it trained after the resume
            resumed = by_trial[trial_id].data.tags.get("reidsearch.resumed_from_epochs", "")
            assert resumed and min(int(e) for e in resumed.split(",")) >= 1, trial_id
    # ASHA's rungs were kept across both restarts; every trial it stopped ended early.
    asha = json.loads((experiment_dir / "reidsearch" / "asha_state.json").read_text())
    recorded = {tid for rung in asha["brackets"][0] for tid in rung["recorded"]}
    reported = {tid for tid, t in before_kill.items() if t["last_epoch"] >= 1}
    assert reported & set(by_trial) <= recorded
    for trial_id in asha["stopped"]:
        assert by_trial[trial_id].data.tags["stopped_early"] == "True"
    # Optuna was told every trial once: complete with MLflow's score, or pruned.
    from reidsearch.internals.ray_internals import optuna_search_study, optuna_search_trials
    from reidsearch.search.driver.searcher import PruneAwareOptunaSearch

    searcher = PruneAwareOptunaSearch(max_epochs=4)
    searcher.restore_from_dir(str(experiment_dir))
    study = optuna_search_study(searcher)
    assert set(optuna_search_trials(searcher)) == set(by_trial)
    for trial_id, ot_trial in optuna_search_trials(searcher).items():
        recorded_trial = study.trials[ot_trial.number]
        assert recorded_trial.state.is_finished(), (trial_id, recorded_trial.state)
        if recorded_trial.state.name == "COMPLETE":
            score = by_trial[trial_id].data.metrics["score"]
            assert recorded_trial.value == pytest.approx(score, abs=1e-12)
