"""The searcher: Optuna's sampler behind Tune's ``OptunaSearch``, told about early stops
(whichever scheduler made them), behind a concurrency limit that HyperBand's pauses do not fill.
"""

from __future__ import annotations

import warnings
from typing import Any

from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from reidsearch.engine.scoring import SCORE_EPOCH_KEY, SCORE_KEY, objective_key
from reidsearch.internals.ray_internals import optuna_search_study, optuna_search_trials
from reidsearch.objective import ObjectiveConfig
from reidsearch.search.driver.samplers import CONSTRAINTS_ATTR, build_sampler
from reidsearch.search.keys import SCORED_PREFIX
from reidsearch.search.results.study import study_name, study_storage
from reidsearch.search.rules import stopped_early
from reidsearch.search.space import SearchSpace
from reidsearch.search.space.rules_of_metrics import MetricRule


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial a scheduler (ASHA, HyperBand, median stopping)
    stopped early was PRUNED, not COMPLETE.

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
        if self.primary in result and not self._told(
            trial_id
        ):  # results without the objective carry no score to tell
            step = int(result.get("epoch", result.get(TRAINING_ITERATION, 0)))
            super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: step})
            self._last_scored()[trial_id] = {self.primary: result[self.primary], "epoch": step}

    @property
    def primary(self) -> str:
        """The score's key (the first of several objectives' keys)."""
        return self.metric[0] if isinstance(self.metric, list) else self.metric

    def _last_scored(self) -> dict[str, dict]:
        """Trial id -> its last scored report (a searcher pickled by an older reidsearch has
        none yet)."""
        if not hasattr(self, "_last_reports"):
            self._last_reports: dict[str, dict] = {}
        return self._last_reports

    def restore(self, checkpoint_path: str) -> None:
        """Tune's saved searcher, then the study's trials it never asked (a journal is written
        at once, Tune's state periodically: asked after its last save, before the driver went
        down) failed, so that none stays RUNNING in the study for ever."""
        super().restore(checkpoint_path)
        from optuna.trial import TrialState

        study = optuna_search_study(self)
        asked = optuna_search_trials(self)
        known = {trial.number for trial in asked.values()}
        frozen = study.get_trials(deepcopy=False)
        for trial in frozen:
            if trial.state == TrialState.RUNNING and trial.number not in known:
                study.tell(trial.number, state=TrialState.FAIL)
        # Told after Tune's last save (the journal has their end): Tune reports them again
        # when they replay their outcome, and Optuna refuses to update a finished trial.
        self._told_before_restore = {
            trial_id
            for trial_id, trial in asked.items()
            if frozen[trial.number].state.is_finished()
        }

    def _told(self, trial_id: str) -> bool:
        return trial_id in getattr(self, "_told_before_restore", ())

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Tune completes a trial stopped while paused (HyperBand) without a result: then its
        last scored report says whether it ran its full length (COMPLETE with that score) or
        was stopped early (PRUNED)."""
        if self._told(trial_id):
            return  # its end is in the study already (told before the driver went down)
        last = self._last_scored().pop(trial_id, None)
        if result is None and not error:
            result = last
        epochs = None if result is None else result.get("epoch")
        if result is not None and not error and self.primary in result:
            # Tune does not tell the searcher the result a scheduler stops a trial at: told
            # here, Optuna has the score of every epoch it reached (a repeat is ignored)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is already reported.*")
                self.on_trial_result(trial_id, result)
            self._last_scored().pop(trial_id, None)
        if stopped_early(epochs, self._max_epochs, failed=error):
            result = None  # (not failed): OptunaSearch tells Optuna PRUNED for no result
        super().on_trial_complete(trial_id, result=result, error=error)


def objectives_settings(space: SearchSpace) -> dict[str, Any]:
    """``ObjectivesOptunaSearch``'s arguments: a key per objective (the score, then each other
    one's value at the score's epoch, ``scored_<metric>``), their modes, the constraints."""
    others = space.all_objectives[1:]
    keys = [SCORE_KEY, *(f"{SCORED_PREFIX}{objective_key(o)}" for o in others)]
    return {
        "metric": keys if others else SCORE_KEY,
        "mode": [str(o.mode) for o in space.all_objectives] if others else space.objective.mode,
        "objectives": others,
        "constraints": list(space.constraints),
    }


class ObjectivesOptunaSearch(PruneAwareOptunaSearch):
    """Several objectives and/or constraints. The score is the first objective; the others and
    the constraints' metrics are read at the trial's score epoch (a cost: as measured), which is
    what the leaderboard shows, and told to Optuna when the trial ends (the constraint values
    as the trial's ``CONSTRAINTS_ATTR``, which the sampler's ``constraints_func`` reads)."""

    def __init__(
        self,
        *args: Any,
        objectives: list[ObjectiveConfig],
        constraints: list[MetricRule],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._objectives = list(objectives)
        self._rules = list(constraints)
        self._at_score_epoch: dict[str, dict[str, float]] = {}

    def _read(self, result: dict) -> dict[str, float]:
        keys = {objective_key(o) for o in self._objectives} | {r.metric for r in self._rules}
        return {key: float(result[key]) for key in keys if key in result}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        epoch = result.get("epoch")
        if epoch is not None and result.get(SCORE_EPOCH_KEY) == epoch:  # the score's epoch
            self._at_score_epoch[trial_id] = self._read(result)
        super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if self._told(trial_id):
            return  # its end is in the study already (told before the driver went down)
        if result is not None and result.get(SCORE_EPOCH_KEY) == result.get("epoch"):
            self._at_score_epoch[trial_id] = self._read(result)
        scored = self._at_score_epoch.pop(trial_id, {})
        asked = optuna_search_trials(self).get(trial_id)
        if self._rules and asked is not None:
            violations = [rule.violation(scored.get(rule.metric)) for rule in self._rules]
            asked.set_user_attr(CONSTRAINTS_ATTR, violations)
        if result is not None and self._objectives:
            values = {
                f"{SCORED_PREFIX}{objective_key(o)}": scored.get(objective_key(o))
                for o in self._objectives
            }
            if None in values.values():  # never reached a score epoch: nothing to tell
                result = None
            else:
                result = {**result, **values}
        super().on_trial_complete(trial_id, result=result, error=error)


class PauseAwareLimiter(ConcurrencyLimiter):
    """A ``ConcurrencyLimiter`` whose limit counts the trials that run, not the paused ones.

    HyperBand pauses a trial at a milestone until its bracket is decided; Ray's limiter counts
    a paused trial as running, so with ``max_concurrent`` below a bracket's size no bracket
    would ever fill (each would be decided among the first ``max_concurrent`` trials, and keep
    them all). The scheduler tells this limiter when it pauses and resumes a trial (Tune's
    ``Searcher.on_pause``/``on_unpause``, as Ray's own BOHB scheduler does).
    """

    def __init__(self, searcher: Any, max_concurrent: int) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.paused: set[str] = set()

    def has_room(self) -> bool:
        """Whether one more trial may run (a new one, or a paused one resumed)."""
        return len(self.live_trials) < self.max_concurrent

    def on_pause(self, trial_id: str) -> None:
        if trial_id in self.live_trials:
            self.live_trials.discard(trial_id)
            self.paused.add(trial_id)
        # (not forwarded: Tune's Searcher has no on_pause; only BOHB's searcher defines one)

    def on_unpause(self, trial_id: str) -> None:
        if trial_id in self.paused:
            self.paused.discard(trial_id)
            self.live_trials.add(trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self.on_unpause(trial_id)  # stopped while paused: the searcher must still hear of it
        super().on_trial_complete(trial_id, result=result, error=error)


def build_searcher(
    space: SearchSpace, max_concurrent: int, experiment_dir: str | None = None
) -> Any:
    """The space's searcher (None for a grid, which Tune enumerates): Optuna's sampler of
    ``space.searcher``, limited to ``max_concurrent`` running trials; its study in the search's
    journal (``results.study``) when ``experiment_dir`` is given, else in memory."""
    if space.searcher == "grid":
        return None
    stored: dict[str, Any] = {}
    if experiment_dir is not None:
        stored = {
            "storage": study_storage(experiment_dir),
            "study_name": study_name(experiment_dir),
        }
    several: dict[str, Any] = {"metric": SCORE_KEY, "mode": space.objective.mode}
    kind: type[PruneAwareOptunaSearch] = PruneAwareOptunaSearch
    if space.multi_objective or space.constraints:
        kind, several = ObjectivesOptunaSearch, objectives_settings(space)
    searcher = kind(
        **stored,
        **several,
        space=space.optuna_define_by_run(),
        points_to_evaluate=space.points_to_evaluate or None,
        sampler=build_sampler(space),
        max_epochs=space.trial_epochs(),
    )
    if space.scheduler.type == "hyperband":
        return PauseAwareLimiter(searcher, max_concurrent=max_concurrent)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
