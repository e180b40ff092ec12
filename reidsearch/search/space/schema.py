"""The search-space YAML file schema (pydantic), and validation against it with one-line errors.

Only the shape of each section is checked here; what needs several sections at once (searched
keys against TrialConfig, conditions, ASHA against the epochs) is checked by
:mod:`reidsearch.search.space.loading` and :mod:`reidsearch.search.space.parsing`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reidsearch.config import format_validation_error
from reidsearch.errors import ConfigError

__all__ = [
    "DIST_MODELS",
    "NAME_RE",
    "ChoiceDist",
    "DistBase",
    "IntDist",
    "LogUniformDist",
    "MlflowSettings",
    "SCHEDULER_TYPES",
    "SEARCHER_NAMES",
    "SchedulerSettings",
    "SpaceFile",
    "UniformDist",
    "validate_part",
]

# a search name names folders, MLflow experiments and Tune runs
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


SCHEDULER_TYPES = ("asha", "hyperband", "median", "none")
SEARCHER_NAMES = ("tpe", "optuna", "gp", "cmaes", "qmc", "random", "grid")  # optuna = tpe


class SchedulerSettings(_Strict):
    """Trial scheduler, all on epochs: ASHA (asynchronous rungs, resumable), HyperBand
    (synchronous brackets that pause and promote), median stopping, or none (every trial runs to
    the end). Which keys apply to which type is checked by ``space.choices``.

    ``max_t`` (asha, hyperband; epochs) defaults to ``fixed.epochs``; ``grace_period`` (asha,
    median) to 1; ``min_samples_required`` (median) to 3.
    """

    type: Literal["asha", "hyperband", "median", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    max_t: int | None = Field(None, ge=1)
    min_samples_required: int = Field(3, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if data is None:
            return {"type": "none"}
        if isinstance(data, str) and data.lower() in SCHEDULER_TYPES:
            return {"type": data.lower()}
        return data


class MlflowSettings(_Strict):
    """MLflow tracking: ``tracking_uri`` None = local sqlite store; experiment None = name."""

    tracking_uri: str | None = None
    experiment: str | None = None
    log_checkpoint: bool = Field(False, description="log each trial's best checkpoint as artifact")


class SpaceFile(_Strict):
    """The top level of a search-space file (``search:`` entries are checked one by one later,
    because their schema depends on their ``type``)."""

    name: str | None = None
    description: str | None = None
    fixed: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)
    searcher: Literal["tpe", "optuna", "gp", "cmaes", "qmc", "nsga2", "random", "grid"] = "tpe"
    # a mapping (one objective) or a list of them (a front): checked by space.objectives
    objective: dict[str, Any] | list[Any] = Field(default_factory=dict)
    constraints: list[str] = Field(
        default_factory=list, description='rules like "cost.latency_ms <= 10" a trial must meet'
    )
    repeats: int = Field(
        1,
        ge=1,
        description="each configuration is trained with N seeds side by side and scored by "
        "their mean",
    )
    trials: int | None = Field(None, ge=1)
    max_concurrent: int = Field(1, ge=1)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    resources: dict[str, Any] | None = None
    seed: int = 0
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)
    warm_start: list[str] = Field(
        default_factory=list,
        description="earlier searches (folders or MLflow parent run ids) whose trials the new "
        "study is told before it suggests",
    )
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
        if value is not None and not NAME_RE.match(value):
            raise ValueError("use letters, digits, '_', '-' and '.' (it names folders and runs)")
        return value


class DistBase(_Strict):
    """A ``search:`` entry; ``when`` makes it conditional on an earlier searched key."""

    when: str | None = None


class ChoiceDist(DistBase):
    type: Literal["choice"]
    values: list[Any]


class UniformDist(DistBase):
    type: Literal["uniform"]
    low: float
    high: float
    step: float | None = Field(None, gt=0)


class LogUniformDist(DistBase):
    type: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)


class IntDist(DistBase):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False


DIST_MODELS: dict[str, type[DistBase]] = {
    "choice": ChoiceDist,
    "uniform": UniformDist,
    "loguniform": LogUniformDist,
    "int": IntDist,
}


def validate_part(model: type[BaseModel], data: Any, src: str, prefix: str) -> Any:
    """Validate ``data`` with ``model``; errors read ``src: prefix.loc: message`` (one line),
    so a section validated on its own is still named by its full dotted key in the file."""
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
        if prefix:
            rest = msg[len(src) + 2 :]
            if rest.startswith("<root>: "):
                msg = f"{src}: {prefix}: {rest[len('<root>: ') :]}"
            else:
                msg = f"{src}: {prefix}.{rest}"
        raise ConfigError(msg) from None
