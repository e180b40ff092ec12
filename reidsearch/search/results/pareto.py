"""The Pareto front of a multi-objective search, as the leaderboard and ``export --pick`` read
it from MLflow: each finished trial's objective values at its score epoch (a cost: as measured),
its front rank (1 = no other trial is at least as good in every objective and better in one),
and the constraints it breaks. Trials that meet every constraint rank before those that do not
(Optuna's convention for constrained searches)."""

from __future__ import annotations

from typing import Any

from reidsearch.engine.scoring import objective_key
from reidsearch.objective import ObjectiveConfig
from reidsearch.search.keys import FINISHED_STATUS
from reidsearch.search.rules import best_first, finite
from reidsearch.search.space.rules_of_metrics import MetricRule


def metric_value(row: dict[str, Any], key: str) -> float | None:
    """A trial's ``key``: a cost as measured, else its value at the score epoch."""
    value = row["cost"].get(key) if key.startswith("cost.") else row["scored"].get(key)
    return float(value) if value is not None and finite(value) else None


def objective_values(row: dict[str, Any], objectives: list[ObjectiveConfig]) -> list[float] | None:
    """The trial's value of each objective (the first is its score), None if one is missing."""
    values = [row["score"], *(metric_value(row, objective_key(o)) for o in objectives[1:])]
    return None if any(v is None or not finite(v) for v in values) else [float(v) for v in values]


def dominates(a: list[float], b: list[float], modes: list[str]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one."""
    signed = [(x, y) if m == "max" else (-x, -y) for x, y, m in zip(a, b, modes, strict=True)]
    return all(x >= y for x, y in signed) and any(x > y for x, y in signed)


def front_ranks(vectors: list[list[float]], modes: list[str]) -> list[int]:
    """Non-dominated sorting: 1 for the Pareto front, 2 for the front once it is removed, ..."""
    ranks = [0] * len(vectors)
    left, rank = set(range(len(vectors))), 1
    while left:
        front = {i for i in left if not any(dominates(vectors[j], vectors[i], modes) for j in left)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def order_front(
    rows: list[dict[str, Any]], objectives: list[ObjectiveConfig], rules: list[MetricRule]
) -> None:
    """Give each row ``values``, ``breaks`` (the constraints it does not meet) and ``front``
    (among the finished trials that meet them all), and sort: finished feasible trials by
    front, then by score; then the other finished ones; then the rest."""
    modes = [str(o.mode) for o in objectives]
    for row in rows:
        row["values"] = objective_values(row, objectives)
        row["breaks"] = [str(r) for r in rules if not r.holds(metric_value(row, r.metric))]
        row["front"] = None
    ranked = [
        r
        for r in rows
        if r["status"] == FINISHED_STATUS and r["values"] is not None and not r["breaks"]
    ]
    for row, rank in zip(ranked, front_ranks([r["values"] for r in ranked], modes), strict=True):
        row["front"] = rank

    def key(row: dict[str, Any]) -> tuple:
        group = 0 if row["front"] is not None else 1 if row["status"] == FINISHED_STATUS else 2
        return (group, row["front"] or 0, *best_first(row["score"], modes[0]), row["run"])

    rows.sort(key=key)
