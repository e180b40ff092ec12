"""Smoke tests of tests/cluster_harness.py: moto S3, MLflow server, autoscaling Ray cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from reidsearch.search.cluster.capacity import TRIAL_DRIVER_RESOURCE
from tests.cluster_harness import autoscaling_cluster, mlflow_uri_fixture, s3_fixture  # noqa: F401

pytestmark = pytest.mark.cluster


def test_s3_server_plain_uris_work_with_the_env(s3, monkeypatch):
    import pyarrow.fs as pafs

    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    fs, path = pafs.FileSystem.from_uri(s3.uri("x/hello.txt"))
    with fs.open_output_stream(path) as f:
        f.write(b"hello")
    # the endpoint travels with the filesystem when it is pickled to another process
    assert fs.__reduce__()[1][0]["endpoint_override"] == s3.endpoint
    # ... and any process with the env reads plain s3:// URIs
    code = (
        "import pyarrow.fs as pafs; fs, p = pafs.FileSystem.from_uri({!r});"
        "print(fs.open_input_stream(p).read().decode())"
    ).format(s3.uri("x/hello.txt"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "hello", out.stderr
    # quirk: a bare S3FileSystem() does not read AWS_ENDPOINT_URL
    assert pafs.S3FileSystem().__reduce__()[1][0]["endpoint_override"] == ""


def test_mlflow_server_logs_metrics_and_proxied_artifacts(mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.create_run(client.create_experiment("smoke"))
    client.log_metric(run.info.run_id, "mAP", 0.5, step=1)
    art = tmp_path / "cmc.txt"
    art.write_text("rank1 0.9\n")
    client.log_artifact(run.info.run_id, str(art))
    client.set_terminated(run.info.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    assert client.get_run(run.info.run_id).data.metrics == {"mAP": 0.5}
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["cmc.txt"]
    back = client.download_artifacts(run.info.run_id, "cmc.txt", str(tmp_path / "back"))
    assert open(back).read() == "rank1 0.9\n"


def test_autoscaling_cluster_adds_nodes_with_their_own_folders(s3):
    import pyarrow.fs as pafs
    import ray

    def where(parties=0):
        """Node id, cwd, HOME, REIDSEARCH_CACHE of the task; writes to S3 from the node."""
        if parties:  # hold the CPU until every party runs (an S3 barrier: a ray.get would
            # release the CPU and let the next task in): forces one node per task
            fs, path = pafs.FileSystem.from_uri(s3.uri(f"barrier/{uuid.uuid4().hex}"))
            fs.open_output_stream(path).close()
            deadline = time.monotonic() + 120
            selector = pafs.FileSelector(s3.uri("barrier")[len("s3://") :])
            while len(fs.get_file_info(selector)) < parties and time.monotonic() < deadline:
                time.sleep(0.1)
        node = ray.get_runtime_context().get_node_id()
        fs, path = pafs.FileSystem.from_uri(s3.uri(f"nodes/{node}.txt"))
        with fs.open_output_stream(path) as f:  # the S3 env reached the node
            f.write(os.getcwd().encode())
        return node, os.getcwd(), os.environ["HOME"], os.environ["REIDSEARCH_CACHE"]

    t0 = time.monotonic()
    with autoscaling_cluster(env=s3.env, worker_cpus=1, max_workers=2) as cluster:
        print(f"\nhead up in {time.monotonic() - t0:.1f} s at {cluster.address}")
        (head,) = [n for n in ray.nodes() if n["Alive"]]
        assert head["Resources"].get("CPU", 0) == 0
        assert head["Resources"][TRIAL_DRIVER_RESOURCE] == 1000

        on_head = ray.remote(num_cpus=0, resources={TRIAL_DRIVER_RESOURCE: 1})(where)
        head_id, head_cwd, head_home, head_cache = ray.get(on_head.remote(), timeout=60)
        assert head_id == head["NodeID"]
        assert head_cwd == str(cluster.root / "nodes" / "head" / "work")

        t1 = time.monotonic()
        before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert before == {head_id}  # no CPU anywhere yet: the tasks below must wait for nodes
        cpu_task = ray.remote(num_cpus=1)(where)
        refs = [cpu_task.remote(2) for _ in range(2)]
        results = ray.get(refs, timeout=180)
        print(f"two cpu_worker nodes up and tasks done in {time.monotonic() - t1:.1f} s")

        nodes = {r[0] for r in results}
        # Both ran, one per node, on nodes the autoscaler added for them (a fast machine may
        # have them up within a second or two: no timing is asserted).
        assert len(nodes) == 2 and not nodes & before
        for node, cwd, home, cache in results:
            node_dir = os.path.dirname(cwd)
            assert os.path.dirname(node_dir) == str(cluster.root / "nodes")
            assert (cwd, home, cache) == tuple(
                os.path.join(node_dir, d) for d in ("work", "home", "cache")
            )
            fs, path = pafs.FileSystem.from_uri(s3.uri(f"nodes/{node}.txt"))
            assert fs.open_input_stream(path).read().decode() == cwd
        assert len({r[1] for r in results} | {head_cwd}) == 3
        assert len({r[2] for r in results} | {head_home}) == 3
        assert len({r[3] for r in results} | {head_cache}) == 3

        t2 = time.monotonic()
        while len([n for n in ray.nodes() if n["Alive"]]) > 1 and time.monotonic() - t2 < 90:
            time.sleep(1)
        print(f"idle worker nodes removed after {time.monotonic() - t2:.1f} s")
        assert len([n for n in ray.nodes() if n["Alive"]]) == 1
        t3 = time.monotonic()
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    left = [line for line in ps.splitlines() if str(cluster.root) in line]
    assert not left, left
    assert not cluster.cluster.processes()
    assert os.environ.get("AWS_ENDPOINT_URL") != s3.endpoint  # the driver's env is restored
    print(f"shutdown + checks {time.monotonic() - t3:.1f} s; total {time.monotonic() - t0:.1f} s")
