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

- :mod:`~reidsearch.search.space.schema`: the file schema (pydantic) and one-line errors,
- :mod:`~reidsearch.search.space.params`: searched parameters, conditions, define-by-run,
- :mod:`~reidsearch.search.space.parsing`: the ``search:`` section checked against TrialConfig,
- :mod:`~reidsearch.search.space.search_space`: :class:`SearchSpace` (resolve, grid, describe),
- :mod:`~reidsearch.search.space.loading`: :func:`load_search_space` (cross-section checks),
- :mod:`~reidsearch.search.space.trials`: a Tune trial's config back to a ``TrialConfig``.

None of them imports ray, torch or optuna.

Searched values travel through Ray Tune as *flat* config keys named by their dotted path
(``{"model.lam": 7.5}``): Ray's ``OptunaSearch`` unflattens on ``/`` only, so dots are kept.
:meth:`SearchSpace.resolve` turns such a dict into a validated ``TrialConfig``.
"""

from __future__ import annotations

from reidsearch.errors import ConfigError
from reidsearch.search.space.loading import load_search_space
from reidsearch.search.space.params import Condition, ParamSpec
from reidsearch.search.space.schema import MlflowSettings, SchedulerSettings
from reidsearch.search.space.search_space import DEFAULT_STORAGE_PATH, SearchSpace

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
