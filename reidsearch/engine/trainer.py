"""One training run in pure torch: the loop behind every trial and ``reidsearch train``.

No Ray here. The caller passes a ``report`` function that receives each epoch's metrics (and,
on rank 0, a checkpoint payload); the Ray Train wrapper turns it into ``ray.train.report``.
DDP is used when a ``torch.distributed`` process group is already initialised (Ray Train does
that: gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reidsearch.config import OptimConfig, TrialConfig, UnfreezeConfig
from reidsearch.data.augment import BatchAugment
from reidsearch.data.sampler import PKSampler
from reidsearch.engine.checkpoint import STATE_FILE, save_atomic
from reidsearch.engine.data import PreparedData, prepare_data
from reidsearch.engine.evaluate import (
    SCALAR_METRICS,
    EvalOutput,
    check_leaks,
    evaluate_model,
    write_eval_pictures,
)
from reidsearch.modeling import ReIDLoss, ReIDModel, build_model, freeze_backbone_blocks

GPU_CACHE_LIMIT_BYTES = 8 * 1024**3
NAN_CHECK_EVERY = 20  # steps between NaN checks (each check waits for the GPU)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the trial is stopped and marked failed."""


@dataclass
class TrainContext:
    """Where this process sits in the run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: Callable[..., Any] | bool = False  # True: tqdm; or a tqdm-like factory

    @classmethod
    def from_environment(
        cls, device: torch.device | None = None, progress: Callable[..., Any] | bool = False
    ) -> TrainContext:
        distributed = dist.is_available() and dist.is_initialized()
        return cls(
            rank=dist.get_rank() if distributed else 0,
            world_size=dist.get_world_size() if distributed else 1,
            device=device or torch.device("cuda" if torch.cuda.is_available() else "cpu"),
            progress=progress,
        )


@dataclass
class CheckpointPayload:
    """Rank 0's state after an epoch: written by the reporter where it wants it."""

    state: dict[str, Any]
    eval_output: EvalOutput | None
    data: PreparedData

    def write(self, directory: Path) -> None:
        save_atomic(self.state, Path(directory) / STATE_FILE)
        if self.eval_output is not None:
            write_eval_pictures(self.eval_output, self.data, Path(directory))


def format_epoch(metrics: dict[str, float]) -> str:
    """The one-line summary of an epoch that ``reidsearch train`` prints."""
    return (
        f"epoch {int(metrics['epoch']):3d} | loss {metrics['loss']:.4f} | "
        f"mAP {100 * metrics['mAP']:5.1f} | rank-1 {100 * metrics['rank1']:5.1f} | "
        f"{metrics['images_per_s']:8.1f} img/s | lr {metrics['lr']:.2e}"
    )


Reporter = Callable[[dict[str, float], CheckpointPayload | None], None]


def _check_finite(loss_sums: torch.Tensor, epoch: int) -> None:
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


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weights only: biases, norms, tokens and position embeddings get none."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        is_token = name.endswith(("cls_token", "pos_embed", "reg_token"))
        (no_decay if param.ndim <= 1 or is_token else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    fused = torch.cuda.is_available() and all(p.is_cuda for p in model.parameters())
    optimizer_cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return optimizer_cls(groups, lr=cfg.lr, fused=fused or None)


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


def seed_everything(seed: int) -> None:
    """Seeds torch (CPU and every CUDA device) and numpy."""
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


def _epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Augmentation randomness that depends only on (seed, epoch, rank): resume reproduces it.
    A CPU generator: BatchAugment draws its random numbers on the CPU for any device."""
    generator = torch.Generator()
    generator.manual_seed(_epoch_seed(seed, epoch, rank))
    return generator


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


def _wrap_ddp(model: nn.Module, ctx: TrainContext) -> nn.Module:
    if ctx.world_size == 1 or not any(p.requires_grad for p in model.parameters()):
        return model
    device_ids = [ctx.device.index or 0] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def train(
    cfg: TrialConfig,
    report: Reporter,
    *,
    ctx: TrainContext | None = None,
    resume: dict[str, Any] | None = None,
    data: PreparedData | None = None,
    backbone_weights: Path | None = None,
) -> dict:
    """Train one model for ``cfg.epochs`` epochs, evaluating every ``cfg.eval.period`` epochs.

    ``resume`` is a state dict written by an earlier run (``checkpoint.pt``): the epoch counter,
    model, optimiser, scheduler and best score continue from it. ``data`` and
    ``backbone_weights`` (a local copy of the starting backbone) are what a search driver
    prepared once for every trial. Returns the last metrics.
    """
    ctx = ctx or TrainContext.from_environment()
    device = ctx.device
    seed_everything(cfg.seed)
    data = data or prepare_data(cfg.data)
    image_size = (cfg.data.height, cfg.data.width)
    model_cfg = cfg.model
    if backbone_weights is not None:  # the starting weights, already fetched for this node
        model_cfg = model_cfg.model_copy(
            update={"pretrained": False, "weights": str(backbone_weights)}
        )
    model: ReIDModel = build_model(model_cfg, data.num_classes, image_size).to(device)
    loss_fn = ReIDLoss(cfg.loss)
    optimizer = build_optimizer(cfg.optim, model)
    sampler = PKSampler(
        data.train_labels,
        cfg.sampler.p,
        cfg.sampler.k,
        seed=cfg.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    steps_per_epoch = len(sampler)
    depth = len(model.blocks)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(cfg.optim, cfg.epochs, steps_per_epoch, depth)
    )
    augment = BatchAugment(
        cfg.data.height,
        cfg.data.width,
        model.mean,
        model.std,
        train=True,
        flip_p=cfg.data.augment.flip_p,
        pad=cfg.data.augment.pad,
        erasing_p=cfg.data.augment.erasing_p,
    )
    use_bf16 = cfg.amp and device.type == "cuda"
    source = ImageSource(data, device)

    start_epoch, best = 0, {"mAP": -1.0, "epoch": -1}
    last_eval: dict[str, float] = {}
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        sampler.load_state_dict(resume["sampler"])
        start_epoch = int(resume["epoch"])
        best = dict(resume["best"])
        last_eval = dict(resume.get("last_eval", {}))

    untrained: dict[str, float] = dict(resume.get("untrained", {})) if resume else {}
    leaks = 0
    if ctx.rank == 0 and resume is None:  # a search checks once, in its driver
        leaks = data.query_leaks if data.query_leaks is not None else check_leaks(data)
    if cfg.eval.baseline and ctx.rank == 0 and resume is None:
        scores = evaluate_model(
            model, data, cfg.eval, feature=cfg.model.feature, device=device, amp=cfg.amp
        ).metrics
        untrained = {"untrained_mAP": scores["mAP"], "untrained_rank1": scores["rank1"]}

    forward_model: nn.Module = model
    frozen_blocks = None
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.epochs):
        n_trainable = trainable_blocks(cfg.optim.unfreeze, epoch, depth)
        if n_trainable != frozen_blocks:
            freeze_backbone_blocks(model, n_trainable)
            forward_model = _wrap_ddp(model, ctx)  # DDP must see the new set of trained params
            if cfg.compile:
                forward_model = torch.compile(forward_model)
            frozen_blocks = n_trainable
        sampler.set_epoch(epoch)
        # Dropout noise per (seed, epoch, rank): each rank its own, and a resumed run draws
        # exactly what the uninterrupted run would have.
        seed_everything(_epoch_seed(cfg.seed, epoch, ctx.rank) + 1)
        generator = _epoch_generator(cfg.seed, epoch, ctx.rank)
        model.train()
        # Loss sums stay on the device: a float() per step would stall the GPU every step.
        sums = torch.zeros(3, device=device)
        seen, started = 0, time.perf_counter()
        batches = sampler
        if ctx.progress and ctx.rank == 0:
            if callable(ctx.progress):
                bar = ctx.progress
            else:
                from tqdm import tqdm as bar
            batches = bar(sampler, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        for step, batch in enumerate(batches, 1):
            index = np.asarray(batch)
            labels = torch.as_tensor(data.train_labels[index], device=device)
            images = augment(source.batch(data.train_index[index]), generator=generator)
            parts = train_step(
                forward_model,
                loss_fn,
                optimizer,
                images,
                labels,
                bf16=use_bf16,
                grad_clip=cfg.optim.grad_clip,
            )
            scheduler.step()
            sums += torch.stack([parts["total"], parts["ce"], parts["triplet"]])
            seen += len(index)
            if step % NAN_CHECK_EVERY == 0:
                _check_finite(sums, epoch)
        _check_finite(sums, epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started

        eval_output = None
        is_eval_epoch = (epoch + 1) % cfg.eval.period == 0 or epoch + 1 == cfg.epochs
        if is_eval_epoch and ctx.rank == 0:
            eval_output = evaluate_model(
                model, data, cfg.eval, feature=cfg.model.feature, device=device, amp=cfg.amp
            )
            last_eval = eval_output.metrics
            if last_eval["mAP"] > best["mAP"]:
                best = {"mAP": last_eval["mAP"], "epoch": epoch + 1}

        loss_sum, ce_sum, triplet_sum = (sums / max(1, len(sampler))).tolist()
        metrics = {
            "epoch": epoch + 1,
            "loss": loss_sum,
            "ce": ce_sum,
            "triplet": triplet_sum,
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": seen * ctx.world_size / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
            "trainable_blocks": n_trainable,
            **{key: last_eval.get(key, 0.0) for key in SCALAR_METRICS},
            "best_mAP": max(best["mAP"], 0.0),
            "start_epoch": start_epoch,  # > 0 when this run resumed from a checkpoint
            "query_leaks": leaks,
            **untrained,
        }
        payload = None
        # Checkpoints only on evaluated epochs: the "best" checkpoint is always a scored one,
        # and a restarted run resumes from the last evaluation.
        if ctx.rank == 0 and eval_output is not None:
            state = {
                "config": cfg.model_dump(),
                "model": model.state_dict(),
                "num_classes": data.num_classes,
                "epoch": epoch + 1,
                "metrics": metrics,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "sampler": sampler.state_dict(),
                "best": best,
                "last_eval": last_eval,
                "untrained": untrained,
            }
            payload = CheckpointPayload(state=state, eval_output=eval_output, data=data)
        report(metrics, payload)
    return metrics
