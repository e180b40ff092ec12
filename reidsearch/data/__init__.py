"""Data layer: manifests, layout parsers, synthetic datasets, decoded cache, P x K sampler and
batched augmentation. Imports neither ray nor mlflow (the core runs on bare GPU machines).

The names below load their module on first use: ``reidsearch.data.augment`` and
``reidsearch.data.sampler`` then import only torch / numpy, so ``benchmarks/gpu_check.py`` runs
them where pyarrow and pydantic (needed by the parsers and the cache) are not installed.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BatchAugment": "augment",
    "ImageCache": "cache",
    "build_image_cache": "cache",
    "SPLITS": "manifest",
    "format_summary": "manifest",
    "load_manifest": "manifest",
    "make_manifest": "manifest",
    "manifest_root": "manifest",
    "save_manifest": "manifest",
    "split_view": "manifest",
    "summarize": "manifest",
    "with_root": "manifest",
    "PARSERS": "parsers",
    "parse_dataset": "parsers",
    "PKSampler": "sampler",
    "ensure_synthetic": "synthetic",
    "generate_synthetic": "synthetic",
}
_STORAGE_EXPORTS = {"default_cache_root"}
_SUBMODULES = {*_EXPORTS.values(), "synthetic_layouts", "synthetic_render"}

__all__ = sorted([*_EXPORTS, *_STORAGE_EXPORTS])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif name in _STORAGE_EXPORTS:
        value = getattr(import_module("reidsearch.storage"), name)
    elif name in _SUBMODULES:  # `reidsearch.data.cache` after a bare `import reidsearch.data`
        return import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
