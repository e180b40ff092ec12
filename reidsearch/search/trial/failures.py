"""How a trial's failure reads: a diverged run, and the user error behind Ray's wrappers."""

from __future__ import annotations

from typing import Any

from reidsearch.engine.divergence import TrainingDiverged
from reidsearch.errors import ReidSearchError
from reidsearch.search.keys import DIVERGED_KEY


def raise_if_diverged(result: Any, what: str) -> None:
    """Turn a run that ended by divergence into an error (NaN trials are failed trials)."""
    outcome = getattr(result, "return_value", None)
    if isinstance(outcome, dict) and DIVERGED_KEY in outcome:
        raise TrainingDiverged(f"{what}: {outcome[DIVERGED_KEY]}; stopped, not retried")


def user_error_behind(error: BaseException) -> BaseException | None:
    """The user error (bad dataset, bad setting) or divergence behind a failed Ray Train run or
    Tune trial, so that the CLI can print it on one line instead of a worker traceback."""
    failures = list(getattr(error, "worker_failures", {}).values()) or [error]
    for failure in failures:
        seen: BaseException | None = failure
        while seen is not None:
            inner = getattr(seen, "cause", None)  # Ray's wrapper of a remote exception
            if inner is None and isinstance(seen, ReidSearchError | TrainingDiverged):
                return seen  # the original, whose message is one line (not the wrapper's)
            seen = inner or seen.__cause__
    return None
