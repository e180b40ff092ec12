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
    total, parts = ReIDLoss(LossConfig(ce_weight=0.0, triplet_weight=1.0))(out, labels)
    assert parts["ce"].item() == 0.0
    total.backward()
    assert out.embedding.grad is not None
