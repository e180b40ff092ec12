"""What every Ray Train worker of a trial runs: the pure-torch training loop, reporting each epoch.

Every epoch each rank calls ``ray.train.report`` once (it is a barrier); rank 0 attaches a
checkpoint with the full training state, from which a restarted run resumes.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint

from reidsearch.config import TrialConfig
from reidsearch.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint
from reidsearch.engine.divergence import TrainingDiverged
from reidsearch.engine.trainer import CheckpointPayload, TrainContext, format_epoch
from reidsearch.search.keys import DIVERGED_KEY, NODE_KEY
from reidsearch.search.trial.drills import crash_once
from reidsearch.search.trial.resume import checkpoint_dir_name, resume_and_train


def _report(metrics: dict[str, float], payload: CheckpointPayload | None, verbose: bool) -> None:
    # Which node trained (rank 0's): the driver records it in MLflow.
    metrics = {**metrics, NODE_KEY: ray.get_runtime_context().get_node_id()}
    if payload is None:
        ray.train.report(metrics)
        return
    if verbose:
        print(format_epoch(metrics), flush=True)
    with tempfile.TemporaryDirectory() as directory:
        payload.write(Path(directory))
        ray.train.report(
            metrics,
            checkpoint=Checkpoint.from_directory(directory),
            checkpoint_dir_name=checkpoint_dir_name(int(metrics["epoch"])),
        )


def load_resume_state() -> tuple[dict[str, Any] | None, str | None]:
    """The training state of the latest checkpoint of this run and that checkpoint's path, if
    it is a restart (of a worker group, or of the trial by a resumed search)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, None
    with checkpoint.as_directory() as directory:
        return load_checkpoint(Path(directory) / CHECKPOINT_FILE), checkpoint.path


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, str] | None:
    # Ray Train logs every report and checkpoint at INFO; our own epoch line says it better.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    cfg = TrialConfig.model_validate(loop_config["trial"])
    verbose = bool(loop_config.get("verbose", False))
    fault = loop_config.get("inject_crash")
    progress: Any = False
    if verbose:
        from ray.experimental.tqdm_ray import tqdm as progress
    device = ray.train.torch.get_device()
    context = ray.train.get_context()
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    ctx = TrainContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=device,
        progress=progress,
        started_at=loop_config.get("started_at"),
    )

    def report(metrics: dict[str, float], payload: CheckpointPayload | None) -> None:
        _report(metrics, payload, verbose)
        crash_once(fault, int(metrics["epoch"]), ctx.rank)

    shipment = loop_config.get("shipment")
    resume, resumed_checkpoint = load_resume_state()
    try:
        resume_and_train(cfg, report, report, ctx, resume, resumed_checkpoint, shipment)
    except TrainingDiverged as exc:
        # A deterministic divergence: end the run cleanly (every rank gets here together) so
        # Ray Train does not retry it from a checkpoint; the caller marks the trial failed.
        if ctx.rank == 0:
            print(f"reidsearch: {exc}; stopping this trial", flush=True)
        return {DIVERGED_KEY: str(exc)}
    return None
