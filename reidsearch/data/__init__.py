"""Data layer: manifests, layout parsers, synthetic datasets, decoded cache, P x K sampler and
batched augmentation. Imports neither ray nor mlflow (the core runs on bare GPU machines)."""

from reidsearch.data.augment import BatchAugment
from reidsearch.data.cache import ImageCache, build_image_cache
from reidsearch.data.manifest import (
    SPLITS,
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
from reidsearch.data.sampler import PKSampler
from reidsearch.data.synthetic import ensure_synthetic, generate_synthetic
from reidsearch.storage import default_cache_root

__all__ = [
    "PARSERS",
    "SPLITS",
    "BatchAugment",
    "ImageCache",
    "PKSampler",
    "build_image_cache",
    "default_cache_root",
    "ensure_synthetic",
    "format_summary",
    "generate_synthetic",
    "load_manifest",
    "make_manifest",
    "manifest_root",
    "parse_dataset",
    "save_manifest",
    "split_view",
    "summarize",
    "with_root",
]
