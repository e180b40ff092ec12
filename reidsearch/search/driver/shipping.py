"""The driver's side of shipping: prepare the dataset and starting weights once, for every trial.

See :mod:`reidsearch.search.trial.shipment` for why and for what a trial does with them.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import ray

from reidsearch.config import TrialConfig
from reidsearch.engine.data import data_identity, prepare_data
from reidsearch.engine.evaluate import check_leaks
from reidsearch.search.trial.shipment import Shipment, weights_identity


def _backbone_bytes(cfg: TrialConfig) -> bytes:
    """The starting backbone (timm's pretrained weights, or a file), resized to the trial's
    input size, as one ``.safetensors`` file."""
    from safetensors.torch import save

    from reidsearch.modeling.backbone import build_backbone

    model = cfg.model
    backbone = build_backbone(
        model.backbone,
        (cfg.data.height, cfg.data.width),
        pretrained=model.pretrained,
        weights=model.weights,
        depth=model.depth,
        embed_dim=model.embed_dim,
        num_heads=model.num_heads,
    )
    return save({k: v.detach().contiguous() for k, v in backbone.state_dict().items()})


def ship_inputs(cfg: TrialConfig) -> Shipment:
    """Prepare ``cfg``'s data (and starting weights) here, once, and put them in the object
    store. Also checks the split for query/gallery leaks once, for every trial. Images dropped
    as unreadable are absent from both the manifest and the array (their rows agree)."""
    prepared = prepare_data(cfg.data)
    leaks = check_leaks(prepared)
    shipment = Shipment(
        data_identity=data_identity(cfg.data),
        manifest=ray.put(prepared.manifest),
        images=ray.put(np.asarray(prepared.cache.images)),
        query_leaks=leaks,
        unreadable=prepared.unreadable,
    )
    identity = weights_identity(cfg)
    if identity is not None:
        blob = _backbone_bytes(cfg)
        shipment = dataclasses.replace(
            shipment,
            weights_identity=identity,
            weights=ray.put(blob),
            weights_sha=hashlib.sha256(blob).hexdigest()[:24],
        )
    return shipment
