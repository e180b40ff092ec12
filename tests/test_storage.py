"""Paths that cross nodes: local folders and s3:// URIs (a real local S3 server, moto), through
pyarrow.fs as Ray uses it; datasets and weights given as URIs are fetched once per machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reidsearch import storage
from reidsearch.errors import ReidSearchError
from tests.cluster_harness import s3_fixture  # noqa: F401 - the `s3` fixture


@pytest.fixture()
def s3_env(s3, monkeypatch, tmp_path):  # noqa: F811
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("REIDSEARCH_CACHE", str(tmp_path / "cache"))
    return s3


def test_uris_are_never_resolved_as_local_paths(tmp_path, monkeypatch):
    from reidsearch.config import DataConfig, ModelConfig

    monkeypatch.chdir(tmp_path)
    assert storage.absolute("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.absolute("runs") == str(tmp_path / "runs")
    assert storage.join("s3://bucket/runs", "a", "b") == "s3://bucket/runs/a/b"
    assert storage.basename("gs://bucket/runs/search-1") == "search-1"
    assert DataConfig(root="s3://bucket/market").root == "s3://bucket/market"
    assert DataConfig(root="market").root == str(tmp_path / "market")
    assert ModelConfig(weights="s3://b/vit.safetensors").weights == "s3://b/vit.safetensors"
    with pytest.raises(ValueError, match="must be a local folder"):
        DataConfig(cache_dir="s3://bucket/cache")


def test_local_text_files_list_and_replace(tmp_path):
    target = str(tmp_path / "runs" / "state.json")
    storage.write_text(target, "one")
    storage.write_text(target, "two")
    assert storage.read_text(target) == "two" and storage.exists(target)
    assert storage.list_dirs(str(tmp_path)) == ["runs"]
    assert storage.list_dirs(str(tmp_path / "missing")) == []
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["state.json"]


def test_s3_round_trip_and_writable_check(s3_env):
    root = s3_env.uri("runs")
    storage.check_writable(root, "storage_path")
    storage.write_text(storage.join(root, "search-1", "state.json"), '{"a": 1}')
    assert storage.read_text(storage.join(root, "search-1", "state.json")) == '{"a": 1}'
    assert storage.list_dirs(root) == ["search-1"]
    assert storage.exists(storage.join(root, "search-1"))
    assert not storage.exists(storage.join(root, "search-2"))


@pytest.mark.fault("bad_input")
def test_unreachable_bucket_is_one_line(s3_env):
    with pytest.raises(ReidSearchError) as err:
        storage.check_writable("s3://no-such-bucket/runs", "spaces/x.yaml: storage_path")
    message = str(err.value)
    assert message.startswith("s3://no-such-bucket/runs: spaces/x.yaml: storage_path: ")
    assert "\n" not in message


def test_dataset_root_on_s3_is_fetched_once(s3_env, tmp_path):
    """A data.root URI is downloaded once into the machine's cache and parses like the local
    folder it was uploaded from."""
    import pyarrow.fs as pafs

    from reidsearch.config import DataConfig
    from reidsearch.data.parsers import parse_dataset
    from reidsearch.data.synthetic import generate_synthetic
    from reidsearch.engine.data import prepare_data

    local = tmp_path / "market"
    generate_synthetic(local, layout="market1501", ids=4, test_ids=3, images_per_camera=2)
    s3fs, prefix = pafs.FileSystem.from_uri(s3_env.uri("datasets/market"))
    pafs.copy_files(str(local), prefix, destination_filesystem=s3fs)

    cfg = DataConfig(root=s3_env.uri("datasets/market"), layout="market1501", height=32, width=16)
    prepared = prepare_data(cfg)
    reference = parse_dataset(local, "market1501")
    assert prepared.manifest.column("path").to_pylist() == reference.column("path").to_pylist()
    assert prepared.manifest.column("pid").to_pylist() == reference.column("pid").to_pylist()
    s3fs.delete_dir(prefix)  # the second preparation reads only the local copy
    again = prepare_data(cfg)
    np.testing.assert_array_equal(again.cache.images, prepared.cache.images)


def test_a_flat_folder_is_downloaded(s3_env):
    folder = s3_env.uri("flat")
    for name in ("a.txt", "b.txt"):
        storage.write_text(storage.join(folder, name), name)
    copy = storage.local_copy(folder, "data.root")
    assert sorted(p.name for p in copy.iterdir()) == ["a.txt", "b.txt"]
    assert (copy / "b.txt").read_text() == "b.txt"


@pytest.mark.fault("bad_input")
def test_missing_dataset_uri_is_one_line(s3_env):
    from reidsearch.storage import local_copy

    with pytest.raises(ReidSearchError, match=r"^s3://reidsearch/nothing/here: data.root: no such"):
        local_copy(s3_env.uri("nothing/here"), "data.root")


def test_weights_file_on_s3(s3_env, tmp_path):
    import pyarrow.fs as pafs
    from safetensors.torch import save_file

    from reidsearch.modeling.backbone import build_backbone

    source = build_backbone("vit_tiny_patch16_224", (64, 32), depth=2)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    s3fs, key = pafs.FileSystem.from_uri(s3_env.uri("weights/vit.safetensors"))
    pafs.copy_files(str(path), key, destination_filesystem=s3fs)

    loaded = build_backbone(
        "vit_tiny_patch16_224", (64, 32), depth=2, weights=s3_env.uri("weights/vit.safetensors")
    )
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    copies = list((Path(storage.default_cache_root()) / "downloads").iterdir())
    assert [p.suffix for p in copies] == [".safetensors"]


def _with_credentials(s3, path: str) -> str:
    """An s3:// URI carrying its credentials (pyarrow: ``s3://KEY:SECRET@bucket``) and its
    endpoint (query parameters)."""
    host = s3.endpoint.removeprefix("http://")
    uri = s3.uri(path).replace("s3://", "s3://testing:S3CRET@", 1)
    return f"{uri}?endpoint_override={host}&scheme=http"


def test_uris_with_credentials_and_a_query_work_and_are_masked_in_errors(s3, tmp_path, monkeypatch):
    """Joined paths go before the ``?query`` (else the endpoint would be mangled), local
    copies are not named after it, and error lines show the credentials masked."""
    monkeypatch.setenv("REIDSEARCH_CACHE", str(tmp_path / "cache"))
    root = _with_credentials(s3, "runs-q")
    assert storage.join(root, "a", "b.json").startswith(root.split("?")[0] + "/a/b.json?")
    assert storage.basename(storage.join(root, "search-1")) == "search-1"
    storage.check_writable(root, "storage_path")
    storage.write_text(storage.join(root, "search-1", "state.json"), "ok")
    assert storage.read_text(storage.join(root, "search-1", "state.json")) == "ok"
    assert storage.list_dirs(root) == ["search-1"]
    copy = storage.local_copy(storage.join(root, "search-1", "state.json"), "model.weights")
    assert copy.read_text() == "ok" and copy.name.endswith("-state.json")

    missing = _with_credentials(s3, "nothing/here")
    with pytest.raises(ReidSearchError) as err:
        storage.local_copy(missing, "data.root")
    message = str(err.value)
    assert "S3CRET" not in message and "s3://***:***@" in message and "\n" not in message
    assert "no such file or folder" in message and s3.endpoint.removeprefix("http://") in message
