"""One trial on Ray Train: a TorchTrainer whose workers run the pure-torch training loop.

Ray Train sets up the process group (gloo on CPU, nccl on GPU); the engine wraps the model in
DDP. Every epoch each rank calls ``ray.train.report`` once (it is a barrier); rank 0 attaches a
checkpoint with the full training state, from which a restarted run resumes.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from reidsearch.config import TrialConfig
from reidsearch.engine.checkpoint import STATE_FILE, load_checkpoint
from reidsearch.engine.scoring import EPOCH_SCORE_KEY
from reidsearch.engine.trainer import (
    CheckpointPayload,
    TrainContext,
    TrainingDiverged,
    format_epoch,
    train,
)
from reidsearch.errors import ReidSearchError
from reidsearch.search.shipping import Shipment, received_data, received_weights
from reidsearch.search.tracking import NODE_KEY
from reidsearch.storage import absolute

DIVERGED_KEY = "diverged"
REPLAYED_KEY = "replayed"  # a report that repeats the epoch a restarted run resumes from


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
        return load_checkpoint(Path(directory) / STATE_FILE), checkpoint.path


def crash_once(fault: dict[str, Any] | None, epoch: int, rank: int) -> None:
    """Fault injection for tests and drills: kill this worker process once, after ``epoch``.

    ``delay_s`` waits before the kill: Ray Train's controller collects a worker's reports (and
    registers their checkpoints) only on its health check, every 2 s, so a drill that must
    resume from the last checkpoint gives it time to be collected."""
    if not fault or rank != 0 or epoch != fault["after_epoch"]:
        return
    marker = Path(fault["marker"])
    if not marker.exists():
        marker.write_text(f"killed after epoch {epoch}")
        time.sleep(float(fault.get("delay_s", 0.0)))
        os._exit(1)


def _replay(resume: dict[str, Any], checkpoint_path: str | None, report: Any) -> None:
    """A restarted run (a lost worker or node, a resumed search) first reports every epoch up
    to the checkpoint it resumes from once more: a driver that went down before recording some
    of them records them now, in order. Consumers keep the first report of an epoch (MLflow's
    tracker, ASHA's rungs). Evaluated epochs carry the path of their checkpoint."""
    history = resume.get("history") or [resume["metrics"]]
    folder = posixpath.dirname(checkpoint_path.rstrip("/")) if checkpoint_path else None
    for metrics in history:
        epoch = int(metrics["epoch"])
        path = None
        if folder is not None and metrics.get(EPOCH_SCORE_KEY) is not None:
            path = posixpath.join(folder, checkpoint_dir_name(epoch))
        report({**metrics, REPLAYED_KEY: 1, CHECKPOINT_PATH_KEY: path}, None)


def resume_and_train(
    cfg: TrialConfig,
    report: Any,
    replay: Any,
    ctx: TrainContext,
    resume: dict[str, Any] | None,
    checkpoint_path: str | None,
    shipment: Shipment | None,
) -> dict[str, float]:
    """What every trial runner does: replay the epochs of the checkpoint it resumes from (if
    any) through ``replay``, then train on from there with the driver's shipped inputs."""
    if resume is not None:
        _replay(resume, checkpoint_path, replay)
    return train(
        cfg,
        report,
        ctx=ctx,
        resume=resume,
        data=received_data(shipment, cfg),
        backbone_weights=received_weights(shipment, cfg),
    )


def checkpoint_dir_name(epoch: int) -> str:
    """The folder of an epoch's checkpoint inside its Train run."""
    return f"epoch_{epoch:04d}"


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


def raise_if_diverged(result: Any, what: str) -> None:
    """Turn a run that ended by divergence into an error (NaN trials are failed trials)."""
    outcome = getattr(result, "return_value", None)
    if isinstance(outcome, dict) and DIVERGED_KEY in outcome:
        raise TrainingDiverged(f"{what}: {outcome[DIVERGED_KEY]}; stopped, not retried")


def user_error_behind(error: BaseException) -> BaseException | None:
    """The user error (bad dataset, bad setting) or divergence behind a failed Ray Train run or
    Tune trial, so that the CLI can print it on one line instead of a worker traceback."""
    failures = list(getattr(error, "worker_failures", {}).values()) or [error]
    for failure in failures:
        seen: BaseException | None = failure
        while seen is not None:
            inner = getattr(seen, "cause", None)  # Ray's wrapper of a remote exception
            if inner is None and isinstance(seen, ReidSearchError | TrainingDiverged):
                return seen  # the original, whose message is one line (not the wrapper's)
            seen = inner or seen.__cause__
    return None


def _kept_checkpoint(cfg: TrialConfig) -> CheckpointConfig:
    """Keep the checkpoint of the epoch the run's score comes from: the best-scoring epoch for
    ``reduce: best``, the latest evaluated one for ``reduce: last`` (Ray keeps the latest too,
    for resuming)."""
    if cfg.objective.reduce == "last":
        return CheckpointConfig(num_to_keep=1)
    return CheckpointConfig(
        num_to_keep=1,
        checkpoint_score_attribute=EPOCH_SCORE_KEY,
        checkpoint_score_order=cfg.objective.mode,
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
    resources: dict[str, float] = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.gpus_per_worker > 0:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
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
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=absolute(storage_path),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=_kept_checkpoint(cfg),
            callbacks=callbacks,
        ),
    )
