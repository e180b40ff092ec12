"""The Optuna sampler a space file chooses (``searcher:``), seeded with the space's seed.

Each is Optuna's own; what each cannot search (conditions, choices) was refused when the space
was loaded (``search.space.choices``), so none of them falls back to random sampling quietly.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

from optuna.samplers import NSGAIISampler

from reidsearch.search.space import SearchSpace
from reidsearch.search.space.choices import startup_trials
from reidsearch.search.space.objectives import CONSTRAINED_SEARCHERS

CONSTRAINTS_ATTR = "reidsearch.constraints"  # an Optuna trial's constraint values, when told


def build_sampler(space: SearchSpace) -> Any:
    """The ``optuna.samplers`` sampler of ``space.searcher`` (not grid: Tune enumerates it)."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        # QMCSampler and TPE's `group` are "experimental" in Optuna (since 3.0 and 2.8): said
        # once here, in the README, rather than in every search's log
        warnings.simplefilter("ignore", category=ExperimentalWarning)
        return _sampler(space)


class ConstraintValues:
    """Optuna's ``constraints_func``: the values the searcher recorded on the trial when it was
    told (``CONSTRAINTS_ATTR``; <= 0 met), each missing one (a pruned trial) unmet. A class, not a
    closure: Tune pickles the sampler with the searcher."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __call__(self, trial: Any) -> list[float]:
        return list(trial.user_attrs.get(CONSTRAINTS_ATTR, [1.0] * self.count))


_LOCK = type(threading.Lock())


class LocksNotPickled:
    """Pickles a sampler without its thread locks (new ones when unpickled): Tune pickles the
    searcher with its sampler, and Optuna's genetic samplers (NSGA-II) hold a lock."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        locks = [name for name, value in state.items() if isinstance(value, _LOCK)]
        for name in locks:
            del state[name]
        return {**state, "_reidsearch_locks": locks}

    def __setstate__(self, state: dict[str, Any]) -> None:
        locks = state.pop("_reidsearch_locks", [])
        self.__dict__.update(state)
        for name in locks:
            setattr(self, name, threading.Lock())


class PicklableNSGAII(LocksNotPickled, NSGAIISampler):
    """Optuna's NSGA-II sampler, picklable."""


def _sampler(space: SearchSpace) -> Any:
    import optuna.samplers as samplers

    seed, name, startup = space.seed, space.searcher, startup_trials(space.trials)
    constrained: dict[str, Any] = {}
    if space.constraints and name in CONSTRAINED_SEARCHERS:
        constrained = {"constraints_func": ConstraintValues(len(space.constraints))}
    if name == "random":  # the baseline the others are measured against (bench_search)
        return samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return PicklableNSGAII(seed=seed, **constrained)
    if name == "gp":  # q-batch logEI: it accounts for running trials itself
        return samplers.GPSampler(seed=seed, n_startup_trials=startup, **constrained)
    if name == "cmaes":
        return samplers.CmaEsSampler(seed=seed)
    if name == "qmc":  # scrambled, or the seed would not change the sequence
        return samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)
    if name != "tpe":
        raise ValueError(f"no Optuna sampler for searcher {name!r}")
    return samplers.TPESampler(
        seed=seed,
        n_startup_trials=startup,
        multivariate=True,
        # `group` makes multivariate TPE model conditional parameters in the subspaces where
        # they occur, instead of drawing them at random
        group=space.conditional,
        # running trials count as bad results while they run, so concurrent trials are not
        # handed the same region (Optuna's default since 4.x; set here on purpose)
        constant_liar=True,
        **constrained,
    )
