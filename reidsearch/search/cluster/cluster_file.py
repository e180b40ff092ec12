"""A Ray cluster launcher file (cluster.yaml), validated offline, and whether a search fits it.

``load_cluster_file`` checks the file with Ray's own schema (``prepare_config`` only merges the
provider's defaults.yaml: no cloud API is called) and reads each node type's resources and
worker counts. ``check_space_against_cluster_file`` refuses only what no node of the cluster
could ever run; the cluster may hold no GPU node yet (the autoscaler adds them for pending trials).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reidsearch.config import ResourcesConfig, read_yaml
from reidsearch.errors import ConfigError, first_line
from reidsearch.internals.ray_internals import cluster_config_validator
from reidsearch.search.cluster.capacity import TRIAL_DRIVER_RESOURCE
from reidsearch.storage import is_uri

if TYPE_CHECKING:
    from reidsearch.search.space import SearchSpace

# (vCPUs, GPUs) of AWS instance types, for node types that do not declare CPU/GPU resources.
AWS_INSTANCES: dict[str, tuple[int, int]] = {
    "m6i.2xlarge": (8, 0),
    "g5.2xlarge": (8, 1),
    "g5.12xlarge": (48, 4),
    "g6e.xlarge": (4, 1),
    "g6e.2xlarge": (8, 1),
    "p4d.24xlarge": (96, 8),
    "p5.48xlarge": (192, 8),
}
_EPS = 1e-9


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    min_workers: int
    max_workers: int


@dataclass
class ClusterFile:
    """A validated cluster file. ``node_types`` includes the head type (max_workers 0)."""

    path: Path
    provider: str
    head_type: str
    node_types: dict[str, NodeType]
    max_workers: int  # the global cap on worker nodes (the head not counted)
    config: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def head(self) -> NodeType:
        return self.node_types[self.head_type]

    @property
    def worker_types(self) -> list[NodeType]:
        return [t for name, t in self.node_types.items() if name != self.head_type]

    @property
    def multi_node(self) -> bool:
        """Whether any worker node can ever join the head (their disks are not the head's)."""
        return self.max_workers > 0 and any(t.max_workers > 0 for t in self.worker_types)

    def node_counts(self, order: list[NodeType] | None = None) -> dict[str, int]:
        """Nodes per type at the cluster's maximum size.

        Rule: worker types take nodes in ``order`` (default: the largest first, by GPUs then
        CPUs), each up to its own max_workers, until the global max_workers is used up.
        """
        if order is None:
            order = sorted(
                self.worker_types,
                key=lambda t: (-t.resources.get("GPU", 0), -t.resources.get("CPU", 0)),
            )
        counts, left = {self.head_type: 1}, self.max_workers
        for node_type in order:
            counts[node_type.name] = min(node_type.max_workers, left)
            left -= counts[node_type.name]
        return counts

    def max_nodes(self) -> int:
        """Nodes at the maximum size, the head included (``node_counts`` already counts it)."""
        return sum(self.node_counts().values())

    def max_resources(self) -> dict[str, float]:
        """Head plus workers at the maximum size (see ``node_counts`` for the rule)."""
        total: dict[str, float] = {}
        for name, count in self.node_counts().items():
            for key, value in self.node_types[name].resources.items():
                total[key] = total.get(key, 0.0) + count * value
        return total


def workers_per_node(node: NodeType, scaling: ResourcesConfig) -> int:
    """How many workers of this shape one node of ``node`` holds."""
    demand = scaling.worker_resources()
    return min(math.floor(node.resources.get(k, 0.0) / v + _EPS) for k, v in demand.items())


def worker_slots(cluster: ClusterFile, scaling: ResourcesConfig) -> int:
    """Workers of this shape the cluster holds at its maximum size (the best node mix)."""
    order = sorted(cluster.worker_types, key=lambda t: -workers_per_node(t, scaling))
    counts = cluster.node_counts(order)
    return sum(workers_per_node(cluster.node_types[n], scaling) * c for n, c in counts.items())


def how_many_trials_fit(cluster: ClusterFile, scaling: ResourcesConfig) -> int:
    """How many trials of this shape the cluster runs at once at its maximum size.

    Each node holds ``floor(min over resources of node / worker)`` workers; worker types fill
    the global max_workers with the types holding the most workers first; a trial's workers
    may span nodes, so trials = slots // workers. Trial drivers take no worker resources (they
    ask for one unit of TRIAL_DRIVER_RESOURCE on the head), so the head's amount of it caps the
    count when declared.
    """
    fits = worker_slots(cluster, scaling) // scaling.workers
    drivers = cluster.head.resources.get(TRIAL_DRIVER_RESOURCE)
    return min(fits, int(drivers)) if drivers is not None else fits


def check_space_against_cluster_file(cluster: ClusterFile, space: SearchSpace) -> int:
    """Raise ConfigError (one line, naming a file and key) when the space cannot run on the
    cluster; return how many of its trials fit at once."""
    cfile, sfile = cluster.path, space.source
    if cluster.head.resources.get(TRIAL_DRIVER_RESOURCE, 0) < 1:
        where = (
            "head_start_ray_commands (--resources)"
            if cluster.provider == "local"
            else f"available_node_types.{cluster.head_type}.resources"
        )
        raise ConfigError(
            f"{cfile}: {where}: the head declares no {TRIAL_DRIVER_RESOURCE} (e.g. "
            f"{TRIAL_DRIVER_RESOURCE}: 1000); trial drivers could land on spot GPU nodes"
        )
    fits = check_trial_fits_cluster_file(cluster, space)
    if space.max_concurrent > fits:
        raise ConfigError(
            f"{sfile}: max_concurrent: {space.max_concurrent} trials at once, but {fits} fit "
            f"into {cfile} at its maximum size"
        )
    storage = space.storage_path
    if cluster.multi_node and (storage is None or _is_local(storage)):
        raise ConfigError(
            f"{sfile}: storage_path: {storage or 'not set (a local folder)'}: worker nodes of "
            f"{cfile} do not share the head's disk: use s3://... or gs://... (or file:///... "
            "for a folder every node mounts)"
        )
    return fits


_KEYS = {"CPU": "cpus_per_worker", "GPU": "gpus_per_worker"}


def check_trial_fits_cluster_file(cluster: ClusterFile, space: SearchSpace) -> int:
    """Raise ConfigError when no node mix of the cluster could ever run one trial of the
    space (what ``run`` refuses too; waiting for the autoscaler is fine); return how many
    trials fit at once at the cluster's maximum size."""
    cfile, sfile, scaling = cluster.path, space.source, space.resources
    workers = [t for t in cluster.worker_types if t.max_workers > 0]
    if scaling.gpus_per_worker > 0 and not any(t.resources.get("GPU", 0) > 0 for t in workers):
        raise ConfigError(
            f"{sfile}: resources.gpus_per_worker: {scaling.gpus_per_worker:g} GPUs per worker "
            f"but no worker node type of {cfile} has GPUs"
        )
    if not any(workers_per_node(t, scaling) for t in workers):
        demand = scaling.worker_resources()
        most = {k: max((t.resources.get(k, 0.0) for t in workers), default=0.0) for k in demand}
        short = [k for k, v in demand.items() if v > most[k] + _EPS]
        key = f"resources.{_KEYS[short[0]]}" if len(short) == 1 else "resources"
        types = "; ".join(f"{t.name}: {_shape(t.resources)}" for t in workers) or "none"
        raise ConfigError(
            f"{sfile}: {key}: one worker ({_shape(demand)}) fits no worker node type of "
            f"{cfile} ({types})"
        )
    slots = worker_slots(cluster, scaling)
    if slots < scaling.workers:
        raise ConfigError(
            f"{sfile}: resources.workers: a trial of {scaling.workers} workers needs more than "
            f"{cfile} holds at its maximum size ({slots} such workers)"
        )
    return how_many_trials_fit(cluster, scaling)


def _shape(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items())


def _is_local(uri: str) -> bool:
    """A plain path (the head's own disk); ``file:///...`` names a folder every node mounts,
    as the search driver's own check (``cluster.check_shared_storage``) accepts it."""
    return not is_uri(uri)


# ----------------------------------------------------------------------------------- loading
def load_cluster_file(path: str | Path) -> ClusterFile:
    """Read and validate a cluster file offline with Ray's schema (ConfigError, one line)."""
    path = Path(path)
    raw = read_yaml(path)
    provider = raw.get("provider")
    if not isinstance(provider, dict) or not isinstance(provider.get("type"), str):
        raise ConfigError(f"{path}: provider.type: missing (e.g. provider: {{type: aws}})")
    local = provider["type"] == "local"
    if not local:
        types = raw.get("available_node_types")
        if not isinstance(types, dict) or not types:
            raise ConfigError(f"{path}: available_node_types: missing or empty")
        head = raw.get("head_node_type")
        if head not in types:
            raise ConfigError(
                f"{path}: head_node_type: {head!r} is not one of available_node_types "
                f"({', '.join(map(str, types))})"
            )
        _check_node_types(path, provider["type"], types)
    config = _ray_validate(path, raw)
    if local:
        return _local_cluster(path, config)
    node_types = {
        name: NodeType(
            name=name,
            resources=_resources(path, name, spec, provider["type"]),
            min_workers=int(spec.get("min_workers", 0)),
            max_workers=int(spec.get("max_workers", 0)),
        )
        for name, spec in config["available_node_types"].items()
    }
    return ClusterFile(
        path, provider["type"], config["head_node_type"], node_types, config["max_workers"], config
    )


def _check_node_types(path: Path, provider: str, types: dict[str, Any]) -> None:
    """What Ray's schema lets through but no launcher can start, named by its key."""
    for name, spec in types.items():
        key = f"{path}: available_node_types.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{key}: expected a mapping (node_config, resources, max_workers)")
        config = spec.get("node_config")
        if provider == "aws" and isinstance(config, dict) and not config.get("InstanceType"):
            raise ConfigError(
                f"{key}.node_config.InstanceType: missing; the AWS launcher needs the instance "
                "type of each node type (e.g. g5.2xlarge)"
            )


def _ray_validate(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    import jsonschema

    prepare_and_validate = cluster_config_validator()
    quiet = logging.getLogger("ray.autoscaler")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:  # Ray's cli_logger prints (and may abort) while preparing: keep it off the terminal
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            config = prepare_and_validate(raw)
    except jsonschema.ValidationError as exc:
        key = ".".join(str(part) for part in exc.absolute_path)
        raise ConfigError(f"{path}: {key + ': ' if key else ''}{exc.message}") from None
    except Exception as exc:  # Ray raises ValueError, KeyError, AssertionError, click errors
        message = getattr(exc, "message", None) or first_line(exc)
        raise ConfigError(f"{path}: not a valid Ray cluster file: {message}") from None
    finally:
        quiet.setLevel(level)
    return config


def _resources(path: Path, name: str, spec: dict[str, Any], provider: str) -> dict[str, float]:
    resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
    if "CPU" in resources:
        resources.setdefault("GPU", 0.0)
        return resources
    instance = spec.get("node_config", {}).get("InstanceType")
    if provider == "aws" and instance in AWS_INSTANCES:
        cpus, gpus = AWS_INSTANCES[instance]
        return {"CPU": float(cpus), "GPU": float(gpus), **resources}
    raise ConfigError(
        f"{path}: available_node_types.{name}.resources: declare CPU and GPU (reidsearch "
        f"cannot infer them for instance type {instance!r})"
    )


_FLAGS = {
    "CPU": re.compile(r"--num-cpus[= ]+['\"]?(\d+(?:\.\d+)?)"),
    "GPU": re.compile(r"--num-gpus[= ]+['\"]?(\d+(?:\.\d+)?)"),
}
_CUSTOM = re.compile(r"--resources[= ]+'(\{.*?\})'")


def _start_resources(path: Path, config: dict[str, Any], key: str) -> dict[str, float]:
    """Resources a local cluster's ``ray start`` commands declare (Ray detects the rest)."""
    text = " ".join(str(cmd) for cmd in config.get(key) or [])
    found = {name: float(m.group(1)) for name, rx in _FLAGS.items() if (m := rx.search(text))}
    if "CPU" not in found:
        raise ConfigError(
            f"{path}: {key}: declare --num-cpus (and --num-gpus) in `ray start` so the "
            "cluster can be checked without the machines"
        )
    found.setdefault("GPU", 0.0)
    if match := _CUSTOM.search(text):
        try:
            found.update({k: float(v) for k, v in json.loads(match.group(1)).items()})
        except (ValueError, TypeError, AttributeError):
            raise ConfigError(f"{path}: {key}: --resources is not a JSON mapping") from None
    return found


def _local_cluster(path: Path, config: dict[str, Any]) -> ClusterFile:
    """On-premise machines: the head, and one worker type with a node per worker ip."""
    ips = config["provider"].get("worker_ips") or []
    head = NodeType("head", _start_resources(path, config, "head_start_ray_commands"), 0, 0)
    types = {"head": head}
    if ips:
        worker = _start_resources(path, config, "worker_start_ray_commands")
        types["worker"] = NodeType("worker", worker, len(ips), len(ips))
    cap = min(int(config.get("max_workers", len(ips))), len(ips))
    return ClusterFile(path, "local", "head", types, cap, config)
