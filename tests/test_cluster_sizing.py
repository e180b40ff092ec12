"""How many trials a search runs at once on a joined cluster, what it refuses up front, and where
trial drivers go: decided from the cluster's maximum size, not from what is up at the start."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

import reidsearch
from reidsearch.errors import ReidSearchError
from reidsearch.search.cluster.capacity import TRIAL_DRIVER_CPUS, TRIAL_DRIVER_RESOURCE
from reidsearch.search.cluster.cluster_file import load_cluster_file
from reidsearch.search.cluster.ray_session import (
    RayCluster,
    check_shared_storage,
    ray_cluster_from,
    size_concurrency,
)

ROOT = Path(__file__).resolve().parents[1]
HEAD_ONLY = {"CPU": 0.0, TRIAL_DRIVER_RESOURCE: 1000.0, "memory": 1e10}


def _joined(cluster_file: Path, alive_nodes: int = 1) -> RayCluster:
    """A joined Ray, sized as init_ray sizes it when Ray keeps no autoscaler record: by the
    cluster file; up now: the head alone, no GPU node yet."""
    layout = load_cluster_file(cluster_file)
    return ray_cluster_from(joined=True, current=HEAD_ONLY, alive_nodes=alive_nodes, layout=layout)


def _autoscaling_aws_cluster(alive_nodes: int = 1) -> RayCluster:
    """The shipped cluster.yaml right after `ray up`."""
    return _joined(ROOT / "cluster.yaml", alive_nodes)


def test_a_head_only_cluster_file_is_one_node_and_keeps_local_storage(tmp_path):
    """The head is counted once: a cluster file without worker types is not multi-node."""
    space = reidsearch.load_space(ROOT / "search_spaces" / "quickstart.yaml")
    data = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    data["available_node_types"] = {"head": data["available_node_types"]["head"]}
    head_only = tmp_path / "head_only.yaml"
    head_only.write_text(yaml.safe_dump(data))
    cluster = _joined(head_only)
    assert cluster.max_nodes == 1 and not cluster.multi_node
    check_shared_storage(space, cluster, "/data/runs")
    with_workers = _autoscaling_aws_cluster()  # max_workers 8 beside the head
    assert with_workers.max_nodes == 1 + 8 and with_workers.multi_node
    with pytest.raises(ReidSearchError, match="is a local folder"):
        check_shared_storage(space, with_workers, "/data/runs")


def test_a_gpu_search_starts_on_a_cluster_with_zero_gpu_nodes(capsys):
    space = reidsearch.load_space(ROOT / "search_spaces" / "latfpp.yaml")  # 1 GPU, 8 CPUs a trial
    cluster = _autoscaling_aws_cluster()
    assert size_concurrency(space, cluster, 4) == 4  # not refused, not lowered to "fits now"
    assert "trials wait for the autoscaler" in capsys.readouterr().out
    # The cluster's maximum (1 x 8-GPU node + 7 x 1-GPU nodes) caps a larger request.
    assert size_concurrency(space, cluster, 40) == 15
    # Trial drivers stay on the head, through its custom resource, and take no CPU there.
    assert cluster.driver_resources == {"CPU": 0.0, TRIAL_DRIVER_RESOURCE: 1.0}


def test_a_trial_no_node_type_can_run_is_refused_in_one_line(tmp_path):
    space = reidsearch.load_space(ROOT / "search_spaces" / "latfpp.yaml")
    huge = space.fixed_config.scaling.model_copy(update={"gpus_per_worker": 16.0})
    space = dataclasses.replace(
        space, fixed_config=space.fixed_config.model_copy(update={"scaling": huge})
    )
    with pytest.raises(ReidSearchError) as err:
        size_concurrency(space, _autoscaling_aws_cluster(), 4)
    message = str(err.value)
    assert message.startswith(f"{space.source}: resources: no node type of ")
    assert "cluster.yaml can ever run one trial" in message and "\n" not in message


def test_an_embedded_local_ray_is_sized_by_what_it_has(capsys):
    space = reidsearch.load_space(ROOT / "search_spaces" / "quickstart.yaml")  # 1 CPU a trial
    local = RayCluster(
        joined=False, current={"CPU": 2.0}, maximum={"CPU": 2.0}, alive_nodes=1, max_nodes=0
    )
    # runner: trial_process: the trial trains in its own process, nothing runs beside it.
    assert local.trial_resources(space.fixed_config.scaling) == {"CPU": 1.0}
    assert size_concurrency(space, local, 2) == 2
    scaling = space.fixed_config.scaling.model_copy(update={"runner": "ray_train"})
    space.fixed_config = space.fixed_config.model_copy(update={"scaling": scaling})
    assert local.driver_resources == {"CPU": TRIAL_DRIVER_CPUS}
    assert local.trial_resources(scaling) == local.driver_resources
    assert size_concurrency(space, local, 2) == 1  # 2 x (1 + 0.1) CPUs do not fit in 2
    assert "lowering max_concurrent" in capsys.readouterr().out


def test_local_storage_is_refused_only_where_nodes_do_not_share_a_disk():
    space = reidsearch.load_space(ROOT / "search_spaces" / "quickstart.yaml")
    cluster = _autoscaling_aws_cluster()
    with pytest.raises(ReidSearchError, match=r"storage_path: /data/runs is a local folder"):
        check_shared_storage(space, cluster, "/data/runs")
    check_shared_storage(space, cluster, "s3://bucket/runs")
    check_shared_storage(space, cluster, "file:///mnt/shared/runs")  # mounted on every node
    one_machine = RayCluster(
        joined=True, current={"CPU": 8.0}, maximum={"CPU": 8.0}, alive_nodes=1, max_nodes=0
    )
    check_shared_storage(space, one_machine, "/data/runs")


def test_the_cluster_file_of_a_ray_up_head_is_found_and_a_broken_one_only_named(
    tmp_path, monkeypatch, capsys
):
    from reidsearch.search.cluster.ray_session import _layout, cluster_file_path

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("REIDSEARCH_CLUSTER_FILE", raising=False)
    assert cluster_file_path(None) is None
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text((ROOT / "cluster.yaml").read_text())
    assert cluster_file_path(None) == bootstrap
    assert _layout(None).max_resources()["GPU"] == 15
    bootstrap.write_text("max_workers: many\n")  # found by itself: named, then ignored
    assert _layout(None) is None
    assert "ignoring the cluster file found" in capsys.readouterr().out
    with pytest.raises(ReidSearchError):  # named by the user: an error
        _layout(str(bootstrap))
