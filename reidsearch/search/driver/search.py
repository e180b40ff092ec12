"""The search: Ray Tune over trials that each run a Ray Train TorchTrainer.

Optuna TPE (seeded, known-good points first) proposes the searched parameters, ASHA stops bad
trials early, and the MLflow callback records everything from this driver process.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ray import tune

from reidsearch.engine.scoring import SCORE_KEY
from reidsearch.internals.ray_internals import optuna_search_study
from reidsearch.search.cluster.ray_session import (
    check_shared_storage,
    init_ray,
    size_concurrency,
)
from reidsearch.search.driver.extend import ExtendableSearch
from reidsearch.search.driver.plan import SearchPlan, claim_experiment_dir, plan_search
from reidsearch.search.driver.preflight import check_before_ray
from reidsearch.search.driver.progress import SearchProgress, quiet_search_output
from reidsearch.search.driver.schedulers import build_scheduler
from reidsearch.search.driver.search_record import extended_trials, write_search_record
from reidsearch.search.driver.searcher import build_searcher
from reidsearch.search.driver.shipping import ship_inputs
from reidsearch.search.driver.store_backup import store_backups
from reidsearch.search.driver.study_upload import StudyUpload
from reidsearch.search.driver.tracker import MLflowSearchTracker
from reidsearch.search.driver.trial_states import KeepDoneInState
from reidsearch.search.driver.warm_start import earlier_trials, warm_start_line
from reidsearch.search.keys import GRID_KEY
from reidsearch.search.results.study import fetch_journal
from reidsearch.search.space import SearchSpace
from reidsearch.search.trial.drills import crash_drill
from reidsearch.search.trial.trainable import run_trial
from reidsearch.storage import basename, check_writable, is_uri


def _reporters(space: SearchSpace, progress: bool) -> list[Any]:
    if not progress:
        return []
    return [
        SearchProgress(
            total=space.total_trials(),
            metric=space.metric,
            mode=space.mode,
            max_epochs=space.trial_epochs(),
            param_keys=space.keys,
        )
    ]


def _search_alg(
    space: SearchSpace, plan: SearchPlan, earlier: list[Any]
) -> ExtendableSearch | None:
    """The space's searcher in a search that ``--resume --trials N`` can extend (a grid: None,
    Tune enumerates it)."""
    searcher = build_searcher(space, plan.max_concurrent, plan.experiment_dir)
    if searcher is None:
        return None
    optuna_search_study(searcher.searcher).add_trials(earlier)  # warm start (before it asks)
    return ExtendableSearch(searcher, plan.experiment_dir)


def run_search(
    space: SearchSpace,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    verbose: int = 1,
    cluster_file: str | None = None,
    progress: bool = False,
    trials: int | None = None,
) -> tuple[SearchPlan, tune.ResultGrid]:
    """Run (or resume) the search; returns its plan (folders, MLflow) and Tune's results.

    ``progress`` prints a compact live report (``progress.SearchProgress``) instead of Tune's
    tables (``verbose``) and the Ray workers' log lines."""
    if trials is not None and not resume:
        space = dataclasses.replace(space, trials=trials)
    plan = plan_search(space, address=address, tracking_uri=tracking_uri, resume=resume)
    if resume:  # the total it runs to: the recorded one, or raised by ``trials``
        space = dataclasses.replace(
            space, trials=extended_trials(plan.experiment_dir, space, trials)
        )
    earlier: list[Any] = []
    if space.warm_start and not resume:  # read (and checked) before Ray starts
        earlier, skipped = earlier_trials(space, plan.tracking_uri)
        plan.notes.append(warm_start_line(space, earlier, skipped))
    for note in plan.notes:
        print(f"reidsearch: {note}", flush=True)
    check_before_ray(space, plan)
    if progress:
        quiet_search_output()
    cluster = init_ray(
        address, num_cpus=plan.local_cpus, cluster_file=cluster_file, worker_logs=not progress
    )
    plan.max_concurrent = size_concurrency(space, cluster, plan.max_concurrent)
    check_shared_storage(space, cluster, plan.experiment_dir)
    where = f"{space.source}: storage_path"
    if not resume:  # now, not at plan time: a search started in the same second may have it
        plan.experiment_dir = claim_experiment_dir(plan.experiment_dir, where)
    check_writable(plan.experiment_dir, where)
    if not resume:
        write_search_record(plan.experiment_dir, plan.tracking_uri, plan.experiment, space)

    fixed = space.fixed_config.model_dump()
    shipment = ship_inputs(space.fixed_config)
    settings = {
        "train_storage": plan.train_storage,
        "max_failures": space.max_failures,
        "shipment": shipment,
    }
    in_process = space.fixed_config.scaling.runner == "trial_process"
    if in_process:
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
        full_epochs=space.trial_epochs(),
        params=space.params,
        objectives=space.objectives,
        constraints=[str(rule) for rule in space.constraints],
        background=True,  # MLflow writes off Tune's event loop (tracker.py)
    )
    run_config = tune.RunConfig(
        name=basename(plan.experiment_dir),
        storage_path=space.storage_root(),
        # Crashed workers are retried inside the trial by Ray Train, from the last checkpoint;
        # a trial that fails as a whole (e.g. it diverged) is not re-run. A trial trained in
        # its own process is retried by Tune (a diverged one fails again at once: outcome.json).
        failure_config=tune.FailureConfig(max_failures=space.max_failures if in_process else 0),
        callbacks=[
            tracker,
            KeepDoneInState(),
            *([StudyUpload(plan.experiment_dir)] if is_uri(plan.experiment_dir) else []),
            *store_backups(),  # the head's MLflow store to the bucket (after the tracker)
            *_reporters(space, progress),
        ],
        verbose=0 if progress else verbose,
    )
    if resume and tune.Tuner.can_restore(plan.experiment_dir):
        fetch_journal(plan.experiment_dir)  # the study as far as it got, on this machine
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
                search_alg=_search_alg(space, plan, earlier),
                scheduler=build_scheduler(
                    space.scheduler,
                    experiment_dir=plan.experiment_dir,
                    max_t=space.scheduler.max_t or space.fixed_config.epochs,
                    grace_period=space.scheduler.grace_period,
                    reduction_factor=space.scheduler.reduction_factor,
                    objectives=space.all_objectives,
                ),
                num_samples=space.trials,
                max_concurrent_trials=plan.max_concurrent if space.searcher == "grid" else None,
                trial_dirname_creator=lambda trial: trial.trial_id,
                # Tune's default starts a new process per trial (imports: ~6 s on 2 CPUs, more
                # than a short trial); an in-process trial takes the ended one's process.
                reuse_actors=in_process,
            ),
            run_config=run_config,
        )
    # Epochs between evaluations (``eval.period`` > 1) report training metrics without a score;
    # Tune would refuse such a result. Every consumer here (searcher, schedulers, tracker)
    # reads the score only where it is (Ray's documented switch for that).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    return plan, tuner.fit()
