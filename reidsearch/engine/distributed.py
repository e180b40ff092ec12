"""What training on ``workers > 1`` DDP ranks means, made explicit (``TrialConfig.ddp``).

By default every rank trains on its own P x K batch (the global batch is ``workers`` x P x K),
mines batch-hard triplets within that batch, keeps its own BatchNorm statistics, and uses the
configured learning rate; DDP averages the parameter gradients of the ranks. The helpers here
turn on cross-rank mining, SyncBatchNorm and learning-rate scaling. Pure torch (no ray/mlflow).

Gradient convention of :func:`all_gather_with_grad` (and so of cross-rank mining): rank ``r``
computes its own loss ``L_r`` from the gathered tensor, and DDP trains on the mean of the ranks'
losses ``(1/W) sum_s L_s`` by averaging the parameter gradients. The backward pass therefore
returns, for the local slice ``x_r``, the SUM over ranks of each rank's gradient with respect to
that slice, ``sum_s dL_s/dx_r`` (an all-reduce of the gathered gradient): ``W`` times the
gradient of the mean loss. DDP's division by ``W`` cancels that factor, so parameter gradients
equal those of one process computing the mean of the ranks' losses; with mean-reduced losses
over equal per-rank batches that is the loss of the whole concatenated batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reidsearch.errors import ConfigError

if TYPE_CHECKING:
    from reidsearch.config import DDPConfig

__all__ = ["all_gather_with_grad", "mining_gather", "scaled_lr", "sync_batchnorm", "wrap_ddp"]

Gather = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# Devices torch's SyncBatchNorm runs on (it has no CPU kernels: aten::batch_norm_stats).
_SYNC_BN_DEVICES = ("cuda", "xpu", "hpu")
# The layers ``convert_sync_batchnorm`` converts, by their public names (torch tests their
# private common base, ``nn.modules.batchnorm._BatchNorm``).
_BATCH_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())  # a list: gloo has no all_gather_into_tensor
    return torch.cat(parts)


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0; backward: the summed gradient of our slice."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.start = dist.get_rank() * x.shape[0]
        ctx.stop = ctx.start + x.shape[0]
        return _gather(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # all_reduce works in place on autograd's buffer
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order, differentiable w.r.t. ``x``.

    ``torch.distributed.all_gather`` cuts the graph: the other ranks' losses would never reach
    this rank's parameters. Here the gradient of the local slice is the sum over ranks of their
    gradients w.r.t. it (see the module docstring: ``W`` times the mean loss's gradient, which
    DDP's averaging divides back). Every rank must call it with the same shape, and every rank
    must run the backward pass (it is a collective); the P x K sampler gives equal batches.
    Without a process group of more than one rank it returns ``x``.
    """
    if not _distributed():
        return x
    return _AllGatherWithGrad.apply(x)


def mining_gather(cfg: DDPConfig, world_size: int) -> Gather | None:
    """The ``gather`` of ``ReIDLoss`` for cross-rank hard mining, or None (mine per rank).

    The returned function maps this rank's (embeddings, labels) to the global batch's, with this
    rank's rows FIRST (then the others in rank order): ``batch_hard_triplet`` relies on that to
    keep each anchor out of its own positives. Embeddings keep their gradient
    (:func:`all_gather_with_grad`); labels are gathered without one.
    """
    if not cfg.cross_rank_mining or world_size == 1:
        return None

    def gather(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not _distributed() or dist.get_world_size() != world_size:
            raise RuntimeError(
                f"cross-rank mining for {world_size} ranks needs an initialised process group "
                "of that size"
            )
        shift = -dist.get_rank() * embeddings.shape[0]
        everyone = torch.roll(all_gather_with_grad(embeddings), shift, dims=0)
        everyone_labels = torch.roll(_gather(labels.detach().view(-1)), shift, dims=0)
        return everyone, everyone_labels

    return gather


def sync_batchnorm(model: nn.Module, cfg: DDPConfig, world_size: int) -> nn.Module:
    """Turn the model's BatchNorm layers into SyncBatchNorm (statistics over the global batch).

    Call it once the model is on its device and before the optimiser is made (the layers are
    replaced; a BatchNorm root is returned as a new module). Off, or on one worker, the model
    comes back as it is. torch's SyncBatchNorm has no CPU kernels, so a BatchNorm on CPU is a
    one-line ``ConfigError`` naming ``ddp.sync_batchnorm`` here (every rank raises it, before any
    collective) rather than a kernel error deep in the first training step.
    """
    if not cfg.sync_batchnorm or world_size == 1:
        return model
    norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS)]
    devices = {t.device.type for m in norms for t in (*m.parameters(), *m.buffers())}
    unsupported = devices - set(_SYNC_BN_DEVICES)
    if unsupported:
        raise ConfigError(
            f"ddp.sync_batchnorm: torch's SyncBatchNorm runs on GPUs only, the model's "
            f"BatchNorm is on {', '.join(sorted(unsupported))} (give the workers GPUs or turn "
            "the option off)"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def scaled_lr(lr: float, cfg: DDPConfig, world_size: int) -> float:
    """``lr`` for a global batch ``world_size`` times one worker's: unchanged (``none``),
    times ``world_size`` (``linear``, Goyal et al.'s SGD rule) or times its square root
    (``sqrt``, the variance-preserving rule often used with Adam)."""
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if cfg.lr_scaling == "linear":
        return lr * world_size
    if cfg.lr_scaling == "sqrt":
        return lr * math.sqrt(world_size)
    return lr


def wrap_ddp(model: nn.Module, rank_device: torch.device, world_size: int) -> nn.Module:
    """``model`` in DistributedDataParallel, or as it is on one worker or when nothing trains
    (DDP refuses a model without trainable parameters). Re-wrap whenever the set of trained
    parameters changes (blockwise unfreezing): DDP fixes its buckets at construction."""
    if world_size == 1 or not any(p.requires_grad for p in model.parameters()):
        return model
    device_ids = [rank_device.index or 0] if rank_device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
