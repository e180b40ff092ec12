"""Turn a DataConfig into ready-to-train arrays: manifest, decoded cache, labels, eval splits.

A search prepares this once in its driver and ships it to the trials (``reidsearch.search``);
``reidsearch train --no-ray`` and trials whose searched settings change the data prepare it
themselves. The synthetic dataset, a downloaded ``s3://`` root and the decoded cache are
published atomically once per machine and reused by every later trial and epoch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from reidsearch.config import DataConfig
from reidsearch.data.cache import ImageCache, build_image_cache
from reidsearch.data.manifest import drop_unreadable, manifest_layout, manifest_root
from reidsearch.data.parsers import parse_dataset
from reidsearch.data.synthetic import ensure_synthetic
from reidsearch.errors import DatasetError, some_names
from reidsearch.storage import local_copy


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
    query_leaks: int | None = None  # byte-identical query/gallery images, once known
    # Images left out as undecodable (data.skip_unreadable): manifest paths, not in `manifest`.
    unreadable: tuple[str, ...] = ()

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


def data_identity(cfg: DataConfig) -> dict:
    """The settings that decide the prepared arrays (not augmentation): equal identities share
    one prepared dataset."""
    keys = {"layout", "root", "synthetic", "camera_regex", "height", "width", "skip_unreadable"}
    return cfg.model_dump(include=keys)


def resolve_root(cfg: DataConfig) -> tuple[Path, str]:
    """The dataset folder and its layout; generates the synthetic dataset on first use and
    downloads an ``s3://`` / ``gs://`` root once into the local cache."""
    if cfg.root is not None:
        return local_copy(cfg.root, "data.root"), cfg.layout
    assert cfg.synthetic is not None
    return ensure_synthetic(cfg.synthetic), cfg.synthetic.layout


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Parse, decode (once per machine) and index ``cfg``'s dataset; with
    ``skip_unreadable``, images that cannot be decoded are dropped with a warning."""
    root, layout = resolve_root(cfg)
    manifest = parse_dataset(root, layout, camera_regex=cfg.camera_regex)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
    cache = build_image_cache(
        manifest, cfg.height, cfg.width, cache_dir=cache_dir, skip_unreadable=cfg.skip_unreadable
    )
    if cache.unreadable:
        manifest = drop_unreadable(manifest, cache.unreadable)
        print(
            f"reidsearch: warning: {_unreadable_warning(root, cache.unreadable)}", file=sys.stderr
        )
    prepared = assemble(manifest, cache)
    prepared.unreadable = cache.unreadable
    return prepared


def _unreadable_warning(root: Path, unreadable: tuple[str, ...]) -> str:
    n = len(unreadable)
    return (
        f"{root}: skipped {n} unreadable image{'s' if n != 1 else ''} "
        f"(data.skip_unreadable): {some_names(unreadable)}"
    )


def assemble(manifest: pa.Table, cache: ImageCache) -> PreparedData:
    """Index arrays of ``manifest`` over its decoded ``cache`` (rows in manifest order)."""
    root = manifest_root(manifest)
    layout = manifest_layout(manifest) or "dataset"
    if len(cache) != manifest.num_rows:  # a bug, never the user's input: rows must agree
        raise ValueError(f"{cache.path}: {len(cache)} cached images for {manifest.num_rows} rows")
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
