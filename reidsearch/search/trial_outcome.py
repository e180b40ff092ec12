"""How a trial ended, kept beside its checkpoints so that a resumed search does not run it again.

Tune saves its own experiment state every few seconds, so a driver killed right after a trial
ended may restore that trial as still running; ``--resume`` also re-runs errored trials
(``resume_errored``), which must not include a trial that diverged (it would diverge again).
The trial driver writes ``outcome.json`` in the trial's Train run folder when the trial ends and
reads it first when it starts: a finished trial reports its final result again (so Tune, Optuna
and ASHA learn it) without training, a diverged one fails again at once with the same reason.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

from ray.tune import Callback

from reidsearch.errors import first_line
from reidsearch.redact import mask_secrets
from reidsearch.storage import exists, join, read_text, write_text

OUTCOME_FILE = "outcome.json"
FINISHED, DIVERGED = "finished", "diverged"


def train_run_dir(train_storage: str, trial_id: str) -> str:
    """The folder of a trial's Ray Train run (its name must not change across restarts)."""
    return join(train_storage, train_run_name(trial_id))


def train_run_name(trial_id: str) -> str:
    return f"train_{trial_id}"


def write_outcome(
    run_dir: str, status: str, *, metrics: dict[str, Any] | None = None, reason: str = ""
) -> None:
    record = {"status": status, "reason": reason, "metrics": _jsonable(metrics or {})}
    write_text(join(run_dir, OUTCOME_FILE), json.dumps(record, indent=1))


def read_outcome(run_dir: str) -> dict[str, Any] | None:
    """The recorded end of the trial whose Train run lives in ``run_dir``, if it ended."""
    path = join(run_dir, OUTCOME_FILE)
    if not exists(path):
        return None
    return json.loads(read_text(path))


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    """The plain numbers and strings of a result (Tune adds objects such as its config)."""
    return {
        key: value
        for key, value in metrics.items()
        if isinstance(value, int | float | str | bool) and not key.startswith("config")
    }


def ended(failed: bool, last_result: dict[str, Any] | None) -> bool:
    """Whether a Tune trial really ended: it failed, or its last result is ``done`` (finished,
    or stopped by the scheduler). Ctrl-C ends a search with its running and pending trials
    marked TERMINATED as well, but not done: they were interrupted, and ``--resume`` goes on."""
    return failed or bool((last_result or {}).get("done"))


def trial_ended(trial: Any) -> bool:
    """``ended`` for a Tune ``Trial`` (in a callback)."""
    last = getattr(getattr(trial, "run_metadata", None), "last_result", None)
    return ended(str(trial.status) == "ERROR", last)


class KeepDoneInState(Callback):
    """Makes Tune save the ``done`` flag of a trial that finished.

    When a function trainable returns, Tune sets ``done`` on the trial's last result in place
    and does not mark the trial's run metadata changed. A periodic save of the experiment state
    that fell between the trial's last report and its return had cached that metadata without
    ``done``, and every later save reuses the cache: a resumed search saw the finished trial as
    interrupted (``ended``). A completed trial's cache is dropped here, so the final save
    writes it afresh."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        metadata = getattr(trial, "run_metadata", None)
        if metadata is not None:
            metadata.invalidate_cache()


def failure_reason(trial: Any) -> str:
    """One line on why a trial failed, with any credential in it masked (it is printed and
    logged): see ``_failure_reason``."""
    return mask_secrets(_failure_reason(trial))


def _failure_reason(trial: Any) -> str:
    """One line on why a trial failed: the user error or divergence behind Ray's wrappers,
    else the innermost exception's first line, else the last line of Tune's error file."""
    from reidsearch.search.ray_train import user_error_behind

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
