"""Load local backbone weights (.safetensors, .pth/.pt, .npz) into a timm ViT.

Strict on the backbone (every missing or unexpected backbone key is an error naming the file);
classifier-head keys and blocks beyond a truncated ``depth`` are ignored on purpose. Position
embeddings are resized when the checkpoint's patch grid differs from the model's.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from reidsearch.errors import ReidSearchError, first_line

__all__ = ["WeightsError", "load_backbone_weights", "read_state_dict", "infer_grid"]

SUFFIXES = (".safetensors", ".pth", ".pt", ".npz")
# Classifier heads of the checkpoint's own task: never part of the backbone.
_HEAD_KEYS = ("head.", "head_dist.", "pre_logits.")


class WeightsError(ReidSearchError):
    """A weights file is unreadable, of an unknown kind, or does not fit the backbone."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat tensor dict from .safetensors or .pth/.pt (unwrapping 'state_dict'/'model')."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt"):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise WeightsError(f"{path}: unknown weights suffix {suffix!r} (use one of {SUFFIXES})")
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"{path}: cannot read weights: {first_line(exc)}") from None
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep only the ViT part, without wrapper prefixes (``module.``, ``backbone.``, ...).

    The prefix is whatever precedes ``patch_embed.proj.weight``; foreign layouts without that key
    are returned unchanged for timm's converter.
    """
    anchor = "patch_embed.proj.weight"
    prefixes = [k[: -len(anchor)] for k in state if k.endswith(anchor)]
    if not prefixes:
        return state
    prefix = min(prefixes, key=len)
    if prefix and not prefix.endswith("."):
        return state
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def infer_grid(num_tokens: int, target: tuple[int, int]) -> tuple[int, int]:
    """Guess a checkpoint's (rows, cols) from its token count: square if possible, else the
    factorisation closest to the target aspect ratio (taller on ties: person crops are tall)."""
    side = math.isqrt(num_tokens)
    if side * side == num_tokens:
        return side, side
    want = math.log(target[0] / target[1])
    pairs = [(r, num_tokens // r) for r in range(1, num_tokens + 1) if num_tokens % r == 0]
    return min(pairs, key=lambda p: (abs(math.log(p[0] / p[1]) - want), -p[0]))


def _adapt(
    state: dict[str, torch.Tensor],
    model: VisionTransformer,
    path: Path,
    source_grid: tuple[int, int] | None,
) -> dict[str, torch.Tensor]:
    """Resize pos/patch embeddings to the model, drop head keys and blocks past ``depth``."""
    num_blocks = len(model.blocks)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_HEAD_KEYS):
            continue
        if key.startswith("blocks."):
            index = key.split(".")[1]
            if index.isdigit() and int(index) >= num_blocks:
                continue  # model truncated with depth=N: keep only the first N blocks
        if key == "pos_embed" and model.pos_embed is not None:
            value = _resize_pos_embed(value, model, path, source_grid)
        elif key == "patch_embed.proj.weight" and value.ndim == 4:
            size = model.patch_embed.proj.weight.shape[-2:]
            if value.shape[-2:] != size:
                value = resample_patch_embed(value, list(size))
        out[key] = value
    return out


def _resize_pos_embed(
    value: torch.Tensor,
    model: VisionTransformer,
    path: Path,
    source_grid: tuple[int, int] | None,
) -> torch.Tensor:
    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    if value.ndim != 3 or value.shape[-1] != model.pos_embed.shape[-1]:
        raise WeightsError(
            f"{path}: pos_embed has shape {tuple(value.shape)}, the model expects "
            f"{tuple(model.pos_embed.shape)}"
        )
    num_patches = value.shape[1] - prefix
    old = source_grid or infer_grid(num_patches, grid)
    if old[0] * old[1] != num_patches:
        raise WeightsError(f"{path}: pos_embed has {num_patches} patch tokens, not a {old} grid")
    if tuple(old) == grid:
        return value
    return resample_abs_pos_embed(
        value, new_size=list(grid), old_size=list(old), num_prefix_tokens=prefix
    )


def _load_npz(model: VisionTransformer, path: Path, source_grid: tuple[int, int] | None) -> None:
    """big_vision / original JAX ViT checkpoints through timm's own converter.

    timm assumes a square source grid when resizing; a non-square one is resized here first
    (into a temporary copy of the file).
    """
    from timm.models.vision_transformer import _load_weights

    try:
        with np.load(str(path), allow_pickle=False) as npz:
            arrays = None
            for key in npz.files:
                if key.endswith(("pos_embedding", "posembed_input/pos_embedding")):
                    pos = torch.from_numpy(npz[key])
                    if pos.ndim == 3 and pos.shape[1] != model.pos_embed.shape[1]:
                        n = pos.shape[1] - model.num_prefix_tokens
                        if math.isqrt(n) ** 2 != n or source_grid is not None:
                            arrays = {k: npz[k] for k in npz.files}
                            arrays[key] = _resize_pos_embed(pos, model, path, source_grid).numpy()
        if arrays is None:
            _load_weights(model, str(path))
            return
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / path.name
            np.savez(copy, **arrays)
            _load_weights(model, str(copy))
    except WeightsError:
        raise
    except KeyError as exc:
        raise WeightsError(f"{path}: npz checkpoint lacks backbone key {exc}") from None
    except Exception as exc:
        raise WeightsError(f"{path}: cannot load npz weights: {first_line(exc)}") from None


@torch.no_grad()
def load_backbone_weights(
    model: VisionTransformer,
    path: str | Path,
    *,
    source_grid: tuple[int, int] | None = None,
) -> None:
    """Load a local weights file into ``model`` (a timm ViT backbone), in place.

    ``source_grid`` is the checkpoint's (rows, cols) patch grid when it is not square and cannot
    be guessed from its token count (e.g. a 256x128 checkpoint is guessed as 16x8).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise WeightsError(f"{path}: unknown weights suffix {suffix!r} (use one of {SUFFIXES})")
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if suffix == ".npz":
        _load_npz(model, path, source_grid)
        return
    state = _strip_prefixes(read_state_dict(path))
    if "patch_embed.proj.weight" not in state:
        # Foreign layouts (OpenCLIP, DINOv2, ...): timm's converter, which also resizes pos_embed.
        try:
            state = checkpoint_filter_fn(state, model)
        except Exception as exc:
            raise WeightsError(
                f"{path}: not a ViT checkpoint timm can convert: {first_line(exc)}"
            ) from None
        source_grid = tuple(int(g) for g in model.patch_embed.grid_size)  # type: ignore[assignment]
    state = _adapt(state, model, path, source_grid)
    expected = model.state_dict()
    unexpected = sorted(k for k in state if k not in expected)
    missing = sorted(k for k in expected if k not in state and not k.startswith(_HEAD_KEYS))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[:3]}")
        raise WeightsError(f"{path}: does not fit backbone: {'; '.join(parts)}")
    bad = [k for k, v in state.items() if v.shape != expected[k].shape]
    if bad:
        k = bad[0]
        raise WeightsError(
            f"{path}: shape mismatch for {k}: file {tuple(state[k].shape)}, "
            f"model {tuple(expected[k].shape)} (different width/patch size?)"
        )
    model.load_state_dict(state, strict=False)
