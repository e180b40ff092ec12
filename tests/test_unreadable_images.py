"""Unreadable images: one line naming the image by default; dropped and counted with
``data.skip_unreadable``, the manifest and the decoded cache still agreeing row for row."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidsearch.config import DataConfig
from reidsearch.data.parsers import parse_dataset
from reidsearch.engine.data import data_identity, prepare_data
from reidsearch.errors import DatasetError
from tests.conftest import write_tiny_market

HEIGHT, WIDTH = 32, 16


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return write_tiny_market(tmp_path_factory.mktemp("market"))


def _copy(clean: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "market"
    shutil.copytree(clean, root)
    return root, parse_dataset(root, "market1501").column("path").to_pylist()


def _truncate(image: Path) -> None:
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])


def _config(root: Path, tmp_path: Path, **kwargs) -> DataConfig:
    return DataConfig(
        root=str(root),
        layout="market1501",
        height=HEIGHT,
        width=WIDTH,
        cache_dir=str(tmp_path / "cache"),
        **kwargs,
    )


def _fresh(image: Path) -> np.ndarray:
    with Image.open(image) as im:
        return np.asarray(im.convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC))


@pytest.fixture
def broken(clean: Path, tmp_path: Path) -> tuple[Path, str, str]:
    """A copy of the dataset with one truncated query JPEG and one gallery file of garbage."""
    root, paths = _copy(clean, tmp_path)
    query = next(p for p in paths if p.startswith("query/"))
    gallery = next(p for p in paths if p.startswith("bounding_box_test/0004"))
    _truncate(root / query)
    (root / gallery).write_bytes(b"\x00garbage, not a JPEG" * 10)
    return root, query, gallery


@pytest.mark.fault("bad_input")
def test_unreadable_image_stops_by_default(broken, tmp_path: Path) -> None:
    root, query, gallery = broken
    with pytest.raises(DatasetError) as err:
        prepare_data(_config(root, tmp_path))
    message = str(err.value)
    assert "\n" not in message and "cannot read image" in message
    assert str(root / query) in message or str(root / gallery) in message


@pytest.mark.fault("bad_input")
def test_skipped_images_are_dropped_counted_and_named(broken, tmp_path: Path, capsys) -> None:
    root, query, gallery = broken
    total = parse_dataset(root, "market1501").num_rows
    data = prepare_data(_config(root, tmp_path, skip_unreadable=True))

    assert sorted(data.unreadable) == sorted([query, gallery])
    warning = capsys.readouterr().err
    assert "skipped 2 unreadable images" in warning and query in warning and gallery in warning
    paths = data.manifest.column("path").to_pylist()
    assert query not in paths and gallery not in paths
    assert data.manifest.num_rows == len(data.cache) == total - 2
    for i, path in enumerate(paths):  # no hole: row i of the cache is row i of the manifest
        np.testing.assert_array_equal(data.cache.images[i], _fresh(root / path), err_msg=path)
    assert len(data.query_index) == 3 and len(data.gallery_index) == 7
    assert set(data.paths(data.query_index)).isdisjoint({str(root / query)})

    again = prepare_data(_config(root, tmp_path, skip_unreadable=True))  # reuses the cache file
    assert again.cache.path == data.cache.path and again.unreadable == data.unreadable
    np.testing.assert_array_equal(again.cache.images, data.cache.images)
    with pytest.raises(DatasetError, match="cannot read image"):  # the default still stops
        prepare_data(_config(root, tmp_path))


@pytest.mark.fault("bad_input")
def test_evaluation_skips_a_query_whose_only_match_was_dropped(broken, tmp_path: Path) -> None:
    """The dropped gallery image was the only other-camera match of the remaining query of its
    identity: the evaluation counts that query as not valid instead of failing."""
    import torch

    from reidsearch.config import EvalConfig, ModelConfig
    from reidsearch.engine.evaluate import evaluate_model
    from reidsearch.modeling import build_model

    root, _, gallery = broken
    data = prepare_data(_config(root, tmp_path, skip_unreadable=True))
    torch.manual_seed(0)
    model_cfg = ModelConfig(backbone="vit_tiny_patch16_224", depth=1, embed_dim=32, num_heads=2)
    model = build_model(model_cfg, data.num_classes, (HEIGHT, WIDTH))
    metrics = evaluate_model(model, data, EvalConfig(), amp=False).metrics
    from reidsearch.engine.step import ImageSource

    source = ImageSource(data, torch.device("cpu"))  # the trainer's rows: the same images
    assert evaluate_model(model, data, EvalConfig(), amp=False, source=source).metrics == metrics
    pid = int(gallery.split("/")[1][:4])
    assert sum(data.query_pids == pid) == 1 and sum(data.gallery_pids == pid) == 1
    assert metrics["num_valid_queries"] == len(data.query_index) - 1 == 2
    assert 0.0 < metrics["mAP"] <= 1.0


@pytest.mark.fault("bad_input")
def test_a_skipping_cache_without_its_record_is_rebuilt(broken, tmp_path: Path) -> None:
    """A build killed between writing the array and its record leaves an array whose skipped
    rows are unknown: it is decoded again rather than trusted."""
    root, query, gallery = broken
    first = prepare_data(_config(root, tmp_path, skip_unreadable=True))
    first.cache.path.with_suffix(".json").unlink()
    inode = first.cache.path.stat().st_ino
    again = prepare_data(_config(root, tmp_path, skip_unreadable=True))
    assert again.cache.path == first.cache.path and again.cache.path.stat().st_ino != inode
    assert len(again.cache) == again.manifest.num_rows
    assert again.cache.path.with_suffix(".json").is_file()
    assert sorted(again.unreadable) == sorted([query, gallery])


def test_a_complete_cache_serves_both_settings(clean: Path, tmp_path: Path) -> None:
    strict = prepare_data(_config(clean, tmp_path))
    skipping = prepare_data(_config(clean, tmp_path, skip_unreadable=True))
    assert skipping.cache.path == strict.cache.path and skipping.unreadable == ()


@pytest.mark.fault("bad_input")
def test_many_skipped_are_listed_briefly_and_labels_stay_dense(
    clean: Path, tmp_path: Path, capsys
) -> None:
    """Every train image of one identity plus three more: the warning names five and counts
    the rest; the vanished identity leaves no empty class."""
    root, paths = _copy(clean, tmp_path)
    bad = [p for p in paths if p.startswith("bounding_box_train/0001_")]
    bad += [p for p in paths if p.startswith("bounding_box_train/0002_")][:3]
    for path in bad:
        (root / path).write_bytes(b"")
    data = prepare_data(_config(root, tmp_path, skip_unreadable=True))
    assert len(data.unreadable) == 7
    assert "skipped 7 unreadable images" in capsys.readouterr().err.replace("\n", " ")
    assert data.num_classes == 2 and sorted(set(data.train_labels.tolist())) == [0, 1]
    assert data.manifest.num_rows == len(data.cache)


@pytest.mark.fault("bad_input")
def test_warning_names_the_first_few(clean: Path, tmp_path: Path, capsys) -> None:
    root, paths = _copy(clean, tmp_path)
    bad = [p for p in paths if p.startswith("bounding_box_train/")][:7]
    for path in bad:
        _truncate(root / path)
    prepare_data(_config(root, tmp_path, skip_unreadable=True))
    warning = capsys.readouterr().err.strip()
    assert "\n" not in warning and warning.endswith("and 2 more")
    assert all(path in warning for path in sorted(bad)[:5])


@pytest.mark.fault("bad_input")
def test_a_split_left_without_images_is_one_line(clean: Path, tmp_path: Path) -> None:
    root, paths = _copy(clean, tmp_path)
    for path in paths:
        if path.startswith("query/"):
            (root / path).write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"every query image is unreadable") as err:
        prepare_data(_config(root, tmp_path, skip_unreadable=True))
    assert "\n" not in str(err.value) and str(root) in str(err.value)


@pytest.mark.fault("bad_input")
def test_no_readable_image_at_all_is_one_line(clean: Path, tmp_path: Path) -> None:
    root, paths = _copy(clean, tmp_path)
    for path in paths:
        (root / path).write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=rf"none of the {len(paths)} images can be read"):
        prepare_data(_config(root, tmp_path, skip_unreadable=True))
    assert not list((tmp_path / "cache").glob("*.npy"))  # nothing half-written is left


def test_the_setting_decides_which_prepared_data_a_trial_may_reuse() -> None:
    """The search ships the driver's prepared data to trials of the same data identity only."""
    assert data_identity(DataConfig(skip_unreadable=True)) != data_identity(DataConfig())


@pytest.mark.fault("bad_input")
def test_a_trial_reports_how_many_images_it_skipped(broken, tmp_path: Path) -> None:
    """The count reaches every epoch's report (MLflow logs it as ``unreadable_images``)."""
    from reidsearch.config import TrialConfig
    from reidsearch.engine.trainer import train
    from tests.conftest import tiny_config_dict

    root, _, _ = broken
    cfg = tiny_config_dict(epochs=1, **{"sampler.p": 2, "sampler.k": 2})
    cfg["data"] = _config(root, tmp_path, skip_unreadable=True).model_dump()
    reports: list[dict] = []
    train(TrialConfig.model_validate(cfg), lambda metrics, payload: reports.append(metrics))
    assert [r["unreadable_images"] for r in reports] == [2]
