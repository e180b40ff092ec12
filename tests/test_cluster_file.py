"""cluster.yaml: Ray's own offline validation, and `reidsearch cluster check` against a space."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reidsearch.cli import main
from reidsearch.config import ResourcesConfig
from reidsearch.errors import ConfigError
from reidsearch.search.cluster.capacity import TRIAL_DRIVER_RESOURCE
from reidsearch.search.cluster.cluster_file import (
    ClusterFile,
    NodeType,
    how_many_trials_fit,
    load_cluster_file,
)

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster.yaml"
LATFPP = REPO / "search_spaces" / "latfpp.yaml"
S3 = "s3://YOUR-BUCKET/reidsearch/runs"


def _cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def _space(**changes) -> dict:
    data = yaml.safe_load(LATFPP.read_text())
    data.update(changes)
    return data


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _check(capsys, *paths: Path | str) -> tuple[int, str, list[str]]:
    code = main(["cluster", "check", *map(str, paths)])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def _fails(capsys, *paths, names: tuple[str, ...]) -> str:
    code, _, err = _check(capsys, *paths)
    assert code == 2
    assert len(err) == 1, err
    for name in names:
        assert name in err[0], err[0]
    return err[0]


# --------------------------------------------------------------------------- the shipped file
def test_shipped_cluster_validates_with_rays_validator():
    from reidsearch.internals.ray_internals import cluster_config_validator

    cluster_config_validator()(_cluster())
    cluster = load_cluster_file(CLUSTER)
    assert cluster.head_type == "head"
    assert cluster.head.resources["CPU"] == 0
    assert cluster.head.resources[TRIAL_DRIVER_RESOURCE] >= 1
    assert cluster.multi_node
    assert {"gpu_1x", "gpu_8x_h100"} <= set(cluster.node_types)
    # head + 1 p5 (8 GPUs) + 7 of the 1-GPU type: the global max_workers (8) caps the total
    assert cluster.max_resources()["GPU"] == 15


def test_check_space_on_s3_storage_passes(capsys, tmp_path):
    space = _write(tmp_path, "latfpp.yaml", _space(storage_path=S3))
    code, out, err = _check(capsys, CLUSTER, space)
    assert code == 0, err
    assert "gpu_8x_h100" in out and "15 trials fit at once" in out


def test_a_folder_every_node_mounts_passes(capsys, tmp_path):
    """``file:///...`` is shared storage, as the search driver itself accepts it."""
    space = _write(tmp_path, "nfs.yaml", _space(storage_path="file:///mnt/shared/runs"))
    code, _, err = _check(capsys, CLUSTER, space)
    assert code == 0, err


def test_cluster_alone_passes(capsys):
    code, out, _ = _check(capsys, CLUSTER)
    assert code == 0 and "maximum size" in out


# ------------------------------------------------------------------------------- broken copies
@pytest.mark.fault("bad_input")
def test_local_storage_on_multi_node_cluster(capsys):
    line = _fails(capsys, CLUSTER, LATFPP, names=(str(LATFPP), "storage_path", "s3://"))
    assert "do not share" in line


@pytest.mark.fault("bad_input")
def test_local_storage_path_string_is_refused_too(capsys, tmp_path):
    space = _write(tmp_path, "s.yaml", _space(storage_path="/shared/runs"))
    _fails(capsys, CLUSTER, space, names=("s.yaml", "storage_path"))


@pytest.mark.fault("bad_input")
def test_missing_head_type(capsys, tmp_path):
    data = _cluster()
    data["head_node_type"] = "nope"
    path = _write(tmp_path, "cluster.yaml", data)
    _fails(capsys, path, names=(str(path), "head_node_type", "nope"))
    del data["head_node_type"]
    path = _write(tmp_path, "cluster.yaml", data)
    _fails(capsys, path, names=(str(path), "head_node_type"))


@pytest.mark.fault("bad_input")
def test_head_without_trial_driver_resource(capsys, tmp_path):
    data = _cluster()
    data["available_node_types"]["head"]["resources"] = {"CPU": 0}
    path = _write(tmp_path, "cluster.yaml", data)
    space = _write(tmp_path, "s.yaml", _space(storage_path=S3))
    _fails(
        capsys, path, space, names=("available_node_types.head.resources", TRIAL_DRIVER_RESOURCE)
    )


@pytest.mark.fault("bad_input")
def test_gpu_space_without_gpu_workers(capsys, tmp_path):
    data = _cluster()
    types = data["available_node_types"]
    del types["gpu_8x_h100"]
    types["gpu_1x"]["resources"] = {"CPU": 8}
    types["gpu_1x"]["node_config"]["InstanceType"] = "m6i.2xlarge"
    path = _write(tmp_path, "cluster.yaml", data)
    space = _write(tmp_path, "s.yaml", _space(storage_path=S3))
    _fails(capsys, path, space, names=("s.yaml", "resources.gpus_per_worker", str(path)))


@pytest.mark.parametrize(
    ("resources", "names"),
    [
        # one worker fits no node type
        ({"workers": 1, "gpus_per_worker": 1, "cpus_per_worker": 500}, ("resources",)),
        # the trial's workers exceed the whole cluster (15 GPUs at most)
        ({"workers": 16, "gpus_per_worker": 1, "cpus_per_worker": 8}, ("resources.workers", "15")),
    ],
)
@pytest.mark.fault("bad_input")
def test_trial_that_no_cluster_size_holds(capsys, tmp_path, resources, names):
    space = _write(tmp_path, "s.yaml", _space(storage_path=S3, resources=resources))
    _fails(capsys, CLUSTER, space, names=("s.yaml", *names))


@pytest.mark.fault("bad_input")
def test_max_concurrent_too_big(capsys, tmp_path):
    space = _write(tmp_path, "s.yaml", _space(storage_path=S3, max_concurrent=64))
    line = _fails(capsys, CLUSTER, space, names=("s.yaml", "max_concurrent"))
    assert "15 fit" in line


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (
            lambda d: d["available_node_types"]["gpu_1x"].update(max_workers="many"),
            "available_node_types.gpu_1x.max_workers",
        ),
        (lambda d: d.update(max_workers="many"), "max_workers: 'many'"),
        (
            lambda d: d["available_node_types"]["gpu_1x"]["resources"].update(GPU=0.5),
            "available_node_types.gpu_1x.resources.GPU",
        ),
        (lambda d: d.update(no_such_key=1), "no_such_key"),
    ],
)
@pytest.mark.fault("bad_input")
def test_schema_violation_names_the_key_path(capsys, tmp_path, edit, key):
    data = _cluster()
    edit(data)
    path = _write(tmp_path, "cluster.yaml", data)
    _fails(capsys, path, names=(str(path), key))


@pytest.mark.fault("bad_input")
def test_not_yaml_and_missing_file(capsys, tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("provider: [\n")
    _fails(capsys, path, names=(str(path), "YAML"))
    _fails(capsys, tmp_path / "none.yaml", names=("none.yaml",))


def test_local_provider_reads_ray_start_resources(tmp_path):
    head_start = "ray start --head --num-cpus=0 --resources='{\"reidsearch_trial_driver\": 1000}'"
    data = {
        "cluster_name": "onprem",
        "provider": {
            "type": "local",
            "head_ip": "10.0.0.10",
            "worker_ips": ["10.0.0.11", "10.0.0.12"],
        },
        "auth": {"ssh_user": "me"},
        "head_start_ray_commands": [head_start],
        "worker_start_ray_commands": [
            "ray start --address=$RAY_HEAD_IP:6379 --num-cpus=16 --num-gpus=2"
        ],
    }
    cluster = load_cluster_file(_write(tmp_path, "local.yaml", data))
    assert cluster.multi_node and cluster.max_workers == 2
    assert cluster.head.resources == {"CPU": 0, "GPU": 0, TRIAL_DRIVER_RESOURCE: 1000}
    assert (
        how_many_trials_fit(
            cluster, ResourcesConfig(workers=1, gpus_per_worker=1, cpus_per_worker=8)
        )
        == 4
    )
    data["worker_start_ray_commands"] = ["ray start --address=$RAY_HEAD_IP:6379"]
    with pytest.raises(ConfigError, match="worker_start_ray_commands"):
        load_cluster_file(_write(tmp_path, "local.yaml", data))


# ----------------------------------------------------------------------- how_many_trials_fit
def _toy(max_workers: int, **types: tuple[dict, int]) -> ClusterFile:
    nodes = {"head": NodeType("head", {"CPU": 0, TRIAL_DRIVER_RESOURCE: 1000}, 0, 0)}
    for name, (res, count) in types.items():
        nodes[name] = NodeType(name, {k: float(v) for k, v in res.items()}, 0, count)
    return ClusterFile(Path("toy.yaml"), "aws", "head", nodes, max_workers)


def _fit(cluster: ClusterFile, workers=1, gpus=1.0, cpus=8.0) -> int:
    scaling = ResourcesConfig(workers=workers, gpus_per_worker=gpus, cpus_per_worker=cpus)
    return how_many_trials_fit(cluster, scaling)


def test_how_many_trials_fit_per_node_packing():
    cluster = _toy(4, g1=({"CPU": 8, "GPU": 1}, 4))
    assert _fit(cluster) == 4
    assert _fit(cluster, cpus=4) == 4  # GPU-bound: one worker per node
    assert _fit(cluster, gpus=0.5, cpus=4) == 8  # two half-GPU workers per node
    assert _fit(cluster, gpus=0.5, cpus=6) == 4  # CPU-bound again
    assert _fit(cluster, workers=2) == 2  # a trial's workers span nodes
    assert _fit(cluster, workers=3) == 1
    assert _fit(cluster, workers=5) == 0
    assert _fit(cluster, gpus=2) == 0


def test_how_many_trials_fit_fills_the_global_cap_with_the_best_type():
    cluster = _toy(3, small=({"CPU": 8, "GPU": 1}, 8), big=({"CPU": 192, "GPU": 8}, 1))
    assert _fit(cluster) == 8 + 2  # the big node first, then 2 small ones (global cap 3)
    assert _fit(cluster, gpus=0, cpus=96) == 2  # CPU-only workers: only the big node holds one
    assert _fit(_toy(0, g=({"CPU": 8, "GPU": 1}, 8))) == 0  # no worker nodes at all


def test_how_many_trials_fit_is_capped_by_the_driver_resource():
    cluster = _toy(8, g=({"CPU": 8, "GPU": 1}, 8))
    head = cluster.node_types["head"]
    cluster.node_types["head"] = NodeType(
        "head", {**head.resources, TRIAL_DRIVER_RESOURCE: 3}, 0, 0
    )
    assert _fit(cluster) == 3
