"""Checkpoint files: the full training state (for resume) and the model alone (for eval).

Both are plain ``torch.save`` dicts of tensors and builtins, loadable with ``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from reidsearch.config import TrialConfig
from reidsearch.errors import ReidSearchError, first_line

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write through a temp file so an interrupted save never leaves a half checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file (or a directory holding one) with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        for name in (MODEL_FILE, CHECKPOINT_FILE):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise ReidSearchError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad file
        raise ReidSearchError(
            f"{path}: not a reidsearch checkpoint readable with weights_only=True "
            f"({first_line(exc)})"
        ) from None


def model_payload(
    config: TrialConfig, model_state: dict, num_classes: int, epoch: int, metrics: dict[str, float]
) -> dict[str, Any]:
    """What ``reidsearch eval`` needs to rebuild and score a model."""
    return {
        "config": config.model_dump(),
        "model": model_state,
        "num_classes": num_classes,
        "epoch": epoch,
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
