"""Searched parameters: a dotted TrialConfig key, its distribution and an optional condition.

Also the define-by-run function Optuna samples them with. Nothing here imports optuna (or ray):
the function only calls methods of the trial object it is given, so loading a space stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["DIST_TYPES", "Condition", "DefineByRun", "ParamSpec", "format_value", "same_value"]

DIST_TYPES = ("choice", "uniform", "loguniform", "int")
OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


@dataclass(frozen=True)
class Condition:
    """``when: "<earlier searched key> <op> <number|word>"``: search the parameter only if true."""

    key: str
    op: str
    value: float | str

    def holds(self, values: dict[str, Any]) -> bool:
        """True when the condition holds for already-chosen ``values`` (False if key unset)."""
        if self.key not in values:
            return False
        actual = values[self.key]
        if isinstance(self.value, str):
            return OPS[self.op](_word(actual), self.value)
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return self.op == "!="
        return OPS[self.op](actual, self.value)

    def __str__(self) -> str:
        value = self.value if isinstance(self.value, str) else f"{self.value:g}"
        return f"{self.key} {self.op} {value}"


@dataclass(frozen=True)
class ParamSpec:
    """One searched setting: a dotted TrialConfig path and its distribution."""

    key: str
    type: Literal["choice", "uniform", "loguniform", "int"]
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    values: tuple[Any, ...] = ()
    when: Condition | None = None

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial (or Ray's capturing wrapper of one) for this parameter."""
        if self.type == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        if self.type == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(
            self.key, float(self.low), float(self.high), step=self.step, log=self.log
        )

    def optuna_distribution(self) -> Any:
        """The Optuna distribution ``suggest`` registers (for trials told, not asked)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "choice":
            return CategoricalDistribution(list(self.values))
        if self.type == "int":
            return IntDistribution(
                int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return FloatDistribution(float(self.low), float(self.high), step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a choice, or inside the (inclusive) range and on its step."""
        if self.type == "choice":
            return any(same_value(value, v) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not isinstance(value, int):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is not None:
            n = (value - self.low) / self.step
            return abs(n - round(n)) < 1e-8
        return True

    def distribution(self) -> str:
        """A short human-readable form, e.g. ``loguniform(1e-05, 0.001)``."""
        if self.type == "choice":
            return "choice[" + ", ".join(format_value(v) for v in self.values) + "]"
        extra = ""
        if self.step is not None and not (self.type == "int" and self.step == 1):
            extra += f", step={format_value(self.step)}"
        if self.log and self.type == "int":
            extra += ", log"
        return f"{self.type}({format_value(self.low)}, {format_value(self.high)}{extra})"


class DefineByRun:
    """Picklable define-by-run function for ``OptunaSearch(space=...)`` (Ray checkpoints its
    searcher, so a closure would not do).

    Suggests every active parameter in file order and returns None, so the Tune config holds
    exactly the suggested values under their flat dotted keys; an inactive conditional parameter
    is not suggested at all, so its fixed value applies.
    """

    def __init__(self, params: list[ParamSpec]):
        self.params = list(params)

    def __call__(self, trial: Any) -> None:
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.when is not None and not param.when.holds(chosen):
                continue
            chosen[param.key] = param.suggest(trial)
        return None


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 (YAML choices mix booleans and numbers)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def format_value(value: Any) -> str:
    """A value as the YAML file would spell it (floats in full, None as null)."""
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "null"
    return str(value)


def _word(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
