"""Trial schedulers of a search: ASHA whose rungs survive ``--resume``, synchronous HyperBand,
median stopping (``ray_schedulers``), or none (FIFO).

Tune restores a search's searcher but not its scheduler (ray-project/ray issue 30838): after a
restart ASHA would have forgotten every rung and judge the remaining trials against nothing.
``ResumableASHA`` writes its rungs and its stop decisions to the experiment folder whenever they
change, and reads them back the first time the restored search uses it, so that a resumed search
stops exactly the trials an uninterrupted one would stop.
"""

from __future__ import annotations

import json
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from reidsearch.internals.ray_internals import (
    asha_brackets,
    asha_max_t,
    asha_time_attr,
    asha_trial_brackets,
    bracket_rungs,
    set_asha_stop_count,
)
from reidsearch.objective import ObjectiveConfig
from reidsearch.search.driver.front_asha import FrontASHA
from reidsearch.search.driver.ray_schedulers import EpochMedianStopping, PausingHyperBand
from reidsearch.search.keys import ASHA_STATE_FILE, FRONT_ASHA_STATE_FILE
from reidsearch.search.results.state_files import state_path
from reidsearch.search.space import SchedulerSettings
from reidsearch.storage import exists, read_text, write_text


class ResumableASHA(ASHAScheduler):
    """ASHA (``time_attr`` epochs) that keeps its rungs in ``state_path`` (a local path or URI)."""

    def __init__(self, *, state_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state_path = state_path
        self._stopped: set[str] = set()  # trials ASHA stopped: stopped again if they come back
        self._bracket_of: dict[str, int] = {}
        self._loaded = False

    # ------------------------------------------------------------------------- persistence
    def _snapshot(self) -> dict[str, Any]:
        return {
            "brackets": [
                [{"milestone": float(m), "recorded": dict(rec)} for m, rec in bracket_rungs(b)]
                for b in asha_brackets(self)
            ],
            "stopped": sorted(self._stopped),
            "bracket_of": self._bracket_of,
        }

    def _save(self) -> None:
        write_text(self._state_path, json.dumps(self._snapshot(), indent=1))

    def _load(self) -> None:
        """Once per driver process: the rungs a previous driver of this search recorded."""
        if self._loaded:
            return
        self._loaded = True
        if not exists(self._state_path):
            return
        state = json.loads(read_text(self._state_path))
        brackets = asha_brackets(self)
        milestones = [[float(m) for m, _ in bracket_rungs(b)] for b in brackets]
        if milestones != [[rung["milestone"] for rung in b] for b in state["brackets"]]:
            raise ValueError(f"{self._state_path}: rungs do not match this scheduler")
        for bracket, rungs in zip(brackets, state["brackets"], strict=True):
            for (_, recorded), saved in zip(bracket_rungs(bracket), rungs, strict=True):
                recorded.update(saved["recorded"])
        self._stopped = set(state["stopped"])
        set_asha_stop_count(self, len(self._stopped))
        self._bracket_of = dict(state["bracket_of"])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_loaded"] = False  # an unpickled copy (a restored search) reads the file again
        return state

    # ------------------------------------------------------------------------ Tune's hooks
    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._load()
        known = self._bracket_of.get(trial.trial_id)
        if known is None:
            super().on_trial_add(tune_controller, trial)
            placed = asha_trial_brackets(self)[trial.trial_id]
            self._bracket_of[trial.trial_id] = asha_brackets(self).index(placed)
        else:
            asha_trial_brackets(self)[trial.trial_id] = asha_brackets(self)[known]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._load()
        if trial.trial_id in self._stopped:
            return TrialScheduler.STOP  # stopped before the driver went down: stays stopped
        before = self._recorded_count()
        action = super().on_trial_result(tune_controller, trial, result)
        reached = result.get(asha_time_attr(self), 0)
        cut = action == TrialScheduler.STOP and reached < asha_max_t(self)
        if cut:  # (a trial that reached max_t is also told STOP: it has simply ended)
            self._stopped.add(trial.trial_id)
        if cut or self._recorded_count() != before:
            self._save()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._load()
        before = self._recorded_count()
        super().on_trial_complete(tune_controller, trial, result)
        if self._recorded_count() != before:
            self._save()

    def _recorded_count(self) -> int:
        return sum(len(rec) for b in asha_brackets(self) for _, rec in bracket_rungs(b))


def build_scheduler(
    kind: str | SchedulerSettings,
    *,
    experiment_dir: str,
    max_t: int,
    grace_period: int,
    reduction_factor: float,
    min_samples_required: int = 3,
    objectives: list[ObjectiveConfig] | None = None,
) -> TrialScheduler:
    """The space's scheduler, on epochs (not Tune iterations: a restarted trial repeats its
    reports): resumable ASHA, synchronous HyperBand, median stopping, or FIFO (``none``).
    ``kind`` is the type, or the space's validated scheduler settings (which then win)."""
    if isinstance(kind, SchedulerSettings):
        settings = kind
        kind = settings.type
        max_t = settings.max_t or max_t
        grace_period, reduction_factor = settings.grace_period, settings.reduction_factor
        min_samples_required = settings.min_samples_required
    if kind == "none":
        return FIFOScheduler()
    if kind == "hyperband":
        return PausingHyperBand(max_t=max_t, reduction_factor=reduction_factor)
    if kind == "median":
        return EpochMedianStopping(
            grace_period=grace_period, min_samples_required=min_samples_required
        )
    if objectives and len(objectives) > 1:  # several objectives: keep each rung's front
        return FrontASHA(
            objectives=objectives,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            max_t=max_t,
            state_path=state_path(experiment_dir, FRONT_ASHA_STATE_FILE),
        )
    return ResumableASHA(
        state_path=state_path(experiment_dir, ASHA_STATE_FILE),
        time_attr="epoch",
        max_t=max_t,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
    )
