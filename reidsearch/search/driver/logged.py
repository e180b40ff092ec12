"""What the MLflow tracker logs for a trial: its settings as params, the metrics charted every
epoch, and those of its score's epoch (logged once, when it ends)."""

from __future__ import annotations

from typing import Any

from reidsearch.config import QUERY_METRICS, TrialConfig
from reidsearch.engine.scoring import EPOCH_SCORE_KEY, SCORE_KEY, interval_keys, spread_key
from reidsearch.objective import COST_UNITS
from reidsearch.redact import mask_secrets

# The metrics of a trial's score epoch, logged once with SCORED_PREFIX when the trial ends.
SCORED_METRICS = (
    *QUERY_METRICS,
    *(key for metric in QUERY_METRICS for key in interval_keys(metric)),
    *(spread_key(metric) for metric in QUERY_METRICS),
    "num_valid_queries",
)
# Every epoch's chart in MLflow.
CHART_METRICS = (
    "untrained_mAP",
    "untrained_rank1",
    "query_leaks",
    "unreadable_images",
    "epoch",
    "loss",
    "ce",
    "triplet",
    "lr",
    "images_per_s",
    "epoch_time_s",
    "startup_s",  # trial start -> first training step (the first epoch of each run)
    "trainable_blocks",
    *SCORED_METRICS,
    SCORE_KEY,
    EPOCH_SCORE_KEY,
)


def flatten_config(config: TrialConfig) -> dict[str, str]:
    """Every resolved setting as a dotted MLflow param (``model.lam`` -> ``8.0``), credentials
    in URIs masked (``data.root: s3://b/x?secret_key=***``)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = mask_secrets(str(value))

    walk("", config.model_dump())
    return flat


def cost_of(result: dict[str, Any]) -> dict[str, float]:
    """The ``cost.*`` figures a report carries (evaluated epochs; measured once per trial)."""
    return {key: float(result[key]) for key in COST_UNITS if key in result}
