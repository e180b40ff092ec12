"""Where a search writes and how many trials run at once, decided without starting Ray."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from reidsearch.errors import ReidSearchError
from reidsearch.search.cluster import (
    TRIAL_DRIVER_CPUS,
    Capacity,
    check_fits,
    max_concurrent_trials,
)
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
    """The newest ``<name>-YYYYmmdd-HHMMSS`` folder (not another space's ``<name>-other-...``)."""
    pattern = re.compile(rf"{re.escape(space.name)}-\d{{8}}-\d{{6}}")
    root = _storage_root(space)
    candidates = sorted(p for p in root.glob(f"{space.name}-*") if pattern.fullmatch(p.name))
    return candidates[-1] if candidates else None


def local_capacity() -> Capacity:
    """This machine's cores and GPUs (what an embedded local Ray will have)."""
    import os

    import torch

    return Capacity(cpus=float(os.cpu_count() or 1), gpus=float(torch.cuda.device_count()))


def check_dataset(space: SearchSpace) -> None:
    """Fail before Ray starts when the dataset folder is missing (every trial would fail)."""
    root = space.fixed_config.data.root
    if root is not None and not Path(root).is_dir():
        raise ReidSearchError(
            f"{space.source}: fixed.data.root: {root}: no such folder "
            "(edit the file or pass --data)"
        )


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
        capacity = local_capacity()
        check_fits(capacity, scaling, str(space.source), driver_cpus=0.0)
        fits = max_concurrent_trials(capacity, scaling, driver_cpus=0.0)
        max_concurrent = max(1, min(max_concurrent, fits))
        # The trial drivers only wait on their TorchTrainer: give them a logical share on top
        # of the real cores, so that `max_concurrent` trials of workers fill the machine.
        local_cpus = capacity.cpus + math.ceil(max_concurrent * TRIAL_DRIVER_CPUS)
    return SearchPlan(
        experiment_dir=experiment_dir,
        tracking_uri=uri,
        experiment=space.experiment,
        max_concurrent=max_concurrent,
        local_cpus=local_cpus,
    )
