"""One score per run: the number Optuna is told, ASHA compares, the leaderboard sorts by and the
kept checkpoint is chosen by (DESIGN.md, "One score per trial").

An evaluated epoch gives, for every per-query metric, the mean over the run's seeds, its 95%
bootstrap interval over queries (and seeds) and, with several seeds, their spread. The
:class:`Scorer` turns those epochs into the run's score with the objective's ``reduce`` rule and
remembers which epoch the score comes from, so that every report shows one epoch's metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from reidsearch.config import QUERY_METRICS, ObjectiveConfig
from reidsearch.evaluation.bootstrap import query_intervals

SCORE_KEY = "score"  # the run's score so far (what Tune, Optuna and ASHA read)
SCORE_EPOCH_KEY = "score_epoch"  # the epoch it comes from
EPOCH_SCORE_KEY = "epoch_score"  # this evaluated epoch's objective value
# On evaluated epochs: the epoch when the run's score now comes from it, else 0. The kept
# checkpoint is the one ranked highest, i.e. always the score's own epoch, also when scores tie
# (the scorer keeps the earliest of tied epochs; ranking by the score kept the latest).
KEEP_KEY = "checkpoint_rank"


def interval_keys(metric: str) -> tuple[str, str]:
    """The names of a metric's 95% interval ends in reports and MLflow."""
    return f"{metric}_ci_low", f"{metric}_ci_high"


def spread_key(metric: str) -> str:
    """The name of a metric's standard deviation over seeds (``repeats`` > 1)."""
    return f"{metric}_std"


def combine_seeds(
    metrics_by_seed: Sequence[dict[str, float]],
    per_query_by_seed: Sequence[dict[str, np.ndarray]],
    *,
    seed: int = 0,
) -> dict[str, float]:
    """The epoch's metrics of a run of one or more seeds, each scored on the same queries.

    Means over seeds, the bootstrap interval of each mean (queries and seeds resampled, seeded
    so that a run is reproducible) and, with several seeds, the sample standard deviation.
    """
    combined: dict[str, float] = {}
    for metric in QUERY_METRICS:
        values = np.array([m[metric] for m in metrics_by_seed], dtype=np.float64)
        combined[metric] = float(values.mean())
        if len(values) > 1:
            combined[spread_key(metric)] = float(values.std(ddof=1))
    combined["num_valid_queries"] = float(metrics_by_seed[0]["num_valid_queries"])
    for metric, (low, high) in query_intervals(list(per_query_by_seed), seed=seed).items():
        combined.update(zip(interval_keys(metric), (low, high), strict=True))
    return combined


def objective_key(objective: ObjectiveConfig) -> str:
    """The report key an objective reads: its metric, or the pessimistic end of its interval."""
    if not objective.bound:
        return objective.metric
    low, high = interval_keys(objective.metric)
    return low if objective.mode == "max" else high


def objective_value(objective: ObjectiveConfig, metrics: dict[str, float]) -> float:
    """An objective's value in one epoch's metrics (a cost: the trial's, the same every epoch)."""
    return float(metrics[objective_key(objective)])


class Scorer:
    """Keeps a run's score across evaluated epochs (``reduce: best`` or ``last``).

    Only evaluated epochs are scored, so the score always comes with one epoch's full metrics
    (and its checkpoint). The state is saved in checkpoints: a resumed run continues it.
    """

    def __init__(self, objective: ObjectiveConfig, state: dict[str, Any] | None = None) -> None:
        self.objective = objective
        self.score: float | None = None
        self.epoch: int | None = None
        self.metrics: dict[str, float] = {}
        if state:
            self.score, self.epoch = state["score"], state["epoch"]
            self.metrics = dict(state.get("metrics", {}))

    def value(self, metrics: dict[str, float]) -> float:
        """This epoch's objective value (``objective_value``)."""
        return objective_value(self.objective, metrics)

    def update(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Score an evaluated epoch; True when the run's score now comes from it."""
        value = self.value(metrics)
        if not math.isfinite(value):
            return False
        if self.objective.reduce == "best" and self.score is not None:
            better = value > self.score if self.objective.mode == "max" else value < self.score
            if not better:
                return False
        self.score, self.epoch, self.metrics = value, epoch, dict(metrics)
        return True

    def report(self) -> dict[str, float]:
        """The keys every report carries once an epoch has been scored."""
        if self.score is None:
            return {}
        return {SCORE_KEY: self.score, SCORE_EPOCH_KEY: float(self.epoch)}

    def state_dict(self) -> dict[str, Any]:
        return {"score": self.score, "epoch": self.epoch, "metrics": dict(self.metrics)}
