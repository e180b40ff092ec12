"""Synthetic generator: determinism, layouts, image content and the atomic on-disk cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from reidsearch.config import SyntheticConfig
from reidsearch.data.parsers import parse_dataset
from reidsearch.data.synthetic import ensure_synthetic, generate_synthetic

SMALL = {"ids": 3, "test_ids": 2, "cameras": 2, "images_per_camera": 2, "height": 48, "width": 24}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    for layout in ("latfpp", "market1501"):
        a = _files(
            Path(generate_synthetic(tmp_path / f"{layout}a", layout=layout, **SMALL)["root"])
        )
        b = _files(
            Path(generate_synthetic(tmp_path / f"{layout}b", layout=layout, **SMALL)["root"])
        )
        c = _files(
            Path(
                generate_synthetic(tmp_path / f"{layout}c", layout=layout, seed=1, **SMALL)["root"]
            )
        )
        assert a == b
        assert a != c


def test_images_have_requested_size_and_identity_signal(tmp_path: Path) -> None:
    generate_synthetic(
        tmp_path, layout="latfpp", ids=4, cameras=2, images_per_camera=3, height=64, width=32
    )
    table = parse_dataset(tmp_path, "latfpp")
    paths = table["path"].to_pylist()
    images = np.stack([np.asarray(Image.open(tmp_path / p)) for p in paths]).astype(np.float32)
    assert images.shape[1:] == (64, 32, 3)
    assert len({im.tobytes() for im in images}) == len(images)  # no two images alike
    # the centre column (the person) varies between identities more than the image corner does
    assert images[:, 20:50, 14:18].std(0).mean() > 10


def test_market_query_has_cross_camera_match(tmp_path: Path) -> None:
    generate_synthetic(
        tmp_path,
        layout="market1501",
        ids=2,
        test_ids=3,
        cameras=3,
        images_per_camera=2,
        height=32,
        width=16,
    )
    table = parse_dataset(tmp_path, "market1501")
    split = np.asarray(table["split"].to_pylist())
    pid, cam = table["pid"].to_numpy(), table["camid"].to_numpy()
    q, g = split == "query", split == "gallery"
    for p, c in zip(pid[q], cam[q], strict=True):
        assert ((pid[g] == p) & (cam[g] != c)).any()
    assert (pid[g] == 0).sum() >= 1 and (pid[g] == -1).sum() >= 1


def test_ensure_synthetic_generates_once(tmp_path: Path, monkeypatch) -> None:
    cfg = SyntheticConfig(
        layout="generic", ids=2, cameras=2, images_per_camera=1, height=32, width=16
    )
    root = ensure_synthetic(cfg, tmp_path)
    assert root.parent == tmp_path / "synthetic" and root.name.startswith("generic-")
    assert parse_dataset(root, "generic").num_rows == 8
    mtime = (root / "synthetic.json").stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr("reidsearch.data.synthetic.generate_synthetic", boom)
    assert ensure_synthetic(cfg, tmp_path) == root
    assert (root / "synthetic.json").stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [root.name]  # no temp left
    monkeypatch.setenv("REIDSEARCH_CACHE", str(tmp_path))
    assert ensure_synthetic(cfg) == root
    other = SyntheticConfig(
        layout="generic", ids=2, cameras=2, images_per_camera=1, height=32, width=16, seed=5
    )
    monkeypatch.undo()
    assert ensure_synthetic(other, tmp_path) != root
