"""Turn a DataConfig into ready-to-train arrays: manifest, decoded cache, labels, eval splits.

Every worker calls this; the synthetic dataset and the decoded cache are written atomically
once per node and reused by every later trial and epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from reidsearch.config import DataConfig
from reidsearch.data.cache import ImageCache, build_image_cache
from reidsearch.data.parsers import parse_dataset
from reidsearch.data.synthetic import ensure_synthetic
from reidsearch.errors import DatasetError


@dataclass
class PreparedData:
    """Index arrays into one decoded cache holding every image of the manifest."""

    manifest: pa.Table
    cache: ImageCache
    train_index: np.ndarray
    train_labels: np.ndarray
    query_index: np.ndarray
    gallery_index: np.ndarray
    num_classes: int

    def _column(self, name: str, index: np.ndarray) -> np.ndarray:
        return self.manifest.column(name).to_numpy()[index]

    @property
    def query_pids(self) -> np.ndarray:
        return self._column("pid", self.query_index)

    @property
    def gallery_pids(self) -> np.ndarray:
        return self._column("pid", self.gallery_index)

    @property
    def query_camids(self) -> np.ndarray:
        return self._column("camid", self.query_index)

    @property
    def gallery_camids(self) -> np.ndarray:
        return self._column("camid", self.gallery_index)

    def paths(self, index: np.ndarray) -> list[str]:
        root = Path(self.manifest.schema.metadata[b"root"].decode())
        column = self.manifest.column("path").to_pylist()
        return [str(root / column[i]) for i in index]


def resolve_root(cfg: DataConfig) -> tuple[Path, str]:
    """The dataset folder and its layout; generates the synthetic dataset on first use."""
    if cfg.root is not None:
        return Path(cfg.root).expanduser().resolve(), cfg.layout
    assert cfg.synthetic is not None
    return ensure_synthetic(cfg.synthetic), cfg.synthetic.layout


def prepare_data(cfg: DataConfig) -> PreparedData:
    root, layout = resolve_root(cfg)
    manifest = parse_dataset(root, layout, camera_regex=cfg.camera_regex)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
    cache = build_image_cache(manifest, cfg.height, cfg.width, cache_dir=cache_dir)
    split = np.asarray(manifest.column("split").to_pylist())
    labels = manifest.column("label").to_numpy()
    train_index = np.flatnonzero(split == "train")
    query_index = np.flatnonzero(split == "query")
    gallery_index = np.flatnonzero(split == "gallery")
    for name, index in (("train", train_index), ("query", query_index), ("gallery", gallery_index)):
        if len(index) == 0:
            raise DatasetError(f"{root}: the {layout} dataset has no {name} images")
    train_labels = labels[train_index]
    return PreparedData(
        manifest=manifest,
        cache=cache,
        train_index=train_index,
        train_labels=train_labels,
        query_index=query_index,
        gallery_index=gallery_index,
        num_classes=int(train_labels.max()) + 1,
    )
