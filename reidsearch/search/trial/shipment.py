"""What a trial receives of the inputs the driver prepared once and shipped through Ray's
object store.

Worker nodes share no disk with the head. Instead of every trial parsing the dataset, decoding
its images and downloading pretrained weights on its own node, the driver does each once: the
manifest and the decoded ``uint8`` image array go into the object store, which copies them to
a node the first time a trial there asks and then serves every trial on that node the same
shared-memory array (zero-copy, read-only). Weights travel as the bytes of one
``.safetensors`` file, written once per node. A trial whose searched settings change the data
or the backbone prepares its own (the identities below no longer match).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from reidsearch.config import ModelConfig, TrialConfig
from reidsearch.data.cache import ImageCache
from reidsearch.engine.data import PreparedData, assemble, data_identity
from reidsearch.storage import default_cache_root, write_bytes

OBJECT_STORE = Path("<ray object store>")


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


def received_data(shipment: Shipment | None, cfg: TrialConfig) -> PreparedData | None:
    """The shipped dataset if it is the one ``cfg`` trains on (else None: prepare locally)."""
    if shipment is None or data_identity(cfg.data) != shipment.data_identity:
        return None
    images = ray.get(shipment.images)  # zero-copy view of this node's object store
    prepared = assemble(ray.get(shipment.manifest), ImageCache(OBJECT_STORE, images))
    prepared.query_leaks = shipment.query_leaks
    prepared.unreadable = shipment.unreadable
    return prepared


def received_weights(shipment: Shipment | None, cfg: TrialConfig) -> Path | None:
    """A node-local file of the shipped starting weights if they are ``cfg``'s (else None)."""
    if shipment is None or shipment.weights is None:
        return None
    if weights_identity(cfg) != shipment.weights_identity:
        return None
    final = default_cache_root() / "weights" / f"{shipment.weights_sha}.safetensors"
    if not final.is_file():  # concurrent trials write identical bytes; any one wins
        write_bytes(str(final), ray.get(shipment.weights))
    return final
