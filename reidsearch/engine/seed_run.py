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
import torch.distributed as dist
from torch import nn

from reidsearch.config import TrialConfig
from reidsearch.data.augment import BatchAugment
from reidsearch.data.sampler import PKSampler
from reidsearch.engine.data import PreparedData
from reidsearch.engine.distributed import mining_gather, scaled_lr, sync_batchnorm, wrap_ddp
from reidsearch.engine.optim import build_optimizer, lr_factor, trainable_blocks
from reidsearch.modeling import ReIDLoss, ReIDModel, build_model, freeze_backbone_blocks

GPU_CACHE_LIMIT_BYTES = 8 * 1024**3
NAN_CHECK_EVERY = 20  # steps between NaN checks (each check waits for the GPU)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the trial is stopped and marked failed."""


def seed_everything(seed: int) -> None:
    """Seeds torch (CPU and every CUDA device) and numpy."""
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


def epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Augmentation randomness that depends only on (seed, epoch, rank): resume reproduces it.
    A CPU generator: BatchAugment draws its random numbers on the CPU for any device."""
    generator = torch.Generator()
    generator.manual_seed(epoch_seed(seed, epoch, rank))
    return generator


def check_finite(loss_sums: torch.Tensor, epoch: int) -> None:
    """Stop a diverged trial: a NaN/inf loss poisons every later step (and the sums).

    Collective under DDP (every rank calls it at the same steps): all ranks stop together, so
    none is left waiting in an all-reduce for a rank that has quit.
    """
    finite = torch.isfinite(loss_sums).all().to(torch.int32).reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not bool(finite.item()):
        raise TrainingDiverged(f"the loss became NaN or infinite in epoch {epoch + 1}")


def train_step(
    forward_model: nn.Module,
    loss_fn: ReIDLoss,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    bf16: bool = False,
    grad_clip: float | None = None,
) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the detached loss parts (no host-device sync here)."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        output = forward_model(images)
        loss, parts = loss_fn(output, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(forward_model.parameters(), grad_clip)
    optimizer.step()
    return parts


class ImageSource:
    """Train images by index: from the memory-mapped cache, or from a copy on the GPU."""

    def __init__(self, data: PreparedData, device: torch.device) -> None:
        self.device = device
        self.on_device: torch.Tensor | None = None
        images = data.cache.images
        if device.type == "cuda" and images.nbytes <= GPU_CACHE_LIMIT_BYTES:
            self.on_device = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.data = data

    def batch(self, index: np.ndarray) -> torch.Tensor:
        if self.on_device is not None:
            return self.on_device[torch.as_tensor(index, device=self.device)]
        images = self.data.cache.batch(index)
        if self.device.type == "cuda":
            images = images.pin_memory()
        return images.to(self.device, non_blocking=True)


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
        device: a float() per step would stall the GPU every step) and the images seen."""
        # Dropout and augmentation noise per (seed, epoch, rank): each rank its own, and a
        # resumed run draws exactly what the uninterrupted run would have.
        seed_everything(epoch_seed(self.seed, epoch, self.rank) + 1)
        generator = epoch_generator(self.seed, epoch, self.rank)
        self.model.train()
        sums = torch.zeros(3, device=self.device)
        seen = 0
        batches = progress(self.sampler) if progress is not None else self.sampler
        for step, batch in enumerate(batches, 1):
            index = np.asarray(batch)
            labels = torch.as_tensor(data.train_labels[index], device=self.device)
            images = augment(source.batch(data.train_index[index]), generator=generator)
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
            sums += torch.stack([parts["total"], parts["ce"], parts["triplet"]])
            seen += len(index)
            if step % NAN_CHECK_EVERY == 0:
                check_finite(sums, epoch)
        check_finite(sums, epoch)
        return sums / max(1, len(self.sampler)), seen
