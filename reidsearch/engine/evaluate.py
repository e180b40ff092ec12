"""Score a model on the query/gallery splits of prepared data (features -> metrics -> pictures)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reidsearch.config import QUERY_METRICS, EvalConfig
from reidsearch.data.augment import BatchAugment
from reidsearch.engine.data import PreparedData
from reidsearch.engine.step import ImageSource
from reidsearch.evaluation import evaluate
from reidsearch.evaluation.features import extract_features

SCALAR_METRICS = (*QUERY_METRICS, "num_valid_queries")


@dataclass
class EvalOutput:
    metrics: dict[str, float]
    per_query: dict[str, np.ndarray]  # each metric per valid query (what intervals resample)
    cmc: np.ndarray
    query_features: torch.Tensor
    gallery_features: torch.Tensor


def _batches(
    data: PreparedData,
    index: np.ndarray,
    augment: BatchAugment,
    batch_size: int,
    device: torch.device,
    source: ImageSource | None,
) -> Iterator[torch.Tensor]:
    for start in range(0, len(index), batch_size):
        rows = index[start : start + batch_size]
        if source is not None:  # the trainer's: the cache already on the GPU, or pinned copies
            yield augment(source.batch(rows))
        else:
            yield augment(data.cache.batch(rows).to(device, non_blocking=True))


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    data: PreparedData,
    cfg: EvalConfig,
    *,
    feature: str = "default",
    device: torch.device | None = None,
    amp: bool = True,
    source: ImageSource | None = None,
) -> EvalOutput:
    """Extract L2-normalised query/gallery features and compute mAP, CMC and mINP.

    ``source``: the trainer's image source, whose cache may already be on the GPU."""
    device = device or next(model.parameters()).device
    height, width = data.cache.images.shape[1:3]
    augment = BatchAugment(height, width, model.mean, model.std, train=False)
    was_training = model.training
    model.eval()
    try:
        qf, gf = (
            extract_features(
                lambda x: model.extract(x, feature),
                _batches(data, index, augment, cfg.batch_size, device, source),
                flip=cfg.flip,
                device=device,
                amp=amp,
            )
            for index in (data.query_index, data.gallery_index)
        )
    finally:
        model.train(was_training)
    result = evaluate(
        qf,
        gf,
        data.query_pids,
        data.gallery_pids,
        data.query_camids,
        data.gallery_camids,
        use_camera=cfg.use_camera,
        rerank=cfg.rerank,
        q_paths=data.paths(data.query_index),
        g_paths=data.paths(data.gallery_index),
        retrieval="exact" if cfg.rerank else cfg.retrieval,
    )
    metrics = {key: float(result[key]) for key in SCALAR_METRICS}
    return EvalOutput(
        metrics=metrics,
        per_query=result["per_query"],
        cmc=np.asarray(result["cmc"]),
        query_features=qf,
        gallery_features=gf,
    )


def check_leaks(data: PreparedData) -> int:
    """Warn (stderr) when query images are byte-identical to gallery images; returns how many."""
    import sys

    from reidsearch.evaluation.leaks import find_query_gallery_leaks, leak_warning

    pairs = find_query_gallery_leaks(data.paths(data.query_index), data.paths(data.gallery_index))
    message = leak_warning(pairs, len(data.query_index))
    if message:
        print(f"reidsearch: warning: {message}", file=sys.stderr)
    return len({query for query, _ in pairs})


def write_eval_pictures(
    output: EvalOutput, data: PreparedData, out_dir: Path, num_queries: int = 4, top: int = 10
) -> list[Path]:
    """CMC curve and ranked lists (query + top-10, green = right identity) as PNG files."""
    from reidsearch.evaluation.plots import plot_cmc, plot_ranked_list
    from reidsearch.evaluation.retrieval import faiss_topk

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "cmc.png"]
    plot_cmc(output.cmc, written[0], title=f"CMC (mAP {100 * output.metrics['mAP']:.1f}%)")
    # Rank deeper than `top`, then drop what the protocol ignores for each query (junk and
    # same-identity same-camera images), so the picture shows the list the metrics score.
    depth = min(len(data.gallery_index), top + 64)
    q_pids, g_pids = data.query_pids, data.gallery_pids
    q_cams, g_cams = data.query_camids, data.gallery_camids
    picks = np.linspace(0, len(data.query_index) - 1, num=min(num_queries, len(data.query_index)))
    picks = np.unique(picks.astype(int))
    _, ranked = faiss_topk(output.query_features[picks], output.gallery_features, depth)
    same = (g_pids[ranked] == q_pids[picks, None]) & (g_cams[ranked] == q_cams[picks, None])
    ignored = (g_pids[ranked] == -1) | same
    for n, qi in enumerate(picks):
        gallery_rows = ranked[n][~ignored[n]][:top]
        path = out_dir / f"ranked_list_{n}.png"
        plot_ranked_list(
            data.cache.images[data.query_index[qi]],
            [data.cache.images[data.gallery_index[g]] for g in gallery_rows],
            [bool(g_pids[g] == q_pids[qi]) for g in gallery_rows],
            path,
        )
        written.append(path)
    return written
