"""One training run in pure torch: the loop behind every trial and ``reidsearch train``.

No Ray here. The caller passes a ``report`` function that receives each epoch's metrics (and,
on rank 0, a checkpoint payload); the Ray Train wrapper turns it into ``ray.train.report``.
DDP is used when a ``torch.distributed`` process group is already initialised (Ray Train does
that: gloo on CPU, nccl on GPU). With ``repeats: N`` the run trains N seeds side by side and
reports their mean, interval and spread; its score follows the config's objective.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from reidsearch.config import TrialConfig
from reidsearch.data.augment import BatchAugment
from reidsearch.engine.checkpoint import CHECKPOINT_FILE, save_atomic
from reidsearch.engine.cost import measure_cost
from reidsearch.engine.data import PreparedData, prepare_data
from reidsearch.engine.evaluate import (
    EvalOutput,
    check_leaks,
    evaluate_model,
    write_eval_pictures,
)
from reidsearch.engine.scoring import EPOCH_SCORE_KEY, KEEP_KEY, Scorer, combine_seeds
from reidsearch.engine.seed_run import ImageSource, SeedRun, TrainingDiverged

__all__ = ["CheckpointPayload", "TrainContext", "TrainingDiverged", "format_epoch", "train"]


@dataclass
class TrainContext:
    """Where this process sits in the run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: Callable[..., Any] | bool = False  # True: tqdm; or a tqdm-like factory
    started_at: float | None = None  # time.time() when the trial started: gives startup_s

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
        save_atomic(self.state, Path(directory) / CHECKPOINT_FILE)
        if self.eval_output is not None:
            write_eval_pictures(self.eval_output, self.data, Path(directory))


def format_epoch(metrics: dict[str, float]) -> str:
    """The one-line summary of an epoch that ``reidsearch train`` prints."""

    def pct(key: str) -> str:  # an epoch that was not evaluated has no retrieval metrics
        return f"{100 * metrics[key]:5.1f}" if key in metrics else "    -"

    line = (
        f"epoch {int(metrics['epoch']):3d} | loss {metrics['loss']:.4f} | "
        f"mAP {pct('mAP')} | rank-1 {pct('rank1')} | "
        f"{metrics['images_per_s']:8.1f} img/s | lr {metrics['lr']:.2e}"
    )
    if "score" in metrics:
        line += f" | score {metrics['score']:.4f} (epoch {int(metrics['score_epoch'])})"
    return line


Reporter = Callable[[dict[str, float], CheckpointPayload | None], None]


def _progress(ctx: TrainContext, epoch: int, epochs: int) -> Callable[..., Any] | None:
    if not ctx.progress or ctx.rank != 0:
        return None
    if callable(ctx.progress):
        bar = ctx.progress
    else:
        from tqdm import tqdm as bar
    return lambda batches: bar(batches, desc=f"epoch {epoch + 1}/{epochs}")


def _score(
    model: torch.nn.Module,
    data: PreparedData,
    cfg: TrialConfig,
    device: torch.device,
    source: ImageSource,
) -> EvalOutput:
    """One model on the query/gallery splits, as the trial evaluates (its feature, its cache)."""
    return evaluate_model(
        model, data, cfg.eval, feature=cfg.model.feature, device=device, amp=cfg.amp, source=source
    )


def _evaluate(
    runs: list[SeedRun],
    data: PreparedData,
    cfg: TrialConfig,
    device: torch.device,
    source: ImageSource,
) -> tuple[dict[str, float], list[EvalOutput]]:
    """Every seed's model scored on the same queries, then combined (mean, interval, spread)."""
    outputs = [_score(run.model, data, cfg, device, source) for run in runs]
    combined = combine_seeds(
        [o.metrics for o in outputs], [o.per_query for o in outputs], seed=cfg.seed
    )
    return combined, outputs


def _resume_runs(runs: list[SeedRun], resume: dict[str, Any]) -> None:
    states = resume.get("runs")
    if states is None:  # a checkpoint of one seed, written before runs were kept per seed
        states = [{key: resume[key] for key in ("model", "optimizer", "scheduler", "sampler")}]
    if len(states) != len(runs):
        raise ValueError(f"checkpoint holds {len(states)} seeds, the config asks for {len(runs)}")
    for run, state in zip(runs, states, strict=True):
        run.load_state_dict(state)


def train(
    cfg: TrialConfig,
    report: Reporter,
    *,
    ctx: TrainContext | None = None,
    resume: dict[str, Any] | None = None,
    data: PreparedData | None = None,
    backbone_weights: Path | None = None,
) -> dict:
    """Train ``cfg.repeats`` seeds for ``cfg.epochs`` epochs, evaluating every
    ``cfg.eval.period`` epochs and after the last.

    ``resume`` is a state dict written by an earlier run (``checkpoint.pt``): the epoch counter,
    models, optimisers, schedulers and the score continue from it. ``data`` and
    ``backbone_weights`` (a local copy of the starting backbone) are what a search driver
    prepared once for every trial. Returns the last metrics.
    """
    ctx = ctx or TrainContext.from_environment()
    device = ctx.device
    data = data or prepare_data(cfg.data)
    model_cfg = cfg.model
    if backbone_weights is not None:  # the starting weights, already fetched for this node
        model_cfg = model_cfg.model_copy(
            update={"pretrained": False, "weights": str(backbone_weights)}
        )
    runs = [
        SeedRun(
            cfg,
            cfg.seed + i,
            data,
            rank=ctx.rank,
            world_size=ctx.world_size,
            device=device,
            model_cfg=model_cfg,
        )
        for i in range(cfg.repeats)
    ]
    model = runs[0].model  # the config's own seed: what checkpoints export and eval loads
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

    start_epoch = 0
    history: list[dict[str, float]] = []  # every epoch's metrics: a restart can report them
    scorer = Scorer(cfg.objective)
    last_eval: dict[str, float] = {}
    untrained: dict[str, float] = {}
    cost: dict[str, float] = {}  # cost.*: measured at the first evaluation
    if resume is not None:
        _resume_runs(runs, resume)
        start_epoch = int(resume["epoch"])
        scorer = Scorer(cfg.objective, resume.get("scorer"))
        last_eval = dict(resume.get("last_eval", {}))
        history = list(resume.get("history", []))
        untrained = dict(resume.get("untrained", {}))
        cost = dict(resume.get("cost", {}))

    leaks = 0
    if ctx.rank == 0 and resume is None:  # a search checks once, in its driver
        leaks = data.query_leaks if data.query_leaks is not None else check_leaks(data)
    if cfg.eval.baseline and ctx.rank == 0 and resume is None:
        scores = _score(model, data, cfg, device, source).metrics
        untrained = {"untrained_mAP": scores["mAP"], "untrained_rank1": scores["rank1"]}

    # Trial start -> first training step of this run: process and process-group start, imports,
    # data, model (what a short trial pays on top of its epochs); reported with its first epoch.
    startup = {} if ctx.started_at is None else {"startup_s": time.time() - ctx.started_at}
    # A run resumed at its last epoch trains nothing more: its result is its last report.
    metrics: dict[str, float] = dict(resume["metrics"]) if resume is not None else {}
    for epoch in range(start_epoch, cfg.epochs):
        sums = torch.zeros(3, device=device)
        seen, started = 0, time.perf_counter()
        for run in runs:
            n_trainable = run.prepare_epoch(epoch)
            run_sums, run_seen = run.train_epoch(
                epoch,
                data,
                source,
                augment,
                bf16=use_bf16,
                progress=_progress(ctx, epoch, cfg.epochs),
            )
            sums += run_sums / len(runs)
            seen += run_seen
        if (
            ctx.world_size > 1 and dist.is_initialized()
        ):  # the epoch's loss over every rank's batches, not rank 0's
            dist.all_reduce(sums)
            sums /= ctx.world_size
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started

        eval_outputs: list[EvalOutput] = []
        scored_here = False
        is_eval_epoch = (epoch + 1) % cfg.eval.period == 0 or epoch + 1 == cfg.epochs
        epoch_score: dict[str, float] = {}
        if is_eval_epoch and ctx.rank == 0:
            last_eval, eval_outputs = _evaluate(runs, data, cfg, device, source)
            last_eval["loss"] = float(sums[0])
            if cfg.eval.cost_gallery and not cost:  # once: the architecture's, not the epoch's
                cost = measure_cost(model, cfg, device)
            scored_here = scorer.update(epoch + 1, last_eval)
            epoch_score = {
                EPOCH_SCORE_KEY: scorer.value(last_eval),
                KEEP_KEY: float(epoch + 1 if scored_here else 0),
            }

        loss_mean, ce_mean, triplet_mean = sums.tolist()
        metrics = {
            "epoch": epoch + 1,
            "loss": loss_mean,
            "ce": ce_mean,
            "triplet": triplet_mean,
            "lr": runs[0].optimizer.param_groups[0]["lr"],
            "images_per_s": seen * ctx.world_size / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
            "trainable_blocks": n_trainable,
            # Retrieval metrics only on the epochs evaluated: no zeros before the first
            # evaluation, no stale copies after it. The score so far is on every epoch after it.
            **({k: v for k, v in last_eval.items() if k != "loss"} if eval_outputs else {}),
            **epoch_score,
            **(cost if eval_outputs else {}),
            **scorer.report(),
            "start_epoch": start_epoch,  # > 0 when this run resumed from a checkpoint
            "query_leaks": leaks,
            "unreadable_images": len(data.unreadable),  # skipped (data.skip_unreadable)
            **untrained,
            **(startup if epoch == start_epoch else {}),
        }
        history.append(metrics)
        payload = None
        # Checkpoints only on evaluated epochs: the kept checkpoint is always a scored one, and
        # a restarted run resumes from the last evaluation.
        if ctx.rank == 0 and eval_outputs:
            state = {
                "config": cfg.model_dump(),
                "model": model.state_dict(),
                "num_classes": data.num_classes,
                "epoch": epoch + 1,
                "metrics": metrics,
                "history": list(history),
                "runs": [run.state_dict() for run in runs],
                "scorer": scorer.state_dict(),
                "scored_here": scored_here,
                "last_eval": last_eval,
                "untrained": untrained,
                "cost": cost,
            }
            payload = CheckpointPayload(state=state, eval_output=eval_outputs[0], data=data)
        report(metrics, payload)
    return metrics
