"""Starting or joining Ray, and checking that trials fit on what is there.

Small machines deadlock silently when the trial drivers plus their workers need more CPUs than
exist (the worker group times out every 60 s and retries forever), so we check before starting.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from reidsearch.config import ScalingConfig
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


def trial_demand(scaling: ScalingConfig, driver_cpus: float = TRIAL_DRIVER_CPUS) -> Capacity:
    return Capacity(
        cpus=driver_cpus + scaling.workers * scaling.cpus_per_worker,
        gpus=scaling.workers * scaling.gpus_per_worker,
    )


def max_concurrent_trials(
    capacity: Capacity, scaling: ScalingConfig, driver_cpus: float = TRIAL_DRIVER_CPUS
) -> int:
    """How many trials of this shape run at once on ``capacity`` (0 = not even one)."""
    demand = trial_demand(scaling, driver_cpus)
    fits = math.floor(capacity.cpus / demand.cpus + 1e-9)
    if demand.gpus > 0:
        fits = min(fits, math.floor(capacity.gpus / demand.gpus + 1e-9))
    return fits


def check_fits(
    capacity: Capacity, scaling: ScalingConfig, where: str, driver_cpus: float = TRIAL_DRIVER_CPUS
) -> None:
    """Raise a one-line error when one trial cannot be scheduled at all."""
    if max_concurrent_trials(capacity, scaling, driver_cpus) >= 1:
        return
    demand = trial_demand(scaling, driver_cpus)
    raise ReidSearchError(
        f"{where}: one trial needs {demand.cpus:g} CPUs and {demand.gpus:g} GPUs "
        f"({scaling.workers} workers x {scaling.cpus_per_worker:g} CPU, "
        f"{scaling.gpus_per_worker:g} GPU) but Ray has {capacity.cpus:g} CPUs and "
        f"{capacity.gpus:g} GPUs; lower resources (workers, cpus_per_worker, gpus_per_worker)"
    )


def init_ray(
    address: str | None = None, *, num_cpus: float | None = None, quiet: bool = True
) -> Capacity:
    """Join ``address`` or start an embedded local Ray sized to this machine.

    The dashboard stays on (bound to 127.0.0.1): Ray Train's placement-group cleaner queries
    the state API through it, and without it trials stopped by ASHA keep their reservations.
    """
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if not ray.is_initialized():
        kwargs: dict = {
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "log_to_driver": True,
            "configure_logging": quiet,
            "logging_level": "WARNING" if quiet else "INFO",
        }
        if address:
            try:
                ray.init(address=address, **kwargs)
            except ConnectionError as exc:
                raise ReidSearchError(f"--address {address}: no Ray cluster ({exc})") from None
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    resources = ray.cluster_resources()
    return Capacity(cpus=float(resources.get("CPU", 0)), gpus=float(resources.get("GPU", 0)))
