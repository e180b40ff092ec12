"""ReIDModel: a timm ViT backbone + a locally aware head (LA-TF / LA-TF++)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from reidsearch.errors import ConfigError
from reidsearch.modeling.backbone import backbone_mean_std, backbone_token_grid, build_backbone
from reidsearch.modeling.heads import ReIDOutput, build_head, row_pool

if TYPE_CHECKING:  # the config needs pydantic; the model layer runs without it
    from reidsearch.config import ModelConfig

__all__ = ["ReIDModel", "ReIDOutput", "build_model", "freeze_backbone_blocks"]


class ReIDModel(nn.Module):
    """Backbone tokens -> class token ``c`` and row tokens ``L`` -> head.

    ``forward`` gives the training outputs (logits per classifier, and the triplet inputs that
    go with the configured test feature); ``extract`` gives an L2-normalised test-time feature
    by name.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, feature: str = "default") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature = head._check_feature(feature)
        self.num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 1))
        mean, std = backbone_mean_std(backbone)
        self.mean: tuple[float, float, float] = mean
        self.std: tuple[float, float, float] = std

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid."""
        return backbone_token_grid(self.backbone)

    @property
    def blocks(self) -> nn.Sequential:
        """The backbone's transformer blocks (for blockwise unfreezing)."""
        return self.backbone.blocks

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class token (B, D) and un-fused row tokens (B, rows, D)."""
        tokens = self.backbone.forward_features(x)
        cls_token = tokens[:, 0]
        rows = row_pool(tokens[:, self.num_prefix_tokens :], self.grid)
        return cls_token, rows

    def forward(self, x: torch.Tensor) -> ReIDOutput:
        return self.head(*self.tokens(x), feature=self.feature)

    def extract(self, x: torch.Tensor, feature: str = "default") -> torch.Tensor:
        """L2-normalised (B, F) features; "default" is the configured ``model.feature``."""
        name = self.feature if feature == "default" else self.head._check_feature(feature)
        return F.normalize(self.head.features(*self.tokens(x), name), dim=-1)

    def feature_dim(self, feature: str = "default") -> int:
        name = self.feature if feature == "default" else feature
        return self.head.feature_dim(name)


def build_model(cfg: ModelConfig, num_classes: int, img_size: tuple[int, int]) -> ReIDModel:
    """Build backbone (at ``img_size = (h, w)``) and head from the ``model:`` config section."""
    backbone = build_backbone(
        cfg.backbone,
        img_size,
        pretrained=cfg.pretrained,
        weights=cfg.weights,
        depth=cfg.depth,
        embed_dim=cfg.embed_dim,
        num_heads=cfg.num_heads,
        drop_path=cfg.drop_path,
    )
    rows, _ = backbone_token_grid(backbone)
    head = build_head(
        cfg.head,
        backbone.embed_dim,
        rows,
        num_classes,
        lam=cfg.lam,
        bottleneck_dim=cfg.bottleneck_dim,
        dropout=cfg.dropout,
        neck=cfg.neck,
    )
    return ReIDModel(backbone, head, cfg.feature)


def freeze_backbone_blocks(model: ReIDModel, num_trainable_last_blocks: int) -> None:
    """Blockwise fine-tuning: only the last N blocks (and the head) get gradients.

    Patch embedding, position embedding and class token train only when every block does; the
    final norm trains whenever at least one block does. The head always trains.
    """
    if num_trainable_last_blocks < 0:
        raise ConfigError(
            f"num_trainable_last_blocks must be >= 0, got {num_trainable_last_blocks}"
        )
    blocks = model.blocks
    n = min(num_trainable_last_blocks, len(blocks))
    model.backbone.requires_grad_(n == len(blocks))
    for block in list(blocks)[len(blocks) - n :]:
        block.requires_grad_(True)
    for name in ("norm", "fc_norm"):
        module = getattr(model.backbone, name, None)
        if isinstance(module, nn.Module):
            module.requires_grad_(n > 0)
    model.head.requires_grad_(True)
