"""ViT backbones from timm at any (h, w) input size, for the locally aware heads.

The heads need a class token and a regular patch grid, so only timm ``VisionTransformer``
models (and subclasses such as DeiT) are accepted.
"""

from __future__ import annotations

from pathlib import Path

import timm
from timm.data import resolve_data_config
from timm.models import is_model_in_modules
from timm.models.vision_transformer import VisionTransformer

from reidsearch.errors import ConfigError

__all__ = ["build_backbone", "backbone_token_grid", "backbone_mean_std", "BackboneError"]

# timm modules whose models are VisionTransformer (sub)classes with a regular patch grid.
_VIT_MODULES = ("vision_transformer", "deit", "vision_transformer_hybrid")


class BackboneError(ConfigError):
    """The backbone cannot be built (e.g. timm's pretrained weights cannot be downloaded)."""


def build_backbone(
    name: str = "vit_base_patch16_224",
    img_size: tuple[int, int] = (224, 224),
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    depth: int | None = None,
    embed_dim: int | None = None,
    num_heads: int | None = None,
    drop_path: float = 0.0,
) -> VisionTransformer:
    """Build a timm ViT without classifier (``num_classes=0``) for ``img_size = (h, w)`` inputs.

    ``depth`` keeps only the first N blocks (cheap trials; pretrained blocks are kept, not
    re-initialised). ``embed_dim``/``num_heads`` change the width (random init, or a local file
    of that width). ``weights`` is a backbone file (a local path, or an ``s3://`` URI fetched once
    into this machine's cache) loaded after construction (see ``weights.py``).
    """
    if not timm.is_model(name) or not is_model_in_modules(name, _VIT_MODULES):
        known = "" if timm.is_model(name) else " (unknown timm model)"
        raise ConfigError(f"model.backbone: {name!r} is not a timm ViT{known}")
    if (embed_dim is not None or num_heads is not None) and pretrained:
        raise ConfigError("model.embed_dim/num_heads: width overrides cannot use timm's weights")
    h, w = int(img_size[0]), int(img_size[1])
    kwargs: dict = dict(num_classes=0, img_size=(h, w), drop_path_rate=drop_path)
    if embed_dim is not None:
        kwargs["embed_dim"] = embed_dim
    if num_heads is not None:
        kwargs["num_heads"] = num_heads
    if depth is not None and not pretrained:
        kwargs["depth"] = depth  # random init: build the short model directly
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # timm/hub raise many types (OSError, HTTP, LocalEntryNotFound...)
        if pretrained:
            raise BackboneError(
                f"model.backbone: cannot load timm's pretrained weights for {name!r} "
                f"(needs internet or a filled Hugging Face cache; or use model.weights with a "
                f"local file): {type(exc).__name__}: {exc}"
            ) from exc
        raise ConfigError(f"model.backbone: cannot build {name!r}: {exc}") from exc
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"model.backbone: {name!r} is not a timm VisionTransformer")
    if model.cls_token is None:
        raise ConfigError(f"model.backbone: {name!r} has no class token (LA-TF heads need one)")
    if depth is not None and depth < len(model.blocks):
        model.blocks = model.blocks[:depth]
    if weights is not None:
        from reidsearch.modeling.weights import load_backbone_weights
        from reidsearch.storage import local_copy

        load_backbone_weights(model, local_copy(str(weights), "model.weights"))
    return model


def backbone_token_grid(backbone: VisionTransformer) -> tuple[int, int]:
    """(rows, cols) of the patch grid for the size the backbone was built for."""
    rows, cols = backbone.patch_embed.grid_size
    return int(rows), int(cols)


def backbone_mean_std(
    backbone: VisionTransformer,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The normalisation the backbone's weights expect, from timm's pretrained config.

    Note the original LA-TF used ImageNet mean/std although timm's ViT config says 0.5/0.5.
    """
    cfg = resolve_data_config({}, model=backbone)
    mean = tuple(float(v) for v in cfg["mean"])
    std = tuple(float(v) for v in cfg["std"])
    return mean, std  # type: ignore[return-value]
