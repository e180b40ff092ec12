"""The trial config: one validated schema for a training run, loaded from YAML.

The same schema is the ``fixed:`` part of a search space; searched parameters are dotted paths
into it (``model.lam``, ``loss.label_smoothing``). Unknown keys are errors, and every error names
the file and the dotted key.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reidsearch.errors import ConfigError
from reidsearch.storage import absolute, is_uri

LAYOUTS = ("latfpp", "market1501", "dukemtmc", "msmt17", "generic")
Layout = Literal[LAYOUTS]  # type: ignore[valid-type]
# What ranks CMC / rank-k (``evaluation.metrics.RETRIEVALS`` keeps a copy; a test checks it).
RETRIEVALS = ("auto", "exact", "faiss")
Retrieval = Literal[RETRIEVALS]  # type: ignore[valid-type]
# The objective's names live in reidsearch.objective; here for everything that reads them.
from reidsearch.objective import (  # noqa: E402
    COST_UNITS,
    OBJECTIVE_METRICS,
    QUERY_METRICS,
    ObjectiveConfig,
)

__all__ = ["COST_UNITS", "OBJECTIVE_METRICS", "QUERY_METRICS", "ObjectiveConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _absolute(value: str | None) -> str | None:
    """Relative paths are made absolute where the config is loaded: Ray workers run in other
    working directories, so a relative path would point elsewhere there. ``s3://`` and
    ``gs://`` URIs are kept as they are."""
    return None if value is None else absolute(value)


def _local_absolute(value: str | None) -> str | None:
    if value is not None and is_uri(value):
        raise ValueError(f"{value}: must be a local folder (each node keeps its own cache)")
    return _absolute(value)


class SyntheticConfig(_Strict):
    """Parameters of the built-in synthetic re-ID generator (the embedded default dataset)."""

    layout: Layout = "latfpp"
    ids: int = Field(40, ge=2, description="identities in train (and as many in test)")
    test_ids: int | None = Field(None, ge=1, description="identities in query/gallery")
    cameras: int = Field(2, ge=2)
    images_per_camera: int = Field(4, ge=1)
    height: int = Field(128, ge=16)
    width: int = Field(48, ge=8)
    seed: int = 0


class AugmentConfig(_Strict):
    """Training augmentation (batched tensor ops; the LA-TF recipe is flip only: pad 0,
    erasing_p 0). Evaluation only resizes and normalises."""

    flip_p: float = Field(0.5, ge=0.0, le=1.0)
    pad: int = Field(10, ge=0, description="zero-pad then random-crop back, in pixels")
    erasing_p: float = Field(0.5, ge=0.0, le=1.0, description="random erasing probability")


class DataConfig(_Strict):
    """Where the images come from and at which resolution the model sees them."""

    layout: Layout = "latfpp"
    root: str | None = Field(
        None, description="dataset folder or s3:// / gs:// URI; None uses `synthetic`"
    )
    synthetic: SyntheticConfig | None = None
    camera_regex: str | None = Field(None, description="generic layout: regex with one group")
    height: int = Field(224, ge=16)
    width: int = Field(224, ge=16)
    cache_dir: str | None = Field(None, description="decoded-image cache; default ~/.cache")
    skip_unreadable: bool = Field(
        False,
        description="drop images that cannot be decoded (with a warning naming them) instead "
        "of stopping; the count is PreparedData.unreadable",
    )
    augment: AugmentConfig = AugmentConfig()

    _root = field_validator("root")(_absolute)
    _cache = field_validator("cache_dir")(_local_absolute)

    @model_validator(mode="after")
    def _root_or_synthetic(self) -> DataConfig:
        if self.root is None and self.synthetic is None:
            self.synthetic = SyntheticConfig(layout=self.layout)
        elif (
            self.root is None
            and "layout" in self.model_fields_set
            and self.layout != self.synthetic.layout
        ):
            raise ValueError(
                f"layout {self.layout!r} differs from synthetic.layout "
                f"{self.synthetic.layout!r} (the synthetic data's own layout)"
            )
        return self


class ModelConfig(_Strict):
    """ViT backbone + locally aware head (see reidsearch.modeling)."""

    backbone: str = "vit_base_patch16_224"
    pretrained: bool = Field(False, description="timm's pretrained weights (needs internet)")
    weights: str | None = Field(
        None, description=".safetensors/.pth/.npz backbone file: a local path or s3:// URI"
    )
    depth: int | None = Field(None, ge=1, description="keep only the first N blocks (tiny tests)")
    embed_dim: int | None = Field(None, ge=8, description="override width (random init only)")
    num_heads: int | None = Field(None, ge=1)
    head: Literal["latf", "latfpp"] = "latfpp"
    lam: float = Field(8.0, ge=0.0, description="GELT: G_i = (cls + lam * row_i) / (1 + lam)")
    neck: Literal["bottleneck", "bnneck"] = Field(
        "bottleneck",
        description="bottleneck: LA-TF's Linear-BN-Dropout-Linear (feature bottleneck_bn); "
        "bnneck: BoT's BN (no bias) + bias-free Linear (feature bnneck, the default "
        "test feature; triplet on the pre-BN feature)",
    )
    bottleneck_dim: int = Field(256, ge=8, description="neck: bottleneck only")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="neck: bottleneck only")
    feature: str = Field(
        "default",
        description="test-time feature of the head; default: latf rows, latfpp global, "
        "or bnneck with neck: bnneck",
    )
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)

    _paths = field_validator("weights")(_absolute)


class LossConfig(_Strict):
    """Weighted sum of (label-smoothed) cross entropy and batch-hard triplet on embeddings."""

    ce_weight: float = Field(1.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    triplet_weight: float = Field(0.0, ge=0.0)
    triplet_margin: float | None = Field(0.3, ge=0.0, description="None = soft margin")
    row_reduction: Literal["mean", "sum"] = Field(
        "mean", description="per-classifier CE: sum (the LA-TF original) or mean; same for latfpp"
    )
    triplet_feature: Literal["retrieval", "fused_mean"] = Field(
        "retrieval",
        description="retrieval: model.feature before its final L2 norm (pre-BN with a bnneck); "
        "fused_mean: the mean fused vector",
    )

    @model_validator(mode="after")
    def _some_loss(self) -> LossConfig:
        if self.ce_weight == 0 and self.triplet_weight == 0:
            raise ValueError("ce_weight and triplet_weight are both 0: nothing to train")
        return self


class UnfreezeConfig(_Strict):
    """Blockwise fine-tuning (LA-TF recipe): start frozen, unfreeze more blocks every few epochs."""

    enabled: bool = False
    every: int = Field(2, ge=1, description="epochs between unfreezing steps")
    blocks_per_step: int = Field(1, ge=1)
    lr_mult: float = Field(0.8, gt=0.0, description="lr multiplier applied at each step")


class OptimConfig(_Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(3e-4, gt=0.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    scheduler: Literal["cosine", "step", "none"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0.0)
    grad_clip: float | None = Field(None, gt=0.0)
    unfreeze: UnfreezeConfig = UnfreezeConfig()


class SamplerConfig(_Strict):
    """P identities x K images per batch (batch = P * K per worker)."""

    p: int = Field(8, ge=1)
    k: int = Field(4, ge=1)


class EvalConfig(_Strict):
    period: int = Field(1, ge=1, description="evaluate every N epochs (and after the last)")
    flip: bool = False
    rerank: bool = False
    use_camera: bool = Field(True, description="False: keep same-camera matches")
    retrieval: Retrieval = Field(
        "auto",
        description="what ranks CMC/rank-k: FAISS lists or the exact counting (auto: FAISS on a "
        "GPU); AP and mINP are always exact over the full ranking",
    )
    batch_size: int = Field(128, ge=1)
    baseline: bool = Field(False, description="also score the untrained model (untrained_mAP)")
    cost_gallery: int = Field(10_000, ge=0, description="cost.*: timed search's gallery; 0: none")


class ResourcesConfig(_Strict):
    """A trial's resources (the space file's ``resources:``; a trial config's ``scaling:``)."""

    workers: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    runner: Literal["ray_train", "trial_process"] = Field(
        "ray_train",
        description="trial_process: a one-worker trial trains in its (reused) Tune trial "
        "process, without Ray Train's two extra processes per trial (start-up under a second "
        "instead of 15-20 s on 2 CPUs); same checkpoints, retries and MLflow",
    )

    @model_validator(mode="after")
    def _one_worker_in_process(self) -> ResourcesConfig:
        if self.runner == "trial_process" and self.workers != 1:
            raise ValueError("runner: trial_process trains one worker; use ray_train for DDP")
        return self

    def worker_resources(self) -> dict[str, float]:
        """What one worker asks Ray for, in Ray's resource-dict shape (no GPU key without GPUs)."""
        demand = {"CPU": float(self.cpus_per_worker)}
        if self.gpus_per_worker > 0:
            demand["GPU"] = float(self.gpus_per_worker)
        return demand


class DDPConfig(_Strict):
    """What ``workers > 1`` means for the loss, BatchNorm and learning rate (no effect on 1).

    By default each rank mines triplets in its own P x K batch, keeps its own BatchNorm
    statistics and trains at ``optim.lr`` although the global batch is ``workers`` times larger.
    Every option is off by default: runs keep the behaviour that earlier results were produced
    with, each option costs collectives per step (SyncBatchNorm: GPUs only), and no scaling rule
    is right for every optimiser (linear is the SGD rule, sqrt often suits Adam), so
    ``lr_scaling`` is a setting to search rather than a silent default.
    """

    cross_rank_mining: bool = Field(
        False, description="mine each rank's anchors against every rank's batch"
    )
    sync_batchnorm: bool = Field(False, description="BatchNorm statistics over the global batch")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="lr times workers (linear) or sqrt(workers) (sqrt)"
    )


class TrialConfig(_Strict):
    """Everything one training run needs; resolved (no distributions) and serialisable."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    sampler: SamplerConfig = SamplerConfig()
    eval: EvalConfig = EvalConfig()
    scaling: ResourcesConfig = ResourcesConfig()
    ddp: DDPConfig = DDPConfig()
    epochs: int = Field(30, ge=1)
    seed: int = 0
    repeats: int = Field(
        1, ge=1, description="train seeds seed..seed+N-1 side by side; score by their mean"
    )
    objective: ObjectiveConfig = ObjectiveConfig()  # a quality metric: it picks the epoch
    amp: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU)")
    compile: bool = False
    output_dir: str | None = Field(None, description="checkpoints; default ./reidsearch_runs")

    @field_validator("objective")
    @classmethod
    def _quality_objective(cls, value: ObjectiveConfig) -> ObjectiveConfig:
        if value.is_cost:  # constant over epochs: it cannot pick the epoch a score comes from
            raise ValueError(f"metric: {value.metric} is a cost; a run is scored by quality")
        return value


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line: ``source: key.path: message`` for the first error (and a count of others)."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")  # our own validators' messages are complete
    more = len(err.errors()) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {key}: {msg}{suffix}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, raising ConfigError (naming the file) on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(
            f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def trial_config_from_dict(data: dict[str, Any], source: str = "<config>") -> TrialConfig:
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key = "a.b"``, creating mappings on the way."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a mapping")
    node[parts[-1]] = value


def _union_members(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(annotation)
    return (annotation,)


def setting_types(key: str) -> tuple[Any, ...] | None:
    """The types the dotted TrialConfig setting ``key`` accepts (the members of its annotation),
    or None when ``key`` names no setting: a misspelt key is then reported by its own name,
    before validation would report it as a nested "unknown key" or a missing field."""
    model: type[BaseModel] | None = TrialConfig
    members: tuple[Any, ...] = ()
    for part in key.split("."):
        if model is None or part not in model.model_fields:
            return None
        members = _union_members(model.model_fields[part].annotation)
        model = next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)), None)
    return members


def with_overrides(
    config: TrialConfig,
    overrides: Mapping[str, Any],
    source: str = "<overrides>",
    where: str | None = None,
) -> TrialConfig:
    """``config`` with flat dotted-key overrides (``{"model.lam": 7.5}``) applied and validated.

    The one way searched values, CLI flags and Tune trial configs become settings, so all of them
    are checked alike. Errors are one line, ``SOURCE: [WHERE: ]key: message``, naming the file
    (and e.g. the ``points_to_evaluate`` entry) the values came from.
    """
    prefix = f"{source}: {where}" if where else source
    data = copy.deepcopy(config.model_dump())
    for key, value in overrides.items():
        if not isinstance(key, str) or setting_types(key) is None:
            raise ConfigError(f"{prefix}: {key}: not a TrialConfig setting")
        try:
            set_dotted(data, key, value)
        except ConfigError:
            raise ConfigError(f"{prefix}: {key}: parent setting is not a mapping") from None
    return trial_config_from_dict(data, prefix)
