"""ASHA for several objectives: stop a trial at a rung only when the trials already there
dominate it clearly, never one on the rung's current front.

At each rung (``grace_period`` x ``reduction_factor``^k epochs, as ASHA's) a trial's partial
result is its objective vector so far: its score, and each other objective at its score epoch
(a cost: as measured). The vectors recorded at the rung are sorted into Pareto fronts; the trial
goes on when its front is among those of the first ``1/reduction_factor`` of the recorded trials
(in front order) or when it is on the first front, and stops otherwise. Asynchronous like ASHA:
a trial is judged against those that reached the rung before it. Its rungs are written to the
search's state folder whenever they change and read back by a resumed search, so that the
resumed search stops what an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from reidsearch.engine.scoring import SCORE_EPOCH_KEY, SCORE_KEY, objective_key
from reidsearch.objective import ObjectiveConfig
from reidsearch.search.results.pareto import front_ranks
from reidsearch.search.space.choices import asha_rungs
from reidsearch.storage import exists, read_text, write_text


def keeps(vectors: list[list[float]], modes: list[str], reduction_factor: float) -> bool:
    """Whether the last of ``vectors`` (a trial arriving at a rung where the others are) goes
    on: its front is on the first front, or among those of the first 1/reduction_factor of
    the recorded trials."""
    ranks = front_ranks(vectors, modes)
    mine = ranks[-1]
    kept = max(1, math.ceil(len(vectors) / reduction_factor))
    return mine == 1 or mine <= sorted(ranks)[kept - 1]


class FrontASHA(FIFOScheduler):
    """The rule of :func:`keeps` at ASHA's rungs (``time_attr`` epochs), resumable."""

    def __init__(
        self,
        *,
        objectives: list[ObjectiveConfig],
        grace_period: int,
        reduction_factor: float,
        max_t: int,
        state_path: str,
    ) -> None:
        super().__init__()
        self._objectives = list(objectives)
        self._modes = [str(o.mode) for o in objectives]
        self._rf = reduction_factor
        self._rung_epochs = [
            r for r in asha_rungs(grace_period, reduction_factor, max_t) if r < max_t
        ]
        self._state_path = state_path
        self._recorded: dict[str, dict[str, list[float]]] = {str(r): {} for r in self._rung_epochs}
        self._scored: dict[str, dict[str, float]] = {}  # trial -> its score epoch's values
        self._stopped: set[str] = set()
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if exists(self._state_path):
            state = json.loads(read_text(self._state_path))
            self._recorded.update(state["recorded"])
            self._stopped = set(state["stopped"])

    def _save(self) -> None:
        state = {"recorded": self._recorded, "stopped": sorted(self._stopped)}
        write_text(self._state_path, json.dumps(state, indent=1))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": False}  # a restored search reads its file again

    def vector(self, trial_id: str, result: dict) -> list[float] | None:
        """The trial's objective values so far (None before its first score)."""
        epoch = result.get("epoch")
        if epoch is not None and result.get(SCORE_EPOCH_KEY) == epoch:
            keys = [objective_key(o) for o in self._objectives[1:]]
            self._scored[trial_id] = {k: float(result[k]) for k in keys if k in result}
        scored = self._scored.get(trial_id, {})
        others = [scored.get(objective_key(o)) for o in self._objectives[1:]]
        if SCORE_KEY not in result or None in others:
            return None
        return [float(result[SCORE_KEY]), *others]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._load()
        trial_id = trial.trial_id
        if trial_id in self._stopped:
            return TrialScheduler.STOP  # stopped before the driver went down: stays stopped
        vector = self.vector(trial_id, result)
        epoch = int(result.get("epoch", 0))
        for rung in self._rung_epochs:
            recorded = self._recorded[str(rung)]
            if epoch < rung or trial_id in recorded or vector is None:
                continue
            others = [v for t, v in recorded.items() if t != trial_id]
            recorded[trial_id] = vector
            go_on = keeps([*others, vector], self._modes, self._rf)
            if not go_on:
                self._stopped.add(trial_id)
            self._save()
            if not go_on:
                return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"FrontASHA: rungs {self._rung_epochs}, {len(self._stopped)} trial(s) stopped"
