"""A faithful baseline: BoT's BNNeck, the triplet input that retrieval uses, LA-TF's summed rows.

Every expectation is computed by hand from the tokens, so the tests pin down what each setting
means rather than what the code happens to do.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import reidsearch
from reidsearch.config import LossConfig, ModelConfig
from reidsearch.modeling import (
    BNNeck,
    ReIDLoss,
    batch_hard_triplet,
    build_head,
    build_model,
    freeze_backbone_blocks,
    gelt_fuse,
)

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def tiny(**kw) -> ModelConfig:
    return ModelConfig(backbone="vit_tiny_patch16_224", depth=1, embed_dim=32, num_heads=2, **kw)


def rows_by_hand(rows: torch.Tensor) -> torch.Tensor:
    """LA-TF's test feature: each row divided by its norm and by sqrt(R), rows concatenated."""
    r = rows.shape[1]
    return (rows / rows.norm(dim=-1, keepdim=True) / math.sqrt(r)).reshape(rows.shape[0], -1)


# ---------------------------------------------------------------- BNNeck


def test_bnneck_eval_is_scale_only_batchnorm_without_bias():
    torch.manual_seed(0)
    neck = BNNeck(6, 4)
    assert neck.classifier.bias is None
    assert [name for name, _ in neck.named_parameters()] == ["scale", "classifier.weight"]
    assert neck.bn.bias is None and neck.bn.weight is None  # the BN itself only normalises
    with torch.no_grad():
        neck.scale.uniform_(0.5, 2.0)
        neck.bn.running_mean.normal_()
        neck.bn.running_var.uniform_(0.5, 3.0)
    neck.eval()
    x = torch.randn(5, 6)
    bn = neck.bn
    expected = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * neck.scale
    assert torch.allclose(neck.neck(x), expected, atol=1e-6)
    assert torch.allclose(neck(x), expected @ neck.classifier.weight.t(), atol=1e-6)


def test_bnneck_bias_is_never_trained():
    torch.manual_seed(1)
    model = build_model(tiny(neck="bnneck"), num_classes=3, img_size=(64, 32))
    freeze_backbone_blocks(model, 1)  # calls head.requires_grad_(True)
    neck = model.head.classifier
    assert all("bias" not in name for name, _ in neck.named_parameters())
    x = torch.randn(6, 32)
    opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=5e-4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss_fn = ReIDLoss(LossConfig(triplet_weight=1.0))
    for _ in range(2):
        loss, _ = loss_fn(model(torch.randn(6, 3, 64, 32)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(neck.scale, torch.ones_like(neck.scale))  # the scale does train
    neck.eval()  # and the output stays bias-free: zero at the running mean
    assert torch.allclose(neck.neck(neck.bn.running_mean.unsqueeze(0)), torch.zeros(1, 32))
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(neck)  # DDP's sync_batchnorm
    assert [name for name, _ in synced.named_parameters()] == ["scale", "classifier.weight"]
    assert torch.allclose(synced.neck(x), neck.neck(x))


def test_bnneck_triplet_before_bn_classifier_and_retrieval_after():
    torch.manual_seed(2)
    head = build_head("latfpp", 8, 3, 5, lam=2.0, neck="bnneck")
    c, rows = torch.randn(6, 8), torch.randn(6, 3, 8)
    mean = ((c.unsqueeze(1) + 2.0 * rows) / 3.0).mean(dim=1)
    out = head(c, rows)  # training mode: BN on the batch statistics (biased variance)
    assert torch.allclose(out.embedding, mean, atol=1e-6)
    bn, scale = head.classifier.bn, head.classifier.scale
    normed = (mean - mean.mean(0)) / torch.sqrt(mean.var(0, unbiased=False) + bn.eps) * scale
    assert torch.allclose(out.logits[0], normed @ head.classifier.classifier.weight.t(), atol=1e-5)
    head.eval()
    retrieval = head.features(c, rows, "default")
    post_bn = (mean - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * scale
    assert torch.allclose(retrieval, post_bn / post_bn.norm(dim=1, keepdim=True), atol=1e-5)


def test_latf_bnneck_triplet_input_is_the_fused_rows_and_feature_per_row():
    torch.manual_seed(3)
    head = build_head("latf", 8, 3, 5, lam=8.0, neck="bnneck")
    c, rows = torch.randn(4, 8), torch.randn(4, 3, 8)
    fused = (c.unsqueeze(1) + 8.0 * rows) / 9.0
    assert torch.allclose(head(c, rows).embedding, rows_by_hand(fused), atol=1e-6)
    head.eval()
    per_row = torch.stack([blk.neck(fused[:, i]) for i, blk in enumerate(head.classifiers)], 1)
    assert torch.allclose(head.features(c, rows, "bnneck"), rows_by_hand(per_row), atol=1e-6)


def test_neck_bn_runs_once_per_training_step():
    head = build_head("latfpp", 8, 3, 5, bottleneck_dim=4)
    out = head(torch.randn(4, 8), torch.randn(4, 3, 8), feature="bottleneck_bn")
    assert int(head.classifier.bn.num_batches_tracked) == 1
    assert out.embedding.shape == (4, 4)  # the retrieval feature: the bottleneck's BN output


# ---------------------------------------------------------------- triplet input = retrieval


def test_latf_triplet_input_is_the_retrieval_feature():
    torch.manual_seed(4)
    model = build_model(tiny(head="latf"), num_classes=3, img_size=(64, 32)).eval()
    x = torch.randn(4, 3, 64, 32)
    labels = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        _, rows = model.tokens(x)
        expected = rows_by_hand(rows)
        out = model(x)
        assert out.embedding.shape == (4, 4 * 32)
        assert torch.allclose(out.embedding, expected, atol=1e-6)
        assert torch.allclose(model.extract(x), expected, atol=1e-6)  # what retrieval ranks by
        _, parts = ReIDLoss(LossConfig(triplet_weight=1.0))(out, labels)
        tri = batch_hard_triplet(expected, labels, 0.3)
        assert parts["triplet"].item() == pytest.approx(tri.item(), abs=1e-5)
        cfg = LossConfig(triplet_weight=1.0, triplet_feature="fused_mean")
        _, old = ReIDLoss(cfg)(out, labels)
        cls, rows = model.tokens(x)
        fused_mean = gelt_fuse(cls, rows, 8.0).mean(dim=1)
        tri = batch_hard_triplet(fused_mean, labels, 0.3)
        assert old["triplet"].item() == pytest.approx(tri.item(), abs=1e-5)


def test_configured_feature_sets_the_triplet_input():
    torch.manual_seed(5)
    model = build_model(tiny(head="latf", feature="global"), num_classes=3, img_size=(64, 32))
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        cls, rows = model.tokens(x)
        out = model(x)
    assert torch.allclose(out.embedding, gelt_fuse(cls, rows, 8.0).mean(dim=1), atol=1e-6)


# ---------------------------------------------------------------- shipped search spaces


def test_latfpp_space_la_tf_point_is_the_published_recipe():
    space = reidsearch.load_space(SPACES / "latfpp.yaml")
    la_tf, la_tfpp = (space.resolve(p) for p in space.points_to_evaluate)
    assert la_tf.model.head == "latf" and la_tf.loss.row_reduction == "sum"
    assert la_tf.model.neck == "bottleneck" and la_tf.loss.triplet_weight == 0
    assert la_tfpp.model.head == "latfpp" and la_tfpp.loss.triplet_feature == "retrieval"


def test_table1_grid_runs_la_tf_with_summed_rows():
    space = reidsearch.load_space(SPACES / "table1.yaml")
    configs = [space.resolve(combo) for combo in space.grid()]
    assert len(configs) == 4
    assert all(c.model.head == "latf" and c.model.neck == "bottleneck" for c in configs)
    assert all(c.loss.row_reduction == "sum" for c in configs)
    assert all(c.loss.triplet_feature == "retrieval" for c in configs)
    pairs = {(c.loss.label_smoothing, c.loss.triplet_weight) for c in configs}
    assert pairs == {(0.0, 0.0), (0.1, 0.0), (0.0, 1.0), (0.1, 1.0)}
