"""One trial on Ray Train: a TorchTrainer whose workers run the pure-torch training loop
(:mod:`reidsearch.search.trial.train_loop`).

Ray Train sets up the process group (gloo on CPU, nccl on GPU); the engine wraps the model in
DDP. The trainer is built in Tune's trial process, which does not train: the loop's module is
imported where the loop runs, so that only the workers import timm and torchvision (1.4 s of
every trial's Tune process on two cores: benchmarks/README.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from reidsearch.config import TrialConfig
from reidsearch.engine.scoring import KEEP_KEY
from reidsearch.search.trial.shipment import Shipment
from reidsearch.storage import absolute


def _train_loop(loop_config: dict[str, Any]) -> dict[str, str] | None:
    """Each worker's loop; Ray pickles this function by name, not the loop's heavy module."""
    from reidsearch.search.trial.train_loop import train_loop_per_worker

    return train_loop_per_worker(loop_config)


def _kept_checkpoint() -> CheckpointConfig:
    """Keep the checkpoint of the epoch the run's score comes from (the highest ``KEEP_KEY``:
    the best-scoring epoch for ``reduce: best``, the latest evaluated one for ``reduce: last``,
    the earliest of tied ones as the scorer chooses). Ray keeps the latest too, for resuming."""
    return CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute=KEEP_KEY, checkpoint_score_order="max"
    )


def build_torch_trainer(
    cfg: TrialConfig,
    *,
    name: str,
    storage_path: str | Path,
    max_failures: int = 0,
    callbacks: list | None = None,
    verbose: bool = False,
    inject_crash: dict[str, Any] | None = None,
    shipment: Shipment | None = None,
    started_at: float | None = None,
) -> TorchTrainer:
    """A TorchTrainer for one trial. ``name`` must be stable across restarts (a trial id, not a
    timestamp), or a restarted trial does not find its checkpoints. ``storage_path`` is a
    local folder or an ``s3://`` / ``gs://`` URI; ``shipment`` is what the driver prepared."""
    return TorchTrainer(
        _train_loop,
        train_loop_config={
            "trial": cfg.model_dump(),
            "verbose": verbose,
            "inject_crash": inject_crash,
            "shipment": shipment,
            "started_at": started_at,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.workers,
            use_gpu=cfg.scaling.gpus_per_worker > 0,
            resources_per_worker=cfg.scaling.worker_resources(),
        ),
        run_config=RunConfig(
            name=name,
            storage_path=absolute(storage_path),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=_kept_checkpoint(),
            callbacks=callbacks,
        ),
    )
