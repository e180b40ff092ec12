"""`reidsearch run` without --address on a machine where Ray already runs (a `ray up` head node)
joins that Ray instead of failing on ray.init(num_cpus=...)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.cluster_harness import CLUSTER_MARKER, free_port, stop_marked
from tests.conftest import tiny_config_dict

pytestmark = pytest.mark.cluster
mlflow = pytest.importorskip("mlflow")
BIN = Path(sys.executable).parent


@contextlib.contextmanager
def running_ray_head(cpus: int):
    """`ray start --head` as a user would (default temp dir, so it can be found), stopped by
    killing only its own processes."""
    root = Path(tempfile.mkdtemp(prefix="rsh-", dir="/tmp"))
    env = {**os.environ, CLUSTER_MARKER: str(root), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    dashboard, gcs = free_port(), free_port()
    cmd = [str(BIN / "ray"), "start", "--head", f"--num-cpus={cpus}", f"--port={gcs}"]
    cmd += ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--disable-usage-stats"]
    cmd += [f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}"]
    cmd += [f"--dashboard-agent-listen-port={free_port()}"]
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        stop_marked(root)
        # What `ray stop` does too: forget this head, so no later ray.init() tries to join it.
        record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if record.is_file() and record.read_text().strip().endswith(f":{gcs}"):
            record.unlink()


def test_run_joins_the_ray_running_on_this_machine(tmp_path):
    from ray.util.state import list_nodes

    space = {
        "name": "joined",
        "fixed": tiny_config_dict(epochs=1),
        "search": {"model.lam": {"type": "uniform", "low": 0.5, "high": 10.0}},
        "trials": 2,
        "max_concurrent": 1,
        "scheduler": {"type": "none"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "runner": "trial_process"},
        "storage_path": str(tmp_path / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    (tmp_path / "joined.yaml").write_text(yaml.safe_dump(space))
    with running_ray_head(cpus=2) as dashboard:
        (head,) = list_nodes(address=dashboard)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_AUTH_MODE"] = "disabled"
        run = subprocess.run(
            [str(BIN / "reidsearch"), "run", "joined.yaml"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "reidsearch: joining the Ray running at" in run.stdout
    assert "Traceback" not in run.stderr
    client = mlflow.tracking.MlflowClient(tracking_uri=space["mlflow"]["tracking_uri"])
    experiment = client.get_experiment_by_name("joined")
    trials = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("reidsearch.kind") == "trial"
    ]
    assert len(trials) == 2
    # Both trials trained on the running Ray's node, not on a private Ray started beside it.
    assert {t.data.tags["reidsearch.nodes"] for t in trials} == {head.node_id}
