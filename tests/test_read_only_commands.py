"""The read-only commands (``leaderboard``, ``ui``, ``export --best``) find the newest search and
leave nothing behind: no empty ``./mlflow.db`` where no search ran, and the newest *search*
rather than the newest experiment when an older space is run again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "command", [["leaderboard"], ["ui", "--port", "0"], ["export", "--best", "--out", "m.onnx"]]
)
def test_a_read_only_command_in_a_folder_without_a_store_creates_none(tmp_path, command):
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run(
        [sys.executable, "-m", "reidsearch.cli", *command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no MLflow store there yet" in lines[0], out.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_the_leaderboard_shows_the_newest_search_not_the_newest_experiment(tmp_path):
    import reidsearch
    from reidsearch.search.keys import CHECKPOINT_TAG, EXPERIMENT_DIR_TAG, KIND_TAG, PARENT_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    older, newer = client.create_experiment("older-space"), client.create_experiment("newer-space")

    def search(experiment: str, folder: str, started_ms: int) -> None:
        tags = {KIND_TAG: "search", EXPERIMENT_DIR_TAG: f"/runs/{folder}"}
        parent = client.create_run(experiment, start_time=started_ms, tags=tags).info.run_id
        tags = {KIND_TAG: "trial", PARENT_TAG: parent, CHECKPOINT_TAG: f"/runs/{folder}/ck"}
        trial = client.create_run(experiment, tags=tags)
        client.log_metric(trial.info.run_id, "score", 0.5)
        client.set_terminated(trial.info.run_id, status="FINISHED")

    search(newer, "newer-1", 1_000_000)
    search(older, "older-2", 2_000_000)  # the older space, run again later
    board = reidsearch.leaderboard(uri)
    assert (board.experiment, board.searches) == ("older-space", ["older-2"])
    assert reidsearch.best_trial(uri).search == "older-2"
