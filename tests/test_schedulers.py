"""Schedulers chosen in the space file (``scheduler:``): asha, hyperband, median, none. Their
settings are checked at load time (one line each); median stopping stops a poor trial on a
hand-made case, counting each epoch once and skipping unevaluated ones; HyperBand pauses and
promotes in a real search, and the trials it stops reach Optuna as PRUNED with their scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import reidsearch
from reidsearch.errors import ConfigError
from tests.conftest import tiny_config_dict


def _space_file(folder: Path, epochs: int = 4, period: int = 1, **fields) -> Path:
    space = {
        "name": "schedulers",
        "fixed": tiny_config_dict(epochs=epochs, **{"eval.period": period}),
        "search": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        "trials": 5,
        "max_concurrent": 2,
        "resources": {"workers": 1, "cpus_per_worker": 1, "runner": "trial_process"},
        "storage_path": str(folder / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"},
    }
    space.update(fields)
    path = folder / "schedulers.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


# ------------------------------------------------------------------------------ at load time


@pytest.mark.parametrize(
    ("scheduler", "line"),
    [
        ("asha", "scheduler: ASHA (grace_period 1, reduction_factor 2.0, max_t 4)"),
        (
            {"type": "hyperband", "reduction_factor": 3, "max_t": 3},
            "scheduler: HyperBand, synchronous (reduction_factor 3.0, max_t 3; bracket "
            "milestones in epochs: 3; 1, 3)",
        ),
        (
            "median",
            "scheduler: median stopping (from epoch 1, at evaluated epochs (every 1), once 3 "
            "other trials got there)",
        ),
        ("none", "scheduler: none (every trial runs all epochs)"),
    ],
)
def test_each_scheduler_is_described(tmp_path, scheduler, line):
    text = reidsearch.load_space(_space_file(tmp_path, scheduler=scheduler)).describe()
    assert line in text.splitlines()


def test_hyperband_milestones_are_rays():
    from reidsearch.search.space.choices import hyperband_brackets

    assert hyperband_brackets(3, 3) == [[3], [1, 3]]
    assert hyperband_brackets(8, 2) == [[8], [4, 8], [2, 4, 8], [1, 2, 4, 8]]
    assert hyperband_brackets(10, 3) == [[10], [3, 9], [1, 3, 9]]  # Ray truncates to ints


@pytest.mark.fault("bad_input")
@pytest.mark.parametrize(
    ("fields", "key", "words"),
    [
        ({"scheduler": {"type": "hyperband", "grace_period": 2}}, "scheduler.grace_period", "asha"),
        ({"scheduler": {"type": "median", "max_t": 2}}, "scheduler.max_t", "asha or hyperband"),
        (
            {"scheduler": {"type": "asha", "min_samples_required": 2}},
            "scheduler.min_samples_required",
            "only used with type median",
        ),
        ({"scheduler": {"type": "pbt"}}, "scheduler.type", "hyperband"),
        # milestones 2, 4, 8 and 1: epoch 1 is not evaluated (every 2 epochs)
        ({"epochs": 8, "period": 2, "scheduler": "hyperband"}, "fixed.eval.period", "epoch 1"),
        ({"epochs": 4, "period": 4, "scheduler": "median"}, "scheduler.grace_period", "never"),
        (
            {"scheduler": {"type": "median", "min_samples_required": 5}},
            "scheduler.min_samples_required",
            "never stop",
        ),
        (
            {
                "searcher": "grid",
                "search": {"optim.lr": {"type": "choice", "values": [1e-3, 1e-4]}},
                "scheduler": "hyperband",
            },
            "scheduler.type",
            "searcher random",
        ),
    ],
)
def test_scheduler_settings_that_cannot_work_are_refused_in_one_line(tmp_path, fields, key, words):
    path = _space_file(tmp_path, **fields)
    with pytest.raises(ConfigError) as caught:
        reidsearch.load_space(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ") and words in message, message
    assert "\n" not in message


def test_sparse_evaluation_works_where_every_milestone_is_evaluated(tmp_path):
    hyperband = {"type": "hyperband", "reduction_factor": 4}  # milestones 8; 2, 8
    space = reidsearch.load_space(_space_file(tmp_path, epochs=8, period=2, scheduler=hyperband))
    assert (space.scheduler.max_t, space.trial_epochs()) == (8, 8)
    median = reidsearch.load_space(
        _space_file(tmp_path, epochs=8, period=3, scheduler={"type": "median", "grace_period": 2})
    )
    assert median.scheduler.type == "median"  # compares at epochs 3 and 6


# --------------------------------------------------------------- median stopping, by hand


@dataclass(frozen=True)
class FakeTrial:  # what the median rule reads of a trial: its id (and it hashes)
    trial_id: str


def test_median_stops_a_trial_worse_than_the_others_at_evaluated_epochs_only():
    from ray.tune.schedulers import TrialScheduler

    from reidsearch.search.driver.schedulers import build_scheduler

    rule = build_scheduler(
        "median",
        experiment_dir="unused",
        max_t=6,
        grace_period=2,
        reduction_factor=2,
        min_samples_required=2,
    )
    rule.set_search_properties("score", "max")
    good = [FakeTrial("a"), FakeTrial("b")]
    for trial in good:  # two trials evaluated at epochs 2, 4, 6 (every 2 epochs)
        rule.on_trial_add(None, trial)
        for epoch in range(1, 7):
            result = {"epoch": epoch, "loss": 1.0 / epoch}
            if epoch % 2 == 0:
                result["score"] = 0.1 * epoch
            assert rule.on_trial_result(None, trial, result) == TrialScheduler.CONTINUE
    poor = FakeTrial("c")
    rule.on_trial_add(None, poor)
    # epoch 1 (before grace) and 3 (no score) are never judged; epoch 2 is: 0.05 < median 0.2
    assert rule.on_trial_result(None, poor, {"epoch": 1, "loss": 2.0}) == TrialScheduler.CONTINUE
    assert rule.on_trial_result(None, poor, {"epoch": 2, "score": 0.05}) == TrialScheduler.STOP
    # a restarted trial's replayed epochs are not counted again (no duplicates, no decision)
    fair = FakeTrial("d")
    rule.on_trial_add(None, fair)
    assert rule.on_trial_result(None, fair, {"epoch": 2, "score": 0.3}) == TrialScheduler.CONTINUE
    replayed = {"epoch": 2, "score": 0.3, "replayed": 1}
    assert rule.on_trial_result(None, fair, replayed) == TrialScheduler.CONTINUE
    rule.on_trial_complete(None, fair, {"epoch": 2})  # a final result without score: ignored


# ------------------------------------------------------------------- the pause-aware limit


def test_a_paused_trial_frees_its_slot_and_is_told_pruned_when_stopped_while_paused(tmp_path):
    from optuna.trial import TrialState

    from reidsearch.internals.ray_internals import optuna_search_study
    from reidsearch.search.driver.searcher import PauseAwareLimiter, build_searcher

    space = reidsearch.load_space(_space_file(tmp_path, scheduler="hyperband", trials=4))
    limiter = build_searcher(space, max_concurrent=1)
    assert isinstance(limiter, PauseAwareLimiter)
    assert limiter.suggest("a") is not None and limiter.suggest("b") is None  # one slot
    limiter.on_trial_result("a", {"score": 0.2, "epoch": 1})
    limiter.on_pause("a")  # HyperBand paused it at a milestone: the slot is free
    assert limiter.suggest("b") is not None and not limiter.has_room()
    limiter.on_trial_complete("a")  # stopped while paused (Tune gives no result)
    limiter.on_trial_complete("b", {"score": 0.5, "epoch": 4})
    trials = optuna_search_study(limiter.searcher).trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE]
    assert trials[0].intermediate_values == {1: 0.2} and trials[0].value == 0.2


# ------------------------------------------------------------------- HyperBand, for real


def test_hyperband_pauses_promotes_and_prunes_in_a_real_search(search_ray, tmp_path):
    from optuna.trial import TrialState

    from reidsearch.internals.ray_internals import optuna_search_study, optuna_search_trials
    from reidsearch.search.driver.searcher import PruneAwareOptunaSearch

    # max_t 3, reduction_factor 3: brackets [3] (2 trials) and [1, 3] (3 trials, compared at
    # epoch 1, 1 promoted). Which trial joins which bracket depends on when trials end (Ray
    # refills a bracket a trial left), so only what holds either way is asserted: the trials
    # that cannot learn (a vanishing learning rate) and are stopped at epoch 1 reach Optuna as
    # PRUNED with their score; the learning ones finish.
    points = [{"optim.lr": lr} for lr in (3e-3, 2e-3, 3e-3, 1e-9, 1e-10)]
    path = _space_file(
        tmp_path,
        epochs=3,
        searcher="random",
        search={"optim.lr": {"type": "loguniform", "low": 1e-10, "high": 1e-2}},
        points_to_evaluate=points,
        objective={"metric": "loss", "mode": "min"},
        scheduler={"type": "hyperband", "reduction_factor": 3},
    )
    plan, results = reidsearch.run_search(reidsearch.load_space(path), verbose=0)
    assert len(results) == 5 and not results.errors
    searcher = PruneAwareOptunaSearch(max_epochs=3)
    searcher.restore_from_dir(plan.experiment_dir)
    trials = optuna_search_study(searcher).trials
    assert len(optuna_search_trials(searcher)) == 5
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.state == TrialState.COMPLETE for t in trials if t not in pruned)
    for trial in pruned:  # stopped at a milestone: PRUNED with that epoch's score
        assert list(trial.intermediate_values) == [1]
        assert trial.value == pytest.approx(trial.intermediate_values[1])
        assert trial.params["optim.lr"] < 1e-8  # only the trials that cannot learn
    assert trials[2].state == TrialState.COMPLETE  # the learning one is promoted
    epochs = sorted(r.metrics["epoch"] for r in results)
    assert epochs[0] == 1 and epochs[-1] == 3
