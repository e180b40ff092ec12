"""Locally aware heads: LA-TF (one classifier per patch row) and LA-TF++ (one global classifier).

Both start from the class token ``c`` and the row tokens ``L_i`` (the mean of each row of the
patch grid) and fuse them into globally enhanced local tokens (GELT)::

    G_i = (c + lam * L_i) / (1 + lam)

``lam`` weights the LOCAL row token, as in the original LA-TF code (lam = 8, mostly local). The
LA-TF++ report's text says lambda = 0.8 and calls it the weight of the CLS token; with this
formula that would be lam = 1 / 0.8 = 1.25. lam = 0 gives the class token only, large lam the
rows only. Averaging rows of fused patch tokens (as the original code does) equals fusing the
averaged rows, since the fusion is linear.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reidsearch.errors import ConfigError

__all__ = [
    "HEADS",
    "ClassifierBlock",
    "LATFHead",
    "LATFPPHead",
    "ReIDOutput",
    "build_head",
    "gelt_fuse",
    "register_head",
    "row_pool",
]


@dataclass
class ReIDOutput:
    """What a head returns in training.

    ``logits``: one (B, C) tensor per classifier (one per row for latf, one for latfpp).
    ``embedding``: (B, D) global fused vector ``mean_i G_i``, the triplet loss input.
    """

    logits: list[torch.Tensor]
    embedding: torch.Tensor


def gelt_fuse(cls_token: torch.Tensor, row_tokens: torch.Tensor, lam: float) -> torch.Tensor:
    """GELT: ``(c + lam * L_i) / (1 + lam)`` for (B, D) ``c`` and (B, R, D) rows -> (B, R, D)."""
    return (cls_token.unsqueeze(1) + lam * row_tokens) / (1.0 + lam)


def row_pool(patch_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Mean of each row of the (rows, cols) patch grid: (B, rows*cols, D) -> (B, rows, D)."""
    b, n, d = patch_tokens.shape
    rows, cols = grid
    if n != rows * cols:
        raise ValueError(f"row_pool: {n} patch tokens do not form a {rows}x{cols} grid")
    return patch_tokens.reshape(b, rows, cols, d).mean(dim=2)


def _normed_rows(rows: torch.Tensor) -> torch.Tensor:
    """Each row L2-normalised and divided by sqrt(R), flattened: unit norm overall (LA-TF test)."""
    return (F.normalize(rows, dim=-1) / math.sqrt(rows.shape[1])).flatten(1)


class ClassifierBlock(nn.Module):
    """Linear -> BatchNorm1d -> Dropout -> Linear, as the original (no ReLU).

    The BN output is the "bnneck" vector, a common re-ID test feature.
    """

    def __init__(
        self, in_dim: int, num_classes: int, bottleneck_dim: int = 256, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.bottleneck = nn.Linear(in_dim, bottleneck_dim)
        self.bn = nn.BatchNorm1d(bottleneck_dim)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(bottleneck_dim, num_classes)
        nn.init.kaiming_normal_(self.bottleneck.weight, mode="fan_out")
        nn.init.zeros_(self.bottleneck.bias)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def bnneck(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.bottleneck(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(self.bnneck(x)))


HEADS: dict[str, type[nn.Module]] = {}


def register_head(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a head to ``HEADS`` under ``name``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in HEADS:
            raise ValueError(f"head {name!r} registered twice")
        HEADS[name] = cls
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return deco


class _LocallyAwareHead(nn.Module):
    """Shared parts: GELT fusion and the features every head offers."""

    name: str = ""
    feature_names: tuple[str, ...] = ()
    default_feature: str = ""

    def __init__(
        self,
        embed_dim: int,
        num_rows: int,
        num_classes: int,
        *,
        lam: float = 8.0,
        bottleneck_dim: int = 256,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_rows = num_rows
        self.lam = float(lam)
        self.bottleneck_dim = bottleneck_dim
        self._build_classifiers(num_classes, bottleneck_dim, dropout)

    def _build_classifiers(self, num_classes: int, bottleneck_dim: int, dropout: float) -> None:
        raise NotImplementedError

    def fuse(self, cls_token: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if rows.shape[1] != self.num_rows:
            raise ValueError(f"{self.name}: built for {self.num_rows} rows, got {rows.shape[1]}")
        return gelt_fuse(cls_token, rows, self.lam)

    def feature_dim(self, name: str) -> int:
        """Length of the named test feature (before the final L2 normalisation)."""
        dims = {
            "rows": self.num_rows * self.embed_dim,
            "fused_rows": self.num_rows * self.embed_dim,
            "global": self.embed_dim,
            "cls": self.embed_dim,
        }
        dims.update(self._extra_dims())
        return dims[self._check_feature(name)]

    def _extra_dims(self) -> dict[str, int]:
        return {}

    def _check_feature(self, name: str) -> str:
        if name == "default":
            return self.default_feature
        if name not in self.feature_names:
            raise ConfigError(
                f"model.feature: {name!r} is not a feature of head {self.name!r} "
                f"(choose from {', '.join(self.feature_names)})"
            )
        return name

    def features(self, cls_token: torch.Tensor, rows: torch.Tensor, name: str) -> torch.Tensor:
        """The named test-time feature, L2-normalised, (B, F)."""
        name = self._check_feature(name)
        if name == "rows":
            return _normed_rows(rows)
        if name == "cls":
            return F.normalize(cls_token, dim=-1)
        fused = self.fuse(cls_token, rows)
        if name == "fused_rows":
            return _normed_rows(fused)
        if name == "global":
            return F.normalize(fused.mean(dim=1), dim=-1)
        return F.normalize(self._extra_feature(name, fused), dim=-1)

    def _extra_feature(self, name: str, fused: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"model.feature: {name!r} is not a feature of head {self.name!r}")


@register_head("latf")
class LATFHead(_LocallyAwareHead):
    """LA-TF: an ensemble of one classifier per patch row, each on its fused row G_i."""

    feature_names = ("rows", "fused_rows", "global", "cls")
    default_feature = "rows"

    def _build_classifiers(self, num_classes: int, bottleneck_dim: int, dropout: float) -> None:
        self.classifiers = nn.ModuleList(
            ClassifierBlock(self.embed_dim, num_classes, bottleneck_dim, dropout)
            for _ in range(self.num_rows)
        )

    def forward(self, cls_token: torch.Tensor, rows: torch.Tensor) -> ReIDOutput:
        fused = self.fuse(cls_token, rows)
        logits = [clf(fused[:, i]) for i, clf in enumerate(self.classifiers)]
        return ReIDOutput(logits=logits, embedding=fused.mean(dim=1))


@register_head("latfpp")
class LATFPPHead(_LocallyAwareHead):
    """LA-TF++: mean of the fused rows -> one global vector -> one classifier."""

    feature_names = ("global", "bnneck", "fused_rows", "cls")
    default_feature = "global"

    def _build_classifiers(self, num_classes: int, bottleneck_dim: int, dropout: float) -> None:
        self.classifier = ClassifierBlock(self.embed_dim, num_classes, bottleneck_dim, dropout)

    def forward(self, cls_token: torch.Tensor, rows: torch.Tensor) -> ReIDOutput:
        embedding = self.fuse(cls_token, rows).mean(dim=1)
        return ReIDOutput(logits=[self.classifier(embedding)], embedding=embedding)

    def _extra_dims(self) -> dict[str, int]:
        return {"bnneck": self.bottleneck_dim}

    def _extra_feature(self, name: str, fused: torch.Tensor) -> torch.Tensor:
        if name == "bnneck":
            return self.classifier.bnneck(fused.mean(dim=1))
        return super()._extra_feature(name, fused)


def build_head(
    name: str,
    embed_dim: int,
    num_rows: int,
    num_classes: int,
    *,
    lam: float = 8.0,
    bottleneck_dim: int = 256,
    dropout: float = 0.5,
) -> nn.Module:
    """Instantiate a registered head by name (ConfigError naming ``model.head`` if unknown)."""
    if name not in HEADS:
        raise ConfigError(f"model.head: unknown head {name!r} (choose from {', '.join(HEADS)})")
    return HEADS[name](
        embed_dim, num_rows, num_classes, lam=lam, bottleneck_dim=bottleneck_dim, dropout=dropout
    )
