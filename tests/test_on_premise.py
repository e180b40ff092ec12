"""``reidsearch cluster on-premise``: cluster.yaml's commands on machines named by address."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reidsearch.errors import ConfigError
from reidsearch.search.cluster.capacity import TRIAL_DRIVER_RESOURCE
from reidsearch.search.cluster.cluster_file import load_cluster_file
from reidsearch.search.cluster.on_premise import (
    HEAD_ENV,
    KEPT,
    on_premise_config,
    start_flags,
)

REPO = Path(__file__).resolve().parents[1]
CLOUD = REPO / "cluster.yaml"
CLI = str(Path(sys.executable).parent / "reidsearch")


def _start_line(commands: list[str]) -> list[str]:
    (line,) = [c for c in commands if "ray start" in c]
    return shlex.split(line[line.index("ray start"):])  # the line's own env prefix cut off


def test_every_command_of_the_cloud_file_is_kept_and_resources_are_declared(tmp_path):
    cloud = yaml.safe_load(CLOUD.read_text())
    out = tmp_path / "onprem.yaml"
    args = ["cluster", "on-premise", str(CLOUD), "--head-ip", "10.0.0.10", "--worker-ip",
            "10.0.0.11", "--worker-ip", "10.0.0.12", "--ssh-user", "me", "--ssh-key", "~/k",
            "--worker-cpus", "16", "--worker-gpus", "2", "-o", str(out)]
    run = subprocess.run([CLI, *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    local = yaml.safe_load(out.read_text())
    for key in KEPT:
        assert local.get(key) == cloud.get(key), key  # setup, head setup, mounts: as written
    assert local["provider"] == {
        "type": "local", "head_ip": "10.0.0.10", "worker_ips": ["10.0.0.11", "10.0.0.12"]
    }
    assert "docker" not in local and "available_node_types" not in local

    # Each start command is the cloud's, with the node's resources on its `ray start` line.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for ours, theirs in zip(local[key], cloud[key], strict=True):
            assert _without_flags(ours) == theirs
    assert f"{HEAD_ENV} ray start" in " ".join(local["head_start_ray_commands"])
    head = _start_line(local["head_start_ray_commands"])
    assert "--num-cpus=0" in head and "--num-gpus=0" in head
    (custom,) = [a for a in head if a.startswith("--resources=")]
    assert json.loads(custom.split("=", 1)[1]) == {TRIAL_DRIVER_RESOURCE: 1000}
    worker = _start_line(local["worker_start_ray_commands"])
    assert "--num-cpus=16" in worker and "--num-gpus=2" in worker

    # Ray's schema and our own reading agree: the head runs no trial worker.
    cluster = load_cluster_file(out)
    assert cluster.provider == "local" and cluster.max_workers == 2
    assert cluster.head.resources == {"CPU": 0, "GPU": 0, TRIAL_DRIVER_RESOURCE: 1000}
    assert cluster.node_types["worker"].resources == {"CPU": 16, "GPU": 2}


def _without_flags(command: str) -> str:
    """``command`` with the flags after ``ray start`` up to the cloud file's own taken out."""
    if "ray start" not in command:
        return command
    command = command.replace(f"{HEAD_ENV} ray start", "ray start")
    i = command.index("ray start") + len("ray start")
    j = command.index(" --", command.index("--resources=" if "--resources=" in command
                                           else "--num-gpus"))
    return command[:i] + command[j:]


def test_the_workers_default_to_the_first_worker_type_of_the_cloud_file():
    config = on_premise_config(CLOUD, "h", ["w"], "u", "k")
    cloud = load_cluster_file(CLOUD)
    first = cloud.worker_types[0].resources
    line = _start_line(config["worker_start_ray_commands"])
    assert f"--num-cpus={int(first['CPU'])}" in line and f"--num-gpus={int(first['GPU'])}" in line


def test_start_flags_quote_custom_resources_for_the_shell():
    flags = shlex.split(start_flags({"CPU": 4, "GPU": 1, "disk_fast": 2}))
    assert flags == ["--num-cpus=4", "--num-gpus=1", '--resources={"disk_fast":2}']


def test_bad_input_is_one_line_and_nothing_is_written(tmp_path):
    out = tmp_path / "onprem.yaml"
    base = ["cluster", "on-premise", "--head-ip", "h", "--ssh-user", "u", "--ssh-key", "k",
            "-o", str(out)]
    no_start = yaml.safe_load(CLOUD.read_text())
    no_start["worker_start_ray_commands"] = ["ray stop"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(no_start))
    cases = {
        (str(CLOUD), "--worker-type", "nope"): "no worker node type 'nope'",
        (str(broken),): "worker_start_ray_commands: no `ray start`",
        (str(tmp_path / "missing.yaml"),): "missing.yaml",
    }
    for extra, message in cases.items():
        run = subprocess.run([CLI, *base[:2], extra[0], *base[2:], *extra[1:]],
                             capture_output=True, text=True)
        assert run.returncode == 2, run.stderr
        assert message in run.stderr and "Traceback" not in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1
        assert not out.exists()
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump(on_premise_config(CLOUD, "h", ["w"], "u", "k")))
    with pytest.raises(ConfigError, match="already an on-premise"):
        on_premise_config(local, "h", ["w"], "u", "k")
