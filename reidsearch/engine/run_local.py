"""Training and evaluation in this process, without Ray: ``reidsearch train --no-ray`` and
``reidsearch eval``. Useful on a bare GPU machine that has only torch and timm."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from reidsearch.config import EvalConfig, TrialConfig, with_overrides
from reidsearch.engine.checkpoint import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    load_checkpoint,
    model_payload,
    save_atomic,
)
from reidsearch.engine.data import prepare_data
from reidsearch.engine.evaluate import check_leaks, evaluate_model, write_eval_pictures
from reidsearch.engine.trainer import CheckpointPayload, TrainContext, format_epoch, train
from reidsearch.errors import ReidSearchError
from reidsearch.modeling import build_model


def export_best_model(state: dict[str, Any], source_dir: Path | None, target_dir: Path) -> Path:
    """Write the model-only checkpoint (what ``reidsearch eval`` loads) and copy pictures."""
    target_dir.mkdir(parents=True, exist_ok=True)
    payload = model_payload(
        TrialConfig.model_validate(state["config"]),
        state["model"],
        state["num_classes"],
        state["epoch"],
        state["metrics"],
    )
    save_atomic(payload, target_dir / MODEL_FILE)
    if source_dir is not None:
        for picture in Path(source_dir).glob("*.png"):
            shutil.copy2(picture, target_dir / picture.name)
    return target_dir / MODEL_FILE


def train_locally(cfg: TrialConfig, output: Path, name: str) -> dict[str, Any]:
    """Train in this process; keeps the latest state (resumable) and the best model."""
    run_dir = output / name
    last_dir, best_dir = run_dir / "last", run_dir / "best"
    last = last_dir / CHECKPOINT_FILE
    resume = load_checkpoint(last) if last.is_file() else None
    if resume is not None:
        previous = TrialConfig.model_validate(resume["config"])
        for section in ("data", "model", "loss", "sampler", "repeats", "objective"):
            if getattr(previous, section) != getattr(cfg, section):
                raise ReidSearchError(
                    f"{run_dir}: an earlier run named {name!r} used other {section} settings; "
                    "pass another --name (or delete the folder) to start afresh"
                )
        print(f"resuming {name} from epoch {resume['epoch']}")
    data = prepare_data(cfg.data)
    best: dict[str, Any] = {"score": float("nan"), "epoch": 0, "path": best_dir / MODEL_FILE}
    if resume is not None and resume.get("scorer", {}).get("score") is not None:
        best.update(score=resume["scorer"]["score"], epoch=resume["scorer"]["epoch"])

    def report(metrics: dict[str, float], payload: CheckpointPayload | None) -> None:
        print(format_epoch(metrics), flush=True)
        if payload is None:  # an epoch without evaluation: nothing to save
            return
        payload.write(last_dir)
        if payload.state["scored_here"]:  # the run's score now comes from this epoch
            best.update(score=metrics["score"], epoch=int(metrics["epoch"]))
            export_best_model(payload.state, last_dir, best_dir)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train(
        cfg,
        report,
        ctx=TrainContext(device=device, progress=sys.stderr.isatty()),
        resume=resume,
        data=data,
    )
    return best


def evaluate_checkpoint(
    path: Path,
    *,
    data: str | None = None,
    layout: str | None = None,
    rerank: bool | None = None,
    flip: bool | None = None,
    feature: str | None = None,
    out_dir: Path = Path("reidsearch_eval"),
    use_camera: bool | None = None,
    retrieval: str | None = None,
) -> dict[str, float]:
    """Rebuild the model of a checkpoint, score it on a dataset and write the pictures.

    Evaluation settings left None are the checkpoint's own (``eval.rerank``, ``flip``,
    ``use_camera``, ``retrieval``): a trial is re-scored as its search scored it."""
    payload = load_checkpoint(path)
    if "config" not in payload or "model" not in payload:
        raise ReidSearchError(f"{path}: not a reidsearch checkpoint (no config/model inside)")
    cfg = TrialConfig.model_validate(payload["config"])
    overrides: dict[str, Any] = {}
    if data is not None:
        overrides["data.root"] = data
    if layout is not None:
        overrides["data.layout"] = layout
    if feature is not None:
        overrides["model.feature"] = feature
    cfg = with_overrides(cfg, overrides) if overrides else cfg
    prepared = prepare_data(cfg.data)
    check_leaks(prepared)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg.model, payload["num_classes"], (cfg.data.height, cfg.data.width))
    model.load_state_dict(payload["model"])
    model.to(device)
    chosen = {"flip": flip, "rerank": rerank, "use_camera": use_camera, "retrieval": retrieval}
    eval_cfg = EvalConfig.model_validate(
        {**cfg.eval.model_dump(), **{k: v for k, v in chosen.items() if v is not None}}
    )
    output = evaluate_model(
        model, prepared, eval_cfg, feature=cfg.model.feature, device=device, amp=cfg.amp
    )
    write_eval_pictures(output, prepared, out_dir)
    return output.metrics
