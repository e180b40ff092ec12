"""Re-ID losses: label-smoothed cross entropy and batch-hard triplet on embeddings (CPU-safe).

The original LA-TF++ code applied the triplet loss to logits; here it takes a feature chosen by
``loss.triplet_feature``: ``retrieval`` (default) the configured test feature before its final
L2 normalisation (pre-BN with BoT's BNNeck), ``fused_mean`` the mean fused vector. It needs
P x K batches to find positives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from reidsearch.modeling.heads import ReIDOutput

if TYPE_CHECKING:  # the config needs pydantic; the model layer runs without it
    from reidsearch.config import LossConfig

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


def pairwise_distances(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distances (B, B), or (B, N) to ``y``, with a clamped sqrt so gradients stay
    finite at 0."""
    x = x.float()
    y = x if y is None else y.float()
    d2 = x.pow(2).sum(dim=1).unsqueeze(1) + y.pow(2).sum(dim=1).unsqueeze(0) - 2.0 * x @ y.t()
    return d2.clamp_min(1e-12).sqrt()


def batch_hard_triplet(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float | None = 0.3,
    candidates: torch.Tensor | None = None,
    candidate_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch-hard triplet loss: per anchor, farthest positive vs nearest negative.

    ``relu(d_ap - d_an + margin)``, or ``softplus(d_ap - d_an)`` when ``margin`` is None,
    averaged over the anchors that have another sample of their identity and a sample of another
    one (zero, still differentiable, when no anchor qualifies).

    ``candidates``/``candidate_labels`` (cross-rank mining): positives and negatives come from
    them instead; their first ``len(embeddings)`` rows must be the anchors themselves (as
    ``engine.distributed.mining_gather`` returns them), which keeps each anchor out of its own
    positives.
    """
    labels = labels.view(-1)
    if candidates is None:
        candidates, candidate_labels = embeddings, labels
    candidate_labels = candidate_labels.view(-1)
    dist = pairwise_distances(embeddings, candidates)
    same = labels.unsqueeze(1) == candidate_labels.unsqueeze(0)
    eye = torch.eye(*same.shape, dtype=torch.bool, device=labels.device)
    pos = same & ~eye
    neg = ~same
    valid = pos.any(dim=1) & neg.any(dim=1)
    # No `if valid.any()` and no `[valid]` indexing: both make the host wait for the GPU (a
    # data-dependent shape). Invalid anchors are masked out of a mean over the valid ones; with
    # none the loss is 0 and still a function of every candidate (other ranks' backward waits
    # on this one's gradient).
    d_ap = dist.masked_fill(~pos, float("-inf")).amax(dim=1)
    d_an = dist.masked_fill(~neg, float("inf")).amin(dim=1)
    gap = torch.where(valid, d_ap - d_an, 0.0)
    per_anchor = F.softplus(gap) if margin is None else F.relu(gap + margin)
    return torch.where(valid, per_anchor, 0.0).sum() / valid.sum().clamp_min(1)


class ReIDLoss:
    """``ce_weight * CE_rows + triplet_weight * triplet(feature)``, from a ``LossConfig``.

    CE_rows is the mean (or sum, as the original LA-TF) over classifiers of the per-classifier
    label-smoothed cross entropy; with one classifier (latfpp) both are the same.
    """

    def __init__(
        self,
        cfg: LossConfig,
        gather: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
        | None = None,
    ) -> None:
        """``gather`` (``engine.distributed.mining_gather``): mine this rank's anchors against
        every rank's batch; None mines within the local batch."""
        self.cfg = cfg
        self.gather = gather

    def triplet_input(self, output: ReIDOutput) -> torch.Tensor:
        """The (B, F) feature the triplet loss compares, by ``loss.triplet_feature``."""
        if self.cfg.triplet_feature == "retrieval":
            return output.embedding
        if output.fused_mean is None:
            raise ValueError("loss.triplet_feature: fused_mean: this head gives no fused mean")
        return output.fused_mean

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
        else:
            # The classifiers stay in the graph with a zero gradient: DDP expects every
            # parameter to receive one each step, and fails on the second step otherwise.
            total = total + sum(lg.float().sum() for lg in output.logits) * 0.0
        if cfg.triplet_weight > 0:
            feature = self.triplet_input(output)
            pool = self.gather(feature, labels) if self.gather is not None else (None, None)
            tri = batch_hard_triplet(feature, labels, cfg.triplet_margin, *pool)
            total = total + cfg.triplet_weight * tri
            parts["triplet"] = tri.detach()
        parts["total"] = total.detach()
        return total, parts
