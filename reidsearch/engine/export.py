"""ONNX export of a trained model, so that the best model can be used outside reidsearch.

The contract of the exported graph (the JSON written beside it repeats it):

* input ``images``: uint8 ``N x H x W x 3`` RGB at the model's height x width, N dynamic. That
  is exactly what the training pipeline feeds its augmentation: PIL decode, ``convert("RGB")``,
  bicubic resize to ``(width, height)``. The mean/std normalisation is inside the graph, the
  same arithmetic as ``BatchAugment`` at eval time, so callers need no constants.
* output ``feature``: float32 ``N x D``, the configured test feature (``model.feature``),
  L2-normalised (inner product = cosine similarity); with flip test-time augmentation when the
  trial was scored with it (``eval.flip``), so the file reproduces the scored feature.

onnx, onnxscript and onnxruntime (the ``export`` extra) are imported lazily: the core runs
without them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reidsearch.config import QUERY_METRICS, TrialConfig
from reidsearch.engine.checkpoint import load_checkpoint
from reidsearch.errors import ReidSearchError, first_line
from reidsearch.modeling import ReIDModel, build_model

INPUT_NAME = "images"
OUTPUT_NAME = "feature"
EXPORTERS = ("dynamo", "torchscript")
Exporter = Literal["dynamo", "torchscript"]
CHECK_BATCHES = (1, 3)  # two batch sizes: proves the batch dimension is really dynamic
MAX_DIFF = 1e-4
_PROTOBUF_LIMIT = 1_800_000_000  # bytes: ONNX files above ~2 GB need external weights


class FeatureNet(nn.Module):
    """uint8 ``N,H,W,3`` images -> L2-normalised test feature, preprocessing included.

    The graph that is exported, and also what ``reidsearch query`` runs with a torch checkpoint,
    so that both paths compute the same numbers.
    """

    def __init__(self, model: ReIDModel, feature: str = "default", flip: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.feature = feature
        self.flip = flip
        self.register_buffer("mean", torch.tensor(model.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(model.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        f = self.model.extract(x, self.feature)
        if self.flip:  # as evaluation's flip TTA: mean of image and mirror, then normalised
            f = F.normalize(f + self.model.extract(torch.flip(x, dims=[3]), self.feature), dim=-1)
        return f


@dataclass
class ModelInfo:
    """What a user of the exported file needs to know, and where it came from."""

    height: int
    width: int
    feature: str
    dim: int
    flip: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    checkpoint: str
    epoch: int | None = None
    score: float | None = None
    metric: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def load_feature_net(path: str | Path, flip: bool | None = None) -> tuple[FeatureNet, ModelInfo]:
    """Rebuild a checkpoint's model (``model.pt`` or a search's ``checkpoint.pt``) on the CPU.

    ``flip=None`` keeps the trial's own ``eval.flip``, i.e. the feature its score was measured
    with. No pretrained weights are fetched: the checkpoint holds every weight.
    """
    payload = load_checkpoint(path)
    if not isinstance(payload, dict) or "config" not in payload or "model" not in payload:
        raise ReidSearchError(f"{path}: not a reidsearch checkpoint (no config/model inside)")
    cfg = TrialConfig.model_validate(payload["config"])
    model_cfg = cfg.model.model_copy(update={"pretrained": False, "weights": None})
    size = (cfg.data.height, cfg.data.width)
    model = build_model(model_cfg, int(payload["num_classes"]), size)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        reason = first_line(exc)
        raise ReidSearchError(f"{path}: weights do not fit its config ({reason})") from None
    flip = cfg.eval.flip if flip is None else flip
    metrics = {  # the retrieval metrics of the checkpoint's epoch, not its training stats
        k: float(v)
        for k, v in (payload.get("metrics") or {}).items()
        if k.split("_")[0] in (*QUERY_METRICS, "score") or k == "num_valid_queries"
    }
    score = metrics.get("score", (payload.get("scorer") or {}).get("score"))
    info = ModelInfo(
        height=cfg.data.height,
        width=cfg.data.width,
        feature=model.feature,
        dim=model.feature_dim(),
        flip=flip,
        mean=model.mean,
        std=model.std,
        checkpoint=str(Path(path).resolve()),
        epoch=payload.get("epoch"),
        score=None if score is None else float(score),
        metric=cfg.objective.metric,
        metrics=metrics,
    )
    return FeatureNet(model, flip=flip).eval(), info


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Silence file descriptors 1 and 2: torch's TorchScript exporter dumps its whole graph
    from C++ when it fails (its switch for that log is broken), burying the one-line error."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def _export(net: FeatureNet, sample: torch.Tensor, path: Path, exporter: Exporter) -> None:
    big = sum(p.numel() * p.element_size() for p in net.parameters()) > _PROTOBUF_LIMIT
    common: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter, not the user's concern
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                net,
                (sample,),
                str(path),
                dynamo=True,
                dynamic_shapes=({0: batch},),
                external_data=big,
                verbose=False,
                **common,
            )
        else:
            with _quiet_native_output():
                torch.onnx.export(
                    net,
                    (sample,),
                    str(path),
                    dynamo=False,
                    opset_version=17,
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    **common,
                )


def onnx_session(path: str | Path) -> Any:
    """An onnxruntime CPU session; one line naming the file when it cannot be loaded."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ReidSearchError(
            "onnxruntime is not installed (pip install 'reidsearch[export]')"
        ) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own error types
        raise ReidSearchError(
            f"{path}: not an ONNX model onnxruntime can load ({first_line(exc)})"
        ) from None


def check_onnx(
    net: FeatureNet, path: str | Path, info: ModelInfo, batches: tuple[int, ...] = CHECK_BATCHES
) -> float:
    """Largest absolute difference between onnxruntime's and torch's features on random images
    of several batch sizes."""
    session = onnx_session(path)
    rng = np.random.default_rng(0)
    worst = 0.0
    for n in batches:
        images = rng.integers(0, 256, (n, info.height, info.width, 3), dtype=np.uint8)
        with torch.inference_mode():
            expected = net(torch.from_numpy(images)).numpy()
        try:
            (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
        except Exception as exc:  # noqa: BLE001
            raise ReidSearchError(
                f"{path}: onnxruntime failed at batch {n} ({first_line(exc)})"
            ) from None
        if got.shape != expected.shape:
            raise ReidSearchError(
                f"{path}: onnxruntime gave shape {got.shape} at batch {n}, torch {expected.shape}"
            )
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_onnx(
    net: FeatureNet,
    info: ModelInfo,
    out: str | Path,
    *,
    exporter: Exporter = "dynamo",
    max_diff: float = MAX_DIFF,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``net`` to ``out``, check it against torch with onnxruntime and write the JSON
    beside it; returns that JSON. Nothing appears at ``out`` unless the check passed."""
    if exporter not in EXPORTERS:
        raise ReidSearchError(f"--exporter {exporter}: choose one of {', '.join(EXPORTERS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = net.cpu().eval()
    sample = torch.zeros(2, info.height, info.width, 3, dtype=torch.uint8)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        try:
            _export(net, sample, staging / out.name, exporter)
        except ImportError as exc:
            raise ReidSearchError(
                f"{exc.name or 'onnx'} is not installed (pip install 'reidsearch[export]')"
            ) from None
        except Exception as exc:  # noqa: BLE001 - exporter failures come in many types
            raise ReidSearchError(
                f"{out}: the {exporter} ONNX exporter failed ({first_line(exc)}); "
                f"try --exporter {'torchscript' if exporter == 'dynamo' else 'dynamo'}"
            ) from None
        diff = check_onnx(net, staging / out.name, info)
        if not diff <= max_diff:
            raise ReidSearchError(
                f"{out}: not written: onnxruntime's features differ from torch's by {diff:.2e} "
                f"(more than {max_diff:g})"
            )
        files = sorted(p.name for p in staging.iterdir())
        for name in files:  # external weights (huge models) keep their relative name
            (out.parent / name).unlink(missing_ok=True)
            shutil.move(str(staging / name), out.parent / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    card = model_card(info, exporter=exporter, max_abs_diff=diff, files=files, source=source)
    card_path(out).write_text(json.dumps(card, indent=2) + "\n")
    return card


def card_path(onnx_path: str | Path) -> Path:
    """The JSON beside an ONNX file: ``model.onnx`` -> ``model.json``."""
    return Path(onnx_path).with_suffix(".json")


def model_card(
    info: ModelInfo,
    *,
    exporter: str,
    max_abs_diff: float,
    files: list[str],
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The input/output contract and the provenance of an exported model, as plain JSON."""
    return {
        "format": "reidsearch-onnx-1",
        "files": files,
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "shape": ["batch", info.height, info.width, 3],
            "layout": "NHWC, RGB",
            "height": info.height,
            "width": info.width,
            "preprocessing": "PIL: convert('RGB'), resize((width, height), BICUBIC); "
            "the mean/std normalisation is inside the graph",
            "mean": list(info.mean),
            "std": list(info.std),
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", info.dim],
            "feature": info.feature,
            "dim": info.dim,
            "l2_normalised": True,
            "flip_tta": info.flip,
        },
        "source": {
            "checkpoint": info.checkpoint,
            "epoch": info.epoch,
            "score": info.score,
            "metric": info.metric,
            "metrics": info.metrics,
            **(source or {}),
        },
        "exporter": exporter,
        "torch": torch.__version__,
        "max_abs_diff": max_abs_diff,
    }


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    exporter: Exporter = "dynamo",
    flip: bool | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``reidsearch export``: a checkpoint file in, a checked ONNX file and its JSON out."""
    net, info = load_feature_net(checkpoint, flip=flip)
    return export_onnx(net, info, out, exporter=exporter, source=source)
