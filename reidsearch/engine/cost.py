"""What a trial's model costs to deploy: space (feature, parameters, file) and time (inference,
gallery search), measured on the trial's own device.

The LA-TF++ claim is two-sided (better AND cheaper than LA-TF), and a gallery of millions pays
for every byte of feature and millisecond of inference, so every trial logs these as ``cost.*``
next to its accuracy. Deterministic quantities are exact; timed ones are the median of repeats
after warm-up, with bf16 autocast on a GPU and fp32 on a CPU (as deployed there), the feature
as the trial evaluates it (with flip TTA: two forward passes).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from reidsearch.config import TrialConfig
from reidsearch.evaluation.retrieval import flat_index

THROUGHPUT_BATCH = 64


def _median_s(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``step`` in seconds, after ``warmup`` untimed calls."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def _inference_params(model: torch.nn.Module, feature: Callable, shape: tuple) -> int:
    """Parameters the retrieval feature depends on: those it has a gradient for. Through
    ``autograd.grad``, so nothing accumulates in ``.grad`` (or reaches DDP's hooks)."""
    params = list(model.parameters())
    wanted = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            out = feature(torch.randn(1, *shape, device=params[0].device)).sum()
            grads = torch.autograd.grad(out, params, allow_unused=True)
    finally:
        for p, flag in zip(params, wanted, strict=True):
            p.requires_grad_(flag)
    return sum(p.numel() for p, g in zip(params, grads, strict=True) if g is not None)


def measure_cost(
    model: torch.nn.Module, cfg: TrialConfig, device: torch.device, *, repeats: int = 5
) -> dict[str, float]:
    """The ``cost.*`` of a model (a :class:`~reidsearch.modeling.ReIDModel`) as the trial
    deploys it: its configured feature, flip TTA as evaluated, on ``device``."""
    shape = (3, cfg.data.height, cfg.data.width)
    name = cfg.model.feature

    def feature(x: torch.Tensor) -> torch.Tensor:
        f = model.extract(x, name)
        return f + model.extract(torch.flip(x, dims=[3]), name) if cfg.eval.flip else f

    was_training = model.training
    model.eval()
    try:
        used = _inference_params(model, feature, shape)
        bf16 = device.type == "cuda"

        def timed(batch: int) -> Callable[[], None]:
            x = torch.randn(batch, *shape, device=device)

            def step() -> None:
                with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, bf16):
                    feature(x)

            return step

        dim = int(feature(torch.randn(1, *shape, device=device)).shape[-1])
        batch_s = _median_s(timed(THROUGHPUT_BATCH), device, warmup=1, repeats=max(1, repeats // 2))
        single_s = _median_s(timed(1), device, warmup=2, repeats=repeats * 2)
    finally:
        model.train(was_training)
    gallery = cfg.eval.cost_gallery
    return {
        "cost.feature_dim": float(dim),
        "cost.feature_bytes": float(dim * 4),
        "cost.feature_bytes_fp16": float(dim * 2),
        "cost.params_backbone": float(sum(p.numel() for p in model.backbone.parameters())),
        "cost.params_head": float(sum(p.numel() for p in model.head.parameters())),
        "cost.params_inference": float(used),
        "cost.model_bytes": float(
            sum(t.numel() * t.element_size() for t in model.state_dict().values())
        ),
        "cost.images_per_s": THROUGHPUT_BATCH / batch_s,
        "cost.latency_ms": 1000 * single_s,
        "cost.search_ms": search_ms_per_query(dim, gallery, repeats=repeats),
        "cost.search_gallery": float(gallery),
    }


def search_ms_per_query(dim: int, gallery: int, *, queries: int = 100, repeats: int = 5) -> float:
    """FAISS flat inner-product search of ``queries`` L2-normalised random features against a
    ``gallery`` of them, top 10: median ms per query (exact search does the same work whatever
    the values; faiss on a GPU where it has one)."""
    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    index = flat_index(unit(gallery))
    if index is None:  # no faiss: what the torch fallback would do
        g = torch.from_numpy(unit(gallery))
        q = torch.from_numpy(unit(queries))
        seconds = _median_s(lambda: torch.topk(q @ g.T, 10), torch.device("cpu"), 1, repeats)
        return 1000 * seconds / queries
    q = unit(queries)
    seconds = _median_s(lambda: index.search(q, 10), torch.device("cpu"), 1, repeats)
    return 1000 * seconds / queries
