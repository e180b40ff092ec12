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
from reidsearch.search.driver.state_files import state_path
from reidsearch.search.keys import SEARCH_RECORD_FILE
from reidsearch.search.space import SearchSpace
from reidsearch.storage import exists, read_text, write_text


def _data(space: SearchSpace) -> str:
    data = space.fixed_config.data
    if data.root:
        return data.root
    return f"synthetic-{data.synthetic.layout}" if data.synthetic is not None else "none"


def write_search_record(
    experiment_dir: str, tracking_uri: str, experiment: str, space: SearchSpace
) -> None:
    """Recorded once, when a new search starts (the URI as used: the tracker has it too)."""
    record = {"tracking_uri": tracking_uri, "experiment": experiment, "data": _data(space)}
    write_text(state_path(experiment_dir, SEARCH_RECORD_FILE), json.dumps(record, indent=1))


def continue_where_started(
    experiment_dir: str, space: SearchSpace, tracking_uri: str, chosen_uri: str | None
) -> tuple[str, str, list[str]]:
    """The MLflow store and experiment a resumed search logs to, and the lines to print.

    ``tracking_uri`` is the one this command would use, ``chosen_uri`` the one the user named
    (``--tracking-uri`` or the space's ``mlflow.tracking_uri``), None for the default. A
    search started before this record existed is resumed as it is asked."""
    path = state_path(experiment_dir, SEARCH_RECORD_FILE)
    if not exists(path):
        return tracking_uri, space.experiment, []
    record = json.loads(read_text(path))
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
