"""The searcher: Optuna's sampler behind Tune's ``OptunaSearch``, told about early stops."""

from __future__ import annotations

from typing import Any

from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from reidsearch.engine.scoring import SCORE_KEY
from reidsearch.search.rules import stopped_early
from reidsearch.search.space import SearchSpace


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial ASHA stopped early was PRUNED, not COMPLETE.

    Ray reports a stopped trial as complete with its truncated value, which TPE would then treat
    as a finished (bad) configuration. As PRUNED, TPE ranks it by the step it reached and its
    intermediate values (reported every epoch), which is fair at any rung. The trial is completed
    without a result, which ``OptunaSearch`` tells Optuna as PRUNED (its public behaviour, checked
    by ``tests/test_private_apis.py``), not reaching into its study.
    """

    def __init__(self, *args: Any, max_epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Tell Optuna the intermediate score at its epoch. ``OptunaSearch`` keys it by Tune's
        ``training_iteration``, which a restarted trial's replayed reports inflate; by epoch, a
        replayed epoch repeats a step Optuna already has and is ignored."""
        if self.metric in result:  # results without the objective carry no score to tell
            step = int(result.get("epoch", result.get(TRAINING_ITERATION, 0)))
            super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: step})

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        epochs = None if result is None else result.get("epoch")
        if stopped_early(epochs, self._max_epochs, failed=error):
            result = None  # (not failed): OptunaSearch tells Optuna PRUNED for no result
        super().on_trial_complete(trial_id, result=result, error=error)


def build_searcher(space: SearchSpace, max_concurrent: int) -> Any:
    """The space's searcher (None for a grid, which Tune enumerates), limited to
    ``max_concurrent`` trials at once."""
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
        max_epochs=space.trial_epochs(),
    )
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
