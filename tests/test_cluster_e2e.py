"""A real search on a local autoscaling Ray cluster: the head runs no trial, worker nodes start at
zero and have their own disks, results go to S3 (a local moto server), MLflow is a real server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import ray
import yaml

from reidsearch import storage
from tests.cluster_harness import (  # noqa: F401 - fixtures
    mlflow_uri_fixture,
    ray_cluster_fixture,
    s3_fixture,
)
from tests.conftest import tiny_config_dict

pytestmark = pytest.mark.cluster
mlflow = pytest.importorskip("mlflow")


def _worker_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]


def _space(path: Path, s3, mlflow_uri: str) -> Path:
    # A dataset of its own (seed 11): no earlier test has decoded it.
    fixed = tiny_config_dict(epochs=2, **{"data.synthetic.seed": 11})
    space = {
        "name": "cluster",
        "fixed": fixed,
        "search": {"model.lam": {"type": "uniform", "low": 0.5, "high": 10.0}},
        "trials": 4,
        "max_concurrent": 2,
        "scheduler": {"type": "none"},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "seed": 0,
        "storage_path": s3.uri("runs"),
        "mlflow": {"tracking_uri": mlflow_uri, "experiment": "cluster-e2e"},
    }
    path.write_text(yaml.safe_dump(space))
    return path


def _run_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`reidsearch ...` as a user runs it on the head: a fresh driver process (Ray Tune keeps
    per-process registries that a second Ray session in one process would trip over)."""
    full_env = {**os.environ, **env, "RAY_AUTH_MODE": "disabled"}
    full_env.pop("RAY_ADDRESS", None)
    command = [str(Path(sys.executable).parent / "reidsearch"), *args]
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True)


def test_a_search_scales_out_to_worker_nodes_and_logs_to_one_server(
    ray_cluster, s3, mlflow_uri, tmp_path
):
    head = ray.get_runtime_context().get_node_id()
    assert _worker_nodes() == []  # the cluster starts with the head alone (CPU 0)

    _space(tmp_path / "cluster.yaml", s3, mlflow_uri)
    cluster_file = str(ray_cluster.root / "autoscaling.json")
    args = ["run", "cluster.yaml", "--address", ray_cluster.address, "--cluster", cluster_file]
    run = _run_cli(args, tmp_path, ray_cluster.env)
    assert run.returncode == 0, run.stderr[-4000:]

    # Every trial logged to the one server; each records the node it trained on.
    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("cluster-e2e")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("reidsearch.kind") == "trial"]
    assert len(trials) == 4
    nodes = {t.data.tags["reidsearch.nodes"] for t in trials}
    assert head not in nodes and len(nodes) >= 2, nodes  # the autoscaler added >= 2 nodes
    for trial in trials:
        assert trial.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(trial.info.run_id, "mAP")] == [1, 2]
        pictures = {a.path for a in client.list_artifacts(trial.info.run_id, "pictures")}
        assert "pictures/cmc.png" in pictures  # read from S3 through Ray's Checkpoint API

    # Results and checkpoints live in the bucket, not on any local disk.
    with mock.patch.dict(os.environ, s3.env):
        (experiment,) = storage.list_dirs(s3.uri("runs"))
        experiment_dir = s3.uri(f"runs/{experiment}")
        state = json.loads(
            storage.read_text(storage.join(experiment_dir, "reidsearch", "mlflow_runs.json"))
        )
        assert len(state["trials"]) == 4
        assert len(storage.list_dirs(storage.join(experiment_dir, "train"))) == 4
    # The study's journal is in the bucket too: another machine (its own, empty cache) finds
    # it through MLflow, as `reidsearch dashboard` does, with the trials' scores as values.
    other = {**s3.env, "REIDSEARCH_CACHE": str(tmp_path.parent / "other-machine")}
    with mock.patch.dict(os.environ, other):
        from reidsearch.search.results.dashboard import search_study

        study = search_study(mlflow_uri, "cluster-e2e", None)
        frozen = study.storage().get_all_trials(study.storage().get_study_id_from_name(study.name))
        values = sorted(t.value for t in frozen if t.state.name == "COMPLETE")
        scores = sorted(t.data.metrics["score"] for t in trials)
        assert len(values) == 4 and values == pytest.approx(scores)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml"]

    # The dataset was decoded once, by the driver: no worker node decoded or generated it.
    records = list((storage.default_cache_root() / "images").glob("*.json"))
    ours = [r for r in records if json.loads(r.read_text())["root"].endswith(_seed_11_root())]
    assert len(ours) == 1
    node_dirs = sorted((ray_cluster.root / "nodes").glob("cpu_worker-*"))
    assert len(node_dirs) >= 2
    for node in node_dirs:
        assert not list((node / "cache").rglob("*.npy")), node
        assert not (node / "cache" / "synthetic").exists(), node

    # The idle worker nodes go away after the search.
    deadline = time.monotonic() + 90
    while _worker_nodes() and time.monotonic() < deadline:
        time.sleep(1)
    assert _worker_nodes() == []


def _seed_11_root() -> str:
    from reidsearch.config import TrialConfig
    from reidsearch.data.synthetic import ensure_synthetic

    cfg = TrialConfig.model_validate(tiny_config_dict(**{"data.synthetic.seed": 11}))
    return str(ensure_synthetic(cfg.data.synthetic))


def test_a_local_storage_path_is_refused_on_a_multi_node_cluster(ray_cluster, s3, tmp_path):
    _space(tmp_path / "local.yaml", s3, f"sqlite:///{tmp_path / 'mlflow.db'}")
    cluster_file = str(ray_cluster.root / "autoscaling.json")
    args = ["run", "local.yaml", "--address", ray_cluster.address, "--cluster", cluster_file]
    run = _run_cli([*args, "--storage", str(tmp_path / "runs")], tmp_path, ray_cluster.env)
    assert run.returncode == 2, run.stderr[-4000:]
    (line,) = [line for line in run.stderr.splitlines() if line.startswith("reidsearch: error")]
    assert "local.yaml: storage_path: " in line and "is a local folder" in line
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
