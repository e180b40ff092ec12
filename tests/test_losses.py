"""Losses: label smoothing against its definition, batch-hard triplet by hand, ReIDLoss parts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reidsearch.config import LossConfig
from reidsearch.modeling.heads import ReIDOutput
from reidsearch.modeling.losses import (
    ReIDLoss,
    batch_hard_triplet,
    cross_entropy_label_smoothing,
)


def test_label_smoothing_eps0_is_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 5), torch.randint(0, 5, (6,))
    got = cross_entropy_label_smoothing(logits, targets, 0.0)
    assert torch.allclose(got, F.cross_entropy(logits, targets), atol=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothing_matches_smoothed_target_distribution(eps):
    torch.manual_seed(1)
    n, c = 7, 4
    logits, targets = torch.randn(n, c), torch.randint(0, c, (n,))
    q = torch.full((n, c), eps / c)
    q[torch.arange(n), targets] += 1.0 - eps
    p = torch.softmax(logits.double(), dim=1)
    expected = -(q.double() * p.log()).sum(dim=1).mean()
    got = cross_entropy_label_smoothing(logits, targets, eps)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    assert got.item() != pytest.approx(F.cross_entropy(logits, targets).item(), abs=1e-4)


def test_triplet_zero_when_well_separated_positive_otherwise():
    labels = torch.tensor([0, 0, 1, 1])
    far = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    assert batch_hard_triplet(far, labels, margin=0.3).item() == 0.0
    mixed = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.2, 0.0], [5.0, 0.0]])
    assert batch_hard_triplet(mixed, labels, margin=0.3).item() > 0.0


def test_triplet_matches_hand_computation():
    # 1-D points: a0=0, a1=3 (id 0); b0=1, b1=5 (id 1)
    emb = torch.tensor([[0.0], [3.0], [1.0], [5.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    # anchor: (d_ap, d_an) = a0 (3, 1), a1 (3, 2), b0 (4, 1), b1 (4, 2)
    pairs = [(3, 1), (3, 2), (4, 1), (4, 2)]
    margin = 0.5
    hard = sum(max(ap - an + margin, 0.0) for ap, an in pairs) / 4
    soft = sum(math.log1p(math.exp(ap - an)) for ap, an in pairs) / 4
    loss = batch_hard_triplet(emb, labels, margin=margin)
    assert loss.item() == pytest.approx(hard, abs=1e-5)
    assert batch_hard_triplet(emb, labels, margin=None).item() == pytest.approx(soft, abs=1e-5)
    loss.backward()
    assert torch.isfinite(emb.grad).all()


def test_triplet_soft_margin_zero_ish_when_separated_and_no_valid_anchor():
    labels = torch.tensor([0, 0, 1, 1])
    far = torch.tensor([[0.0], [0.0], [100.0], [100.0]])
    assert batch_hard_triplet(far, labels, margin=None).item() < 1e-6
    single = torch.randn(3, 4, requires_grad=True)
    zero = batch_hard_triplet(single, torch.tensor([0, 1, 2]), margin=0.3)
    assert zero.item() == 0.0
    zero.backward()  # still part of the graph


def _output(num_rows: int, batch: int = 4, classes: int = 3) -> ReIDOutput:
    torch.manual_seed(2)
    return ReIDOutput(
        logits=[torch.randn(batch, classes) for _ in range(num_rows)],
        embedding=torch.randn(batch, 8),
        fused_mean=torch.randn(batch, 6),
    )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reid_loss_combines_parts(reduction):
    out, labels = _output(3), torch.tensor([0, 0, 1, 1])
    cfg = LossConfig(
        ce_weight=0.7,
        label_smoothing=0.1,
        triplet_weight=2.0,
        triplet_margin=0.3,
        row_reduction=reduction,
    )
    total, parts = ReIDLoss(cfg)(out, labels)
    rows = torch.stack([cross_entropy_label_smoothing(lg, labels, 0.1) for lg in out.logits])
    ce = rows.sum() if reduction == "sum" else rows.mean()
    tri = batch_hard_triplet(out.embedding, labels, 0.3)
    assert parts["ce"].item() == pytest.approx(ce.item(), abs=1e-6)
    assert parts["triplet"].item() == pytest.approx(tri.item(), abs=1e-6)
    assert total.item() == pytest.approx(0.7 * ce.item() + 2.0 * tri.item(), abs=1e-5)
    assert parts["total"].item() == pytest.approx(total.item(), abs=1e-6)
    assert set(parts) == {"ce", "triplet", "total"}


def test_reid_loss_triplet_only_uses_embedding():
    out, labels = _output(1), torch.tensor([0, 0, 1, 1])
    out.embedding.requires_grad_(True)
    out.fused_mean.requires_grad_(True)
    total, parts = ReIDLoss(LossConfig(ce_weight=0.0, triplet_weight=1.0))(out, labels)
    assert parts["ce"].item() == 0.0
    total.backward()
    assert out.embedding.grad is not None and out.fused_mean.grad is None


def test_triplet_feature_fused_mean_takes_the_fused_mean():
    out, labels = _output(2), torch.tensor([0, 0, 1, 1])
    cfg = LossConfig(ce_weight=0.0, triplet_weight=1.0, triplet_feature="fused_mean")
    _, parts = ReIDLoss(cfg)(out, labels)
    assert parts["triplet"].item() == pytest.approx(
        batch_hard_triplet(out.fused_mean, labels, 0.3).item(), abs=1e-6
    )
    assert LossConfig().triplet_feature == "retrieval"
    out.fused_mean = None
    with pytest.raises(ValueError, match="fused_mean"):
        ReIDLoss(cfg)(out, labels)


def _ce_by_hand(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-sample ``-(1 - eps) log p_y - eps * mean_c log p_c``, averaged over the batch."""
    shifted = logits - logits.max(dim=1, keepdim=True).values
    log_p = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    nll = -log_p[torch.arange(len(labels)), labels]
    return ((1 - eps) * nll - eps * log_p.mean(dim=1)).mean()


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_row_reduction_sum_and_mean_against_hand_computation(eps):
    out, labels = _output(5, batch=6, classes=4), torch.tensor([0, 1, 2, 3, 0, 1])
    rows = [_ce_by_hand(lg.double(), labels, eps).item() for lg in out.logits]
    for reduction, expected in (("sum", sum(rows)), ("mean", sum(rows) / len(rows))):
        cfg = LossConfig(label_smoothing=eps, row_reduction=reduction)
        total, parts = ReIDLoss(cfg)(out, labels)
        assert parts["ce"].item() == pytest.approx(expected, abs=1e-5), reduction
        assert total.item() == pytest.approx(expected, abs=1e-5)
    one = _output(1, batch=6, classes=4)  # one classifier (latfpp): sum == mean
    s = ReIDLoss(LossConfig(row_reduction="sum"))(one, labels)[0]
    m = ReIDLoss(LossConfig(row_reduction="mean"))(one, labels)[0]
    assert s.item() == pytest.approx(m.item(), abs=1e-7)


def test_without_cross_entropy_the_classifiers_still_get_a_zero_gradient():
    """DDP needs a gradient for every parameter each step (else step 2 fails on 2 ranks)."""
    from reidsearch.config import LossConfig
    from reidsearch.modeling.heads import ReIDOutput
    from reidsearch.modeling.losses import ReIDLoss

    classifier = torch.nn.Linear(8, 4)
    embedding = torch.randn(8, 8, requires_grad=True)
    output = ReIDOutput(logits=[classifier(embedding)], embedding=embedding)
    labels = torch.arange(4).repeat_interleave(2)
    total, _ = ReIDLoss(LossConfig(ce_weight=0.0, triplet_weight=1.0))(output, labels)
    total.backward()
    assert classifier.weight.grad is not None and not classifier.weight.grad.any()
