"""Local stand-ins for a deployment: S3 (moto), an MLflow server, an autoscaling Ray cluster.

Context managers ``s3_server``, ``mlflow_server``, ``autoscaling_cluster``; pytest fixtures ``s3``,
``mlflow_uri``, ``ray_cluster`` (import ``s3_fixture`` etc. into a test module). Plain ``s3://``
URIs work through ``pyarrow.fs.FileSystem.from_uri`` (so Ray's storage layer) wherever
``S3Server.env`` is set; a bare ``pyarrow.fs.S3FileSystem()`` ignores AWS_ENDPOINT_URL.
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
from unittest import mock

import pytest
import ray
import ray._private.ray_constants as ray_constants
from ray._private.node import Node
from ray._private.parameter import RayParams
from ray.autoscaler import tags as T
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.cluster_utils import AutoscalingCluster

from reidsearch.search.cluster.capacity import TRIAL_DRIVER_RESOURCE

BIN = Path(sys.executable).parent
OBJECT_STORE_BYTES = 200 * 1024**2
CLUSTER_MARKER = "REIDSEARCH_TEST_CLUSTER"  # in the env of every process of one test cluster


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(cmd: list[str], ready_url: str, log_path: Path, timeout: float = 120, cwd=None):
    """Start ``cmd`` in its own process group, wait for ``ready_url``, kill the group after."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[:3]} did not answer {ready_url}; see {log_path}")
            with contextlib.suppress(OSError), urllib.request.urlopen(ready_url, timeout=2):
                break
            time.sleep(0.3)
        yield proc
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
                break
        log.close()


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    env: dict[str, str]  # AWS_ENDPOINT_URL, keys, region: set it in every process

    def uri(self, path: str = "") -> str:
        return f"s3://{self.bucket}/{path.lstrip('/')}"


@contextlib.contextmanager
def s3_server(
    bucket: str = "reidsearch", log_dir: str | Path | None = None, host: str = "127.0.0.1"
):
    """moto's S3 server in a subprocess on ``host``, with ``bucket`` created; yields an
    ``S3Server``."""
    import pyarrow.fs as pafs

    port = free_port()
    endpoint = f"http://{host}:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]
    log = Path(log_dir or tempfile.gettempdir()) / f"moto-{port}.log"
    with _server(cmd, endpoint + "/moto-api/", log, timeout=60):
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}
        env |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        env |= {"AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
        keys = {"access_key": "testing", "secret_key": "testing", "region": "us-east-1"}
        fs = pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True, **keys)
        fs.create_dir(bucket)
        yield S3Server(endpoint=endpoint, bucket=bucket, env=env)


@contextlib.contextmanager
def mlflow_server(root: str | Path):
    """``mlflow server`` (sqlite store, proxied artifacts in root/mlartifacts); yields its URI."""
    (root := Path(root).resolve()).mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = ["env", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false", str(BIN / "mlflow"), "server"]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--workers", "1"]
    cmd += ["--artifacts-destination", str(root / "mlartifacts")]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    uri = f"http://127.0.0.1:{port}"
    with _server(cmd, uri + "/health", root / "mlflow-server.log", cwd=root):
        yield uri


def _environ(pid: int) -> list[bytes]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return []  # gone, or a zombie


def _node_dirs(root: Path) -> dict[str, str]:  # a node's own folders, as env (PWD: the cwd)
    env = {"PWD": root / "work", "HOME": root / "home", "REIDSEARCH_CACHE": root / "cache"}
    for d in env.values():
        d.mkdir(parents=True, exist_ok=True)
    return {k: str(v) for k, v in env.items()}


class PerNodeDirsProvider(FakeMultiNodeProvider):
    """FakeMultiNodeProvider (loaded as ``type: external`` in the head's monitor process, which
    starts nodes in-process with ``ray._private.node.Node``) whose nodes get their own cwd,
    HOME, REIDSEARCH_CACHE and Ray temp dir: the parent's method with env vars for the raylet
    (inherited by its workers) and a chdir around the start (children inherit the cwd)."""

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        resources = dict(resources)
        with self.lock:
            node_type = tags[T.TAG_RAY_USER_NODE_TYPE]
            node_id = self._next_hex_node_id()
            node_root = Path(self.provider_config["node_root"]) / f"{node_type}-{int(node_id[-5:])}"
            env = _node_dirs(node_root)
            env |= {"RAY_OVERRIDE_NODE_ID_FOR_TESTING": node_id, "RAY_CLOUD_INSTANCE_ID": node_id}
            env |= {"RAY_NODE_TYPE_NAME": node_type}
            kw = dict(node_ip_address="127.0.0.1", temp_dir=str(node_root / "ray"))
            kw |= dict(min_worker_port=0, max_worker_port=0, dashboard_agent_listen_port=0)
            kw |= dict(num_cpus=resources.pop("CPU", 0), num_gpus=resources.pop("GPU", 0))
            kw |= dict(object_store_memory=resources.pop("object_store_memory", None))
            kw |= dict(redis_address=self._gcs_address, gcs_address=self._gcs_address)
            env[ray_constants.RESOURCES_ENVIRONMENT_VARIABLE] = json.dumps(resources)
            env[ray_constants.LABELS_ENVIRONMENT_VARIABLE] = json.dumps(labels)
            kw |= dict(dashboard_port=None, resources=resources, labels=labels)
            params = RayParams(env_vars=env, **kw)
            old_cwd = os.getcwd()
            os.chdir(env["PWD"])
            try:
                node = Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
            finally:
                os.chdir(old_cwd)
            own = {T.TAG_RAY_NODE_KIND: T.NODE_KIND_WORKER, T.TAG_RAY_NODE_NAME: node_id}
            own[T.TAG_RAY_NODE_STATUS] = T.STATUS_UP_TO_DATE
            self._nodes[node_id] = {"tags": {**own, **tags}, "node": node}


_NO_COMMANDS = (
    "initialization_commands setup_commands head_setup_commands worker_setup_commands "
    "head_start_ray_commands worker_start_ray_commands cluster_synced_files rsync_exclude "
    "rsync_filter"
).split()  # list keys of a cluster config that the autoscaler reads


class LocalAutoscalingCluster(AutoscalingCluster):
    """AutoscalingCluster that neither needs ``example.yaml`` (missing from the Ray 2.60 wheel)
    nor runs ``ray stop --force``, and starts its head on 127.0.0.1 with free ports."""

    def __init__(self, root: Path, head_resources: dict, worker_node_types: dict, **kwargs):
        self.root, self.port, self.dashboard_port = root, free_port(), free_port()
        super().__init__(head_resources, worker_node_types, **kwargs)

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **kw):
        head = {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
        provider = {"type": "external", "gcs_address": f"127.0.0.1:{self.port}"}
        provider["module"] = f"{Path(__file__).stem}.{PerNodeDirsProvider.__name__}"
        provider["node_root"] = str(self.root / "nodes")
        provider["launch_multiple"] = True  # else "Adding 2 node(s)" starts one per update
        provider |= {"use_node_id_as_ip": True, "disable_node_updaters": True}
        provider["disable_launch_config_check"] = True
        return {
            "cluster_name": "reidsearch-test",
            "max_workers": sum(t.get("max_workers", 0) for t in worker_node_types.values()),
            "provider": provider,
            "available_node_types": {**worker_node_types, "ray.head.default": head},
            "head_node_type": "ray.head.default",
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": 0.1,
            **{k: {} for k in ("auth", "docker", "file_mounts")},
            **dict.fromkeys(_NO_COMMANDS, []),
            "file_mounts_sync_continuously": False,
            **kw,
        }

    def start(self, _system_config=None, override_env: dict | None = None):
        config_path = self.root / "autoscaling.json"
        config_path.write_text(json.dumps(self._config))
        head = dict(self._head_resources)
        cpus, gpus = head.pop("CPU", 0), head.pop("GPU", 0)
        store = head.pop("object_store_memory", OBJECT_STORE_BYTES)
        cmd = [str(BIN / "ray"), "start", "--head", f"--autoscaling-config={config_path}"]
        cmd += ["--node-ip-address=127.0.0.1", f"--port={self.port}", "--disable-usage-stats"]
        cmd += ["--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
        cmd += [f"--ray-client-server-port={free_port()}", f"--temp-dir={self.root / 'ray'}"]
        cmd += [f"--dashboard-agent-listen-port={free_port()}", f"--resources={json.dumps(head)}"]
        cmd += [f"--num-cpus={cpus}", f"--num-gpus={gpus}", f"--object-store-memory={store}"]
        env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
        env |= (override_env or {}) | _node_dirs(self.root / "nodes" / "head")
        out = subprocess.run(cmd, env=env, cwd=env["PWD"], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"ray start --head failed:\n{out.stdout}\n{out.stderr}")

    def processes(self) -> list[int]:
        return marked_processes(self.root)

    def shutdown(self, grace: float = 10.0):
        stop_marked(self.root, grace)


def marked_processes(root: Path) -> list[int]:
    """Pids of one test cluster's live processes: the marker is in each one's environment."""
    marker = f"{CLUSTER_MARKER}={root}".encode()
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    return [pid for pid in pids if marker in _environ(pid)]


def stop_marked(root: Path, grace: float = 10.0) -> None:
    """``ray stop`` for one test cluster only: SIGTERM raylets, then all but the GCS (the
    monitor waits ~10 s on a dead GCS), then the GCS; SIGKILL what is left."""
    rank = {"raylet": 0, "gcs_server": 2}  # the rest: 1; phase 3 SIGKILLs the leftovers
    for phase in range(4):
        exe = {p: Path(f"/proc/{p}/exe").resolve().name for p in marked_processes(root)}
        pids = [p for p, e in exe.items() if phase == 3 or rank.get(e, 1) == phase]
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL if phase == 3 else signal.SIGTERM)
        deadline = time.monotonic() + grace
        while set(pids) & set(marked_processes(root)) and time.monotonic() < deadline:
            time.sleep(0.1)


@dataclass
class ClusterHandle:
    address: str  # 127.0.0.1:PORT (GCS), for ray.init(address=...)
    dashboard_url: str
    root: Path  # tmp folder: nodes/<type>-<n>/{work,home,cache,ray}, nodes/head/..., ray/
    env: dict[str, str]  # set in the driver and every node (S3, RAY_AUTH_MODE, ...)
    cluster: LocalAutoscalingCluster = field(repr=False)


@contextlib.contextmanager
def autoscaling_cluster(env=None, worker_cpus=1, max_workers=2, idle_timeout_minutes=0.1):
    """Head: CPU 0 + TRIAL_DRIVER_RESOURCE; ``cpu_worker`` nodes: {CPU: worker_cpus}, 0..max.
    ``env`` (e.g. ``S3Server.env``) goes to the driver (restored after) and every node; the
    driver is connected. ``root`` is deleted after a clean run, kept (Ray logs) after an error."""
    root = Path(tempfile.mkdtemp(prefix="rsc-", dir="/tmp"))  # short: unix sockets below it
    env = {**(env or {}), "RAY_AUTH_MODE": "disabled"}
    node_env = env | {CLUSTER_MARKER: str(root)}  # not in the driver: shutdown kills its holders
    node_env["PYTHONPATH"] = f"{Path(__file__).parent}{os.pathsep}{os.getenv('PYTHONPATH', '')}"
    worker = {"resources": {"CPU": worker_cpus, "object_store_memory": OBJECT_STORE_BYTES}}
    worker |= {"node_config": {}, "min_workers": 0, "max_workers": max_workers}
    cluster = LocalAutoscalingCluster(
        root,
        head_resources={"CPU": 0, TRIAL_DRIVER_RESOURCE: 1000},
        worker_node_types={"cpu_worker": worker},
        idle_timeout_minutes=idle_timeout_minutes,
    )
    address, dashboard = f"127.0.0.1:{cluster.port}", f"http://127.0.0.1:{cluster.dashboard_port}"
    # One machine holds every node, so Ray's own lookups of "the" local cluster (Train's
    # placement-group cleaner asks the state API) would find several GCS addresses: name it.
    node_env["RAY_ADDRESS"] = address
    handle = ClusterHandle(address, dashboard, root, env, cluster)
    clean = False
    try:
        with mock.patch.dict(os.environ, env):
            cluster.start(override_env=node_env)
            ray.init(address=address)
            yield handle
            clean = True
    finally:
        ray.shutdown()
        cluster.shutdown()
        if clean:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"autoscaling_cluster: logs kept in {root}", file=sys.stderr)


@pytest.fixture(name="s3", scope="session")
def s3_fixture(tmp_path_factory):
    with s3_server(log_dir=tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(name="mlflow_uri", scope="session")  # ~15 s to start: one per session
def mlflow_uri_fixture(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(name="ray_cluster")
def ray_cluster_fixture(s3):
    with autoscaling_cluster(env=s3.env) as handle:
        yield handle
