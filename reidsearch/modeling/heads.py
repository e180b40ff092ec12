"""Locally aware heads: LA-TF (one classifier per patch row) and LA-TF++ (one global classifier).

Both start from the class token ``c`` and the row tokens ``L_i`` (the mean of each row of the
patch grid) and fuse them into globally enhanced local tokens (GELT)::

    G_i = (c + lam * L_i) / (1 + lam)

``lam`` weights the LOCAL row token, as in the original LA-TF code (lam = 8, mostly local). The
LA-TF++ report's text says lambda = 0.8 and calls it the weight of the CLS token; with this
formula that would be lam = 1 / 0.8 = 1.25. lam = 0 gives the class token only, large lam the
rows only. Averaging rows of fused patch tokens (as the original code does) equals fusing the
averaged rows, since the fusion is linear.

Each classifier block has a neck (``model.neck``): ``bottleneck`` is the LA-TF original
(Linear -> BN -> Dropout -> Linear; its BN output is the ``bottleneck_bn`` feature), ``bnneck``
is BoT's BNNeck (a BN without bias on the embedding, bias-free Linear; the triplet
loss takes the pre-BN feature, the classifier and retrieval the post-BN ``bnneck`` feature).
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
    "NECKS",
    "BNNeck",
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
    ``embedding``: the triplet input of ``loss.triplet_feature: retrieval``: the configured test
    feature (``model.feature``) before its final L2 normalisation, so that the triplet loss
    shapes the space retrieval ranks in; with BoT's BNNeck its pre-BN counterpart (BoT puts
    the triplet before the BN, classifier and retrieval after it).
    ``fused_mean``: (B, D) the mean fused vector ``mean_i G_i`` (``triplet_feature:
    fused_mean``, the earlier triplet input of every head).
    """

    logits: list[torch.Tensor]
    embedding: torch.Tensor
    fused_mean: torch.Tensor | None = None


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
    """Neck ``bottleneck`` (LA-TF original): Linear -> BatchNorm1d -> Dropout -> Linear, no ReLU.

    Its BN output, a ``bottleneck_dim`` projection, is the ``bottleneck_bn`` feature; this is
    not BoT's BNNeck (see :class:`BNNeck`).
    """

    feature = "bottleneck_bn"

    def __init__(
        self, in_dim: int, num_classes: int, bottleneck_dim: int = 256, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.bottleneck = nn.Linear(in_dim, bottleneck_dim)
        self.bn = nn.BatchNorm1d(bottleneck_dim)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(bottleneck_dim, num_classes)
        self.out_dim = bottleneck_dim
        nn.init.kaiming_normal_(self.bottleneck.weight, mode="fan_out")
        nn.init.zeros_(self.bottleneck.bias)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def neck(self, x: torch.Tensor) -> torch.Tensor:
        """The BN output (the ``bottleneck_bn`` feature)."""
        return self.bn(self.bottleneck(x))

    def classify(self, neck: torch.Tensor) -> torch.Tensor:
        """Logits from a ``neck`` output (so a training step runs the BN once)."""
        return self.classifier(self.drop(neck))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.neck(x))


class BNNeck(nn.Module):
    """Neck ``bnneck`` (Luo et al., "Bag of Tricks"): BatchNorm1d on the embedding itself, then a
    bias-free Linear classifier; the BN output is the ``bnneck`` feature.

    BoT freezes the BN bias at zero so the BN only centres and scales, keeping the pre-BN
    (triplet) and post-BN (classifier) spaces aligned. Here the BN has no bias at all: a
    non-affine BN times a learnt ``scale``, so no optimiser, ``requires_grad_(True)``
    (blockwise unfreezing) or SyncBatchNorm conversion can bring one back.
    """

    feature = "bnneck"

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_dim, affine=False)
        self.scale = nn.Parameter(torch.ones(in_dim))
        self.classifier = nn.Linear(in_dim, num_classes, bias=False)
        self.out_dim = in_dim
        nn.init.normal_(self.classifier.weight, std=0.001)

    def neck(self, x: torch.Tensor) -> torch.Tensor:
        """The BN output (the ``bnneck`` feature)."""
        return self.bn(x) * self.scale

    def classify(self, neck: torch.Tensor) -> torch.Tensor:
        return self.classifier(neck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.neck(x))


NECKS: dict[str, str] = {"bottleneck": ClassifierBlock.feature, "bnneck": BNNeck.feature}

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
    """Shared parts: GELT fusion, the classifier blocks (one neck each) and the features.

    A head names its classifier inputs (``_classifier_inputs``) and how per-block vectors form
    one feature (``_neck_form``); the neck feature and its pre-BN counterpart follow from these.
    """

    name: str = ""
    base_features: tuple[str, ...] = ()
    base_default: str = ""

    def __init__(
        self,
        embed_dim: int,
        num_rows: int,
        num_classes: int,
        *,
        lam: float = 8.0,
        bottleneck_dim: int = 256,
        dropout: float = 0.5,
        neck: str = "bottleneck",
    ) -> None:
        super().__init__()
        if neck not in NECKS:
            raise ConfigError(f"model.neck: unknown neck {neck!r} (choose from {', '.join(NECKS)})")
        self.embed_dim = embed_dim
        self.num_rows = num_rows
        self.lam = float(lam)
        self.bottleneck_dim = bottleneck_dim
        self.neck = neck
        self.neck_feature = NECKS[neck]
        self.feature_names = (*self.base_features, self.neck_feature)
        self.default_feature = self.neck_feature if neck == "bnneck" else self.base_default
        self._build_classifiers(num_classes, bottleneck_dim, dropout)

    def _block(self, num_classes: int, bottleneck_dim: int, dropout: float) -> nn.Module:
        if self.neck == "bnneck":
            return BNNeck(self.embed_dim, num_classes)
        return ClassifierBlock(self.embed_dim, num_classes, bottleneck_dim, dropout)

    def _build_classifiers(self, num_classes: int, bottleneck_dim: int, dropout: float) -> None:
        raise NotImplementedError

    def _blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def _classifier_inputs(self, fused: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def _neck_form(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def fuse(self, cls_token: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if rows.shape[1] != self.num_rows:
            raise ValueError(f"{self.name}: built for {self.num_rows} rows, got {rows.shape[1]}")
        return gelt_fuse(cls_token, rows, self.lam)

    def feature_dim(self, name: str) -> int:
        """Length of the named test feature (before the final L2 normalisation)."""
        name = self._check_feature(name)
        if name == self.neck_feature:  # one neck vector per block, concatenated
            return sum(b.out_dim for b in self._blocks())
        return {"rows": self.num_rows, "fused_rows": self.num_rows}.get(name, 1) * self.embed_dim

    def _check_feature(self, name: str) -> str:
        if name == "default":
            return self.default_feature
        if name in NECKS.values() and name != self.neck_feature:
            neck = next(k for k, v in NECKS.items() if v == name)
            raise ConfigError(
                f"model.feature: {name!r} needs model.neck: {neck} (this head's neck is "
                f"{self.neck}, whose feature is {self.neck_feature!r})"
            )
        if name not in self.feature_names:
            raise ConfigError(
                f"model.feature: {name!r} is not a feature of head {self.name!r} "
                f"(choose from {', '.join(self.feature_names)})"
            )
        return name

    def _feature(
        self, name: str, cls_token: torch.Tensor, rows: torch.Tensor, fused: torch.Tensor
    ) -> torch.Tensor:
        """The named feature before the final L2 normalisation (``name`` already checked)."""
        if name == "rows":
            return _normed_rows(rows)
        if name == "cls":
            return cls_token
        if name == "fused_rows":
            return _normed_rows(fused)
        if name == "global":
            return fused.mean(dim=1)
        inputs = self._classifier_inputs(fused)
        return self._neck_form([b.neck(x) for b, x in zip(self._blocks(), inputs, strict=True)])

    def features(self, cls_token: torch.Tensor, rows: torch.Tensor, name: str) -> torch.Tensor:
        """The named test-time feature, L2-normalised, (B, F)."""
        name = self._check_feature(name)
        fused = self.fuse(cls_token, rows)
        return F.normalize(self._feature(name, cls_token, rows, fused), dim=-1)

    def forward(
        self, cls_token: torch.Tensor, rows: torch.Tensor, feature: str = "default"
    ) -> ReIDOutput:
        """Logits of every block, and the triplet inputs for the retrieval ``feature``.

        Each BN runs once (a second call in training would update its running stats twice).
        """
        name = self._check_feature(feature)
        fused = self.fuse(cls_token, rows)
        inputs = self._classifier_inputs(fused)
        blocks = self._blocks()
        necks = [b.neck(x) for b, x in zip(blocks, inputs, strict=True)]
        logits = [b.classify(z) for b, z in zip(blocks, necks, strict=True)]
        if name != self.neck_feature:
            embedding = self._feature(name, cls_token, rows, fused)
        elif self.neck == "bnneck":
            embedding = self._neck_form(inputs)  # BoT: the triplet loss before the BN
        else:
            embedding = self._neck_form(necks)
        return ReIDOutput(logits=logits, embedding=embedding, fused_mean=fused.mean(dim=1))


@register_head("latf")
class LATFHead(_LocallyAwareHead):
    """LA-TF: an ensemble of one classifier per patch row, each on its fused row G_i.

    Its neck feature is the per-row neck outputs, each L2-normalised and divided by sqrt(rows),
    flattened (the same form as the LA-TF ``rows`` test feature).
    """

    base_features = ("rows", "fused_rows", "global", "cls")
    base_default = "rows"

    def _build_classifiers(self, num_classes: int, bottleneck_dim: int, dropout: float) -> None:
        self.classifiers = nn.ModuleList(
            self._block(num_classes, bottleneck_dim, dropout) for _ in range(self.num_rows)
        )

    def _blocks(self) -> list[nn.Module]:
        return list(self.classifiers)

    def _classifier_inputs(self, fused: torch.Tensor) -> list[torch.Tensor]:
        return list(fused.unbind(dim=1))

    def _neck_form(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return _normed_rows(torch.stack(vectors, dim=1))


@register_head("latfpp")
class LATFPPHead(_LocallyAwareHead):
    """LA-TF++: mean of the fused rows -> one global vector -> one classifier."""

    base_features = ("global", "fused_rows", "cls")
    base_default = "global"

    def _build_classifiers(self, num_classes: int, bottleneck_dim: int, dropout: float) -> None:
        self.classifier = self._block(num_classes, bottleneck_dim, dropout)

    def _blocks(self) -> list[nn.Module]:
        return [self.classifier]

    def _classifier_inputs(self, fused: torch.Tensor) -> list[torch.Tensor]:
        return [fused.mean(dim=1)]

    def _neck_form(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return vectors[0]


def build_head(
    name: str,
    embed_dim: int,
    num_rows: int,
    num_classes: int,
    *,
    lam: float = 8.0,
    bottleneck_dim: int = 256,
    dropout: float = 0.5,
    neck: str = "bottleneck",
) -> nn.Module:
    """Instantiate a registered head by name (ConfigError naming ``model.head`` if unknown)."""
    if name not in HEADS:
        raise ConfigError(f"model.head: unknown head {name!r} (choose from {', '.join(HEADS)})")
    return HEADS[name](
        embed_dim,
        num_rows,
        num_classes,
        lam=lam,
        bottleneck_dim=bottleneck_dim,
        dropout=dropout,
        neck=neck,
    )
