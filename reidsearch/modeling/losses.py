"""Re-ID losses: label-smoothed cross entropy and batch-hard triplet on embeddings (CPU-safe).

The original LA-TF++ code applied the triplet loss to logits; here it takes the embedding
(``ReIDOutput.embedding``, the global fused vector), and needs P x K batches to find positives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reidsearch.config import LossConfig
from reidsearch.modeling.heads import ReIDOutput

__all__ = ["ReIDLoss", "batch_hard_triplet", "cross_entropy_label_smoothing", "pairwise_distances"]


def cross_entropy_label_smoothing(
    logits: torch.Tensor, targets: torch.Tensor, eps: float = 0.0
) -> torch.Tensor:
    """``(1 - eps) * CE + eps * mean_c(-log p_c)``, averaged over the batch (eps=0: plain CE).

    Equals CE against the smoothed target ``(1 - eps) * onehot + eps / C``.
    """
    log_probs = F.log_softmax(logits.float(), dim=1)
    nll = -log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    if eps == 0:
        return nll.mean()
    uniform = -log_probs.mean(dim=1)
    return ((1.0 - eps) * nll + eps * uniform).mean()


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (B, B), with a clamped sqrt so gradients stay finite at 0."""
    x = x.float()
    sq = x.pow(2).sum(dim=1)
    d2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * x @ x.t()
    return d2.clamp_min(1e-12).sqrt()


def batch_hard_triplet(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float | None = 0.3
) -> torch.Tensor:
    """Batch-hard triplet loss: per anchor, farthest positive vs nearest negative.

    ``relu(d_ap - d_an + margin)``, or ``softplus(d_ap - d_an)`` when ``margin`` is None,
    averaged over the anchors that have another sample of their identity and a sample of another
    one (zero, still differentiable, when no anchor qualifies).
    """
    dist = pairwise_distances(embeddings)
    labels = labels.view(-1)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = same & ~eye
    neg = ~same
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not valid.any():
        return embeddings.sum() * 0.0
    d_ap = dist.masked_fill(~pos, float("-inf")).amax(dim=1)[valid]
    d_an = dist.masked_fill(~neg, float("inf")).amin(dim=1)[valid]
    if margin is None:
        return F.softplus(d_ap - d_an).mean()
    return F.relu(d_ap - d_an + margin).mean()


class ReIDLoss:
    """``ce_weight * CE_rows + triplet_weight * triplet(embedding)``, from a ``LossConfig``.

    CE_rows is the mean (or sum, as the original LA-TF) over classifiers of the per-classifier
    label-smoothed cross entropy.
    """

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg

    def __call__(
        self, output: ReIDOutput, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss and its detached parts, as 0-d tensors on the loss's device: turning
        them into Python floats here would make every training step wait for the GPU."""
        cfg = self.cfg
        total = output.embedding.new_zeros((), dtype=torch.float32)
        zero = total.detach()
        parts: dict[str, torch.Tensor] = {"ce": zero, "triplet": zero}
        if cfg.ce_weight > 0:
            per_row = torch.stack(
                [
                    cross_entropy_label_smoothing(lg, labels, cfg.label_smoothing)
                    for lg in output.logits
                ]
            )
            ce = per_row.sum() if cfg.row_reduction == "sum" else per_row.mean()
            total = total + cfg.ce_weight * ce
            parts["ce"] = ce.detach()
        if cfg.triplet_weight > 0:
            tri = batch_hard_triplet(output.embedding, labels, cfg.triplet_margin)
            total = total + cfg.triplet_weight * tri
            parts["triplet"] = tri.detach()
        parts["total"] = total.detach()
        return total, parts
