"""A Tune trial's config read back: its searched values and the full TrialConfig they make."""

from __future__ import annotations

from typing import Any

from reidsearch.config import TrialConfig, with_overrides
from reidsearch.search.keys import GRID_KEY


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """The searched values of a Tune trial config (a grid point is nested under GRID_KEY)."""
    params = {key: value for key, value in config.items() if key != GRID_KEY}
    params.update(config.get(GRID_KEY, {}))
    return params


def resolve_trial(fixed: dict[str, Any], config: dict[str, Any]) -> tuple[dict, TrialConfig]:
    """A Tune trial's searched values and its full config (the fixed settings plus them)."""
    params = trial_params(config)
    return params, with_overrides(TrialConfig.model_validate(fixed), params, "<Tune trial config>")
