"""Bad input on the cluster path, tried as a user would (``reidsearch run`` / ``cluster check``):
a tracking server that does not answer or is not MLflow, an unreachable bucket, a cluster file
or a trial no node type can run: one line, in seconds, before Ray starts (a tripwire on
``ray.init`` fails the test otherwise), nothing written. Real moto S3 and ``mlflow server``
(tests/cluster_harness.py); the non-MLflow servers are stdlib servers in threads. KINDS, at
the end, lists every kind of bad input the suite tries and its test."""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import reidsearch
from reidsearch.cli import main
from reidsearch.search.driver import preflight
from tests.cluster_harness import free_port, mlflow_uri_fixture, s3_fixture  # noqa: F401
from tests.conftest import tiny_config_dict

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster.yaml"
REFUSED_S = 5.0  # a closed port: the checks take ~0.1 s; MLflow's or the SDK's retries, far more
SILENT_S = preflight.PROBE_TIMEOUT_S + 4.0  # a server that never answers: one probe timeout
bad_input = pytest.mark.fault("bad_input")


@pytest.fixture(scope="module", autouse=True)
def _warm_imports() -> None:
    """Import the search driver (Ray Tune, torch) once, so the timings below time the checks."""
    importlib.import_module("reidsearch.search.driver.search")


@pytest.fixture(autouse=True)
def _ray_never_starts(monkeypatch) -> None:
    """A tripwire, not a stand-in: every command here must fail before Ray would start."""
    import ray

    def started(*args, **kwargs):
        raise AssertionError("Ray was started: the bad input was not caught before it")

    monkeypatch.setattr(ray, "init", started)


def _space(tmp_path: Path, **fields) -> Path:
    """A tiny space writing under tmp_path (runs/, mlflow.db): neither may appear."""
    space = {
        "name": f"bad-{uuid.uuid4().hex[:8]}",
        "fixed": tiny_config_dict(epochs=1),
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "storage_path": str(tmp_path / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    space.update(fields)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _fails(capsys, *argv, names: tuple[str, ...] = (), within: float = REFUSED_S) -> str:
    """Run the CLI; assert exit 2, one ``reidsearch: error:`` line naming ``names``, no
    traceback, in ``within`` seconds; return the line."""
    start = time.monotonic()
    code = main([str(arg) for arg in argv])
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("reidsearch: error: "), err
    assert "Traceback" not in out + err
    for name in names:
        assert name in lines[0], lines[0]
    assert elapsed < within, f"{elapsed:.1f} s: {lines[0]}"
    return lines[0]


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def _run(space: Path, *extra: str) -> list[str]:
    return ["run", str(space), "--address", "local", *extra]  # never joins another test's Ray


# ------------------------------------------------------------------------- servers that fail
@contextlib.contextmanager
def _thread_server(server: socketserver.BaseServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _BasicAuthGate(_Quiet):
    """What MLflow's basic-auth app (or an authenticating proxy) answers without valid
    credentials. ``mlflow server --app-name basic-auth`` itself needs Flask-WTF
    (``mlflow[auth]``), which this environment does not install."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Garbage(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"\x00\xffSSH-2.0-not-http\r\n\r\n")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as sock:
        yield sock.getsockname()[1]


# ----------------------------------------------------------------------- a. tracking servers
@bad_input
def test_tracking_server_on_a_closed_port(capsys, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    line = _fails(capsys, *_run(_space(tmp_path), "--tracking-uri", uri), names=(uri,))
    assert "--tracking-uri" in line and "no tracking server answers" in line
    _nothing_written(tmp_path)
    secret = uri.replace("http://", "http://alice:hunter2@")  # a password is never printed
    line = _fails(capsys, *_run(_space(tmp_path), "--tracking-uri", secret), names=("alice:***@",))
    assert "hunter2" not in line


@bad_input
def test_tracking_server_that_never_answers(capsys, tmp_path, silent_port):
    uri = f"http://127.0.0.1:{silent_port}"
    space = _space(tmp_path, mlflow={"tracking_uri": uri})
    line = _fails(
        capsys, *_run(space), names=(f"{space}: mlflow.tracking_uri", uri), within=SILENT_S
    )
    assert f"does not answer within {preflight.PROBE_TIMEOUT_S:g} s" in line
    _nothing_written(tmp_path)


@bad_input
def test_a_web_server_that_is_not_mlflow(capsys, tmp_path):
    handler = functools.partial(_Quiet, directory=str(tmp_path))
    with _thread_server(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)) as uri:
        line = _fails(capsys, *_run(_space(tmp_path), "--tracking-uri", uri), names=(uri,))
    assert "not an MLflow tracking server (HTTP 404" in line
    _nothing_written(tmp_path)


@bad_input
def test_a_server_that_does_not_speak_http(capsys, tmp_path):
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Garbage)
    with _thread_server(server) as uri:
        line = _fails(capsys, *_run(_space(tmp_path), "--tracking-uri", uri), names=(uri,))
    assert "not an HTTP answer" in line and "\x00" not in line


@bad_input
def test_a_tracking_server_that_wants_credentials(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BasicAuthGate)
    with _thread_server(server) as uri:
        line = _fails(capsys, *_run(_space(tmp_path), "--tracking-uri", uri), names=(uri,))
        assert "needs credentials (HTTP 401)" in line and "MLFLOW_TRACKING_USERNAME" in line
        with_password = uri.replace("http://", "http://admin:s3cret@")
        line = _fails(capsys, *_run(_space(tmp_path), "--tracking-uri", with_password))
        assert "refused the credentials given" in line and "s3cret" not in line
    _nothing_written(tmp_path)


@bad_input
def test_sqlite_store_in_a_folder_that_does_not_exist(capsys, tmp_path):
    uri = f"sqlite:///{tmp_path / 'no' / 'such' / 'mlflow.db'}"
    space = _space(tmp_path, mlflow={"tracking_uri": uri})
    line = _fails(capsys, *_run(space), names=(f"{space}: mlflow.tracking_uri", uri))
    assert f"the folder {tmp_path / 'no' / 'such'} does not exist" in line
    assert not (tmp_path / "no").exists()


def test_the_probe_is_what_a_real_mlflow_server_answers(mlflow_uri):  # noqa: F811
    preflight.check_tracking_uri(mlflow_uri, "--tracking-uri")
    preflight.check_tracking_uri(mlflow_uri + "/", "--tracking-uri")


# ------------------------------------------------------------------------------ b. buckets
@pytest.fixture
def s3_env(s3, monkeypatch):  # noqa: F811
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3


def _no_experiment(mlflow_uri: str, space: Path) -> None:
    """The failed search left nothing in the MLflow server (no experiment, so no run)."""
    from mlflow.tracking import MlflowClient

    name = yaml.safe_load(space.read_text())["name"]
    assert MlflowClient(tracking_uri=mlflow_uri).get_experiment_by_name(name) is None


@bad_input
def test_storage_in_a_bucket_that_does_not_exist(capsys, tmp_path, s3_env, mlflow_uri):  # noqa: F811
    space = _space(tmp_path, storage_path="s3://missing-bucket/runs")
    line = _fails(
        capsys,
        *_run(space, "--tracking-uri", mlflow_uri),
        names=(f"{space}: storage_path", "s3://missing-bucket/runs"),
    )
    assert "bucket 'missing-bucket' does not exist" in line
    _no_experiment(mlflow_uri, space)


@pytest.mark.parametrize("endpoint", ["closed", "silent"])
@bad_input
def test_storage_endpoint_that_does_not_answer(
    capsys, tmp_path, s3_env, monkeypatch, silent_port, endpoint
):
    port = free_port() if endpoint == "closed" else silent_port
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    line = _fails(
        capsys,
        *_run(_space(tmp_path), "--storage", s3_env.uri("runs")),
        names=("storage_path", s3_env.uri("runs"), f"http://127.0.0.1:{port}"),
        within=REFUSED_S if endpoint == "closed" else SILENT_S,
    )
    assert "does not answer" in line


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ("s3://missing-bucket/market", "bucket 'missing-bucket' does not exist"),
        ("s3://reidsearch/no/such/market", "no such folder"),
    ],
)
@bad_input
def test_data_uri_that_is_not_there(capsys, tmp_path, s3_env, data, words):
    line = _fails(capsys, *_run(_space(tmp_path), "--data", data), names=("fixed.data.root", data))
    assert words in line
    _nothing_written(tmp_path)


def test_a_writable_bucket_passes_and_keeps_no_probe(s3_env):
    import pyarrow.fs as pafs

    root = s3_env.uri(f"probe-{uuid.uuid4().hex[:8]}")
    preflight.check_remote_storage(root, "space.yaml: storage_path")
    filesys, path = pafs.FileSystem.from_uri(s3_env.uri())
    names = [info.path for info in filesys.get_file_info(pafs.FileSelector(path, recursive=True))]
    assert not [name for name in names if "reidsearch-probe" in name], names


# ------------------------------------------------------------------- c. cluster files
def _cluster_file(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(CLUSTER.read_text())
    edit(data)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _joining(space: Path, cluster: Path) -> list[str]:
    """``run --cluster`` joining a cluster (a head that is not up: the checks come first)."""
    return ["run", str(space), "--cluster", str(cluster), "--address", f"127.0.0.1:{free_port()}"]


def _gpu_1x(**changes):
    return lambda data: data["available_node_types"]["gpu_1x"].update(changes)


def _no_node_config(data):
    data["available_node_types"]["gpu_1x"].pop("node_config")


BROKEN_NODE_TYPES = [  # the key after available_node_types.gpu_1x, and what is wrong
    (_no_node_config, ": 'node_config' is a required property"),
    (_gpu_1x(node_config="gpu_config"), ".node_config: 'gpu_config' is not of type 'object'"),
    (_gpu_1x(node_config={"ImageId": "ami-0"}), ".node_config.InstanceType: missing"),
    (lambda d: d["available_node_types"].update(gpu_1x=None), ": expected a mapping"),
]


@pytest.mark.parametrize("command", ["run", "cluster check"])
@pytest.mark.parametrize(("edit", "key"), BROKEN_NODE_TYPES, ids=["none", "str", "no-type", "null"])
@bad_input
def test_a_node_type_without_a_usable_node_config(capsys, tmp_path, command, edit, key):
    cluster = _cluster_file(tmp_path, edit)
    argv = (
        _joining(_space(tmp_path), cluster) if command == "run" else ["cluster", "check", cluster]
    )
    _fails(capsys, *argv, names=(f"{cluster}: available_node_types.gpu_1x{key}",))
    _nothing_written(tmp_path)


@bad_input
def test_run_with_a_head_type_that_is_not_a_node_type(capsys, tmp_path):
    cluster = _cluster_file(tmp_path, lambda data: data.update(head_node_type="gpu_head"))
    _fails(capsys, *_joining(_space(tmp_path), cluster), names=(f"{cluster}: head_node_type:",))
    _nothing_written(tmp_path)


@pytest.mark.parametrize("command", ["run", "cluster check"])
@bad_input
def test_more_gpus_per_worker_than_any_node_type_has(capsys, tmp_path, command):
    resources = {"workers": 1, "gpus_per_worker": 16, "cpus_per_worker": 8}
    space = _space(tmp_path, resources=resources, storage_path="s3://bucket/runs")
    argv = _joining(space, CLUSTER) if command == "run" else ["cluster", "check", CLUSTER, space]
    line = _fails(capsys, *argv, names=(f"{space}: resources.gpus_per_worker:", str(CLUSTER)))
    assert "16 GPU" in line and "gpu_8x_h100: 192 CPU, 8 GPU" in line


def test_a_fitting_trial_passes_the_cluster_check(tmp_path):
    resources = {"workers": 2, "gpus_per_worker": 1, "cpus_per_worker": 8}
    space = reidsearch.load_space(_space(tmp_path, resources=resources))
    preflight.check_cluster_file(space, str(CLUSTER), address=f"127.0.0.1:{free_port()}")


# -------------------------------------------------------- the suite's kinds of bad input
@bad_input
@pytest.mark.parametrize("command", ["run", "train"])
def test_a_file_given_as_data(capsys, tmp_path, command):
    space, image = _space(tmp_path), tmp_path / "market.zip"
    image.write_bytes(b"PK\x03\x04")
    extra = ["--address", "local"] if command == "run" else ["--no-ray"]
    line = _fails(capsys, command, space, "--data", image, *extra, names=(f"{image}: --data",))
    assert "a file, not a dataset folder" in line
    _nothing_written(tmp_path)


@bad_input
def test_a_truncated_jpeg_stops_training_with_one_line(capsys, tmp_path):
    from reidsearch.data.synthetic import generate_synthetic

    root = tmp_path / "market"
    generate_synthetic(root, layout="market1501", ids=3, test_ids=2, cameras=2, height=64, width=32)
    victim = sorted((root / "bounding_box_train").glob("*.jpg"))[2]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    config = tiny_config_dict()
    config["data"] = {"root": str(root), "layout": "market1501", "height": 64, "width": 32}
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    _fails(capsys, "train", path, "--no-ray", "--output", out, names=(str(victim),), within=60)
    assert not out.exists()


# Every kind of bad input the suite tries, and the (marked) test that tries it.
SPACE = "test_space_errors::test_malformed_space_raises_one_line_naming_file_and_key"
KINDS = {
    "malformed YAML": SPACE,  # and wrong type, reversed range, condition on an unknown key:
    "wrong type": SPACE,  # parameters of the same test (see its BAD list)
    "reversed range": SPACE,
    "condition on an unknown key": SPACE,
    "unknown key": "test_cli::test_malformed_search_space_fails_fast_with_one_line",
    "unknown head": "test_cli::test_missing_files_and_bad_layouts_are_one_line_errors",
    "a file given as --data": "test_a_file_given_as_data",
    "a truncated JPEG": "test_unreadable_images::test_unreadable_image_stops_by_default",
    "a truncated JPEG, at the CLI": "test_a_truncated_jpeg_stops_training_with_one_line",
    "a garbage image": "test_cache_sampler_augment::test_cache_unreadable_image",
    "weights that fit no backbone": "test_modeling::test_bad_weights_files_name_the_file",
    "no query with a valid gallery match": "test_metrics::test_no_valid_query_raises",
    "a tracking server that does not answer": "test_tracking_server_that_never_answers",
    "a tracking server that is not MLflow": "test_a_web_server_that_is_not_mlflow",
    "a tracking server that wants credentials": "test_a_tracking_server_that_wants_credentials",
    "a bucket that does not exist": "test_storage_in_a_bucket_that_does_not_exist",
    "a storage endpoint that does not answer": "test_storage_endpoint_that_does_not_answer",
    "a head type that is not a node type": "test_cluster_file::test_missing_head_type",
    "a node type without a usable node config": "test_a_node_type_without_a_usable_node_config",
    "a trial no node type can run": "test_more_gpus_per_worker_than_any_node_type_has",
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_of_bad_input_has_a_marked_test(kind):
    """The suite's count of bad inputs stays honest: each kind's test exists and is marked."""
    module, _, name = KINDS[kind].rpartition("::")
    test = getattr(importlib.import_module(f"tests.{module or __name__.split('.')[-1]}"), name)
    kinds = [mark.args for mark in getattr(test, "pytestmark", []) if mark.name == "fault"]
    assert kinds == [("bad_input",)], f"{KINDS[kind]} is not marked fault('bad_input')"
