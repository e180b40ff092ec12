"""The cloud cluster file turned into one for machines you already have (Ray's ``local`` provider).

The on-premise file keeps every command of the cloud file (file mounts, setup, head setup and
start commands), so what runs on your machines is what runs on the cloud's nodes; it differs only
where the local provider must: machines named by address and reached over ssh, no node types (Ray
takes one per cluster there), no ``docker`` block (run the machines' own Python, or the image's
as its environment), and each machine's resources declared on its ``ray start`` line, as the cloud
file declares them per node type (the head's CPU 0 and trial-driver resource included).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from reidsearch.config import read_yaml
from reidsearch.errors import ConfigError
from reidsearch.search.cluster.cluster_file import ClusterFile, NodeType, load_cluster_file

# Kept as they are: every key of the cloud file that the local provider reads the same way.
KEPT = (
    "cluster_name",
    "idle_timeout_minutes",
    "file_mounts",
    "cluster_synced_files",
    "rsync_exclude",
    "rsync_filter",
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
)


def start_flags(resources: dict[str, float]) -> str:
    """``ray start`` flags declaring ``resources`` (CPU and GPU by their own flags)."""
    flags = [f"--num-cpus={int(resources.get('CPU', 0))}"]
    flags.append(f"--num-gpus={int(resources.get('GPU', 0))}")
    custom = {k: int(v) for k, v in resources.items() if k not in ("CPU", "GPU")}
    if custom:
        flags.append(f"--resources={shlex.quote(json.dumps(custom, separators=(',', ':')))}")
    return " ".join(flags)


# Ray 2.60's ``ray up`` starts the head with autoscaler v2, which never launches the local
# provider's worker machines (it keeps "adding 1 node" every 5 s; measured in
# tests/test_ray_up.py): the head of an on-premise cluster runs v1, which does.
HEAD_ENV = "RAY_enable_autoscaler_v2=0"


def _declare(
    path: Path, key: str, commands: list[Any], resources: dict[str, float], env: str = ""
) -> list[str]:
    """``commands`` with the flags added to their ``ray start`` (refused when there is none)."""
    out, found = [], False
    start = f"{env} ray start" if env else "ray start"
    for cmd in commands:
        cmd = str(cmd)
        if "ray start" in cmd and not found:
            cmd, found = cmd.replace("ray start", f"{start} {start_flags(resources)}", 1), True
        out.append(cmd)
    if not found:
        raise ConfigError(f"{path}: {key}: no `ray start` command to declare the resources on")
    return out


def worker_type_for(cluster: ClusterFile, name: str | None) -> NodeType:
    """The named worker type, else the file's first."""
    if name is not None:
        if name not in cluster.node_types or name == cluster.head_type:
            names = ", ".join(t.name for t in cluster.worker_types)
            raise ConfigError(f"{cluster.path}: no worker node type {name!r} (have: {names})")
        return cluster.node_types[name]
    if not cluster.worker_types:
        raise ConfigError(f"{cluster.path}: available_node_types: no worker node type")
    return cluster.worker_types[0]


def on_premise_config(
    cluster_path: str | Path,
    head_ip: str,
    worker_ips: list[str],
    ssh_user: str,
    ssh_private_key: str,
    worker_type: str | None = None,
    worker_resources: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The local-provider cluster config for ``cluster_path`` on these machines.

    The workers' resources are the chosen node type's unless ``worker_resources`` overrides
    some of them (your machines are not the cloud's instance types)."""
    cluster = load_cluster_file(cluster_path)
    if cluster.provider == "local":
        raise ConfigError(f"{cluster.path}: already an on-premise (local provider) file")
    raw = read_yaml(cluster.path)  # as written: Ray's prepared config merges setup commands
    worker = dict(worker_type_for(cluster, worker_type).resources)
    worker.update(worker_resources or {})
    head = cluster.head.resources
    config = {key: raw[key] for key in KEPT if key in raw}
    config["provider"] = {"type": "local", "head_ip": head_ip, "worker_ips": list(worker_ips)}
    config["auth"] = {"ssh_user": ssh_user, "ssh_private_key": ssh_private_key}
    config["max_workers"] = len(worker_ips)
    config["min_workers"] = len(worker_ips)
    for key, resources, env in (
        ("head_start_ray_commands", head, HEAD_ENV),
        ("worker_start_ray_commands", worker, ""),
    ):
        config[key] = _declare(cluster.path, key, raw.get(key) or [], resources, env)
    return config
