"""Rules on a trial's metrics: ``"cost.latency_ms <= 10"``, for the space's ``constraints:``
and ``reidsearch export --best --pick``. A metric is read as the leaderboard reads it: a quality
metric at the trial's score epoch, a cost as measured."""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from reidsearch.errors import ConfigError
from reidsearch.objective import RANKED_METRICS

_RULE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(<=|>=|<|>)\s*(\S+)\s*$")
_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@dataclass(frozen=True)
class MetricRule:
    metric: str
    op: str
    bound: float

    def holds(self, value: float | None) -> bool:
        return value is not None and math.isfinite(value) and _OPS[self.op](value, self.bound)

    def violation(self, value: float | None) -> float:
        """How far ``value`` is from meeting the rule (<= 0: met), as Optuna's constraints
        take it; a missing value is infinitely far."""
        if value is None or not math.isfinite(value):
            return math.inf
        return value - self.bound if self.op in ("<=", "<") else self.bound - value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def parse_rule(text: str, where: str) -> MetricRule:
    """``"<metric> <op> <number>"`` with op one of <= < >= > (ConfigError, one line)."""
    match = _RULE_RE.match(str(text))
    if not match:
        raise ConfigError(f"{where}: {text!r} is not '<metric> <op> <number>' (op: <= < >= >)")
    metric, op, number = match.groups()
    if metric not in RANKED_METRICS:
        raise ConfigError(
            f"{where}: {metric!r} is not a metric (one of {', '.join(RANKED_METRICS)})"
        )
    try:
        bound = float(number)
    except ValueError:
        raise ConfigError(f"{where}: {number!r} is not a number") from None
    if not math.isfinite(bound):
        raise ConfigError(f"{where}: {number!r} is not a finite number")
    return MetricRule(metric, op, bound)
