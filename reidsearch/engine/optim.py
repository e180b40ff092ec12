"""The optimiser and its learning-rate plan: weight-decay groups, warm-up and decay, and the
LA-TF recipe's blockwise unfreezing (more backbone blocks trained every few epochs, the lr
multiplied at each step)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the config needs pydantic; benchmarks/gpu_check.py runs without it
    from reidsearch.config import OptimConfig, UnfreezeConfig


def build_optimizer(
    cfg: OptimConfig, model: nn.Module, lr: float | None = None
) -> torch.optim.Optimizer:
    """Weight decay on weights only: biases, norms, tokens and position embeddings get none.
    ``lr`` overrides ``cfg.lr`` (scaled with the global batch under DDP)."""
    lr = cfg.lr if lr is None else lr
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        is_token = name.endswith(("cls_token", "pos_embed", "reg_token"))
        (no_decay if param.ndim <= 1 or is_token else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True)
    optimizer_cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return optimizer_cls(groups, lr=lr, fused=fused_adam(model) or None)


def fused_adam(model: nn.Module) -> bool:
    """Fused Adam where every parameter is on a GPU: one kernel per step, and its step counters
    live on the device (the unfused Adam reads its CPU counters every step)."""
    return torch.cuda.is_available() and all(p.is_cuda for p in model.parameters())


def unfreeze_steps(cfg: UnfreezeConfig, epoch: int, depth: int) -> int:
    """How many unfreezing steps have happened by the start of ``epoch`` (0 = head only)."""
    if not cfg.enabled:
        return 0
    max_steps = math.ceil(depth / cfg.blocks_per_step)
    return min(epoch // cfg.every, max_steps)


def trainable_blocks(cfg: UnfreezeConfig, epoch: int, depth: int) -> int:
    if not cfg.enabled:
        return depth
    return min(depth, unfreeze_steps(cfg, epoch, depth) * cfg.blocks_per_step)


def lr_factor(cfg: OptimConfig, epochs: int, steps_per_epoch: int, depth: int) -> Callable:
    """Learning-rate multiplier per optimiser step: warm-up, then cosine or step decay, times the
    blockwise-unfreezing multiplier (``lr_mult`` per unfreezing step, the LA-TF recipe)."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = max(1, epochs * steps_per_epoch)

    def factor(step: int) -> float:
        epoch = step // steps_per_epoch
        if step < warmup:
            base = (step + 1) / warmup
        elif cfg.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            base = 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        elif cfg.scheduler == "step":
            base = cfg.gamma ** (epoch // cfg.step_size)
        else:
            base = 1.0
        return base * cfg.unfreeze.lr_mult ** unfreeze_steps(cfg.unfreeze, epoch, depth)

    return factor
