"""A lost node: a worker node of the local autoscaling cluster is SIGKILLed (its raylet and every
process it started) while its trial trains. Ray Train restarts the worker group from the latest
checkpoint on another node, the trial's MLflow history continues without duplicates or gaps, and
the search finishes. Real moto S3, ``mlflow server``, ``reidsearch run`` as a fresh driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

from reidsearch import storage
from tests.cluster_harness import (  # noqa: F401 - fixtures
    autoscaling_cluster,
    marked_processes,
    mlflow_uri_fixture,
    s3_fixture,
)
from tests.conftest import tiny_config_dict

mlflow = pytest.importorskip("mlflow")

EPOCHS = 5
KILL_AFTER = 2  # epochs logged to MLflow before the node is killed
# The GCS declares a raylet dead after `threshold` failed checks `period` apart (defaults 3 s x 5):
# quicker here, for the test cluster only (the env reaches the head's GCS and every node).
HEALTH_CHECK_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@pytest.fixture(name="cluster")
def cluster_fixture(s3):
    with autoscaling_cluster(env=s3.env | HEALTH_CHECK_ENV) as handle:
        yield handle


def _space(path: Path, s3, mlflow_uri: str) -> Path:
    space = {
        "name": "lost-node",
        "fixed": tiny_config_dict(epochs=EPOCHS),
        "trials": 1,
        "max_concurrent": 1,
        "scheduler": {"type": "none"},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "max_failures": 2,  # Ray Train restarts the worker group from the latest checkpoint
        "seed": 0,
        "storage_path": s3.uri("lost-node"),
        "mlflow": {"tracking_uri": mlflow_uri, "experiment": "lost-node"},
    }
    path.write_text(yaml.safe_dump(space))
    return path


def _trial_state(s3) -> dict | None:
    """The tracker's record of the one trial (run id, last epoch logged, nodes), once it exists."""
    with contextlib.suppress(Exception):  # not written yet, or caught mid-write
        (experiment,) = storage.list_dirs(s3.uri("lost-node"))
        path = storage.join(s3.uri(f"lost-node/{experiment}"), "reidsearch", "mlflow_runs.json")
        (entry,) = json.loads(storage.read_text(path))["trials"].values()
        return entry
    return None


def _node_processes(root: Path, node_id: str) -> dict[int, str]:
    """One fake node's live processes, pid -> name: its raylet and what the raylet started carry
    the node's id in their env; its log monitor names the node's folder on its command line."""
    folder = f"{root / 'nodes'}/cpu_worker-{int(node_id[-5:])}/"
    mine = f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode()
    found = {}
    for pid in marked_processes(root):
        with contextlib.suppress(OSError):
            proc = Path(f"/proc/{pid}")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            if mine in (proc / "environ").read_bytes().split(b"\0") or folder in cmdline:
                name = cmdline.split()[0]  # ray::RayTrainWorker, ray::DashboardAgent, ...
                found[pid] = name if name.startswith("ray::") else Path(name).name
    return found


def _alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


@pytest.mark.cluster
@pytest.mark.fault("fault")
def test_a_trial_whose_node_is_lost_continues_from_its_checkpoint_on_another_node(
    cluster, s3, mlflow_uri, tmp_path
):
    _space(tmp_path / "lost.yaml", s3, mlflow_uri)
    cluster_file = str(cluster.root / "autoscaling.json")
    args = ["run", "lost.yaml", "--address", cluster.address, "--cluster", cluster_file]
    env = {**os.environ, **cluster.env}
    env.pop("RAY_ADDRESS", None)
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(
            [str(Path(sys.executable).parent / "reidsearch"), *args],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # 1. Once the trial has logged KILL_AFTER epochs, SIGKILL the node its rank 0 runs on.
        deadline = time.monotonic() + 240
        while (entry := _trial_state(s3)) is None or entry["last_epoch"] < KILL_AFTER:
            assert driver.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, f"the trial never logged epoch {KILL_AFTER}"
            time.sleep(0.2)
        (node,) = entry["nodes"]
        processes = _node_processes(cluster.root, node)
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed_at, t_kill = entry["last_epoch"], time.monotonic()
        names = sorted(processes.values())
        assert "raylet" in names and "ray::RayTrainWorker" in names, names
        assert killed_at < EPOCHS, "the trial finished before its node was killed"
        while _alive(node) and time.monotonic() < t_kill + 60:
            time.sleep(0.5)
        print(
            f"\nkilled {names} after epoch {killed_at}; dead in {time.monotonic() - t_kill:.0f} s"
        )

        # 2. The search finishes.
        returncode = driver.wait(timeout=300)
        print(f"search done {time.monotonic() - t_kill:.0f} s after the kill")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(30)
    assert returncode == 0, log_path.read_text()[-6000:]
    assert not _alive(node) and not _node_processes(cluster.root, node)

    # 3. One trial run, FINISHED; every epoch once; rank 0 on two nodes; resumed from the
    # checkpoint of the last epoch reported before the kill (not from scratch).
    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("lost-node")
    runs = client.search_runs([experiment.experiment_id])
    (trial,) = [r for r in runs if r.data.tags.get("reidsearch.kind") == "trial"]
    assert trial.info.status == "FINISHED"
    history = client.get_metric_history(trial.info.run_id, "epoch")
    assert sorted((m.step, m.value) for m in history) == [(e, e) for e in range(1, EPOCHS + 1)]
    nodes = trial.data.tags["reidsearch.nodes"].split(",")
    assert len(set(nodes)) == len(nodes) == 2 and nodes[0] == node, nodes
    (resumed,) = map(int, trial.data.tags["reidsearch.resumed_from_epochs"].split(","))
    assert killed_at <= resumed <= killed_at + 1, (resumed, killed_at)
    assert _trial_state(s3)["status"] == "FINISHED"
