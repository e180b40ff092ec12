"""The search: Ray Tune over trials that each run a Ray Train TorchTrainer.

Optuna TPE (seeded, known-good points first) proposes the searched parameters, ASHA stops bad
trials early, and the MLflow callback records everything from this driver process.
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from reidsearch.engine.scoring import SCORE_KEY
from reidsearch.engine.trainer import TrainingDiverged
from reidsearch.search.cluster import (
    check_shared_storage,
    init_ray,
    size_concurrency,
)
from reidsearch.search.plan import SearchPlan, plan_search
from reidsearch.search.preflight import check_before_ray
from reidsearch.search.ray_train import build_torch_trainer, raise_if_diverged
from reidsearch.search.schedulers import build_scheduler
from reidsearch.search.shipping import ship_inputs
from reidsearch.search.space import SearchSpace
from reidsearch.search.tracking import (
    GRID_KEY,
    MLflowSearchTracker,
    resolve_trial,
)
from reidsearch.search.trial_outcome import (
    DIVERGED,
    FINISHED,
    KeepDoneInState,
    read_outcome,
    train_run_dir,
    train_run_name,
    write_outcome,
)
from reidsearch.storage import basename, check_writable


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial ASHA stopped early was PRUNED, not COMPLETE.

    Ray reports a stopped trial as complete with its truncated value, which TPE would then treat
    as a finished (bad) configuration. As PRUNED, TPE ranks it by the step it reached and its
    intermediate values (reported every epoch), which is fair at any rung.
    """

    def __init__(self, *args: Any, max_epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:  # results without the objective carry no score to tell
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        stopped_early = (
            not error
            and result is not None
            and int(result.get("epoch", self._max_epochs)) < self._max_epochs
        )
        if stopped_early and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            from optuna.trial import TrialState

            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


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
    from reidsearch.search.in_trial import run_in_trial

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


def full_length(space: SearchSpace) -> int:
    """Epochs a trial runs when no scheduler stops it (ASHA's max_t caps it)."""
    epochs = space.fixed_config.epochs
    if space.scheduler.type == "asha" and space.scheduler.max_t:
        return min(epochs, space.scheduler.max_t)
    return epochs


def _searcher(space: SearchSpace, max_concurrent: int) -> Any:
    if space.searcher == "grid":
        return None
    from optuna.samplers import RandomSampler, TPESampler

    # Optuna's TPE samples its first 10 trials at random; small searches would never use TPE.
    startup = max(2, min(10, space.trials // 3))
    sampler = (
        RandomSampler(seed=space.seed)  # the baseline TPE is measured against (bench_search)
        if space.searcher == "random"
        else TPESampler(seed=space.seed, n_startup_trials=startup)
    )
    searcher = PruneAwareOptunaSearch(
        space=space.optuna_define_by_run(),
        metric=SCORE_KEY,
        mode=space.objective.mode,
        points_to_evaluate=space.points_to_evaluate or None,
        sampler=sampler,
        max_epochs=full_length(space),
    )
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def _reporters(space: SearchSpace, progress: bool) -> list[Any]:
    if not progress:
        return []
    from reidsearch.search.progress import SearchProgress

    return [
        SearchProgress(
            total=space.total_trials(),
            metric=space.metric,
            mode=space.mode,
            max_epochs=full_length(space),
            param_keys=space.keys,
        )
    ]


def run_search(
    space: SearchSpace,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    verbose: int = 1,
    cluster_file: str | None = None,
    progress: bool = False,
) -> tuple[SearchPlan, tune.ResultGrid]:
    """Run (or resume) the search; returns its plan (folders, MLflow) and Tune's results.

    ``progress`` prints a compact live report (``progress.SearchProgress``) instead of Tune's
    tables (``verbose``) and the Ray workers' log lines."""
    plan = plan_search(space, address=address, tracking_uri=tracking_uri, resume=resume)
    check_before_ray(space, plan)
    if progress:
        from reidsearch.search.progress import quiet_search_output

        quiet_search_output()
    cluster = init_ray(
        address, num_cpus=plan.local_cpus, cluster_file=cluster_file, worker_logs=not progress
    )
    plan.max_concurrent = size_concurrency(space, cluster, plan.max_concurrent)
    check_shared_storage(space, cluster, plan.experiment_dir)
    check_writable(plan.experiment_dir, f"{space.source}: storage_path")

    fixed = space.fixed_config.model_dump()
    shipment = ship_inputs(space.fixed_config)
    settings = {
        "train_storage": plan.train_storage,
        "max_failures": space.max_failures,
        "shipment": shipment,
    }
    in_process = space.fixed_config.scaling.runner == "trial_process"
    if in_process:
        from reidsearch.search.in_trial import crash_drill

        settings["crash_drill"] = crash_drill()
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, fixed=fixed, settings=settings),
        cluster.trial_resources(space.fixed_config.scaling),
    )
    tracker = MLflowSearchTracker(
        tracking_uri=plan.tracking_uri,
        experiment=plan.experiment,
        search_name=space.name,
        experiment_dir=plan.experiment_dir,
        train_storage=plan.train_storage,
        space_file=str(space.source),
        fixed=fixed,
        objective=space.fixed_config.objective,
        log_checkpoint=space.mlflow.log_checkpoint,
        full_epochs=full_length(space),
        params=space.params,
    )
    run_config = tune.RunConfig(
        name=basename(plan.experiment_dir),
        storage_path=space.storage_root(),
        # Crashed workers are retried inside the trial by Ray Train, from the last checkpoint;
        # a trial that fails as a whole (e.g. it diverged) is not re-run. A trial trained in
        # its own process is retried by Tune (a diverged one fails again at once: outcome.json).
        failure_config=tune.FailureConfig(max_failures=space.max_failures if in_process else 0),
        callbacks=[tracker, KeepDoneInState(), *_reporters(space, progress)],
        verbose=0 if progress else verbose,
    )
    if resume and tune.Tuner.can_restore(plan.experiment_dir):
        tuner = tune.Tuner.restore(
            plan.experiment_dir,
            trainable=trainable,
            resume_errored=True,
            resume_unfinished=True,
        )
    else:
        param_space: dict[str, Any] = {}
        if space.searcher == "grid":  # each grid point is one dict of searched values
            param_space = {GRID_KEY: tune.grid_search(space.grid())}
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=SCORE_KEY,
                mode=space.objective.mode,
                search_alg=_searcher(space, plan.max_concurrent),
                scheduler=build_scheduler(
                    space.scheduler.type,
                    experiment_dir=plan.experiment_dir,
                    max_t=space.scheduler.max_t or space.fixed_config.epochs,
                    grace_period=space.scheduler.grace_period,
                    reduction_factor=space.scheduler.reduction_factor,
                ),
                num_samples=space.trials,
                max_concurrent_trials=plan.max_concurrent if space.searcher == "grid" else None,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=run_config,
        )
    return plan, tuner.fit()
