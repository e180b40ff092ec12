"""Evaluation pictures (CMC curve, ranked lists) as PNG files; matplotlib Agg, no display."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

GREEN = (0, 200, 0)
RED = (220, 0, 0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_cmc(cmc: Sequence[float] | np.ndarray, path: str | Path, title: str = "CMC") -> Path:
    """CMC curve (rank-k accuracy for k = 1..len(cmc)) as a PNG."""
    plt = _pyplot()
    cmc = np.asarray(cmc, dtype=np.float64)
    ranks = np.arange(1, len(cmc) + 1)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    try:
        ax.plot(ranks, 100 * cmc, marker="o", markersize=3)
        for k in (1, 5, 10):
            if k <= len(cmc):
                ax.annotate(
                    f"R{k} {100 * cmc[k - 1]:.1f}",
                    (k, 100 * cmc[k - 1]),
                    textcoords="offset points",
                    xytext=(4, -12),
                    fontsize=8,
                )
        ax.set(xlabel="rank", ylabel="matching rate (%)", title=title, ylim=(0, 100.5))
        ax.set_xlim(1, max(len(cmc), 2))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an HWC (or HW) uint8 image to (height, width, 3)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[..., :3].astype(np.uint8, copy=False)
    rows = np.arange(height) * img.shape[0] // height
    cols = np.arange(width) * img.shape[1] // width
    return img[rows][:, cols]


def compose_ranked_list(
    query_image: np.ndarray,
    gallery_images: Sequence[np.ndarray],
    matches: Sequence[bool],
    *,
    height: int = 128,
    width: int = 64,
    border: int = 4,
    gap: int = 8,
) -> np.ndarray:
    """One uint8 strip: query (grey border), gap, then ranked gallery images with green (same
    identity) or red borders."""
    if len(gallery_images) != len(matches):
        raise ValueError("need one match flag per gallery image")
    cell_h, cell_w = height + 2 * border, width + 2 * border
    n = len(gallery_images)
    canvas = np.full((cell_h, cell_w * (n + 1) + gap, 3), 255, dtype=np.uint8)

    def put(img: np.ndarray, x0: int, colour: tuple[int, int, int]) -> None:
        canvas[:, x0 : x0 + cell_w] = colour
        canvas[border : border + height, x0 + border : x0 + border + width] = _fit(
            img, height, width
        )

    put(query_image, 0, (128, 128, 128))
    for i, (img, ok) in enumerate(zip(gallery_images, matches, strict=True)):
        put(img, cell_w + gap + i * cell_w, GREEN if ok else RED)
    return canvas


def plot_ranked_list(
    query_image: np.ndarray,
    gallery_images: Sequence[np.ndarray],
    matches: Sequence[bool],
    path: str | Path,
    *,
    height: int = 128,
    width: int = 64,
    border: int = 4,
) -> Path:
    """Query + ranked gallery images (top-10 by convention) as a PNG, borders green/red."""
    from PIL import Image

    strip = compose_ranked_list(
        query_image, gallery_images, matches, height=height, width=width, border=border
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(path, format="PNG")
    return path
