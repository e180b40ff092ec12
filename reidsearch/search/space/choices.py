"""The searcher and scheduler a space file chooses: what each can search, where each compares
trials, and their one-line summaries.

Checked at load time so that a choice that cannot work fails before Ray starts, with one line
naming the file and key. Nothing here imports optuna or ray: the rules mirror what their samplers
and schedulers do (``tests/test_searchers.py`` and ``tests/test_schedulers.py`` hold them to it).
"""

from __future__ import annotations

import math

from reidsearch.config import TrialConfig
from reidsearch.errors import ConfigError
from reidsearch.search.space.params import ParamSpec, format_value
from reidsearch.search.space.schema import SchedulerSettings

__all__ = [
    "SCHEDULER_KEYS",
    "asha_rungs",
    "canonical_searcher",
    "check_median_trials",
    "check_scheduler",
    "check_searcher",
    "describe_sampler",
    "describe_scheduler",
    "hyperband_brackets",
    "startup_trials",
]

# the settings each scheduler type reads (the others are refused for it)
SCHEDULER_KEYS: dict[str, tuple[str, ...]] = {
    "asha": ("grace_period", "reduction_factor", "max_t"),
    "hyperband": ("reduction_factor", "max_t"),
    "median": ("grace_period", "min_samples_required"),
    "none": (),
}

# what each Optuna sampler cannot do with a space (why, and what to use instead)
_NO_CONDITIONS = {
    "gp": "GPSampler models only the parameters every trial has (a conditional one would be "
    "drawn at random)",
    "cmaes": "CmaEsSampler needs a fixed set of parameters (a conditional one would be drawn "
    "at random)",
    "qmc": "QMCSampler fixes its parameters from the first trial (a conditional one would be "
    "drawn at random)",
}


def canonical_searcher(name: str) -> str:
    """``optuna`` is the old name of ``tpe`` (Optuna's default sampler)."""
    return "tpe" if name == "optuna" else name


def startup_trials(trials: int) -> int:
    """Random trials before TPE or GP model the results: Optuna's 10, fewer for small searches
    (a third of them, at least 2), which would otherwise never leave random sampling."""
    return max(2, min(10, trials // 3))


def check_searcher(searcher: str, params: list[ParamSpec], src: str) -> None:
    """Refuse a space the chosen sampler would quietly search at random in part."""
    for p in params:
        if p.when is not None and searcher in _NO_CONDITIONS:
            raise ConfigError(
                f"{src}: search.{p.key}: searcher {searcher} cannot search a conditional "
                f"parameter ({_NO_CONDITIONS[searcher]}); use searcher tpe"
            )
        if searcher == "cmaes" and p.type == "choice" and len(p.values) > 1:
            raise ConfigError(
                f"{src}: search.{p.key}: searcher cmaes cannot search a choice (CMA-ES "
                f"samples numbers only); use searcher tpe or gp, or search it as a number"
            )


def describe_sampler(searcher: str, seed: int, trials: int, conditional: bool) -> str:
    """The Optuna sampler ``build_searcher`` gives the search, in words."""
    n = startup_trials(trials)
    if searcher == "tpe":
        grouped = ", grouped for conditional parameters" if conditional else ""
        return (
            f"tpe (Optuna's TPESampler: multivariate{grouped}, constant liar for concurrent "
            f"trials, first {n} trials random, seed {seed})"
        )
    if searcher == "gp":
        return (
            f"gp (Optuna's GPSampler: Gaussian process, log expected improvement, first {n} "
            f"trials random, seed {seed})"
        )
    if searcher == "cmaes":
        return f"cmaes (Optuna's CmaEsSampler, seed {seed})"
    if searcher == "qmc":
        return f"qmc (Optuna's QMCSampler: scrambled Sobol sequence, seed {seed})"
    if searcher == "nsga2":
        return f"nsga2 (Optuna's NSGAIISampler: genetic, non-dominated sorting, seed {seed})"
    return f"random (Optuna's RandomSampler, seed {seed})"


# ------------------------------------------------------------------------------- schedulers


def asha_rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which ASHA compares trials (one bracket, as Ray builds its rungs): a rung
    at a fractional milestone is decided at the first epoch reported past it."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return sorted({math.ceil(grace_period * reduction_factor**k) for k in range(count)})


def hyperband_brackets(max_t: int, reduction_factor: float) -> list[list[int]]:
    """Each HyperBand bracket's milestones in epochs, as Ray's ``HyperBandScheduler`` builds
    them: trials are compared (and the best 1/reduction_factor promoted) at every milestone but
    the last, where the bracket's survivors stop."""
    eta = float(reduction_factor)
    brackets = []
    for s in range(int(round(math.log(max_t) / math.log(eta))) + 1):
        r = int(max_t * eta ** (-s))
        if r == 0:  # Ray skips a bracket too small to run
            continue
        milestones = [r]
        for _ in range(s):
            r = int(min(r * eta, max_t))
            milestones.append(r)
        brackets.append(milestones)
    return brackets


def _evaluated(epoch: int, cfg: TrialConfig) -> bool:
    """Whether a trial evaluates (reports a score) at ``epoch``: every ``eval.period`` epochs
    and at its last epoch (the trainer's rule)."""
    return epoch % cfg.eval.period == 0 or epoch == cfg.epochs


def check_scheduler(scheduler: SchedulerSettings, cfg: TrialConfig, src: str) -> SchedulerSettings:
    """Settings that would make the scheduler mislead (compare unevaluated epochs, never reach
    max_t, never compare at all); returns the scheduler with ``max_t`` filled in."""
    kind = scheduler.type
    for key in sorted(scheduler.model_fields_set - {"type"}):
        if key not in SCHEDULER_KEYS[kind]:
            users = " or ".join(t for t, keys in SCHEDULER_KEYS.items() if key in keys)
            raise ConfigError(f"{src}: scheduler.{key}: only used with type {users}, not {kind}")
    if kind == "none":
        return scheduler
    if kind == "median":
        _check_median(scheduler, cfg, src)
        return scheduler
    max_t = scheduler.max_t or cfg.epochs
    if max_t > cfg.epochs:
        raise ConfigError(
            f"{src}: scheduler.max_t: {max_t} is more than fixed.epochs "
            f"({cfg.epochs}); no trial would reach it"
        )
    if kind == "asha":
        if scheduler.grace_period > max_t:
            raise ConfigError(
                f"{src}: scheduler.grace_period: {scheduler.grace_period} is more than max_t "
                f"({max_t} epochs)"
            )
        epochs = asha_rungs(scheduler.grace_period, scheduler.reduction_factor, max_t)
        how = "make every rung (grace_period x reduction_factor^k) a multiple of the period"
    else:
        brackets = hyperband_brackets(max_t, scheduler.reduction_factor)
        epochs = sorted({m for milestones in brackets for m in milestones})
        how = "choose max_t and reduction_factor so that every milestone is a multiple of it"
    unevaluated = [epoch for epoch in epochs if not _evaluated(epoch, cfg)]
    if unevaluated:
        name = "ASHA compares" if kind == "asha" else "HyperBand compares or stops"
        raise ConfigError(
            f"{src}: fixed.eval.period: {name} trials at epoch {unevaluated[0]}, which is not "
            f"evaluated (every {cfg.eval.period} epochs); {how}, or evaluate every epoch"
        )
    return scheduler.model_copy(update={"max_t": max_t})


def _check_median(scheduler: SchedulerSettings, cfg: TrialConfig, src: str) -> None:
    """Median stopping compares at evaluated epochs from ``grace_period`` on, before the last
    (a trial at its last epoch has ended): there must be one."""
    if not any(_evaluated(e, cfg) for e in range(scheduler.grace_period, cfg.epochs)):
        raise ConfigError(
            f"{src}: scheduler.grace_period: median stopping compares at evaluated epochs from "
            f"{scheduler.grace_period} on, and none comes before the last "
            f"(fixed.epochs {cfg.epochs}, evaluated every {cfg.eval.period}): it would never "
            f"stop a trial"
        )


def check_median_trials(scheduler: SchedulerSettings, total_trials: int, src: str) -> None:
    """Median stopping compares a trial with ``min_samples_required`` others: the search must
    have that many besides it."""
    if scheduler.type == "median" and scheduler.min_samples_required >= total_trials:
        raise ConfigError(
            f"{src}: scheduler.min_samples_required: {scheduler.min_samples_required} other "
            f"trials are needed to compare one, and the search runs {total_trials}: it would "
            f"never stop a trial"
        )


def describe_scheduler(scheduler: SchedulerSettings, cfg: TrialConfig) -> str:
    """The scheduler line of ``reidsearch run --dry-run``."""
    s = scheduler
    if s.type == "asha":
        return (
            f"scheduler: ASHA (grace_period {s.grace_period}, reduction_factor "
            f"{format_value(s.reduction_factor)}, max_t {s.max_t})"
        )
    if s.type == "hyperband":
        brackets = hyperband_brackets(s.max_t or cfg.epochs, s.reduction_factor)
        shown = "; ".join(", ".join(str(m) for m in b) for b in brackets)
        return (
            f"scheduler: HyperBand, synchronous (reduction_factor "
            f"{format_value(s.reduction_factor)}, max_t {s.max_t}; bracket milestones in "
            f"epochs: {shown})"
        )
    if s.type == "median":
        return (
            f"scheduler: median stopping (from epoch {s.grace_period}, at evaluated epochs "
            f"(every {cfg.eval.period}), once {s.min_samples_required} other trials got there)"
        )
    return "scheduler: none (every trial runs all epochs)"
