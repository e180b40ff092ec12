"""Search spaces: a YAML file of fixed settings, searched distributions and how to search them.

A search space is validated completely on load, so that a typo fails in well under a second
instead of after Ray has started: unknown keys, wrong types, empty ranges, searched keys that are
not :class:`~reidsearch.config.TrialConfig` settings, searched values that ``TrialConfig`` rejects,
conditions on undefined or later parameters and ``points_to_evaluate`` outside the space all raise
:class:`~reidsearch.errors.ConfigError` with one line ``FILE: dotted.key: what is wrong``.

This module imports only the standard library, yaml, pydantic and :mod:`reidsearch.config`; ray,
torch and optuna are never imported here (the define-by-run function only calls methods of the
trial object it is given).

Searched values travel through Ray Tune as *flat* config keys named by their dotted path
(``{"model.lam": 7.5}``): Ray's ``OptunaSearch`` unflattens on ``/`` only, so dots are kept.
:meth:`SearchSpace.resolve` turns such a dict into a validated ``TrialConfig``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reidsearch.config import (
    ScalingConfig,
    TrialConfig,
    format_validation_error,
    read_yaml,
    set_dotted,
)
from reidsearch.errors import ConfigError
from reidsearch.storage import absolute

__all__ = [
    "DEFAULT_STORAGE_PATH",
    "METRICS",
    "Condition",
    "MlflowSettings",
    "ObjectiveSettings",
    "ParamSpec",
    "SchedulerSettings",
    "SearchSpace",
    "load_search_space",
]

METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP", "loss")
DEFAULT_STORAGE_PATH = "reidsearch_runs"
DIST_TYPES = ("choice", "uniform", "loguniform", "int")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_COND_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(==|!=|>=|<=|>|<)\s*(\S+)\s*$")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


# --------------------------------------------------------------------------- file schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectiveSettings(_Strict):
    """Which reported metric Tune/Optuna optimise; ``mode`` defaults to min for loss, else max."""

    metric: Literal["mAP", "rank1", "rank5", "rank10", "mINP", "loss"] = "mAP"
    mode: Literal["max", "min"] | None = None

    @model_validator(mode="after")
    def _default_mode(self) -> ObjectiveSettings:
        if self.mode is None:
            self.mode = "min" if self.metric == "loss" else "max"
        return self


class SchedulerSettings(_Strict):
    """Trial scheduler: ASHA (early stopping of bad trials) or none (every trial runs to the end).

    ``max_t`` (in epochs, the ``training_iteration`` unit) defaults to ``fixed.epochs``.
    """

    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    max_t: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if data is None or (isinstance(data, str) and data.lower() == "none"):
            return {"type": "none"}
        if isinstance(data, str) and data.lower() == "asha":
            return {"type": "asha"}
        return data


class MlflowSettings(_Strict):
    """MLflow tracking: ``tracking_uri`` None = local sqlite store; experiment None = name."""

    tracking_uri: str | None = None
    experiment: str | None = None
    log_checkpoint: bool = Field(False, description="log each trial's best checkpoint as artifact")


class _SpaceFile(_Strict):
    name: str | None = None
    description: str | None = None
    fixed: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)
    searcher: Literal["optuna", "grid"] = "optuna"
    objective: ObjectiveSettings = Field(default_factory=ObjectiveSettings)
    trials: int | None = Field(None, ge=1)
    max_concurrent: int = Field(1, ge=1)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    resources: dict[str, Any] | None = None
    seed: int = 0
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    storage_path: str | None = None
    max_failures: int = Field(1, ge=-1, description="-1 = retry forever")

    @field_validator("fixed", "resources", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("name")
    @classmethod
    def _name_chars(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError("use letters, digits, '_', '-' and '.' (it names folders and runs)")
        return value


class _DistBase(_Strict):
    when: str | None = None


class _ChoiceDist(_DistBase):
    type: Literal["choice"]
    values: list[Any]


class _UniformDist(_DistBase):
    type: Literal["uniform"]
    low: float
    high: float
    step: float | None = Field(None, gt=0)


class _LogUniformDist(_DistBase):
    type: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)


class _IntDist(_DistBase):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False


_DIST_MODELS: dict[str, type[_DistBase]] = {
    "choice": _ChoiceDist,
    "uniform": _UniformDist,
    "loguniform": _LogUniformDist,
    "int": _IntDist,
}


# --------------------------------------------------------------------------- public specs


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
            return _OPS[self.op](_word(actual), self.value)
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return self.op == "!="
        return _OPS[self.op](actual, self.value)

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

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a choice, or inside the (inclusive) range and on its step."""
        if self.type == "choice":
            return any(_same(value, v) for v in self.values)
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
            return "choice[" + ", ".join(_fmt(v) for v in self.values) + "]"
        extra = ""
        if self.step is not None and not (self.type == "int" and self.step == 1):
            extra += f", step={_fmt(self.step)}"
        if self.log and self.type == "int":
            extra += ", log"
        return f"{self.type}({_fmt(self.low)}, {_fmt(self.high)}{extra})"


class _DefineByRun:
    """Picklable define-by-run function for ``OptunaSearch(space=...)``.

    Suggests every active parameter in file order and returns None, so the Tune config holds
    exactly the suggested values under their flat dotted keys.
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


@dataclass
class SearchSpace:
    """A loaded, fully validated search space (see the module docstring and DESIGN.md)."""

    source: Path
    name: str
    description: str | None
    fixed: dict[str, Any]
    fixed_config: TrialConfig
    params: list[ParamSpec]
    searcher: Literal["optuna", "grid"]
    objective: ObjectiveSettings
    trials: int
    max_concurrent: int
    scheduler: SchedulerSettings
    resources: ScalingConfig
    seed: int
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)
    storage_path: str | None = None
    max_failures: int = 1

    # ---- convenience -------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    @property
    def metric(self) -> str:
        return self.objective.metric

    @property
    def mode(self) -> str:
        return str(self.objective.mode)

    @property
    def experiment(self) -> str:
        """MLflow experiment name (defaults to the search name)."""
        return self.mlflow.experiment or self.name

    def storage_root(self) -> str:
        """Where searches keep their results: ``storage_path`` as an ``s3://`` / ``gs://`` URI,
        or an absolute local folder (``./reidsearch_runs`` by default, from the cwd)."""
        return absolute(self.storage_path or DEFAULT_STORAGE_PATH)

    def with_data_root(self, root: str) -> SearchSpace:
        """A copy whose fixed settings read the dataset at ``root`` (the CLI's ``--data``)."""
        fixed = copy.deepcopy(self.fixed)
        fixed.setdefault("data", {})
        if not isinstance(fixed["data"], dict):
            fixed["data"] = {}
        fixed["data"]["root"] = str(root)
        fixed["data"].pop("synthetic", None)
        data = self.fixed_config.data.model_copy(update={"root": str(root), "synthetic": None})
        return dataclasses.replace(
            self, fixed=fixed, fixed_config=self.fixed_config.model_copy(update={"data": data})
        )

    def param(self, key: str) -> ParamSpec:
        for p in self.params:
            if p.key == key:
                return p
        raise KeyError(key)

    def num_samples(self) -> int:
        """Tune's ``num_samples``: trials for optuna; repeats of the grid for grid."""
        return self.trials

    def total_trials(self) -> int:
        """How many trials the search runs in all."""
        if self.searcher == "grid":
            return self.trials * len(self.grid())
        return self.trials

    # ---- resolution --------------------------------------------------------------------

    def resolve(self, params: dict[str, Any], where: str | None = None) -> TrialConfig:
        """Fixed settings plus flat dotted-key overrides, validated as a TrialConfig.

        Raises ConfigError (``FILE: [where: ]key: message``) when the result is invalid.
        """
        data = copy.deepcopy(self.fixed_config.model_dump())
        prefix = f"{self.source}: {where}" if where else str(self.source)
        for key, value in params.items():
            if not isinstance(key, str) or _leaf_annotation(key) is None:
                raise ConfigError(f"{prefix}: {key}: not a TrialConfig setting")
            try:
                set_dotted(data, key, value)
            except ConfigError:
                raise ConfigError(f"{prefix}: {key}: parent setting is not a mapping") from None
        try:
            return TrialConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, prefix)) from None

    def active(self, values: dict[str, Any]) -> list[ParamSpec]:
        """The parameters whose conditions hold, given (partial) chosen values."""
        return [p for p in self.params if p.when is None or p.when.holds(values)]

    # ---- searchers ---------------------------------------------------------------------

    def optuna_define_by_run(self) -> Callable[[Any], None]:
        """Define-by-run function for ``ray.tune.search.optuna.OptunaSearch(space=...)``.

        It calls ``trial.suggest_categorical / suggest_float(log=...) / suggest_int`` for each
        active parameter in order (inactive conditional parameters are skipped, so the fixed
        value applies) and returns None.
        """
        return _DefineByRun(self.params)

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the choice parameters, in file order (conditions respected)."""
        for p in self.params:
            if p.type != "choice":
                raise ConfigError(
                    f"{self.source}: search.{p.key}: searcher grid needs choice parameters, "
                    f"got {p.type}"
                )
        combos: list[dict[str, Any]] = [{}]
        for p in self.params:
            expanded: list[dict[str, Any]] = []
            for combo in combos:
                if p.when is not None and not p.when.holds(combo):
                    expanded.append(combo)
                else:
                    expanded.extend({**combo, p.key: v} for v in p.values)
            combos = expanded
        return combos

    # ---- reporting ---------------------------------------------------------------------

    def describe(self) -> str:
        """A multi-line summary of the resolved space (for ``reidsearch run --dry-run``)."""
        c = self.fixed_config
        searched = set(self.keys)

        def fx(key: str, value: Any) -> str:
            return "<searched>" if key in searched else _fmt(value)

        data = c.data
        if data.root is None:
            s = data.synthetic
            dataset = (
                f"synthetic {s.layout} ({s.ids} ids, {s.cameras} cameras, "
                f"{s.images_per_camera} images/camera, seed {s.seed})"
                if s is not None
                else "synthetic"
            )
        else:
            dataset = f"{data.layout} at {data.root}"
        unfreeze = c.optim.unfreeze
        lines = [
            f"search space {self.name}  ({self.source})",
        ]
        if self.description:
            lines.append(f"  {self.description.strip()}")
        lines += [
            "fixed:",
            f"  data       {dataset}, {data.height}x{data.width}",
            f"  model      {c.model.backbone} "
            f"(pretrained {fx('model.pretrained', c.model.pretrained)}"
            + (f", depth {c.model.depth}" if c.model.depth else "")
            + f"), head {fx('model.head', c.model.head)}, lam {fx('model.lam', c.model.lam)}",
            f"  loss       ce {fx('loss.ce_weight', c.loss.ce_weight)}, "
            f"label_smoothing {fx('loss.label_smoothing', c.loss.label_smoothing)}, "
            f"triplet {fx('loss.triplet_weight', c.loss.triplet_weight)} "
            f"(margin {fx('loss.triplet_margin', c.loss.triplet_margin)})",
            f"  optim      {c.optim.name} lr {fx('optim.lr', c.optim.lr)}, "
            f"weight_decay {fx('optim.weight_decay', c.optim.weight_decay)}, "
            f"scheduler {c.optim.scheduler}, unfreeze "
            + (
                f"every {unfreeze.every} epochs (lr x{_fmt(unfreeze.lr_mult)})"
                if unfreeze.enabled
                else "off"
            ),
            f"  batch      P={fx('sampler.p', c.sampler.p)} x K={fx('sampler.k', c.sampler.k)}, "
            f"epochs {c.epochs}, eval every {c.eval.period} (flip {c.eval.flip}, "
            f"rerank {c.eval.rerank}), seed {c.seed}",
            f"searched ({len(self.params)}):",
        ]
        width = max((len(p.key) for p in self.params), default=0)
        for p in self.params:
            cond = f"  when {p.when}" if p.when else ""
            lines.append(f"  {p.key:<{width}}  {p.distribution()}{cond}")
        if not self.params:
            lines.append("  (nothing)")
        lines.append(f"objective: {self.objective.mode} {self.objective.metric}")
        if self.searcher == "grid":
            n = len(self.grid())
            lines.append(
                f"searcher: grid, {n} combination{'s' if n != 1 else ''} x {self.trials} "
                f"repeat{'s' if self.trials != 1 else ''} = {self.total_trials()} trials"
            )
        else:
            lines.append(f"searcher: optuna TPE (seed {self.seed}), {self.trials} trials")
        for i, point in enumerate(self.points_to_evaluate):
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())
            lines.append(f"  first point {i}: {shown}")
        lines.append(f"max_concurrent: {self.max_concurrent}")
        sch = self.scheduler
        if sch.type == "asha":
            lines.append(
                f"scheduler: ASHA (grace_period {sch.grace_period}, reduction_factor "
                f"{_fmt(sch.reduction_factor)}, max_t {sch.max_t})"
            )
        else:
            lines.append("scheduler: none (every trial runs all epochs)")
        r = self.resources
        lines.append(
            f"resources per trial: {r.workers} worker{'s' if r.workers != 1 else ''} x "
            f"({_fmt(r.cpus_per_worker)} CPU, {_fmt(r.gpus_per_worker)} GPU)"
        )
        lines.append(
            f"mlflow: experiment {self.experiment}, tracking "
            f"{self.mlflow.tracking_uri or 'local sqlite store'}"
        )
        lines.append(f"storage: {self.storage_root()}, max_failures {self.max_failures}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- loading


def load_search_space(path: str | Path) -> SearchSpace:
    """Load and fully validate a search-space YAML file (ConfigError on any problem)."""
    path = Path(path)
    src = str(path)
    raw = read_yaml(path)
    spec = _validate(_SpaceFile, raw, src, "")

    # fixed settings, then resources merged into scaling
    fixed = copy.deepcopy(spec.fixed)
    base = _validate(TrialConfig, fixed, src, "fixed")
    scaling = base.scaling.model_dump()
    scaling.update(spec.resources or {})
    resources = _validate(ScalingConfig, scaling, src, "resources")
    fixed_config = base.model_copy(update={"scaling": resources})

    params = _parse_params(spec.search, src, fixed_config)
    keys = [p.key for p in params]

    if spec.searcher == "grid":
        for p in params:
            if p.type != "choice":
                raise ConfigError(
                    f"{src}: search.{p.key}: searcher grid needs choice parameters "
                    f"(every combination runs), got {p.type}"
                )
        if spec.points_to_evaluate:
            raise ConfigError(
                f"{src}: points_to_evaluate: not used by searcher grid (every combination runs)"
            )

    scheduler = spec.scheduler
    if scheduler.type == "none":
        extra = sorted(scheduler.model_fields_set - {"type"})
        if extra:
            raise ConfigError(f"{src}: scheduler.{extra[0]}: only used with type asha")
    if scheduler.type == "asha":
        max_t = scheduler.max_t or fixed_config.epochs
        if scheduler.grace_period > max_t:
            raise ConfigError(
                f"{src}: scheduler.grace_period: {scheduler.grace_period} is more than max_t "
                f"({max_t} epochs)"
            )
        if max_t > fixed_config.epochs:
            raise ConfigError(
                f"{src}: scheduler.max_t: {max_t} is more than fixed.epochs "
                f"({fixed_config.epochs}); no trial would reach it"
            )
        if fixed_config.eval.period != 1:
            raise ConfigError(
                f"{src}: fixed.eval.period: ASHA compares trials after every epoch, so they "
                f"must be evaluated every epoch (period 1, not {fixed_config.eval.period})"
            )
        scheduler = scheduler.model_copy(update={"max_t": max_t})

    space = SearchSpace(
        source=path,
        name=spec.name or path.stem,
        description=spec.description,
        fixed=fixed,
        fixed_config=fixed_config,
        params=params,
        searcher=spec.searcher,
        objective=spec.objective,
        trials=spec.trials or (1 if spec.searcher == "grid" else 20),
        max_concurrent=spec.max_concurrent,
        scheduler=scheduler,
        resources=resources,
        seed=spec.seed,
        points_to_evaluate=[dict(p) for p in spec.points_to_evaluate],
        mlflow=spec.mlflow,
        storage_path=spec.storage_path,
        max_failures=spec.max_failures,
    )
    if not space.name or not _NAME_RE.match(space.name):
        raise ConfigError(f"{src}: name: {space.name!r} is not a usable search name")

    for i, point in enumerate(space.points_to_evaluate):
        where = f"points_to_evaluate.{i}"
        for key, value in point.items():
            if key not in keys:
                raise ConfigError(f"{src}: {where}.{key}: not a searched key")
            p = space.param(key)
            if not p.contains(value):
                raise ConfigError(
                    f"{src}: {where}.{key}: {_fmt(value)} is outside {p.distribution()}"
                )
            if p.when is not None and p.when.key in point and not p.when.holds(point):
                raise ConfigError(
                    f"{src}: {where}.{key}: never used: the point has {p.when.key}="
                    f"{_fmt(point[p.when.key])} and the parameter is searched only when {p.when}"
                )
        space.resolve(point, where=where)
    return space


def _validate(model: type[BaseModel], data: Any, src: str, prefix: str) -> Any:
    """Validate ``data`` with ``model``; errors read ``src: prefix.loc: message`` (one line)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        msg = format_validation_error(exc, src)
        unknown = [e for e in errors if e["type"] == "extra_forbidden"]
        if unknown and errors[0]["type"] != "extra_forbidden":
            # a misspelt key also makes its real name "missing": report the cause, not the effect
            key = ".".join(str(p) for p in unknown[0]["loc"])
            more = len(errors) - 1
            msg = f"{src}: {key}: unknown key (and {more} more error{'s' if more > 1 else ''})"
        msg = msg.replace(": Value error, ", ": ", 1)
        if prefix:
            rest = msg[len(src) + 2 :]
            if rest.startswith("<root>: "):
                msg = f"{src}: {prefix}: {rest[len('<root>: ') :]}"
            else:
                msg = f"{src}: {prefix}.{rest}"
        raise ConfigError(msg) from None


def _parse_params(search: dict[str, Any], src: str, fixed: TrialConfig) -> list[ParamSpec]:
    params: list[ParamSpec] = []
    for key, body in search.items():
        where = f"search.{key}"
        if not isinstance(key, str):
            raise ConfigError(f"{src}: search: key {key!r} is not a dotted setting name")
        ann = _leaf_annotation(key)
        if ann is None:
            raise ConfigError(f"{src}: {where}: unknown key (not a TrialConfig setting)")
        if _model_class(ann) is not None:
            raise ConfigError(f"{src}: {where}: a group of settings; search its fields instead")
        if key.split(".")[0] == "scaling":
            raise ConfigError(f"{src}: {where}: set per-trial resources under resources:")
        if not isinstance(body, dict):
            raise ConfigError(
                f"{src}: {where}: expected a mapping like {{type: uniform, low: 0, high: 1}}"
            )
        dist_type = body.get("type")
        if dist_type not in _DIST_MODELS:
            raise ConfigError(
                f"{src}: {where}.type: {dist_type!r} is not one of {', '.join(DIST_TYPES)}"
            )
        dist = _validate(_DIST_MODELS[dist_type], body, src, where)
        param = _make_param(key, dist, src, where)
        _check_kind(param, ann, src, where)
        if param.when is not None:
            cond = param.when
            earlier = {p.key: p for p in params}
            if cond.key not in earlier:
                later = cond.key in search
                why = "searched later" if later else "not a searched key"
                raise ConfigError(
                    f"{src}: {where}.when: {cond.key} is {why}; a condition may only use "
                    "a parameter searched before it"
                )
            _check_condition(cond, earlier[cond.key], src, where)
        # every searched value (choices, range ends) must be accepted by TrialConfig
        probes = list(param.values) if param.type == "choice" else [param.low, param.high]
        for value in probes:
            data = copy.deepcopy(fixed.model_dump())
            set_dotted(data, key, value)
            try:
                TrialConfig.model_validate(data)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise ConfigError(
                    f"{src}: {where}: value {_fmt(value)} is rejected: {first['msg']}"
                ) from None
        params.append(param)
    return params


def _make_param(key: str, dist: Any, src: str, where: str) -> ParamSpec:
    when = _parse_condition(dist.when, src, where) if dist.when is not None else None
    if isinstance(dist, _ChoiceDist):
        if not dist.values:
            raise ConfigError(f"{src}: {where}.values: empty choice list")
        for v in dist.values:
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise ConfigError(
                    f"{src}: {where}.values: {v!r}: choices must be numbers, strings, "
                    "booleans or null"
                )
        for i, v in enumerate(dist.values):
            if any(_same(v, w) for w in dist.values[:i]):
                raise ConfigError(f"{src}: {where}.values: {_fmt(v)} is listed twice")
        return ParamSpec(key=key, type="choice", values=tuple(dist.values), when=when)
    for name in ("low", "high"):
        value = getattr(dist, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{src}: {where}.{name}: must be finite")
    if dist.low >= dist.high:
        raise ConfigError(
            f"{src}: {where}: empty range: low {_fmt(dist.low)} >= high {_fmt(dist.high)}"
        )
    if isinstance(dist, _IntDist):
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
    if isinstance(dist, _UniformDist):
        if dist.step is not None:
            n = (dist.high - dist.low) / dist.step
            if abs(n - round(n)) > 1e-8:
                raise ConfigError(
                    f"{src}: {where}.step: high - low is not a multiple of {_fmt(dist.step)}"
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


def _check_condition(cond: Condition, ref: ParamSpec, src: str, where: str) -> None:
    if ref.type != "choice":
        if isinstance(cond.value, str):
            raise ConfigError(
                f"{src}: {where}.when: {cond.key} is numeric ({ref.distribution()}); "
                f"compare it with a number, not {cond.value!r}"
            )
        return
    if not any(cond.holds({ref.key: v}) for v in ref.values):
        raise ConfigError(f"{src}: {where}.when: {cond} is false for every choice of {ref.key}")


def _check_kind(param: ParamSpec, ann: Any, src: str, where: str) -> None:
    kinds = _scalar_kinds(ann)
    if param.type in ("uniform", "loguniform") and float not in kinds:
        raise ConfigError(
            f"{src}: {where}.type: {param.type} needs a float setting "
            f"({_ann_name(ann)}); use int or choice"
        )
    if param.type == "int" and not kinds & {int, float}:
        raise ConfigError(
            f"{src}: {where}.type: int needs a numeric setting ({_ann_name(ann)}); use choice"
        )


# --------------------------------------------------------------------------- helpers


def _leaf_annotation(key: str) -> Any | None:
    """The annotation of a dotted TrialConfig path, or None when the path is not a setting."""
    model: type[BaseModel] | None = TrialConfig
    ann: Any = None
    for part in key.split("."):
        if model is None or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        model = _model_class(ann)
    return ann


def _union_args(ann: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(ann)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return typing.get_args(ann)
    return (ann,)


def _model_class(ann: Any) -> type[BaseModel] | None:
    for arg in _union_args(ann):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _scalar_kinds(ann: Any) -> set[type]:
    kinds: set[type] = set()
    for arg in _union_args(ann):
        if typing.get_origin(arg) is Literal:
            kinds.add(str)
        elif arg in (bool, int, float, str):
            kinds.add(arg)
    return kinds


def _ann_name(ann: Any) -> str:
    names = []
    for arg in _union_args(ann):
        if typing.get_origin(arg) is Literal:
            names.append("one of " + ", ".join(str(v) for v in typing.get_args(arg)))
        else:
            names.append(getattr(arg, "__name__", str(arg)))
    return " | ".join(names)


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 and None apart from everything else."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _word(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "null"
    return str(value)
