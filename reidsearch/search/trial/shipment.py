"""What a trial receives of the inputs the driver prepared once and shipped through Ray's
object store.

Worker nodes share no disk with the head. Instead of every trial parsing the dataset, decoding
its images and downloading pretrained weights on its own node, the driver does each once: the
manifest and the decoded ``uint8`` image array go into the object store, which copies them to
a node the first time a trial there asks and then serves every trial on that node the same
shared-memory array (zero-copy, read-only). Weights travel as the bytes of one
``.safetensors`` file, written once per node. A trial whose searched settings change the data
or the backbone prepares its own (the identities below no longer match).

Ray's Train controller unpickles a Shipment with every trial's config: this module imports no
torch (a trial's worker receives what is shipped: :mod:`reidsearch.search.trial.received`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reidsearch.config import ModelConfig, TrialConfig


@dataclass(frozen=True)
class Shipment:
    """References to what the driver prepared, small enough to travel in every trial config."""

    data_identity: dict[str, Any]
    manifest: Any  # ray.ObjectRef[pa.Table]
    images: Any  # ray.ObjectRef[np.ndarray], N x H x W x 3 uint8
    query_leaks: int
    unreadable: tuple[str, ...] = ()  # images the driver dropped (data.skip_unreadable)
    weights_identity: dict[str, Any] | None = None
    weights: Any = None  # ray.ObjectRef[bytes] of a .safetensors file
    weights_sha: str = ""


def weights_identity(cfg: TrialConfig) -> dict[str, Any] | None:
    """What decides the backbone's starting weights; None when it starts from random init."""
    model: ModelConfig = cfg.model
    if not model.pretrained and model.weights is None:
        return None
    keys = {"backbone", "pretrained", "weights", "depth", "embed_dim", "num_heads"}
    return {**model.model_dump(include=keys), "size": [cfg.data.height, cfg.data.width]}
