"""A real search on a local autoscaling Ray cluster: the head runs no trial, worker nodes start at
zero and have their own disks, results go to S3 (a local moto server), MLflow is a real server.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

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


def test_a_search_scales_out_to_worker_nodes_and_logs_to_one_server(
    ray_cluster, s3, mlflow_uri, tmp_path, monkeypatch
):
    from reidsearch.search.driver import run_search
    from reidsearch.search.space import load_search_space

    monkeypatch.chdir(tmp_path)  # nothing may land in the driver's working directory
    head = ray.get_runtime_context().get_node_id()
    assert _worker_nodes() == []  # the cluster starts with the head alone (CPU 0)

    space = load_search_space(_space(tmp_path / "cluster.yaml", s3, mlflow_uri))
    cluster_file = str(ray_cluster.root / "autoscaling.json")
    plan, results = run_search(space, verbose=0, cluster_file=cluster_file)
    assert len(results) == 4 and not results.errors

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
    assert plan.experiment_dir.startswith(s3.uri("runs/cluster-"))
    state = json.loads(storage.read_text(storage.join(plan.experiment_dir, "mlflow_runs.json")))
    assert len(state["trials"]) == 4
    assert len(storage.list_dirs(plan.train_storage)) == 4
    assert not (tmp_path / "reidsearch_runs").exists()

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
    from reidsearch.errors import ReidSearchError
    from reidsearch.search.driver import run_search
    from reidsearch.search.space import load_search_space

    path = _space(tmp_path / "local.yaml", s3, f"sqlite:///{tmp_path / 'mlflow.db'}")
    raw = yaml.safe_load(path.read_text())
    raw["storage_path"] = str(tmp_path / "runs")
    path.write_text(yaml.safe_dump(raw))
    cluster_file = str(ray_cluster.root / "autoscaling.json")
    with pytest.raises(ReidSearchError, match=r"storage_path: .* is a local folder") as err:
        run_search(load_search_space(path), verbose=0, cluster_file=cluster_file)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()
