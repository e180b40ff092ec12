"""One seed's training state and one epoch of it.

A run trains one model per seed (``repeats`` seeds side by side, so that a configuration is
scored by a mean rather than by its luckiest seed); each seed keeps its own model, optimiser,
learning-rate plan and P x K sampler, and draws its own augmentation and dropout noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from reidsearch.config import TrialConfig
from reidsearch.data.augment import BatchAugment
from reidsearch.data.sampler import PKSampler
from reidsearch.engine.data import PreparedData
from reidsearch.engine.distributed import mining_gather, scaled_lr, sync_batchnorm, wrap_ddp
from reidsearch.engine.optim import build_optimizer, lr_factor, trainable_blocks
from reidsearch.engine.step import (
    GPU_CACHE_LIMIT_BYTES,
    NAN_CHECK_EVERY,
    ImageSource,
    LossWatch,
    StepInputs,
    TrainingDiverged,
    check_finite,
    epoch_generator,
    epoch_seed,
    train_step,
)
from reidsearch.modeling import ReIDLoss, ReIDModel, build_model, freeze_backbone_blocks

__all__ = [
    "GPU_CACHE_LIMIT_BYTES",
    "NAN_CHECK_EVERY",
    "ImageSource",
    "SeedRun",
    "TrainingDiverged",
    "check_finite",
    "epoch_generator",
    "epoch_seed",
    "seed_everything",
    "train_step",
]


def seed_everything(seed: int) -> None:
    """Seeds torch (CPU and every CUDA device) and numpy."""
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class SeedRun:
    """Model, optimiser, lr plan and sampler of one seed on this rank."""

    def __init__(
        self,
        cfg: TrialConfig,
        seed: int,
        data: PreparedData,
        *,
        rank: int,
        world_size: int,
        device: torch.device,
        model_cfg: Any = None,
    ) -> None:
        self.cfg, self.seed, self.rank, self.world_size = cfg, seed, rank, world_size
        self.device = device
        seed_everything(seed)  # each seed its own head initialisation
        image_size = (cfg.data.height, cfg.data.width)
        model = build_model(model_cfg or cfg.model, data.num_classes, image_size).to(device)
        self.model: ReIDModel = sync_batchnorm(model, cfg.ddp, world_size)
        self.loss_fn = ReIDLoss(cfg.loss, gather=mining_gather(cfg.ddp, world_size))
        lr = scaled_lr(cfg.optim.lr, cfg.ddp, world_size)
        self.optimizer = build_optimizer(cfg.optim, self.model, lr=lr)
        self.sampler = PKSampler(
            data.train_labels,
            cfg.sampler.p,
            cfg.sampler.k,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        self.depth = len(self.model.blocks)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(cfg.optim, cfg.epochs, len(self.sampler), self.depth)
        )
        self.forward_model: nn.Module = self.model
        self.trainable: int | None = None
        self.watch = LossWatch(device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])

    def prepare_epoch(self, epoch: int) -> int:
        """Unfreeze this epoch's blocks (re-wrapping DDP and compile when they change)."""
        n_trainable = trainable_blocks(self.cfg.optim.unfreeze, epoch, self.depth)
        if n_trainable != self.trainable:
            freeze_backbone_blocks(self.model, n_trainable)
            # DDP must see the new set of trained parameters
            self.forward_model = wrap_ddp(self.model, self.device, self.world_size)
            if self.cfg.compile:
                self.forward_model = torch.compile(self.forward_model)
            self.trainable = n_trainable
        self.sampler.set_epoch(epoch)
        return n_trainable

    def train_epoch(
        self,
        epoch: int,
        data: PreparedData,
        source: ImageSource,
        augment: BatchAugment,
        *,
        bf16: bool,
        progress: Callable[..., Any] | None = None,
    ) -> tuple[torch.Tensor, int]:
        """One pass over the sampler; returns the summed (total, ce, triplet) losses (on the
        device) and the images seen. Nothing in the loop waits for the device (see
        ``engine.step``); ``check_finite`` at the end reads the sums once."""
        # Dropout and augmentation noise per (seed, epoch, rank): each rank its own, and a
        # resumed run draws exactly what the uninterrupted run would have.
        seed_everything(epoch_seed(self.seed, epoch, self.rank) + 1)
        generator = epoch_generator(self.seed, epoch, self.rank, self.device)
        inputs = StepInputs(source, data.train_index, data.train_labels, augment)
        self.model.train()
        self.watch.reset(epoch)
        seen = 0
        batches = progress(self.sampler) if progress is not None else self.sampler
        for batch in batches:
            images, labels = inputs(batch, generator)
            parts = train_step(
                self.forward_model,
                self.loss_fn,
                self.optimizer,
                images,
                labels,
                bf16=bf16,
                grad_clip=self.cfg.optim.grad_clip,
            )
            self.scheduler.step()
            self.watch.add(parts)
            seen += len(batch)
        check_finite(self.watch.sums, epoch)
        return self.watch.sums / max(1, len(self.sampler)), seen
