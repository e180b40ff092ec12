"""Loading a search-space file: each section validated, then the checks that span sections
(objective and repeats against ``fixed:``, the searcher against the distributions, the scheduler
against the epochs, ``points_to_evaluate`` against the space), so a typo fails before Ray starts.
"""

from __future__ import annotations

import copy
from pathlib import Path

from reidsearch.config import ResourcesConfig, TrialConfig, read_yaml
from reidsearch.errors import ConfigError
from reidsearch.search.space.choices import (
    asha_rungs,
    canonical_searcher,
    check_median_trials,
    check_scheduler,
    check_searcher,
)
from reidsearch.search.space.objectives import parse_objectives
from reidsearch.search.space.params import ParamSpec, format_value
from reidsearch.search.space.parsing import parse_search
from reidsearch.search.space.schema import NAME_RE, SpaceFile, validate_part
from reidsearch.search.space.search_space import SearchSpace

__all__ = ["asha_rungs", "load_search_space", "refuse_cpu_sync_batchnorm"]

# TrialConfig settings a space file sets at its top level, not under fixed:
TOP_LEVEL_SETTINGS = ("objective", "repeats")


def load_search_space(path: str | Path) -> SearchSpace:
    """Load and fully validate a search-space YAML file (ConfigError on any problem)."""
    path = Path(path)
    src = str(path)
    spec = validate_part(SpaceFile, read_yaml(path), src, "")

    fixed = copy.deepcopy(spec.fixed)
    for key in TOP_LEVEL_SETTINGS:
        if key in fixed:
            raise ConfigError(
                f"{src}: fixed.{key}: set it with the top-level {key}: key, not under fixed:"
            )
    base = validate_part(TrialConfig, fixed, src, "fixed")
    scaling = base.scaling.model_dump()
    scaling.update(spec.resources or {})
    resources = validate_part(ResourcesConfig, scaling, src, "resources")
    objectives, constraints = parse_objectives(
        spec.objective,
        spec.constraints,
        canonical_searcher(spec.searcher),
        spec.scheduler.type,
        src,
    )
    fixed_config = base.model_copy(
        update={"scaling": resources, "objective": objectives[0], "repeats": spec.repeats}
    )

    params = parse_search(spec.search, src, fixed_config)
    searcher = canonical_searcher(spec.searcher)
    trials = spec.trials or (1 if searcher == "grid" else 20)
    if searcher == "grid":
        _check_grid(spec, params, src)
    check_searcher(searcher, params, src)
    scheduler = check_scheduler(spec.scheduler, fixed_config, src)
    if searcher == "grid" and scheduler.type == "hyperband":
        raise ConfigError(
            f"{src}: scheduler.type: hyperband pauses trials, and a grid counts paused trials "
            f"as running against max_concurrent, so no bracket would fill; use searcher random"
        )
    _check_sync_batchnorm(fixed_config, params, src)
    if spec.warm_start and searcher == "grid":
        raise ConfigError(f"{src}: warm_start: a grid runs every combination; it learns nothing")

    space = SearchSpace(
        source=path,
        name=spec.name or path.stem,
        description=spec.description,
        fixed=fixed,
        fixed_config=fixed_config,
        params=params,
        searcher=searcher,
        trials=trials,
        max_concurrent=spec.max_concurrent,
        scheduler=scheduler,
        seed=spec.seed,
        points_to_evaluate=[dict(p) for p in spec.points_to_evaluate],
        warm_start=list(spec.warm_start),
        objectives=objectives if len(objectives) > 1 else [],
        constraints=constraints,
        mlflow=spec.mlflow,
        storage_path=spec.storage_path,
        max_failures=spec.max_failures,
    )
    if not space.name or not NAME_RE.match(space.name):
        raise ConfigError(f"{src}: name: {space.name!r} is not a usable search name")
    check_median_trials(scheduler, space.total_trials(), src)
    _check_points(space, src)
    return space


def _check_grid(spec: SpaceFile, params: list[ParamSpec], src: str) -> None:
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


def refuse_cpu_sync_batchnorm(scaling: ResourcesConfig, where: str, gpus_key: str) -> None:
    """torch's SyncBatchNorm has no CPU kernels: on CPU workers each trial would fail inside
    its workers (and be retried ``max_failures`` times), so such a config is refused at once."""
    if scaling.workers > 1 and scaling.gpus_per_worker == 0:
        raise ConfigError(
            f"{where}: torch's SyncBatchNorm runs on GPUs only, and {gpus_key} is 0 on "
            f"{scaling.workers} workers (give the workers GPUs or turn it off)"
        )


def _check_sync_batchnorm(fixed_config: TrialConfig, params: list[ParamSpec], src: str) -> None:
    """SyncBatchNorm set, or searched so that a trial may get it, on CPU workers."""
    if fixed_config.ddp.sync_batchnorm:
        key = "fixed.ddp.sync_batchnorm"
    elif any(p.key == "ddp.sync_batchnorm" and p.contains(True) for p in params):
        key = "search.ddp.sync_batchnorm"
    else:
        return
    refuse_cpu_sync_batchnorm(fixed_config.scaling, f"{src}: {key}", "resources.gpus_per_worker")


def _check_points(space: SearchSpace, src: str) -> None:
    """Each first point must lie in the space, use its conditions, and resolve."""
    for i, point in enumerate(space.points_to_evaluate):
        where = f"points_to_evaluate.{i}"
        for key, value in point.items():
            if key not in space.keys:
                raise ConfigError(f"{src}: {where}.{key}: not a searched key")
            p = space.param(key)
            if not p.contains(value):
                raise ConfigError(
                    f"{src}: {where}.{key}: {format_value(value)} is outside {p.distribution()}"
                )
            if p.when is not None and p.when.key in point and not p.when.holds(point):
                raise ConfigError(
                    f"{src}: {where}.{key}: never used: the point has {p.when.key}="
                    f"{format_value(point[p.when.key])} and the parameter is searched only "
                    f"when {p.when}"
                )
        space.resolve(point, where=where)
