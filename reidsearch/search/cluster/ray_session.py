"""Starting or joining Ray, what the Ray a search runs on can hold, and sizing the search to it.

A joined cluster may autoscale: its maximum size (Ray's record of the autoscaler's config, or
the cluster file) decides what is refused, never what happens to be up now.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reidsearch.config import ResourcesConfig
from reidsearch.errors import ReidSearchError, first_line
from reidsearch.internals.ray_internals import (
    autoscaler_cluster_config,
    autoscaler_max_resources,
    local_ray_address,
)
from reidsearch.search.cluster.capacity import (
    TRIAL_DRIVER_CPUS,
    TRIAL_DRIVER_RESOURCE,
    Capacity,
    check_one_trial_fits,
    max_concurrent_trials,
)
from reidsearch.search.cluster.cluster_file import (
    ClusterFile,
    how_many_trials_fit,
    load_cluster_file,
)
from reidsearch.storage import is_uri

if TYPE_CHECKING:
    from reidsearch.search.space import SearchSpace


def running_ray_address(address: str | None) -> str | None:
    """The Ray to join: ``address`` itself, a Ray already running on this machine when
    ``address`` is None (``RAY_ADDRESS`` or the newest ``ray start``), or None to start a
    private embedded one (``address`` "local", or nothing running)."""
    if address == "local":
        return None
    if address:
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:  # the newest `ray start` on this machine, if its GCS still runs (not a stale record)
        return local_ray_address()
    except Exception:  # noqa: BLE001 - nothing found (or unreadable): start our own
        return None


@dataclass(frozen=True)
class RayCluster:
    """The Ray a search runs on: what it holds now and the most it can ever hold."""

    joined: bool  # an existing cluster (True) or a private embedded Ray (False)
    current: dict[str, float]  # the resources up now
    maximum: dict[str, float]  # the autoscaler's maximum size where Ray knows it, else current
    alive_nodes: int
    max_nodes: int
    layout: ClusterFile | None = None  # the autoscaler's cluster file, where it is known

    @property
    def capacity(self) -> Capacity:
        """CPUs and GPUs at the cluster's maximum size."""
        return Capacity.of(self.maximum)

    @property
    def multi_node(self) -> bool:
        return max(self.alive_nodes, self.max_nodes) > 1

    @property
    def driver_resources(self) -> dict[str, float]:
        """What one trial driver asks for: the head's custom resource where it exists."""
        if self.maximum.get(TRIAL_DRIVER_RESOURCE, 0) >= 1:
            return {"CPU": 0.0, TRIAL_DRIVER_RESOURCE: 1.0}
        return {"CPU": TRIAL_DRIVER_CPUS}

    @property
    def driver_cpus(self) -> float:
        return self.driver_resources["CPU"]

    def trial_resources(self, scaling: ResourcesConfig) -> dict[str, float]:
        """What a Tune trial process asks for: a trial driver's share, or, when the trial
        trains in that process (``runner: trial_process``), its one worker's CPUs and GPUs."""
        if scaling.runner != "trial_process":
            return self.driver_resources
        return scaling.worker_resources()

    def driver_cpus_for(self, scaling: ResourcesConfig) -> float:
        """The CPUs of a trial beside its workers (none when it trains in its own process)."""
        return 0.0 if scaling.runner == "trial_process" else self.driver_cpus


def _cluster_maximum() -> tuple[dict[str, float] | None, int]:
    """The autoscaler's maximum resources and node count, as Ray itself records them."""
    try:
        config = autoscaler_cluster_config()
        most = autoscaler_max_resources()
    except Exception:  # noqa: BLE001 - no autoscaler (a fixed cluster) or an older Ray
        return None, 0
    if config is None or not most:
        return None, 0
    nodes = sum(max(0, group.max_count) for group in config.node_group_configs)
    return {k: float(v) for k, v in most.items()}, nodes


def cluster_file_path(explicit: str | None) -> Path | None:
    """The cluster file that says how large the joined cluster can grow: ``--cluster``,
    ``$REIDSEARCH_CLUSTER_FILE``, or the copy ``ray up`` leaves on the head node."""
    for candidate in (explicit, os.environ.get("REIDSEARCH_CLUSTER_FILE")):
        if candidate:
            return Path(candidate).expanduser()
    bootstrap = Path.home() / "ray_bootstrap_config.yaml"
    return bootstrap if bootstrap.is_file() else None


def _layout(cluster_file: str | None) -> ClusterFile | None:
    path = cluster_file_path(cluster_file)
    if path is None:
        return None
    try:
        return load_cluster_file(path)
    except ReidSearchError as exc:
        if cluster_file:  # named by the user: their file is wrong
            raise
        print(f"reidsearch: ignoring the cluster file found ({exc}); sizing by what is up")
        return None


def init_ray(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    quiet: bool = True,
    cluster_file: str | None = None,
    worker_logs: bool = True,
) -> RayCluster:
    """Join a Ray cluster or start an embedded local Ray sized to this machine.

    ``address`` None joins a Ray already running on this machine (a ``ray up`` head node)
    and starts a private one otherwise; "local" always starts a private one. A joined cluster's
    maximum size comes from Ray's own record of the autoscaler's config, else from the cluster
    file (``cluster_file_path``), else it is what is up now. The dashboard
    stays on (bound to 127.0.0.1): Ray Train's placement-group cleaner queries the state API
    through it, and without it trials stopped by ASHA keep their reservations.
    ``worker_logs`` False keeps the workers' log lines and Ray's warnings off this terminal
    (a search's compact output); errors still show.
    """
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    joined = True
    if not ray.is_initialized():
        kwargs: dict = {
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "log_to_driver": worker_logs,
            "configure_logging": quiet,
            "logging_level": ("WARNING" if worker_logs else "ERROR") if quiet else "INFO",
        }
        target = running_ray_address(address)
        if target is not None:
            if not address and quiet:
                print(
                    f"reidsearch: joining the Ray running at {target} (--address local: a "
                    "private one)",
                    flush=True,
                )
            try:
                ray.init(address=target, **kwargs)
            except ConnectionError as exc:
                where = f"--address {address}" if address else f"the running Ray at {target}"
                raise ReidSearchError(f"{where}: cannot connect ({first_line(exc)})") from None
        else:
            joined = False
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    return ray_cluster_from(
        joined=joined,
        current={k: float(v) for k, v in ray.cluster_resources().items()},
        alive_nodes=sum(1 for node in ray.nodes() if node.get("Alive")),
        recorded=_cluster_maximum() if joined else (None, 0),
        layout=_layout(cluster_file) if joined else None,
    )


def ray_cluster_from(
    *,
    joined: bool,
    current: dict[str, float],
    alive_nodes: int,
    recorded: tuple[dict[str, float] | None, int] = (None, 0),
    layout: ClusterFile | None = None,
) -> RayCluster:
    """The ``RayCluster`` of what ``init_ray`` read from Ray (no Ray here, so that the sizing
    is testable): the maximum is Ray's ``recorded`` (resources, nodes), else the cluster file's
    (``layout``), else what is up now."""
    most, max_nodes = recorded
    if most is None and layout is not None:
        most, max_nodes = layout.max_resources(), layout.max_nodes()
    if most is not None:  # what is up now may exceed the config (e.g. hand-started nodes)
        most = {k: max(most.get(k, 0.0), current.get(k, 0.0)) for k in set(most) | set(current)}
    return RayCluster(
        joined=joined,
        current=current,
        maximum=most or current,
        alive_nodes=alive_nodes,
        max_nodes=max_nodes,
        layout=layout,
    )


def size_concurrency(space: SearchSpace, cluster: RayCluster, wanted: int) -> int:
    """How many trials run at once: the space's ``max_concurrent``, lowered to what the
    cluster can ever hold (its autoscaling maximum, not what happens to be up now).

    A trial that no node of the cluster could ever run is refused in one line; one that only
    waits for the autoscaler to add nodes is not.
    """
    scaling = space.fixed_config.scaling
    driver_cpus = cluster.driver_cpus_for(scaling)
    fits = max_concurrent_trials(cluster.capacity, scaling, driver_cpus)
    if cluster.layout is not None:  # per node type: a worker cannot span two nodes
        fits = how_many_trials_fit(cluster.layout, scaling)
        if fits == 0:
            raise ReidSearchError(
                f"{space.source}: resources: no node type of {cluster.layout.path} can ever "
                f"run one trial ({scaling.workers} worker(s) of {scaling.worker_resources()})"
            )
    autoscales = cluster.joined and cluster.maximum != cluster.current
    if fits == 0 and cluster.joined and not autoscales:
        print(
            "reidsearch: the cluster cannot run one trial with what it has now and Ray does "
            "not know its maximum size; trials wait until nodes join"
        )
        return wanted
    check_one_trial_fits(cluster.capacity, scaling, str(space.source), driver_cpus)
    if max_concurrent_trials(Capacity.of(cluster.current), scaling, driver_cpus) < 1:
        print("reidsearch: no node can run a trial yet; trials wait for the autoscaler")
    if fits < wanted:
        print(
            f"reidsearch: only {fits} trial(s) fit at once on this Ray cluster "
            f"({cluster.capacity.cpus:g} CPUs, {cluster.capacity.gpus:g} GPUs at most); "
            "lowering max_concurrent"
        )
        return fits
    return wanted


def check_shared_storage(space: SearchSpace, cluster: RayCluster, experiment_dir: str) -> None:
    """Refuse a local results folder on a cluster of several nodes, before any trial starts:
    worker nodes do not share the head's disk (Ray Train would fail at the first checkpoint
    a remote worker writes)."""
    if cluster.multi_node and not is_uri(experiment_dir):
        raise ReidSearchError(
            f"{space.source}: storage_path: {experiment_dir} is a local folder, but this Ray "
            f"cluster has or can add several nodes, which do not share this disk; use an "
            "s3:// or gs:// URI (or file:// for a folder every node mounts)"
        )
