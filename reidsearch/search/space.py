"""Search spaces: a YAML file of fixed settings, searched distributions and how to search them.

A search space is validated completely on load, so that a typo fails in well under a second
instead of after Ray has started: unknown keys, wrong types, empty ranges, searched keys that are
not :class:`~reidsearch.config.TrialConfig` settings, searched values that ``TrialConfig`` rejects,
conditions on undefined or later parameters and ``points_to_evaluate`` outside the space all raise
:class:`~reidsearch.errors.ConfigError` with one line ``FILE: dotted.key: what is wrong``.

The space's objective (``objective:``) and seeds per configuration (``repeats:``) are top-level
keys, copied into ``fixed_config`` so every trial's config carries them; they cannot be set under
``fixed:`` or searched.

This is the public entry point; the parts live in their own modules:

- :mod:`~reidsearch.search.space_schema`: the file schema (pydantic) and one-line errors,
- :mod:`~reidsearch.search.params`: searched parameters, conditions, the define-by-run function,
- :mod:`~reidsearch.search.params_parsing`: the ``search:`` section checked against TrialConfig,
- :mod:`~reidsearch.search.search_space`: :class:`SearchSpace` (resolve, grid, describe),
- :mod:`~reidsearch.search.space_loading`: :func:`load_search_space` (cross-section checks).

None of them imports ray, torch or optuna.

Searched values travel through Ray Tune as *flat* config keys named by their dotted path
(``{"model.lam": 7.5}``): Ray's ``OptunaSearch`` unflattens on ``/`` only, so dots are kept.
:meth:`SearchSpace.resolve` turns such a dict into a validated ``TrialConfig``.
"""

from __future__ import annotations

from reidsearch.errors import ConfigError
from reidsearch.search.params import Condition, ParamSpec
from reidsearch.search.search_space import DEFAULT_STORAGE_PATH, SearchSpace
from reidsearch.search.space_loading import load_search_space
from reidsearch.search.space_schema import MlflowSettings, SchedulerSettings

__all__ = [
    "DEFAULT_STORAGE_PATH",
    "Condition",
    "ConfigError",
    "MlflowSettings",
    "ParamSpec",
    "SchedulerSettings",
    "SearchSpace",
    "load_search_space",
]
