"""How the driver tells how a Tune trial ended: really ended or interrupted, and why it failed.

Also the callback that makes Tune save a finished trial's ``done`` flag (see below).
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune import Callback

from reidsearch.errors import first_line
from reidsearch.internals.ray_internals import invalidate_trial_metadata, trial_last_result
from reidsearch.redact import mask_secrets
from reidsearch.search.rules import ended
from reidsearch.search.trial.failures import user_error_behind


def trial_ended(trial: Any) -> bool:
    """``ended`` for a Tune ``Trial`` (in a callback)."""
    return ended(str(trial.status) == "ERROR", trial_last_result(trial))


class KeepDoneInState(Callback):
    """Makes Tune save the ``done`` flag of a trial that finished.

    When a function trainable returns, Tune sets ``done`` on the trial's last result in place
    and does not mark the trial's run metadata changed. A periodic save of the experiment state
    that fell between the trial's last report and its return had cached that metadata without
    ``done``, and every later save reuses the cache: a resumed search saw the finished trial as
    interrupted (``ended``). A completed trial's cache is dropped here, so the final save
    writes it afresh."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        invalidate_trial_metadata(trial)


def failure_reason(trial: Any) -> str:
    """One line on why a trial failed, with any credential in it masked (it is printed and
    logged): see ``_failure_reason``."""
    return mask_secrets(_failure_reason(trial))


def _failure_reason(trial: Any) -> str:
    """One line on why a trial failed: the user error or divergence behind Ray's wrappers,
    else the innermost exception's first line, else the last line of Tune's error file."""
    try:
        with open(trial.pickled_error_file, "rb") as handle:
            error = pickle.load(handle)
    except Exception:  # noqa: BLE001 - no pickled error (or unreadable): try the text file
        error = None
    if isinstance(error, BaseException):
        cause = user_error_behind(error)
        if cause is not None:
            return str(cause).splitlines()[0]
        for _ in range(20):  # the innermost cause (bounded: a chain could loop)
            inner = getattr(error, "cause", None) or error.__cause__
            if not isinstance(inner, BaseException):
                break
            error = inner
        return first_line(error)
    try:
        with open(trial.error_file) as handle:
            lines = [line.strip() for line in handle if line.strip()]
        return lines[-1]
    except Exception:  # noqa: BLE001
        return "unknown error (see the trial's error.txt)"
