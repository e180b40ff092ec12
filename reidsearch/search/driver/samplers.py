"""The Optuna sampler a space file chooses (``searcher:``), seeded with the space's seed.

Each is Optuna's own; what each cannot search (conditions, choices) was refused when the space
was loaded (``search.space.choices``), so none of them falls back to random sampling quietly.
"""

from __future__ import annotations

import warnings
from typing import Any

from reidsearch.search.space import SearchSpace
from reidsearch.search.space.choices import startup_trials


def build_sampler(space: SearchSpace) -> Any:
    """The ``optuna.samplers`` sampler of ``space.searcher`` (not grid: Tune enumerates it)."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        # QMCSampler and TPE's `group` are "experimental" in Optuna (since 3.0 and 2.8): said
        # once here, in the README, rather than in every search's log
        warnings.simplefilter("ignore", category=ExperimentalWarning)
        return _sampler(space)


def _sampler(space: SearchSpace) -> Any:
    import optuna.samplers as samplers

    seed, name, startup = space.seed, space.searcher, startup_trials(space.trials)
    if name == "random":  # the baseline the others are measured against (bench_search)
        return samplers.RandomSampler(seed=seed)
    if name == "gp":  # q-batch logEI: it accounts for running trials itself
        return samplers.GPSampler(seed=seed, n_startup_trials=startup)
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
    )
