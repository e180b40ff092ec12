"""What a trial's worker makes of a :class:`~reidsearch.search.trial.shipment.Shipment`: the
dataset as a zero-copy view of its node's object store, the weights as a node-local file."""

from __future__ import annotations

from pathlib import Path

import ray

from reidsearch.config import TrialConfig
from reidsearch.data.cache import ImageCache
from reidsearch.engine.data import PreparedData, assemble, data_identity
from reidsearch.search.trial.shipment import Shipment, weights_identity
from reidsearch.storage import default_cache_root, write_bytes

OBJECT_STORE = Path("<ray object store>")


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
