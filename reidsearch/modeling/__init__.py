"""Models: timm ViT backbones, LA-TF / LA-TF++ heads, losses and local weight loading."""

from reidsearch.modeling.backbone import (
    backbone_mean_std,
    backbone_token_grid,
    build_backbone,
)
from reidsearch.modeling.heads import (
    HEADS,
    NECKS,
    BNNeck,
    ClassifierBlock,
    ReIDOutput,
    build_head,
    gelt_fuse,
    register_head,
    row_pool,
)
from reidsearch.modeling.losses import (
    ReIDLoss,
    batch_hard_triplet,
    cross_entropy_label_smoothing,
)
from reidsearch.modeling.model import ReIDModel, build_model, freeze_backbone_blocks
from reidsearch.modeling.weights import WeightsError, load_backbone_weights

__all__ = [
    "HEADS",
    "NECKS",
    "BNNeck",
    "ClassifierBlock",
    "ReIDLoss",
    "ReIDModel",
    "ReIDOutput",
    "WeightsError",
    "backbone_mean_std",
    "backbone_token_grid",
    "batch_hard_triplet",
    "build_backbone",
    "build_head",
    "build_model",
    "cross_entropy_label_smoothing",
    "freeze_backbone_blocks",
    "gelt_fuse",
    "load_backbone_weights",
    "register_head",
    "row_pool",
]
