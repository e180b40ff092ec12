"""A space's objectives and constraints: one objective (a score), or several (a Pareto front).

The first objective is a quality metric: it picks each trial's score epoch and kept checkpoint.
The others are read at that epoch (quality metrics, or ``cost.*``). Only searchers that search
several objectives may have several, and only the schedulers that compare trials on all of them
(``asha``, as ``driver.front_asha``: it keeps each rung's front; or ``none``).
"""

from __future__ import annotations

from typing import Any

from reidsearch.errors import ConfigError
from reidsearch.objective import ObjectiveConfig
from reidsearch.search.space.rules_of_metrics import MetricRule, parse_rule
from reidsearch.search.space.schema import validate_part

# Searchers whose Optuna sampler searches several objectives (grid and random ignore them).
MULTI_OBJECTIVE_SEARCHERS = ("tpe", "nsga2", "gp", "qmc", "random", "grid")
# Searchers whose sampler takes constraints (the others ignore them; the board still marks).
CONSTRAINED_SEARCHERS = ("tpe", "nsga2", "gp")


def parse_objectives(
    objective: dict[str, Any] | list[Any],
    constraints: list[str],
    searcher: str,
    scheduler: str,
    src: str,
) -> tuple[list[ObjectiveConfig], list[MetricRule]]:
    """The space's objectives (first: the score) and constraints, each problem one line."""
    if isinstance(objective, list):
        if not objective:
            raise ConfigError(f"{src}: objective: an empty list (give at least one objective)")
        objectives = [
            validate_part(ObjectiveConfig, item, src, f"objective[{i}]")
            for i, item in enumerate(objective)
        ]
    else:
        objectives = [validate_part(ObjectiveConfig, objective, src, "objective")]
    if objectives[0].is_cost:
        raise ConfigError(
            f"{src}: objective: the first objective picks each trial's epoch, so it is a quality "
            f"metric, not {objectives[0].metric} (put costs after it)"
        )
    seen: set[str] = set()
    for i, item in enumerate(objectives):
        if item.metric in seen:
            raise ConfigError(f"{src}: objective[{i}]: {item.metric} is listed twice")
        seen.add(item.metric)
        if i and "reduce" in item.model_fields_set:
            raise ConfigError(
                f"{src}: objective[{i}].reduce: only the first objective picks the epoch; the "
                "others are read at that epoch"
            )
    if len(objectives) > 1:
        if searcher not in MULTI_OBJECTIVE_SEARCHERS:
            raise ConfigError(
                f"{src}: searcher: {searcher} searches one objective; with "
                f"{len(objectives)} use nsga2, tpe or gp"
            )
        if scheduler not in ("asha", "none"):
            raise ConfigError(
                f"{src}: scheduler: {scheduler} compares trials on one score; with "
                f"{len(objectives)} objectives use asha (it keeps each rung's front) or none"
            )
    rules = [parse_rule(text, f"{src}: constraints[{i}]") for i, text in enumerate(constraints)]
    return objectives, rules
