"""Local stand-ins for a real deployment: S3 (moto), an MLflow server, an autoscaling Ray cluster.

- ``s3_server()``: moto's S3 server in a subprocess plus one bucket. ``.env`` (AWS_ENDPOINT_URL,
  keys, region) makes plain ``s3://bucket/...`` URIs work through
  ``pyarrow.fs.FileSystem.from_uri`` (and so Ray's storage layer) in any process that has it. A
  bare ``pyarrow.fs.S3FileSystem()`` ignores AWS_ENDPOINT_URL: pass ``endpoint_override``.
- ``mlflow_server(root)``: ``mlflow server`` on a sqlite store with proxied artifacts; yields URI.
- ``autoscaling_cluster()``: ``ray.cluster_utils.AutoscalingCluster`` (fake multi-node provider)
  with a CPU-less head that holds TRIAL_DRIVER_RESOURCE and 0..N ``cpu_worker`` nodes. Every node
  has its own cwd, HOME and REIDSEARCH_CACHE under the cluster's tmp folder. Never runs
  ``ray stop`` (that kills every Ray on the machine); teardown kills only its own processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import ray
import ray._private.ray_constants as ray_constants
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)
from ray.cluster_utils import AutoscalingCluster

from reidsearch.search.cluster import TRIAL_DRIVER_RESOURCE

BIN = Path(sys.executable).parent
OBJECT_STORE_BYTES = 200 * 1024**2
CLUSTER_MARKER = "REIDSEARCH_TEST_CLUSTER"  # in the env of every process of one test cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{what} did not answer {url} within {timeout:g} s")


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, the process group of ``proc`` (started with start_new_session)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
            return


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    env: dict[str, str]

    def uri(self, path: str = "") -> str:
        return f"s3://{self.bucket}/{path.lstrip('/')}"


@contextlib.contextmanager
def s3_server(bucket: str = "reidsearch", log_dir: str | Path | None = None):
    import pyarrow.fs as pafs

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(Path(log_dir or tempfile.gettempdir()) / f"moto-{port}.log", "wb")
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(endpoint + "/moto-api/", proc, 60, "moto server")
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        fs = pafs.S3FileSystem(
            endpoint_override=endpoint,
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir(bucket)
        yield S3Server(endpoint=endpoint, bucket=bucket, env=env)
    finally:
        _stop_group(proc)
        log.close()


@contextlib.contextmanager
def mlflow_server(root: str | Path):
    """A real tracking server; yields its http://127.0.0.1:PORT URI."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        str(BIN / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "mlartifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = open(root / "mlflow-server.log", "wb")
    proc = subprocess.Popen(
        cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_http(uri + "/health", proc, 120, "mlflow server")
        yield uri
    finally:
        _stop_group(proc)
        log.close()


def _node_dirs(root: Path) -> dict[str, str]:
    dirs = {name: root / name for name in ("work", "home", "cache")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(dirs["home"]), "REIDSEARCH_CACHE": str(dirs["cache"]), "PWD": str(dirs["work"])}


class PerNodeDirsProvider(FakeMultiNodeProvider):
    """FakeMultiNodeProvider whose nodes each get their own cwd, HOME, REIDSEARCH_CACHE.

    Loaded by the autoscaler (``provider.type: external``) inside the head's monitor process,
    which starts every worker node in-process with ``ray._private.node.Node``. The parent class
    hard-codes the node's ``RayParams``, so this copies its ~20 lines and adds: env vars for the
    raylet (which passes them on to its workers) and a chdir around the start (children inherit
    the cwd; nothing else in the monitor uses relative paths).
    """

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        resources = dict(resources)
        with self.lock:
            node_type = tags[TAG_RAY_USER_NODE_TYPE]
            node_id = self._next_hex_node_id()
            node_root = Path(self.provider_config["node_root"]) / f"{node_type}-{node_id[-3:]}"
            env = _node_dirs(node_root)
            params = ray._private.parameter.RayParams(
                node_ip_address="127.0.0.1",
                min_worker_port=0,
                max_worker_port=0,
                dashboard_port=None,
                dashboard_agent_listen_port=0,
                num_cpus=resources.pop("CPU", 0),
                num_gpus=resources.pop("GPU", 0),
                object_store_memory=resources.pop("object_store_memory", None),
                resources=resources,
                labels=labels,
                redis_address=self._gcs_address,
                gcs_address=self._gcs_address,
                env_vars={
                    **env,
                    "RAY_OVERRIDE_NODE_ID_FOR_TESTING": node_id,
                    "RAY_CLOUD_INSTANCE_ID": node_id,
                    "RAY_NODE_TYPE_NAME": node_type,
                    ray_constants.RESOURCES_ENVIRONMENT_VARIABLE: json.dumps(resources),
                    ray_constants.LABELS_ENVIRONMENT_VARIABLE: json.dumps(labels),
                },
            )
            old_cwd = os.getcwd()
            os.chdir(env["PWD"])
            try:
                node = ray._private.node.Node(
                    params, head=False, shutdown_at_exit=False, spawn_reaper=False
                )
            finally:
                os.chdir(old_cwd)
            all_tags = {
                TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
                TAG_RAY_USER_NODE_TYPE: node_type,
                TAG_RAY_NODE_NAME: node_id,
                TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
            }
            self._nodes[node_id] = {"tags": {**all_tags, **tags}, "node": node}


_EMPTY_LISTS = (
    "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
    "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files",
    "rsync_exclude", "rsync_filter",
)  # fmt: skip


class LocalAutoscalingCluster(AutoscalingCluster):
    """AutoscalingCluster that neither needs ``example.yaml`` (missing from the Ray 2.60 wheel)
    nor runs ``ray stop --force``, and starts its head on 127.0.0.1 with free ports."""

    def __init__(self, root: Path, head_resources: dict, worker_node_types: dict, **kwargs):
        self.root = root
        self.port = free_port()
        self.dashboard_port = free_port()
        super().__init__(head_resources, worker_node_types, **kwargs)

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **kw):
        here = Path(__file__).resolve()
        config = {
            "cluster_name": "reidsearch-test",
            "max_workers": sum(t.get("max_workers", 0) for t in worker_node_types.values()),
            "provider": {
                "type": "external",
                "module": f"{here.stem}.{PerNodeDirsProvider.__name__}",
                "gcs_address": f"127.0.0.1:{self.port}",
                "node_root": str(self.root / "nodes"),
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": {
                **worker_node_types,
                "ray.head.default": {"resources": dict(head_resources), "node_config": {}},
            },
            "head_node_type": "ray.head.default",
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": 0.1,
            **{k: {} for k in ("auth", "docker", "file_mounts")},
            **{k: [] for k in _EMPTY_LISTS},
            "file_mounts_sync_continuously": False,
        }
        config["available_node_types"]["ray.head.default"]["max_workers"] = 0
        config.update(kw)
        return config

    def start(self, _system_config=None, override_env: dict | None = None):
        config_path = self.root / "autoscaling.json"
        config_path.write_text(json.dumps(self._config))
        head = dict(self._head_resources)
        cmd = [
            str(BIN / "ray"), "start", "--head", f"--autoscaling-config={config_path}",
            "--node-ip-address=127.0.0.1", f"--port={self.port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={self.root / 'ray'}", "--disable-usage-stats",
            f"--num-cpus={head.pop('CPU', 0)}", f"--num-gpus={head.pop('GPU', 0)}",
            f"--object-store-memory={head.pop('object_store_memory', OBJECT_STORE_BYTES)}",
            f"--resources={json.dumps(head)}",
        ]  # fmt: skip
        env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
        env.update(override_env or {})
        head_env = _node_dirs(self.root / "nodes" / "head")
        env.update(head_env)
        out = subprocess.run(cmd, env=env, cwd=head_env["PWD"], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"ray start --head failed:\n{out.stdout}\n{out.stderr}")

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: the marker is in each one's environment."""
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.pid == os.getpid():
                    continue
                if proc.environ().get(CLUSTER_MARKER) == str(self.root):
                    found.append(proc)
        return found

    def shutdown(self, grace: float = 10.0):
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)


@dataclass
class ClusterHandle:
    address: str  # 127.0.0.1:PORT (GCS), for ray.init(address=...)
    dashboard_url: str
    root: Path  # cluster tmp folder; nodes/<type>-<n>/{work,home,cache}, nodes/head/..., ray/
    env: dict[str, str]  # set in the driver and every node (S3, RAY_AUTH_MODE, ...)
    cluster: LocalAutoscalingCluster = field(repr=False)

    @property
    def node_root(self) -> Path:
        return self.root / "nodes"


@contextlib.contextmanager
def autoscaling_cluster(
    env: dict[str, str] | None = None,
    worker_cpus: int = 1,
    max_workers: int = 2,
    idle_timeout_minutes: float = 0.1,
    head_resources: dict | None = None,
    connect: bool = True,
):
    """Head: CPU 0 + TRIAL_DRIVER_RESOURCE; ``cpu_worker`` nodes: {CPU: worker_cpus}, 0..max."""
    # short path: unix sockets of raylets/plasma live under root/ray (108-byte limit)
    root = Path(tempfile.mkdtemp(prefix="rsc-", dir="/tmp"))
    env = {**(env or {}), "RAY_AUTH_MODE": "disabled"}
    here = str(Path(__file__).resolve().parent)
    node_env = {
        **env,
        CLUSTER_MARKER: str(root),  # not in the driver: shutdown kills what carries it
        "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]),
    }
    cluster = LocalAutoscalingCluster(
        root,
        head_resources={"CPU": 0, TRIAL_DRIVER_RESOURCE: 1000, **(head_resources or {})},
        worker_node_types={
            "cpu_worker": {
                "resources": {"CPU": worker_cpus, "object_store_memory": OBJECT_STORE_BYTES},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_workers,
            }
        },
        idle_timeout_minutes=idle_timeout_minutes,
    )
    saved = {k: os.environ.get(k) for k in env}
    handle = ClusterHandle(
        address=f"127.0.0.1:{cluster.port}",
        dashboard_url=f"http://127.0.0.1:{cluster.dashboard_port}",
        root=root,
        env=env,
        cluster=cluster,
    )
    try:
        os.environ.update(env)
        cluster.start(override_env=node_env)
        if connect:
            ray.init(address=handle.address, log_to_driver=True)
        yield handle
    finally:
        ray.shutdown()
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not cluster.processes():
            shutil.rmtree(root, ignore_errors=True)


# pytest fixtures (import them into a test module by these names, or use the context managers)
@pytest.fixture(name="s3")
def s3_fixture(tmp_path_factory):
    with s3_server(log_dir=tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(name="mlflow_uri")
def mlflow_uri_fixture(tmp_path):
    with mlflow_server(tmp_path / "mlflow") as uri:
        yield uri


@pytest.fixture(name="ray_cluster")
def ray_cluster_fixture(s3):
    with autoscaling_cluster(env=s3.env) as handle:
        yield handle
