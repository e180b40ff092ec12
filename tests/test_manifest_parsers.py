"""Manifests and layout parsers: relabelling, round-trips, and one-line DatasetErrors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reidsearch.data.manifest import (
    format_summary,
    load_manifest,
    make_manifest,
    manifest_root,
    save_manifest,
    split_view,
    summarize,
    with_root,
)
from reidsearch.data.parsers import PARSERS, parse_dataset
from reidsearch.data.synthetic import generate_synthetic
from reidsearch.errors import DatasetError


def _rows():
    return [
        {"path": "b/x.jpg", "pid": 30, "camid": 1, "split": "train"},
        {"path": "q/1.jpg", "pid": 5, "camid": 0, "split": "query"},
        {"path": "a/y.jpg", "pid": 7, "camid": 0, "split": "train"},
        {"path": "g/2.jpg", "pid": -1, "camid": 1, "split": "gallery"},
        {"path": "a/z.jpg", "pid": 30, "camid": 0, "split": "train"},
        {"path": "g/1.jpg", "pid": 5, "camid": 1, "split": "gallery"},
    ]


def test_make_manifest_relabels_and_sorts(tmp_path: Path) -> None:
    table = make_manifest(_rows(), tmp_path, "market1501")
    assert table["split"].to_pylist() == ["train"] * 3 + ["query"] + ["gallery"] * 2
    assert table["path"].to_pylist()[:3] == ["a/y.jpg", "a/z.jpg", "b/x.jpg"]
    assert table["label"].to_pylist() == [0, 1, 1, -1, -1, -1]  # pid 7 -> 0, pid 30 -> 1
    assert manifest_root(table) == tmp_path.resolve()
    # order of the input rows does not matter; columns work as well as rows
    rows = _rows()[::-1]
    cols = {k: [r[k] for r in rows] for k in ("path", "pid", "camid", "split")}
    assert make_manifest(cols, tmp_path, "market1501").equals(table)


def test_save_load_and_views(tmp_path: Path) -> None:
    table = make_manifest(_rows(), tmp_path, "market1501")
    path = save_manifest(table, tmp_path / "m" / "manifest.parquet")
    loaded = load_manifest(path)
    assert loaded.equals(table)
    assert manifest_root(loaded) == tmp_path.resolve()
    gallery = split_view(loaded, "gallery")
    assert gallery.num_rows == 2 and manifest_root(gallery) == tmp_path.resolve()
    assert manifest_root(with_root(loaded, tmp_path / "elsewhere")) == (tmp_path / "elsewhere")
    s = summarize(loaded)
    assert s["splits"]["train"] == {"ids": 2, "images": 3, "cameras": 2}
    assert s["junk"] == 1 and s["distractors"] == 0
    text = format_summary(loaded)
    assert "gallery" in text and "junk" in text
    with pytest.raises(DatasetError, match="no such manifest"):
        load_manifest(tmp_path / "missing.parquet")
    (tmp_path / "bad.parquet").write_text("nope")
    with pytest.raises(DatasetError, match="bad.parquet"):
        load_manifest(tmp_path / "bad.parquet")


@pytest.mark.parametrize("layout", sorted(PARSERS))
def test_synthetic_round_trip(tmp_path: Path, layout: str) -> None:
    expected = generate_synthetic(
        tmp_path / layout,
        layout=layout,
        ids=5,
        test_ids=4,
        cameras=3,
        images_per_camera=2,
        height=32,
        width=16,
    )
    table = parse_dataset(tmp_path / layout, layout)
    got = summarize(table)
    assert got["splits"] == expected["splits"]
    assert (got["junk"], got["distractors"]) == (expected["junk"], expected["distractors"])
    assert expected["splits"]["train"] == {"ids": 5, "images": 30, "cameras": 3}
    assert expected["splits"]["query"] == {"ids": 4, "images": 12, "cameras": 3}
    if layout in ("market1501", "dukemtmc"):
        assert expected["junk"] >= 1 and expected["distractors"] >= 1
    labels = split_view(table, "train")["label"].to_numpy()
    assert sorted(set(labels.tolist())) == list(range(5))
    assert (split_view(table, "query")["label"].to_numpy() == -1).all()
    assert table.equals(parse_dataset(tmp_path / layout, layout))  # deterministic
    for rel in table["path"].to_pylist()[:3]:
        assert not rel.startswith("/") and (tmp_path / layout / rel).is_file()


def test_market_ignores_non_images_and_keeps_junk(tmp_path: Path) -> None:
    generate_synthetic(
        tmp_path, layout="market1501", ids=3, cameras=2, images_per_camera=2, height=32, width=16
    )
    (tmp_path / "bounding_box_test" / "Thumbs.db").write_bytes(b"\0")
    table = parse_dataset(tmp_path, "market1501")
    gallery = split_view(table, "gallery")
    assert (gallery["pid"].to_numpy() == -1).any()
    assert np.isin(table["camid"].to_numpy(), [0, 1]).all()


def test_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        parse_dataset(tmp_path / "nope", "market1501")
    with pytest.raises(DatasetError, match="unknown layout"):
        parse_dataset(tmp_path, "cuhk03")
    with pytest.raises(DatasetError, match="bounding_box_train"):
        parse_dataset(tmp_path, "market1501")

    generate_synthetic(
        tmp_path / "m",
        layout="market1501",
        ids=2,
        cameras=2,
        images_per_camera=1,
        height=32,
        width=16,
    )
    bad = tmp_path / "m" / "query" / "person.jpg"
    bad.write_bytes(b"")
    with pytest.raises(DatasetError) as err:
        parse_dataset(tmp_path / "m", "market1501")
    assert str(bad) in str(err.value) and "\n" not in str(err.value)

    generate_synthetic(
        tmp_path / "l", layout="latfpp", ids=2, cameras=2, images_per_camera=1, height=32, width=16
    )
    for f in (tmp_path / "l" / "val" / "query").rglob("*.png"):
        f.unlink()
    with pytest.raises(DatasetError, match="no query images"):
        parse_dataset(tmp_path / "l", "latfpp")


def test_msmt_list_errors(tmp_path: Path) -> None:
    generate_synthetic(
        tmp_path, layout="msmt17", ids=2, cameras=2, images_per_camera=2, height=32, width=16
    )
    lst = tmp_path / "list_query.txt"
    lines = lst.read_text().splitlines()
    lst.write_text("\n".join([lines[0], "garbage-line", *lines[1:]]) + "\n")
    with pytest.raises(DatasetError, match=r"list_query\.txt:2: cannot parse"):
        parse_dataset(tmp_path, "msmt17")
    lst.unlink()
    with pytest.raises(DatasetError, match=r"list_query\.txt: required list file"):
        parse_dataset(tmp_path, "msmt17")


def test_generic_camera_regex(tmp_path: Path) -> None:
    generate_synthetic(
        tmp_path, layout="generic", ids=2, cameras=3, images_per_camera=1, height=32, width=16
    )
    table = parse_dataset(tmp_path, "generic")
    assert sorted(set(table["camid"].to_pylist())) == [0, 1, 2]
    assert (table["pid"].to_numpy() > 0).all()  # non-numeric folders -> stable positive ints
    with pytest.raises(DatasetError, match="does not match"):
        parse_dataset(tmp_path, "generic", camera_regex=r"cam(\d+)")
    with pytest.raises(DatasetError, match="capture group"):
        parse_dataset(tmp_path, "generic", camera_regex=r"c\d+")
