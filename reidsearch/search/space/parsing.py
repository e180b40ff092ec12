"""The ``search:`` section of a space file -> :class:`~reidsearch.search.params.ParamSpec` list.

Every entry is checked against TrialConfig before anything runs: the key must be a setting that
may differ between trials, the distribution must fit its type, each choice and range end must be
a value TrialConfig accepts, and a condition may only use a parameter searched before it.
"""

from __future__ import annotations

import math
import re
import typing
from typing import Any, Literal

from pydantic import BaseModel

from reidsearch.config import TrialConfig, setting_types, with_overrides
from reidsearch.errors import ConfigError
from reidsearch.search.space.params import (
    DIST_TYPES,
    Condition,
    ParamSpec,
    format_value,
    same_value,
)
from reidsearch.search.space.schema import (
    DIST_MODELS,
    ChoiceDist,
    IntDist,
    UniformDist,
    validate_part,
)

__all__ = ["NOT_SEARCHABLE", "parse_search"]

_COND_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(==|!=|>=|<=|>|<)\s*(\S+)\s*$")

# Settings every trial of a search shares, with why (and where to set them instead).
NOT_SEARCHABLE = {
    "scaling": "set per-trial resources under resources:",
    "objective": "every trial is scored alike; set it with the top-level objective: key",
    "repeats": "every trial is scored alike; set it with the top-level repeats: key",
    # A trial's length is the budget the schedulers and the searcher compare trials at: a
    # trial with fewer epochs would read as stopped early (and be told to Optuna as pruned).
    "epochs": "every trial runs the same epochs (the budget trials are compared at); set "
    "fixed.epochs, and let the scheduler stop trials early",
    "eval.period": "every trial is evaluated at the same epochs (what the schedulers "
    "compare); set fixed.eval.period",
}


def parse_search(search: dict[str, Any], src: str, fixed: TrialConfig) -> list[ParamSpec]:
    """Parse and check the ``search:`` mapping of file ``src`` (ConfigError, one line, on any
    problem); ``fixed`` is the config the searched values are applied to."""
    params: list[ParamSpec] = []
    for key, body in search.items():
        where = f"search.{key}"
        if not isinstance(key, str):
            raise ConfigError(f"{src}: search: key {key!r} is not a dotted setting name")
        types = setting_types(key)
        if types is None:
            raise ConfigError(f"{src}: {where}: unknown key (not a TrialConfig setting)")
        section = next((k for k in (key, key.split(".")[0]) if k in NOT_SEARCHABLE), None)
        if section is not None:
            raise ConfigError(f"{src}: {where}: not searchable: {NOT_SEARCHABLE[section]}")
        if any(isinstance(t, type) and issubclass(t, BaseModel) for t in types):
            raise ConfigError(f"{src}: {where}: a group of settings; search its fields instead")
        if not isinstance(body, dict):
            raise ConfigError(
                f"{src}: {where}: expected a mapping like {{type: uniform, low: 0, high: 1}}"
            )
        dist_type = body.get("type")
        if dist_type not in DIST_MODELS:
            raise ConfigError(
                f"{src}: {where}.type: {dist_type!r} is not one of {', '.join(DIST_TYPES)}"
            )
        dist = validate_part(DIST_MODELS[dist_type], body, src, where)
        param = _make_param(key, dist, src, where)
        _check_kind(param, types, src, where)
        if param.when is not None:
            _check_condition(param.when, params, search, src, where)
        # every searched value (choices, range ends) must be accepted by TrialConfig
        probes = list(param.values) if param.type == "choice" else [param.low, param.high]
        for value in probes:
            with_overrides(
                fixed, {key: value}, src, f"{where}: value {format_value(value)} is rejected"
            )
        params.append(param)
    return params


def _make_param(key: str, dist: Any, src: str, where: str) -> ParamSpec:
    when = _parse_condition(dist.when, src, where) if dist.when is not None else None
    if isinstance(dist, ChoiceDist):
        if not dist.values:
            raise ConfigError(f"{src}: {where}.values: empty choice list")
        for v in dist.values:
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise ConfigError(
                    f"{src}: {where}.values: {v!r}: choices must be numbers, strings, "
                    "booleans or null"
                )
        for i, v in enumerate(dist.values):
            if any(same_value(v, w) for w in dist.values[:i]):
                raise ConfigError(f"{src}: {where}.values: {format_value(v)} is listed twice")
        return ParamSpec(key=key, type="choice", values=tuple(dist.values), when=when)
    for name in ("low", "high"):
        value = getattr(dist, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{src}: {where}.{name}: must be finite")
    if dist.low >= dist.high:
        raise ConfigError(
            f"{src}: {where}: empty range: low {format_value(dist.low)} >= high "
            f"{format_value(dist.high)}"
        )
    if isinstance(dist, IntDist):
        if dist.log and dist.low < 1:
            raise ConfigError(f"{src}: {where}.low: log needs low >= 1")
        if dist.log and dist.step != 1:
            raise ConfigError(f"{src}: {where}.step: log and step cannot be combined")
        if (dist.high - dist.low) % dist.step:
            raise ConfigError(f"{src}: {where}.step: high - low is not a multiple of {dist.step}")
        return ParamSpec(
            key=key,
            type="int",
            low=dist.low,
            high=dist.high,
            step=dist.step,
            log=dist.log,
            when=when,
        )
    if isinstance(dist, UniformDist):
        if dist.step is not None:
            n = (dist.high - dist.low) / dist.step
            if abs(n - round(n)) > 1e-8:
                raise ConfigError(
                    f"{src}: {where}.step: high - low is not a multiple of "
                    f"{format_value(dist.step)}"
                )
        return ParamSpec(
            key=key, type="uniform", low=dist.low, high=dist.high, step=dist.step, when=when
        )
    return ParamSpec(key=key, type="loguniform", low=dist.low, high=dist.high, log=True, when=when)


def _parse_condition(text: str, src: str, where: str) -> Condition:
    m = _COND_RE.match(text)
    if not m:
        raise ConfigError(
            f"{src}: {where}.when: {text!r} is not '<earlier searched key> <op> <number|word>' "
            "with op one of == != > >= < <="
        )
    key, op, rhs = m.groups()
    value: float | str
    try:
        value = float(rhs)
    except ValueError:
        value = rhs.strip("'\"")
        if op not in ("==", "!="):
            raise ConfigError(f"{src}: {where}.when: {op} needs a number, got {rhs!r}") from None
    return Condition(key=key, op=op, value=value)


def _check_condition(
    cond: Condition, earlier: list[ParamSpec], search: dict[str, Any], src: str, where: str
) -> None:
    """A condition must use a parameter searched before it, and be true for some of its values
    (else the parameter would never be searched)."""
    ref = next((p for p in earlier if p.key == cond.key), None)
    if ref is None:
        why = "searched later" if cond.key in search else "not a searched key"
        raise ConfigError(
            f"{src}: {where}.when: {cond.key} is {why}; a condition may only use "
            "a parameter searched before it"
        )
    if ref.type != "choice":
        if isinstance(cond.value, str):
            raise ConfigError(
                f"{src}: {where}.when: {cond.key} is numeric ({ref.distribution()}); "
                f"compare it with a number, not {cond.value!r}"
            )
        return
    if not any(cond.holds({ref.key: v}) for v in ref.values):
        raise ConfigError(f"{src}: {where}.when: {cond} is false for every choice of {ref.key}")


def _check_kind(param: ParamSpec, types: tuple[Any, ...], src: str, where: str) -> None:
    kinds = _scalar_kinds(types)
    if param.type in ("uniform", "loguniform") and float not in kinds:
        raise ConfigError(
            f"{src}: {where}.type: {param.type} needs a float setting "
            f"({_type_names(types)}); use int or choice"
        )
    if param.type == "int" and not kinds & {int, float}:
        raise ConfigError(
            f"{src}: {where}.type: int needs a numeric setting ({_type_names(types)}); use choice"
        )


def _scalar_kinds(types: tuple[Any, ...]) -> set[type]:
    kinds: set[type] = set()
    for t in types:
        if typing.get_origin(t) is Literal:
            kinds.add(str)
        elif t in (bool, int, float, str):
            kinds.add(t)
    return kinds


def _type_names(types: tuple[Any, ...]) -> str:
    names = []
    for t in types:
        if typing.get_origin(t) is Literal:
            names.append("one of " + ", ".join(str(v) for v in typing.get_args(t)))
        else:
            names.append(getattr(t, "__name__", str(t)))
    return " | ".join(names)
