"""What every trial runner does on a restart: replay the epochs it resumes from, then train on.

A restarted run (a lost worker or node, a retried trial process, a resumed search) reports every
epoch up to its checkpoint once more, so that a driver that went down before recording some of
them records them now, in order; consumers keep the first report of an epoch (MLflow's tracker,
ASHA's rungs).
"""

from __future__ import annotations

import posixpath
from typing import Any

from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from reidsearch.config import TrialConfig
from reidsearch.engine.scoring import EPOCH_SCORE_KEY
from reidsearch.engine.trainer import TrainContext, train
from reidsearch.search.keys import REPLAYED_KEY
from reidsearch.search.trial.received import received_data, received_weights
from reidsearch.search.trial.shipment import Shipment


def checkpoint_dir_name(epoch: int) -> str:
    """The folder of an epoch's checkpoint inside its Train run."""
    return f"epoch_{epoch:04d}"


def _replay(resume: dict[str, Any], checkpoint_path: str | None, report: Any) -> None:
    """Report every epoch up to the checkpoint resumed from once more (see the module's
    docstring). Evaluated epochs carry the path of their checkpoint."""
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
