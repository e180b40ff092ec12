"""`resources.runner: trial_process`: a one-worker trial trained in its Tune trial process.

The same outcomes as a Ray Train trial: every epoch in MLflow once, the scored and the latest
checkpoints kept, a killed trial process retried by Tune from its latest complete checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from tests.conftest import tiny_config_dict  # noqa: E402
from tests.test_search_e2e import _trial_runs, _write_space  # noqa: E402


@pytest.mark.fault("fault")
def test_trials_train_in_process_and_a_killed_one_resumes(search_ray, tmp_path, monkeypatch):
    from reidsearch.cli import main
    from reidsearch.search.keys import COMPLETE_MARKER as COMPLETE
    from reidsearch.search.keys import CRASH_ENV

    marker = tmp_path / "killed"
    monkeypatch.setenv(CRASH_ENV, json.dumps({"after_epoch": 2, "marker": str(marker)}))
    space_file = _write_space(
        tmp_path / "inproc.yaml",
        searcher="grid",
        max_concurrent=1,
        scheduler={"type": "none"},
        max_failures=1,
        resources={"workers": 1, "cpus_per_worker": 1, "runner": "trial_process"},
        fixed=tiny_config_dict(epochs=3),
        search={"optim.lr": {"type": "choice", "values": [1e-3, 5e-4]}},
    )
    assert main(["run", str(space_file)]) == 0
    assert marker.exists()  # one trial process was killed after its second epoch

    client, _, children = _trial_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "inproc")
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        epochs = [m.step for m in client.get_metric_history(child.info.run_id, "mAP")]
        assert sorted(epochs) == [1, 2, 3]  # every epoch once, none lost to the kill
        assert client.get_metric_history(child.info.run_id, "startup_s")

    starts = []
    for run_dir in (tmp_path / "runs").glob("inproc-*/train/train_*"):
        kept = sorted(p.name for p in run_dir.glob("epoch_*") if (p / COMPLETE).exists())
        assert "epoch_0003" in kept and 1 <= len(kept) <= 2  # the latest, and the scored one
        outcome = json.loads((run_dir / "outcome.json").read_text())
        assert outcome["status"] == "finished"
        starts.append(outcome["metrics"]["start_epoch"])
    assert sorted(starts) == [0, 2]  # the killed trial resumed from its epoch-2 checkpoint


def test_the_checkpoint_folder_keeps_the_scored_and_the_latest(tmp_path) -> None:
    from reidsearch.search.keys import COMPLETE_MARKER as COMPLETE
    from reidsearch.search.trial.trial_process import CheckpointFolder

    class Payload:  # what CheckpointPayload writes, without a model
        def __init__(self, epoch: int) -> None:
            self.epoch = epoch

        def write(self, directory: Path) -> None:
            import torch

            torch.save({"epoch": self.epoch}, directory / "checkpoint.pt")

    folder = CheckpointFolder(str(tmp_path / "train_x"))
    # KEEP_KEY ranks: the score came from epoch 1, then from epoch 2; epochs 3 and 4 tied or
    # fell behind it (rank 0), so epoch 2 stays with the latest.
    for epoch, rank in ((1, 1.0), (2, 2.0), (3, 0.0), (4, 0.0)):
        folder.save(Payload(epoch), epoch, rank)  # type: ignore[arg-type]
    assert sorted(p.name for p in (tmp_path / "train_x").iterdir()) == [
        "epoch_0002",  # the score's epoch
        "epoch_0004",  # the latest
    ]
    (tmp_path / "train_x" / "epoch_0004" / COMPLETE).unlink()  # as if killed while writing
    state, path = folder.latest()
    assert path.endswith("epoch_0002") and state["epoch"] == 2


def test_trial_process_is_one_worker() -> None:
    from pydantic import ValidationError

    from reidsearch.config import ResourcesConfig

    with pytest.raises(ValidationError, match="trial_process trains one worker"):
        ResourcesConfig(workers=2, runner="trial_process")
