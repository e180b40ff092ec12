"""Ray's synchronous HyperBand and median stopping rule, on epochs, made safe for our trials.

Both read only what a result carries: a trial restarted from its checkpoint (after a pause, a
lost worker or a resumed search) replays its earlier epochs, which they must not count twice;
epochs between evaluations (``eval.period`` > 1) carry no score. Both are told each result once,
at its epoch, and only through Ray's public scheduler and searcher hooks.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import HyperBandScheduler, MedianStoppingRule, TrialScheduler

from reidsearch.engine.scoring import SCORE_KEY

EPOCH = "epoch"


class _FirstReportOfEachEpoch:
    """Which epochs of a trial a scheduler has seen (a replayed epoch is not news)."""

    def __init__(self) -> None:
        self._last_epoch: dict[str, int] = {}

    def is_new(self, trial: Any, result: dict) -> bool:
        """True once per epoch of a trial, for its first report (results without an epoch,
        e.g. a trial's empty final result, are never new)."""
        epoch = result.get(EPOCH)
        if epoch is None or epoch <= self._last_epoch.get(trial.trial_id, 0):
            return False
        self._last_epoch[trial.trial_id] = int(epoch)
        return True


def _limiter(tune_controller: Any) -> Any:
    """The search's ``PauseAwareLimiter`` (None for a grid or another searcher)."""
    searcher = getattr(getattr(tune_controller, "search_alg", None), "searcher", None)
    return searcher if hasattr(searcher, "has_room") else None


class PausingHyperBand(HyperBandScheduler):
    """Ray's synchronous HyperBand on epochs: each bracket's trials pause at a milestone until
    every trial of the bracket has reached it; then the best 1/reduction_factor are resumed
    (from their own checkpoints) and the others stopped.

    It tells the searcher's ``PauseAwareLimiter`` when it pauses a trial and when it resumes
    one, so that paused trials leave their concurrency slot to new trials of the bracket, and a
    paused trial is resumed only when a slot is free (at most ``max_concurrent`` run at once).
    """

    def __init__(self, *, max_t: int, **kwargs: Any) -> None:
        # A trial that reaches max_t first stays paused there, holding its bracket's place,
        # until the bracket ends; Ray then stops it without a result (the searcher completes
        # it from its last report: ``PruneAwareOptunaSearch``).
        super().__init__(time_attr=EPOCH, max_t=max_t, stop_last_trials=True, **kwargs)
        self._epochs = _FirstReportOfEachEpoch()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if not self._epochs.is_new(trial, result):
            return TrialScheduler.CONTINUE
        action = super().on_trial_result(tune_controller, trial, result)
        limiter = _limiter(tune_controller)
        if action == TrialScheduler.PAUSE and limiter is not None:
            limiter.on_pause(trial.trial_id)
        return action

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        trial = super().choose_trial_to_run(tune_controller)
        if trial is None or trial.status != Trial.PAUSED:
            return trial
        limiter = _limiter(tune_controller)
        if limiter is None:
            return trial
        if trial.trial_id in limiter.paused:
            if not limiter.has_room():
                return None  # promoted, but every slot runs a trial: resumed when one frees
            limiter.on_unpause(trial.trial_id)
        return trial


class EpochMedianStopping(MedianStoppingRule):
    """Ray's median stopping rule on epochs: a trial is stopped at an evaluated epoch t (from
    ``grace_period`` on) when its best score so far is worse than the median, over the other
    trials that reached t, of their mean score over their evaluated epochs from grace_period
    to t. Epochs without a score are skipped (Ray's rule); a trial never pauses to wait for
    enough other trials (``min_time_slice`` infinite: it would only add restarts here).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(time_attr=EPOCH, hard_stop=True, min_time_slice=math.inf, **kwargs)
        self._epochs = _FirstReportOfEachEpoch()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if not self._epochs.is_new(trial, result):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        """Ray records the final result again (a duplicate of the last report, or one without
        a score): record it only if it is a new, scored epoch."""
        if result and SCORE_KEY in result and self._epochs.is_new(trial, result):
            super().on_trial_complete(tune_controller, trial, result)
