"""The per-step path of training, written so that the host never waits for the device.

Every ``.item()``, ``bool(tensor)``, blocking host-to-device copy or data-dependent shape inside
a step makes the CPU wait until the GPU has drained its queue, and the GPU then idles while the
CPU prepares the next step. So here: indices and labels go to the device as one pinned,
non-blocking copy; images come from the device-resident cache; augmentation draws its random
numbers on the device; the losses stay device tensors, summed over the epoch; the NaN check
reads a snapshot the GPU finished long ago (:class:`LossWatch`).

Imports only torch and numpy (no pydantic): ``benchmarks/gpu_check.py`` runs these very
functions on bare GPU machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from reidsearch.engine.divergence import TrainingDiverged

if TYPE_CHECKING:
    from reidsearch.data.augment import BatchAugment
    from reidsearch.engine.data import PreparedData
    from reidsearch.modeling.losses import ReIDLoss

GPU_CACHE_LIMIT_BYTES = 8 * 1024**3
NAN_CHECK_EVERY = 20  # steps between snapshots of the finite flag (read one period later)


def diverged(epoch: int) -> TrainingDiverged:
    return TrainingDiverged(f"the loss became NaN or infinite in epoch {epoch + 1}")


def check_finite(loss_sums: torch.Tensor, epoch: int) -> None:
    """Stop a diverged trial: a NaN/inf loss poisons every later step (and the sums).

    Waits for the device (once per epoch). Collective under DDP (every rank calls it at the same
    point): all ranks stop together, so none is left waiting in an all-reduce for a rank that
    has quit.
    """
    finite = _finite_flag(loss_sums)
    if not bool(finite.item()):
        raise diverged(epoch)


def _finite_flag(loss_sums: torch.Tensor) -> torch.Tensor:
    """1 when every rank's sums are finite, else 0: an int32 (1,) tensor on the device."""
    finite = torch.isfinite(loss_sums).all().to(torch.int32).reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return finite


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device`` without waiting: pinned memory and a non-blocking copy (a copy
    from pageable memory would block until the device caught up)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def epoch_generator(
    seed: int, epoch: int, rank: int, device: torch.device | None = None
) -> torch.Generator:
    """Augmentation randomness that depends only on (seed, epoch, rank): resume reproduces it.

    On the training device, so that drawing a step's flips, crops and erasing boxes needs no
    copy from the host (a CPU generator's numbers would be copied every step)."""
    generator = torch.Generator(device=device or torch.device("cpu"))
    generator.manual_seed(epoch_seed(seed, epoch, rank))
    return generator


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


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
    """Train images by cache row: from the memory-mapped cache, or from a copy on the GPU.

    ``data`` is prepared data or the uint8 ``N,H,W,3`` array itself (benchmarks)."""

    def __init__(self, data: PreparedData | np.ndarray, device: torch.device) -> None:
        self.device = device
        self.images: np.ndarray = data if isinstance(data, np.ndarray) else data.cache.images
        self.on_device: torch.Tensor | None = None
        if device.type == "cuda" and self.images.nbytes <= GPU_CACHE_LIMIT_BYTES:
            self.on_device = torch.from_numpy(np.ascontiguousarray(self.images)).to(device)

    def batch(self, index: np.ndarray, device_index: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 ``N,H,W,3`` images of cache rows ``index`` on the device (``device_index``:
        the same rows, already there)."""
        if self.on_device is not None:
            if device_index is None:
                device_index = to_device(np.asarray(index, dtype=np.int64), self.device)
            return self.on_device.index_select(0, device_index)
        images = torch.from_numpy(np.ascontiguousarray(self.images[np.asarray(index)]))
        if self.device.type == "cuda":
            images = images.pin_memory()
        return images.to(self.device, non_blocking=True)


class StepInputs:
    """A step's augmented images and labels on the device, from sampler positions.

    ``train_index`` maps training positions to cache rows, ``train_labels`` to class labels.
    Rows and labels travel as one pinned (2, B) int64 copy; the gather and the augmentation run
    where the images are.
    """

    def __init__(
        self,
        source: ImageSource,
        train_index: np.ndarray,
        train_labels: np.ndarray,
        augment: BatchAugment,
    ) -> None:
        self.source, self.augment = source, augment
        self.train_index = np.asarray(train_index, dtype=np.int64)
        self.train_labels = np.asarray(train_labels, dtype=np.int64)

    def __call__(
        self, batch: Sequence[int] | np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = np.asarray(batch, dtype=np.int64)
        rows = self.train_index[index]
        both = to_device(np.stack([rows, self.train_labels[index]]), self.source.device)
        images = self.source.batch(rows, device_index=both[0])
        return self.augment(images, generator=generator), both[1]


class LossWatch:
    """An epoch's summed (total, ce, triplet) losses on the device, and an early NaN check
    that never makes the host wait.

    Every ``every`` steps the finite flag of the sums is snapshotted (all-reduced under DDP:
    every rank takes it at the same steps) into pinned host memory by a non-blocking copy; the
    snapshot is read ``every`` steps later, when the device finished it long ago, so a diverged
    trial stops within ``2 * every`` steps. ``check_finite`` at the end of the epoch (blocking,
    once) is the last word. Make one per run and ``reset`` it per epoch: the host buffer is
    pinned once.
    """

    def __init__(self, device: torch.device, every: int | None = None) -> None:
        self.device = device
        self.every = every or NAN_CHECK_EVERY
        pinned = device.type == "cuda"
        self._host = torch.ones(2, dtype=torch.int32, pin_memory=pinned)
        self._flags = self._host.numpy()  # a view: reading it is a plain host read
        self.reset(0)

    def reset(self, epoch: int) -> None:
        self.epoch = epoch
        self.sums = torch.zeros(3, device=self.device)
        self.steps = 0
        self._pending: tuple[int, torch.cuda.Event | None] | None = None

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        """Add one step's detached loss parts; every ``every`` steps, check the snapshot of the
        previous period and take a new one."""
        self.sums += torch.stack([parts["total"], parts["ce"], parts["triplet"]])
        self.steps += 1
        if self.steps % self.every:
            return
        if self._pending is not None:
            slot, event = self._pending
            if event is not None and not event.query():
                event.synchronize()  # not reached in practice: `every` steps have passed since
            if self._flags[slot] == 0:
                raise diverged(self.epoch)
        slot = (self.steps // self.every) % 2
        self._host[slot : slot + 1].copy_(_finite_flag(self.sums), non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self._pending = (slot, event)
