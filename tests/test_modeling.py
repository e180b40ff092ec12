"""Backbone, heads, model features, freezing and local weight loading (tiny random ViTs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from reidsearch.config import ModelConfig
from reidsearch.errors import ConfigError, ReidSearchError
from reidsearch.modeling import (
    HEADS,
    ClassifierBlock,
    WeightsError,
    backbone_mean_std,
    backbone_token_grid,
    build_backbone,
    build_head,
    build_model,
    freeze_backbone_blocks,
    gelt_fuse,
    load_backbone_weights,
    row_pool,
)

TINY = dict(depth=1, embed_dim=32, num_heads=2)
NAME = "vit_tiny_patch16_224"


def tiny_cfg(**kw) -> ModelConfig:
    return ModelConfig(backbone=NAME, depth=1, embed_dim=32, num_heads=2, **kw)


# ---------------------------------------------------------------- heads


def test_gelt_matches_formula():
    c = torch.tensor([[1.0, 2.0]])
    rows = torch.tensor([[[3.0, 4.0], [5.0, -6.0]]])
    got = gelt_fuse(c, rows, lam=8.0)
    expected = torch.tensor([[[(1 + 8 * 3) / 9, (2 + 8 * 4) / 9], [(1 + 8 * 5) / 9, (2 - 48) / 9]]])
    assert torch.allclose(got, expected)
    assert torch.allclose(gelt_fuse(c, rows, lam=0.0), c.unsqueeze(1).expand(1, 2, 2))


def test_row_pool_averages_rows():
    # grid 2 rows x 3 cols, D=1; token value = 10 * row + col
    tokens = torch.tensor([[0.0, 1.0, 2.0, 10.0, 11.0, 12.0]]).unsqueeze(-1)
    pooled = row_pool(tokens, (2, 3))
    assert pooled.shape == (1, 2, 1)
    assert pooled.flatten().tolist() == [1.0, 11.0]
    with pytest.raises(ValueError):
        row_pool(tokens, (4, 2))


def test_classifier_block_structure():
    block = ClassifierBlock(16, 5, bottleneck_dim=8, dropout=0.5).eval()
    assert [type(m).__name__ for m in block.children()] == [
        "Linear",
        "BatchNorm1d",
        "Dropout",
        "Linear",
    ]
    x = torch.randn(3, 16)
    assert block(x).shape == (3, 5)
    assert block.neck(x).shape == (3, 8)
    assert torch.allclose(block(x), block.classify(block.neck(x)))


def test_head_registry_and_logits_count():
    assert {"latf", "latfpp"} <= set(HEADS)
    c, rows = torch.randn(4, 16), torch.randn(4, 7, 16)
    latf = build_head("latf", 16, 7, 5, lam=8.0, bottleneck_dim=8, dropout=0.1)
    out = latf(c, rows)
    assert len(out.logits) == 7 and all(lg.shape == (4, 5) for lg in out.logits)
    assert torch.allclose(out.fused_mean, gelt_fuse(c, rows, 8.0).mean(1), atol=1e-6)
    assert out.embedding.shape == (4, 7 * 16)  # the default "rows" feature
    pp = build_head("latfpp", 16, 7, 5, lam=8.0, bottleneck_dim=8, dropout=0.1)
    out = pp(c, rows)
    assert len(out.logits) == 1 and out.logits[0].shape == (4, 5)
    assert torch.allclose(out.embedding, gelt_fuse(c, rows, 8.0).mean(1), atol=1e-6)
    assert torch.allclose(out.fused_mean, out.embedding)
    with pytest.raises(ConfigError, match="model.head"):
        build_head("nope", 16, 7, 5)


# ---------------------------------------------------------------- backbone / model


@pytest.mark.parametrize("size,grid", [((224, 224), (14, 14)), ((256, 128), (16, 8))])
@pytest.mark.parametrize("head", ["latf", "latfpp"])
def test_rows_follow_input_size(size, grid, head):
    model = build_model(tiny_cfg(head=head), num_classes=3, img_size=size)
    assert model.grid == grid
    out = model(torch.randn(2, 3, *size))
    assert len(out.logits) == (grid[0] if head == "latf" else 1)
    assert out.fused_mean.shape == (2, 32)
    assert out.embedding.shape == (2, 32 * (grid[0] if head == "latf" else 1))


def test_backbone_basics():
    bb = build_backbone(NAME, (64, 32), **TINY)
    assert backbone_token_grid(bb) == (4, 2)
    assert len(bb.blocks) == 1
    mean, std = backbone_mean_std(bb)
    assert mean == (0.5, 0.5, 0.5) and std == (0.5, 0.5, 0.5)
    with pytest.raises(ConfigError, match="not_a_model"):
        build_backbone("not_a_model")
    with pytest.raises(ConfigError, match="resnet18"):
        build_backbone("resnet18")


BASE_DIMS = {
    "latf": {"rows": 4 * 32, "fused_rows": 4 * 32, "global": 32, "cls": 32},
    "latfpp": {"global": 32, "fused_rows": 4 * 32, "cls": 32},
}
# the neck feature: one vector per classifier block (4 rows for latf), bottleneck_dim=8 wide for
# the bottleneck, embed_dim=32 wide for BoT's BNNeck
NECK_DIMS = {
    ("latf", "bottleneck"): {"bottleneck_bn": 4 * 8},
    ("latf", "bnneck"): {"bnneck": 4 * 32},
    ("latfpp", "bottleneck"): {"bottleneck_bn": 8},
    ("latfpp", "bnneck"): {"bnneck": 32},
}
DEFAULTS = {
    ("latf", "bottleneck"): "rows",
    ("latfpp", "bottleneck"): "global",
    ("latf", "bnneck"): "bnneck",
    ("latfpp", "bnneck"): "bnneck",
}


@pytest.mark.parametrize("neck", ["bottleneck", "bnneck"])
@pytest.mark.parametrize("head", ["latf", "latfpp"])
def test_every_feature_is_normalised_with_documented_size(head, neck):
    cfg = tiny_cfg(head=head, neck=neck, bottleneck_dim=8)
    model = build_model(cfg, num_classes=3, img_size=(64, 32))
    model.eval()
    x = torch.randn(3, 3, 64, 32)
    dims = {**BASE_DIMS[head], **NECK_DIMS[head, neck]}
    assert set(model.head.feature_names) == set(dims)
    with torch.no_grad():
        for name, dim in dims.items():
            feat = model.extract(x, name)
            assert feat.shape == (3, dim), name
            assert model.feature_dim(name) == dim
            assert torch.allclose(feat.norm(dim=1), torch.ones(3), atol=1e-5), name
        default = model.extract(x)
    assert model.feature == DEFAULTS[head, neck]
    assert torch.allclose(default, model.extract(x, DEFAULTS[head, neck]))


def test_latf_rows_feature_is_the_original_test_feature():
    model = build_model(tiny_cfg(head="latf"), num_classes=3, img_size=(64, 32)).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        _, rows = model.tokens(x)
        expected = (torch.nn.functional.normalize(rows, dim=-1) / math.sqrt(4)).flatten(1)
        assert torch.allclose(model.extract(x, "rows"), expected, atol=1e-6)


def test_unknown_feature_names_model_feature():
    with pytest.raises(ConfigError, match=r"model\.feature.*bottleneck_bn"):
        build_model(tiny_cfg(head="latfpp", feature="wat"), num_classes=3, img_size=(64, 32))
    with pytest.raises(ConfigError, match=r"model\.feature: 'bnneck' needs model\.neck: bnneck"):
        build_model(tiny_cfg(head="latf", feature="bnneck"), num_classes=3, img_size=(64, 32))
    with pytest.raises(ConfigError, match=r"'bottleneck_bn' needs model\.neck: bottleneck"):
        cfg = tiny_cfg(head="latfpp", neck="bnneck", feature="bottleneck_bn")
        build_model(cfg, num_classes=3, img_size=(64, 32))
    with pytest.raises(ConfigError, match=r"model\.neck"):
        build_head("latf", 16, 7, 5, neck="wat")


def test_freeze_leaves_last_blocks_and_head_trainable():
    cfg = ModelConfig(backbone=NAME, depth=3, embed_dim=32, num_heads=2)
    model = build_model(cfg, num_classes=3, img_size=(64, 32))

    def trainable(module):
        return all(p.requires_grad for p in module.parameters())

    def frozen(module):
        return not any(p.requires_grad for p in module.parameters())

    freeze_backbone_blocks(model, 1)
    assert frozen(model.blocks[0]) and frozen(model.blocks[1]) and trainable(model.blocks[2])
    assert frozen(model.backbone.patch_embed)
    assert not model.backbone.pos_embed.requires_grad and not model.backbone.cls_token.requires_grad
    assert trainable(model.head)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("head.", "backbone.blocks.2.", "backbone.norm.")) for n in names)
    freeze_backbone_blocks(model, 0)
    assert frozen(model.backbone) and trainable(model.head)
    freeze_backbone_blocks(model, 3)
    assert trainable(model)


# ---------------------------------------------------------------- weights


def _randomise(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in model.state_dict().items()}


def _out(bb, size=(64, 32)):
    torch.manual_seed(0)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        return bb.forward_features(x)


def _source_state(size=(64, 32), seed=1, **kw):
    src = build_backbone(NAME, size, **{**TINY, **kw})
    src.load_state_dict(_randomise(src, seed))
    return src


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_load_and_change_output(tmp_path, suffix):
    src = _source_state()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:  # wrapped and prefixed like a DDP training checkpoint, with a classifier head
        state = {f"module.backbone.{k}": v for k, v in src.state_dict().items()}
        state["module.head.weight"] = torch.randn(10, 32)
        torch.save({"state_dict": state, "epoch": 3}, str(path))
    dst = build_backbone(NAME, (64, 32), **TINY)
    before = _out(dst)
    load_backbone_weights(dst, path)
    after = _out(dst)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, _out(src), atol=1e-6)


def test_weights_through_build_backbone_and_depth_truncation(tmp_path):
    src = _source_state(depth=2)
    path = tmp_path / "two_blocks.safetensors"
    save_file(src.state_dict(), str(path))
    dst = build_backbone(NAME, (64, 32), weights=str(path), depth=1, embed_dim=32, num_heads=2)
    assert len(dst.blocks) == 1
    assert torch.equal(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_weights_other_resolution_resize_pos_embed(tmp_path):
    src = _source_state(size=(224, 224))  # 14x14 grid
    path = tmp_path / "w224.safetensors"
    save_file(src.state_dict(), str(path))
    dst = build_backbone(NAME, (256, 128), **TINY)  # 16x8 grid
    load_backbone_weights(dst, path)
    assert dst.pos_embed.shape == (1, 1 + 16 * 8, 32)
    assert torch.equal(dst.pos_embed[:, 0], src.pos_embed[:, 0])  # class token position kept
    assert torch.equal(dst.blocks[0].mlp.fc1.weight, src.blocks[0].mlp.fc1.weight)
    # and back: a non-square 16x8 checkpoint into a square model
    back = build_backbone(NAME, (224, 224), **TINY)
    path2 = tmp_path / "w256x128.pth"
    torch.save(dst.state_dict(), str(path2))
    load_backbone_weights(back, path2)
    assert back.pos_embed.shape == (1, 1 + 14 * 14, 32)


def _to_big_vision(model) -> dict[str, np.ndarray]:
    """A timm ViT's params in big_vision npz naming (the inverse of timm's converter)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    d = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    out = {
        "params/embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "params/embedding/bias": sd["patch_embed.proj.bias"],
        "params/cls": sd["cls_token"],
        "params/pos_embedding": sd["pos_embed"],
        "params/Transformer/encoder_norm/scale": sd["norm.weight"],
        "params/Transformer/encoder_norm/bias": sd["norm.bias"],
    }
    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}.", f"params/Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_0/"
        qkv_w = sd[b + "attn.qkv.weight"].reshape(3, d, d)
        qkv_b = sd[b + "attn.qkv.bias"].reshape(3, heads, d // heads)
        for j, n in enumerate(("query", "key", "value")):
            out[f"{mha}{n}/kernel"] = qkv_w[j].T.reshape(d, heads, d // heads)
            out[f"{mha}{n}/bias"] = qkv_b[j]
        out[mha + "out/kernel"] = (
            sd[b + "attn.proj.weight"].reshape(d, heads, d // heads).transpose(1, 2, 0)
        )
        out[mha + "out/bias"] = sd[b + "attn.proj.bias"]
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")):
            out[f"{p}{ln}/scale"] = sd[f"{b}{name}.weight"]
            out[f"{p}{ln}/bias"] = sd[f"{b}{name}.bias"]
        for r in range(2):
            out[f"{p}MlpBlock_0/Dense_{r}/kernel"] = sd[f"{b}mlp.fc{r + 1}.weight"].T
            out[f"{p}MlpBlock_0/Dense_{r}/bias"] = sd[f"{b}mlp.fc{r + 1}.bias"]
    return out


def test_npz_big_vision_weights_load(tmp_path):
    src = _source_state()
    path = tmp_path / "vit.npz"
    np.savez(path, **_to_big_vision(src))
    dst = build_backbone(NAME, (64, 32), **TINY)
    before = _out(dst)
    load_backbone_weights(dst, path)
    assert not torch.allclose(before, _out(dst))
    assert torch.allclose(_out(dst), _out(src), atol=1e-5)
    # another resolution: position embeddings are resized by timm's converter
    big = build_backbone(NAME, (96, 48), **TINY)
    load_backbone_weights(big, path)
    assert big.pos_embed.shape == (1, 1 + 6 * 3, 32)


@pytest.mark.fault("bad_input")
def test_bad_weights_files_name_the_file(tmp_path):
    dst = build_backbone(NAME, (64, 32), **TINY)
    wrong = tmp_path / "wrong_keys.safetensors"
    save_file(
        {"patch_embed.proj.weight": torch.zeros(32, 3, 16, 16), "foo": torch.zeros(2)}, str(wrong)
    )
    with pytest.raises(WeightsError, match="wrong_keys.safetensors"):
        load_backbone_weights(dst, wrong)
    unknown = tmp_path / "weights.bin"
    unknown.write_bytes(b"\0" * 8)
    with pytest.raises(WeightsError, match=r"weights\.bin.*suffix"):
        load_backbone_weights(dst, unknown)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pth"):
        load_backbone_weights(dst, garbage)
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, **{"params/embedding/kernel": np.zeros((16, 16, 3, 32), np.float32)})
    with pytest.raises(WeightsError, match="bad.npz"):
        load_backbone_weights(dst, bad_npz)
    with pytest.raises(WeightsError, match="missing.pth"):
        load_backbone_weights(dst, tmp_path / "missing.pth")
    wide = build_backbone(NAME, (64, 32), depth=1, embed_dim=64, num_heads=2)
    wide_path = tmp_path / "wide.safetensors"
    save_file(wide.state_dict(), str(wide_path))
    with pytest.raises(ReidSearchError, match="wide.safetensors"):
        load_backbone_weights(dst, wide_path)


def test_pretrained_without_internet_is_a_clear_error(monkeypatch):
    import timm

    def fail(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(timm, "create_model", fail)
    with pytest.raises(ReidSearchError, match="pretrained"):
        build_backbone(NAME, (64, 32), pretrained=True)


def test_core_does_not_import_ray_or_mlflow():
    import subprocess
    import sys

    code = (
        "import sys, reidsearch.modeling; "
        "bad = [m for m in ('ray', 'mlflow') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
