"""How many trials fit: capacity arithmetic on CPUs and GPUs, with no Ray and no cluster file.

Small machines deadlock silently when the trial drivers plus their workers need more CPUs than
exist (the worker group times out every 60 s and retries forever), so every entry point checks
before it starts anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from reidsearch.config import ResourcesConfig
from reidsearch.errors import ReidSearchError

TRIAL_DRIVER_CPUS = 0.1  # the Tune function trainable only waits on its TorchTrainer
# A custom resource that the head node of a cluster declares (cluster.yaml: an integer, e.g.
# 1000): trial drivers ask for one unit of it, so they stay on the head and never on a spot GPU
# node, and take no CPU there. An embedded local Ray does not declare it (drivers ask for CPU).
TRIAL_DRIVER_RESOURCE = "reidsearch_trial_driver"


@dataclass(frozen=True)
class Capacity:
    cpus: float
    gpus: float

    @classmethod
    def of(cls, resources: dict[str, float]) -> Capacity:
        """The CPUs and GPUs of a Ray resource dict (``ray.cluster_resources()`` shape)."""
        return cls(cpus=resources.get("CPU", 0.0), gpus=resources.get("GPU", 0.0))


def trial_demand(resources: ResourcesConfig, driver_cpus: float = TRIAL_DRIVER_CPUS) -> Capacity:
    return Capacity(
        cpus=driver_cpus + resources.workers * resources.cpus_per_worker,
        gpus=resources.workers * resources.gpus_per_worker,
    )


def max_concurrent_trials(
    capacity: Capacity, resources: ResourcesConfig, driver_cpus: float = TRIAL_DRIVER_CPUS
) -> int:
    """How many trials of this shape run at once on ``capacity`` (0 = not even one)."""
    demand = trial_demand(resources, driver_cpus)
    fits = math.floor(capacity.cpus / demand.cpus + 1e-9)
    if demand.gpus > 0:
        fits = min(fits, math.floor(capacity.gpus / demand.gpus + 1e-9))
    return fits


def check_one_trial_fits(
    capacity: Capacity,
    resources: ResourcesConfig,
    where: str,
    driver_cpus: float = TRIAL_DRIVER_CPUS,
) -> None:
    """Raise a one-line error when one trial cannot be scheduled at all."""
    if max_concurrent_trials(capacity, resources, driver_cpus) >= 1:
        return
    demand = trial_demand(resources, driver_cpus)
    raise ReidSearchError(
        f"{where}: one trial needs {demand.cpus:g} CPUs and {demand.gpus:g} GPUs "
        f"({resources.workers} workers x {resources.cpus_per_worker:g} CPU, "
        f"{resources.gpus_per_worker:g} GPU) but Ray has {capacity.cpus:g} CPUs and "
        f"{capacity.gpus:g} GPUs; lower resources (workers, cpus_per_worker, gpus_per_worker)"
    )
