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
from typing import Any

from reidsearch.search.keys import OUTCOME_FILE
from reidsearch.storage import exists, join, read_text, write_text


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
