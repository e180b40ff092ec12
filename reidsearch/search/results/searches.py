"""Finding a search in MLflow: the experiment (default: the newest search's) and its searches'
parent runs."""

from __future__ import annotations

from typing import Any

from reidsearch.errors import ReidSearchError
from reidsearch.search.keys import EXPERIMENT_DIR_TAG, KIND_TAG
from reidsearch.storage import basename


def search_label(run: Any) -> str:
    """A search's name as the commands show it: its Tune folder's name (else its run id)."""
    folder = run.data.tags.get(EXPERIMENT_DIR_TAG, "")
    return basename(folder) or run.info.run_id  # (a URI's ?query is not part of the name)


def _find_experiment(client: Any, tracking_uri: str, experiment: str | None) -> Any:
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise ReidSearchError(f"{tracking_uri}: no experiment named {experiment!r}")
        return found
    # The experiment of the newest search (not the newest experiment: re-running an older
    # space adds a search to an older experiment).
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    newest = (
        client.search_runs(
            [e.experiment_id for e in experiments],
            filter_string=f"tags.`{KIND_TAG}` = 'search'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if experiments
        else []
    )
    if newest:
        return client.get_experiment(newest[0].info.experiment_id)
    if not experiments:
        raise ReidSearchError(
            f"{tracking_uri}: no reidsearch experiments yet (run `reidsearch run SPACE.yaml` first)"
        )
    return max(experiments, key=lambda e: e.creation_time or 0)


def _pick_searches(parents: list[Any], search: str | None, all_searches: bool) -> list[Any]:
    if all_searches or not parents:
        return parents
    if search is None:
        return parents[:1]  # the newest
    chosen = [p for p in parents if search in (p.info.run_id, search_label(p))]
    if not chosen:
        known = ", ".join(search_label(p) for p in parents[:5])
        raise ReidSearchError(f"--search {search}: no such search (recent: {known})")
    return chosen


def find_searches(
    client: Any,
    tracking_uri: str,
    experiment: str | None,
    search: str | None,
    all_searches: bool = False,
) -> tuple[Any, list[Any]]:
    """The experiment (default: the one of the newest search) and the parent runs of the searches
    to show: the newest, the one named by ``search`` (folder name or run id), or all, newest
    first."""
    found = _find_experiment(client, tracking_uri, experiment)
    parents = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{KIND_TAG}` = 'search'",
        order_by=["attributes.start_time DESC"],
    )
    return found, _pick_searches(list(parents), search, all_searches)
