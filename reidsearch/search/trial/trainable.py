"""The Tune function trainable: one trial, on Ray Train or in its own Tune trial process.

It runs in the trial's Tune process (on the head of a cluster, or where its one worker's GPU is
for ``runner: trial_process``). A trial that already ended (the driver went down before Tune
saved that) is not run again: see :mod:`reidsearch.search.trial.outcome`.
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from reidsearch.engine.divergence import TrainingDiverged
from reidsearch.search.keys import DIVERGED, FINISHED
from reidsearch.search.space.trials import resolve_trial
from reidsearch.search.trial.failures import raise_if_diverged
from reidsearch.search.trial.outcome import (
    read_outcome,
    train_run_dir,
    train_run_name,
    write_outcome,
)
from reidsearch.search.trial.torch_trainer import build_torch_trainer


def run_trial(config: dict[str, Any], fixed: dict[str, Any], settings: dict[str, Any]) -> None:
    """Tune function trainable: resolve this trial's config and run it on Ray Train.

    A trial that already ended (the driver went down before Tune saved that) is not run again:
    its recorded final result is reported once more, or its divergence raised again."""
    started_at = time.time()
    _, cfg = resolve_trial(fixed, config)
    trial_id = tune.get_context().get_trial_id()
    run_dir = train_run_dir(settings["train_storage"], trial_id)
    outcome = read_outcome(run_dir)
    if outcome is not None:
        if outcome["status"] == DIVERGED:
            raise TrainingDiverged(outcome["reason"])
        tune.report(outcome["metrics"])
        return
    if cfg.scaling.runner == "trial_process":
        _run_in_process(cfg, trial_id, run_dir, settings, started_at)
        return
    trainer = build_torch_trainer(
        cfg,
        name=train_run_name(trial_id),  # stable across trial restarts: checkpoints are found
        storage_path=settings["train_storage"],
        max_failures=settings["max_failures"],
        callbacks=[TuneReportCallback()],
        shipment=settings.get("shipment"),
        started_at=started_at,
    )
    result = trainer.fit()
    try:
        raise_if_diverged(result, f"trial {trial_id}")
    except TrainingDiverged as exc:
        write_outcome(run_dir, DIVERGED, reason=str(exc))
        raise
    write_outcome(run_dir, FINISHED, metrics=result.metrics)


def _run_in_process(
    cfg: Any, trial_id: str, run_dir: str, settings: dict[str, Any], started_at: float
) -> None:
    """``run_trial`` for ``runner: trial_process``: the same outcomes, without Ray Train."""
    # Imported here: a Ray Train trial's Tune process does not train, and this module (with the
    # engine, timm and torchvision) cost it 1.4 s on two cores (benchmarks/README.md).
    from reidsearch.search.trial.trial_process import run_in_trial

    try:
        metrics = run_in_trial(
            cfg,
            train_storage=settings["train_storage"],
            run_name=train_run_name(trial_id),
            shipment=settings.get("shipment"),
            started_at=started_at,
            fault=settings.get("crash_drill"),
        )
    except TrainingDiverged as exc:
        reason = f"trial {trial_id}: {exc}; stopped, not retried"
        write_outcome(run_dir, DIVERGED, reason=reason)
        raise TrainingDiverged(reason) from None
    write_outcome(run_dir, FINISHED, metrics=metrics)
