"""``reidsearch train``: one trial config on Ray Train (local embedded Ray or a cluster)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.train import TrainingFailedError

from reidsearch.config import TrialConfig
from reidsearch.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint
from reidsearch.engine.divergence import TrainingDiverged
from reidsearch.engine.run_local import export_best_model
from reidsearch.errors import ReidSearchError
from reidsearch.search.cluster.capacity import check_one_trial_fits
from reidsearch.search.cluster.ray_session import init_ray
from reidsearch.search.driver.shipping import ship_inputs
from reidsearch.search.trial.failures import raise_if_diverged, user_error_behind
from reidsearch.search.trial.torch_trainer import build_torch_trainer


def train_on_ray(
    cfg: TrialConfig, output: Path, name: str, address: str | None = None
) -> dict[str, Any]:
    """Fit a TorchTrainer (DDP over ``cfg.scaling.workers``) and export the best model.

    A run with the same ``name`` and ``output`` resumes from its latest checkpoint.
    """
    cluster = init_ray(address, num_cpus=float(os.cpu_count() or 1))
    check_one_trial_fits(cluster.capacity, cfg.scaling, "reidsearch train", driver_cpus=0.0)
    if cluster.multi_node:
        raise ReidSearchError(
            f"{output}: --output is this machine's disk, which the other nodes of this Ray "
            "cluster do not share; train on one machine (--address local) or run a search "
            "with an s3:// storage_path"
        )
    shipment = ship_inputs(cfg)
    trainer = build_torch_trainer(
        cfg, name=name, storage_path=output, verbose=True, shipment=shipment
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        cause = user_error_behind(exc)
        if cause is not None:
            raise ReidSearchError(str(cause)) from None
        raise
    try:
        raise_if_diverged(result, name)
    except TrainingDiverged as exc:
        raise ReidSearchError(str(exc)) from None
    if not result.best_checkpoints:
        raise ReidSearchError(f"{output / name}: the run reported no checkpoint")
    # The kept checkpoint whose epoch the run's score comes from (Ray may also keep the latest).
    checkpoint, metrics = max(
        result.best_checkpoints,
        key=lambda pair: (pair[1].get("score_epoch") == pair[1]["epoch"], pair[1]["epoch"]),
    )
    with checkpoint.as_directory() as directory:
        state = load_checkpoint(Path(directory) / CHECKPOINT_FILE)
        path = export_best_model(state, Path(directory), output / name / "best")
    return {"score": float(metrics["score"]), "epoch": int(metrics["score_epoch"]), "path": path}
