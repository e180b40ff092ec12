"""Where a search writes and how many trials run at once, decided without starting Ray."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from reidsearch.errors import ReidSearchError
from reidsearch.search.cluster import TRIAL_DRIVER_CPUS, Capacity, check_fits
from reidsearch.search.space import SearchSpace
from reidsearch.search.tracking_uri import default_tracking_uri


@dataclass
class SearchPlan:
    """What ``run`` will do, computed without starting Ray (``--dry-run`` prints it)."""

    experiment_dir: Path
    tracking_uri: str
    experiment: str
    max_concurrent: int
    local_cpus: float | None

    def describe(self) -> str:
        lines = [
            f"experiment dir : {self.experiment_dir}",
            f"mlflow         : {self.tracking_uri} (experiment {self.experiment!r})",
            f"concurrency    : {self.max_concurrent} trial(s) at once",
        ]
        if self.local_cpus is not None:
            lines.append(f"local ray      : {self.local_cpus:g} logical CPUs")
        return "\n".join(lines)


def _storage_root(space: SearchSpace) -> Path:
    return space.storage_dir()


def latest_experiment_dir(space: SearchSpace) -> Path | None:
    candidates = sorted(_storage_root(space).glob(f"{space.name}-*"))
    return candidates[-1] if candidates else None


def plan_search(
    space: SearchSpace, *, address: str | None, tracking_uri: str | None, resume: bool
) -> SearchPlan:
    scaling = space.fixed_config.scaling
    if resume:
        experiment_dir = latest_experiment_dir(space)
        if experiment_dir is None:
            raise ReidSearchError(
                f"{space.source}: --resume: no earlier run of "
                f"{space.name!r} under {_storage_root(space)}"
            )
    else:
        experiment_dir = _storage_root(space) / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    uri = tracking_uri or space.mlflow.tracking_uri or default_tracking_uri()
    local_cpus = None
    max_concurrent = space.max_concurrent
    if address is None:
        import os

        cores = float(os.cpu_count() or 1)
        per_trial = scaling.workers * scaling.cpus_per_worker
        check_fits(Capacity(cores, 0.0), scaling, str(space.source), driver_cpus=0.0)
        max_concurrent = max(1, min(max_concurrent, int(cores // per_trial)))
        # The trial drivers only wait on their TorchTrainer: give them a logical share on top
        # of the real cores, so that `max_concurrent` trials of workers fill the machine.
        local_cpus = cores + math.ceil(max_concurrent * TRIAL_DRIVER_CPUS)
    return SearchPlan(
        experiment_dir=experiment_dir,
        tracking_uri=uri,
        experiment=space.mlflow.experiment or space.name,
        max_concurrent=max_concurrent,
        local_cpus=local_cpus,
    )
