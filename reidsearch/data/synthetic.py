"""Synthetic person re-ID datasets in every supported layout: the public entry points.

Why: everything (parsers, cache, training, search) must run and be tested offline. Raw pixels are
dominated by the camera, so untrained features retrieve poorly, while the identity cues survive
every camera and so can be learned. ``synthetic_render`` samples and paints the images,
``synthetic_layouts`` decides which images exist and where each layout writes them; this module
drives both and caches finished datasets per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from reidsearch.config import LAYOUTS, SyntheticConfig
from reidsearch.data.synthetic_layouts import (
    expected_counts,
    layout_paths,
    sample_records,
    write_msmt_lists,
)
from reidsearch.data.synthetic_render import (
    render,
    sample_cameras,
    sample_jitter,
    sample_persons,
)
from reidsearch.storage import default_cache_root

GENERATOR_VERSION = 1  # bump when the rendering changes, so cached datasets are regenerated
_CHUNK = 256


def generate_synthetic(
    out: str | Path,
    *,
    layout: str = "latfpp",
    ids: int = 40,
    test_ids: int | None = None,
    cameras: int = 2,
    images_per_camera: int = 4,
    height: int = 128,
    width: int = 48,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a synthetic dataset into ``out``; returns the counts ``parse_dataset`` must find.

    ``test_ids`` defaults to ``ids``. Each person has ``images_per_camera`` images in each camera;
    a test person's first image in every camera is a query, the rest are gallery. Market-style
    layouts add junk (pid -1) and distractor (pid 0) gallery images. Same arguments, same bytes.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}")
    if ids < 1 or cameras < 2 or images_per_camera < 1:
        raise ValueError("need ids >= 1, cameras >= 2 and images_per_camera >= 1")
    test_ids = ids if test_ids is None else test_ids
    out = Path(out)
    market = layout in ("market1501", "dukemtmc")
    recs = sample_records(
        ids, test_ids, cameras, images_per_camera, market, np.random.default_rng([seed, 0])
    )
    n_persons = max(r.person for r in recs) + 1
    persons = sample_persons(np.random.default_rng([seed, 1]), n_persons)
    cams = sample_cameras(np.random.default_rng([seed, 2]), cameras)
    jitter = sample_jitter(
        np.random.default_rng([seed, 3]), recs, cameras, images_per_camera, layout == "latfpp"
    )
    paths = layout_paths(layout, recs, ids, test_ids)
    expected = expected_counts(layout, recs, out)

    person_idx = np.array([r.person for r in recs])
    cam_idx = np.array([r.cam for r in recs])
    suffix_fmt = {".png": ("PNG", {"compress_level": 1}), ".jpg": ("JPEG", {"quality": 92})}
    for folder in sorted({str(Path(p).parent) for p in paths}):
        (out / folder).mkdir(parents=True, exist_ok=True)

    def save(arr: np.ndarray, rel: str) -> None:
        fmt, kw = suffix_fmt[Path(rel).suffix]
        Image.fromarray(arr).save(out / rel, fmt, **kw)

    pending = []
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for chunk, start in enumerate(range(0, len(recs), _CHUNK)):
            sl = slice(start, start + _CHUNK)
            P = {k: v[person_idx[sl]] for k, v in persons.items()}
            C = {k: v[cam_idx[sl]] for k, v in cams.items()}
            J = {k: v[sl] for k, v in jitter.items()}
            noise_rng = np.random.default_rng([seed, 4, chunk])
            noise = noise_rng.standard_normal((len(J["dx"]), height, width, 3), dtype=np.float32)
            images = render(P, C, J, noise, height, width)
            pending += [
                pool.submit(save, im, rel) for im, rel in zip(images, paths[sl], strict=True)
            ]
        for future in pending:  # encoding overlaps the rendering of the next chunks
            future.result()
    if layout == "msmt17":
        write_msmt_lists(out, recs, paths)
    return expected


# ----------------------------------------------------------------------------- cached datasets


def synthetic_key(cfg: SyntheticConfig) -> str:
    """A short hash of the generator parameters (and the generator version)."""
    params = dict(cfg.model_dump(), version=GENERATOR_VERSION)
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def ensure_synthetic(cfg: SyntheticConfig, cache_root: Path | None = None) -> Path:
    """The folder of the synthetic dataset for ``cfg``, generated once per machine.

    Generation happens in a temporary folder that is renamed into place, so a half-written
    dataset is never visible and two processes racing both end up with the same folder.
    """
    base = (Path(cache_root) if cache_root is not None else default_cache_root()) / "synthetic"
    final = base / f"{cfg.layout}-{synthetic_key(cfg)}"
    if (final / "synthetic.json").is_file():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=base))
    try:
        params = cfg.model_dump()
        expected = generate_synthetic(tmp, **params)
        expected["root"] = str(final)
        meta = {"params": params, "version": GENERATOR_VERSION, "expected": expected}
        (tmp / "synthetic.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "synthetic.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
