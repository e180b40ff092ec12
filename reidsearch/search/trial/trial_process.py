"""A one-worker trial trained inside its Tune trial process, without Ray Train.

Why: a Ray Train run starts two more processes per trial (its controller and its worker), and
each imports torch, timm and Ray Train again: 15-20 s of every trial on the 2-core dev machine
(``benchmarks/bench_startup.py``). The search asks Tune to reuse its trial processes
(``reuse_actors``: Tune's default starts a fresh one per trial, ~6 s of imports on 2 CPUs), so a
trial trained in place starts in well under a second once the first one has imported everything;
every trial seeds its own generators, so a reused process trains as a fresh one would.

What Ray Train did for one worker is kept:

- checkpoints in the same place and layout (``<train storage>/train_<trial>/epoch_NNNN/``), the
  scored one and the latest kept, the others deleted; a ``complete`` marker is written last so
  that a half-written checkpoint is never resumed from;
- fault tolerance: Tune retries a lost trial process (``max_failures``), and the retry resumes
  from the latest complete checkpoint, replaying the epochs before it (``resume.py``);
- every epoch is reported once to Tune, with the checkpoint's path, as Train's callback did.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from reidsearch.config import TrialConfig
from reidsearch.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint
from reidsearch.engine.scoring import KEEP_KEY
from reidsearch.engine.trainer import CheckpointPayload, TrainContext
from reidsearch.search.keys import COMPLETE_MARKER, NODE_KEY
from reidsearch.search.trial.drills import crash_once
from reidsearch.search.trial.resume import checkpoint_dir_name, resume_and_train
from reidsearch.storage import filesystem, join, list_dirs


class CheckpointFolder:
    """The epoch checkpoints of one trial, in storage (local folder or bucket)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.filesystem, self.root = filesystem(run_dir)

    def _complete(self) -> list[str]:
        names = [name for name in list_dirs(self.run_dir) if name.startswith("epoch_")]
        return [name for name in names if self._is_complete(name)]

    def _is_complete(self, name: str) -> bool:
        from pyarrow import fs

        info = self.filesystem.get_file_info(posixpath.join(self.root, name, COMPLETE_MARKER))
        return info.type == fs.FileType.File

    def latest(self) -> tuple[dict[str, Any] | None, str | None]:
        """The training state of the latest complete checkpoint and its path, if any."""
        names = self._complete()
        if not names:
            return None, None
        path = posixpath.join(self.root, names[-1])
        with tempfile.TemporaryDirectory() as local:
            remote, local_file = (
                posixpath.join(path, CHECKPOINT_FILE),
                Path(local) / CHECKPOINT_FILE,
            )
            _fetch(self.filesystem, remote, local_file)
            return load_checkpoint(local_file), path

    def save(self, payload: CheckpointPayload, epoch: int, rank: float | None) -> str:
        """Write an epoch's checkpoint, then drop all but the latest and the one ranked highest
        (``KEEP_KEY``: the epoch the run's score comes from)."""
        from pyarrow import fs

        path = posixpath.join(self.root, checkpoint_dir_name(epoch))
        with tempfile.TemporaryDirectory() as local:
            payload.write(Path(local))
            (Path(local) / COMPLETE_MARKER).write_text(json.dumps({"rank": rank}))
            self.filesystem.create_dir(path, recursive=True)
            for file in sorted(Path(local).iterdir(), key=lambda p: p.name == COMPLETE_MARKER):
                fs.copy_files(
                    str(file),
                    posixpath.join(path, file.name),
                    source_filesystem=fs.LocalFileSystem(),
                    destination_filesystem=self.filesystem,
                )
        self._prune(latest=checkpoint_dir_name(epoch))
        return path

    def _prune(self, latest: str) -> None:
        names = self._complete()
        ranked = [(rank, name) for name in names if (rank := self._rank(name)) is not None]
        keep = {latest, *([max(ranked)[1]] if ranked else [])}
        for name in names:
            if name not in keep:
                self.filesystem.delete_dir(posixpath.join(self.root, name))

    def _rank(self, name: str) -> float | None:
        with self.filesystem.open_input_stream(
            posixpath.join(self.root, name, COMPLETE_MARKER)
        ) as f:
            return json.loads(f.read().decode()).get("rank")


def _fetch(filesys: Any, path: str, local: Path) -> None:
    from pyarrow import fs

    fs.copy_files(
        path, str(local), source_filesystem=filesys, destination_filesystem=fs.LocalFileSystem()
    )


def run_in_trial(
    cfg: TrialConfig,
    *,
    train_storage: str,
    run_name: str,
    shipment: Any,
    started_at: float,
    fault: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train one trial here, in the Tune trial process; returns its last epoch's metrics,
    raises ``TrainingDiverged``."""
    import ray

    use_gpu = cfg.scaling.gpus_per_worker > 0 and torch.cuda.is_available()
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    ctx = TrainContext(device=device, started_at=started_at)
    folder = CheckpointFolder(join(train_storage, run_name))
    node = ray.get_runtime_context().get_node_id()

    def send(metrics: dict[str, Any]) -> None:
        tune.report({**metrics, NODE_KEY: node})

    def report(metrics: dict[str, float], payload: CheckpointPayload | None) -> None:
        path = None
        if payload is not None:
            path = folder.save(payload, int(metrics["epoch"]), metrics.get(KEEP_KEY))
        send({**metrics, CHECKPOINT_PATH_KEY: path})
        crash_once(fault, int(metrics["epoch"]), 0)

    resume, path = folder.latest()
    replay = lambda metrics, _: send(metrics)  # noqa: E731 - replayed epochs save nothing
    return resume_and_train(cfg, report, replay, ctx, resume, path, shipment)
