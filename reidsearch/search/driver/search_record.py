"""What a search was started with that ``--resume`` must not change behind its back.

Tune restores a search's callbacks from its pickle: the MLflow tracker keeps logging into the
store the search was started with, whatever the resuming command's ``--tracking-uri`` or working
directory (the default store is ``./mlflow.db``). And the trials of one search are compared on
one dataset. So the driver records both when a search starts, and a resume either continues in
the recorded store and says so, or refuses in one line; it never logs to one store and reads
another.
"""

from __future__ import annotations

import json

from reidsearch.errors import ReidSearchError
from reidsearch.redact import mask_secrets
from reidsearch.search.keys import SEARCH_RECORD_FILE
from reidsearch.search.results.state_files import state_path
from reidsearch.search.space import SearchSpace
from reidsearch.storage import exists, read_text, write_text


def _data(space: SearchSpace) -> str:
    data = space.fixed_config.data
    if data.root:
        return data.root
    return f"synthetic-{data.synthetic.layout}" if data.synthetic is not None else "none"


def _read(experiment_dir: str) -> dict | None:
    path = state_path(experiment_dir, SEARCH_RECORD_FILE)
    return json.loads(read_text(path)) if exists(path) else None


def _write(experiment_dir: str, record: dict) -> None:
    write_text(state_path(experiment_dir, SEARCH_RECORD_FILE), json.dumps(record, indent=1))


def write_search_record(
    experiment_dir: str, tracking_uri: str, experiment: str, space: SearchSpace
) -> None:
    """Recorded once, when a new search starts (the URI as used: the tracker has it too)."""
    _write(
        experiment_dir,
        {
            "tracking_uri": tracking_uri,
            "experiment": experiment,
            "data": _data(space),
            "trials": space.trials,
            "objective": space.objective.model_dump(),
        },
    )


def recorded_objective(experiment_dir: str) -> dict | None:
    """The objective a search was started with (None: not recorded, or no record)."""
    record = _read(experiment_dir)
    return None if record is None else record.get("objective")


def recorded_trials(experiment_dir: str) -> int | None:
    """The search's total of trials (raised by ``--resume --trials N``), None for a search
    started before it was recorded."""
    record = _read(experiment_dir)
    return None if record is None else record.get("trials")


def extended_trials(experiment_dir: str, space: SearchSpace, trials: int | None) -> int:
    """The total of trials a resumed search runs to, recorded: ``trials`` (``--trials``) when
    given, else the larger of the recorded total and the space file's ``trials``. A search is
    extended, never shortened; a grid, or a search started before totals were recorded, not
    at all (one-line errors)."""
    where = f"{space.source}: --trials"
    recorded = recorded_trials(experiment_dir)
    if recorded is None:
        if trials is not None:
            raise ReidSearchError(
                f"{where}: this search was started by an older reidsearch, which did not "
                "record its total; it cannot be extended (start a new search)"
            )
        return space.trials
    if trials is None:
        total = max(recorded, space.trials)
    elif trials < recorded:
        raise ReidSearchError(
            f"{where}: {trials} is fewer than the {recorded} trials this search already has "
            "(a search is extended, never shortened)"
        )
    else:
        total = trials
    if total != recorded and space.searcher == "grid":
        raise ReidSearchError(
            f"{where}: a grid search runs its combinations {recorded} time(s) and cannot be "
            "extended (start a new search)"
        )
    if total != recorded:
        _write(experiment_dir, {**_read(experiment_dir), "trials": total})
    return total


def continue_where_started(
    experiment_dir: str, space: SearchSpace, tracking_uri: str, chosen_uri: str | None
) -> tuple[str, str, list[str]]:
    """The MLflow store and experiment a resumed search logs to, and the lines to print.

    ``tracking_uri`` is the one this command would use, ``chosen_uri`` the one the user named
    (``--tracking-uri`` or the space's ``mlflow.tracking_uri``), None for the default. A
    search started before this record existed is resumed as it is asked."""
    record = _read(experiment_dir)
    if record is None:
        return tracking_uri, space.experiment, []
    where = f"{space.source}: --resume"
    if record["data"] != _data(space):
        raise ReidSearchError(
            mask_secrets(
                f"{where}: this search trains on {record['data']}, not {_data(space)} (its "
                f"trials are compared on one dataset; pass --data {record['data']} or start a "
                "new search)"
            )
        )
    notes = []
    recorded = record["tracking_uri"]
    if recorded != tracking_uri:
        if chosen_uri is not None:
            raise ReidSearchError(
                mask_secrets(
                    f"{where}: this search logs to the MLflow store {recorded}, not "
                    f"{chosen_uri} (resume it without --tracking-uri, or with that one)"
                )
            )
        notes.append(
            mask_secrets(f"resuming in the search's own MLflow store {recorded}, where it started")
        )
    return recorded, record["experiment"], notes
