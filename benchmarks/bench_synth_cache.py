"""Time the synthetic generator and the decoded-image cache (images per second).

python benchmarks/bench_synth_cache.py [--ids 100] [--layout market1501] [--size 256 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from reidsearch.data.cache import build_image_cache
from reidsearch.data.parsers import parse_dataset
from reidsearch.data.synthetic import generate_synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layout", default="market1501")
    ap.add_argument("--ids", type=int, default=100)
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--images-per-camera", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=(256, 128), metavar=("H", "W"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        t0 = time.perf_counter()
        expected = generate_synthetic(
            root,
            layout=args.layout,
            ids=args.ids,
            cameras=args.cameras,
            images_per_camera=args.images_per_camera,
        )
        t_gen = time.perf_counter() - t0
        n = sum(s["images"] for s in expected["splits"].values())
        print(f"generate {args.layout}: {n} images in {t_gen:.2f} s = {n / t_gen:,.0f} images/s")

        t0 = time.perf_counter()
        table = parse_dataset(root, args.layout)
        t_parse = time.perf_counter() - t0
        print(f"parse: {table.num_rows} rows in {t_parse:.3f} s")

        h, w = args.size
        t0 = time.perf_counter()
        cache = build_image_cache(table, h, w, cache_dir=Path(tmp) / "cache")
        t_cache = time.perf_counter() - t0
        print(f"cache build {h}x{w}: {n / t_cache:,.0f} images/s ({t_cache:.2f} s)")

        t0 = time.perf_counter()
        build_image_cache(table, h, w, cache_dir=Path(tmp) / "cache")
        print(f"cache reuse: {time.perf_counter() - t0:.3f} s")

        t0 = time.perf_counter()
        for start in range(0, len(cache), 64):
            cache.batch(range(start, min(start + 64, len(cache))))
        t_batch = time.perf_counter() - t0
        print(f"cache.batch(64): {len(cache) / t_batch:,.0f} images/s")


if __name__ == "__main__":
    main()
