"""One search's trials as a leaderboard in the MLflow UI: a saved runs-table view and its link.

MLflow 3's UI keeps a runs-table view (filter, sort, columns) as *shared view state*: an
experiment tag ``mlflow.sharedViewState.<key>`` that the URL parameter ``viewStateShareKey=<key>``
loads. MLflow 3.17 reads the tag's value as a saved-view envelope (``name``, ``createdAt``,
``updatedAt`` and ``state``, the state a JSON string; older UIs read the bare JSON). It takes the
search facets (``searchFilter``, ``orderByKey``, ``orderByAsc``, ...) and the table's UI state
(``selectedColumns``, ...) from it, but not ``runsExpanded``: so the view filters the runs to the
search's trials (``tags.mlflow.parentRunId``), which the table then lists flat, each on its own
row. ``workflowType=machine_learning`` in the URL opens the runs table rather than the GenAI
overview: checked in a browser, MLflow 3.17.2 picks the view from the URL (or the sidebar's
GenAI / Model training switch) and opens even an experiment tagged ``mlflow.experimentKind =
custom_model_development`` on the GenAI overview; reidsearch sets that tag too, which other 3.x
UIs read.
The view is saved under a key made from the parent run id, so it shows up by name in the UI's
saved views and writing it again replaces it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from reidsearch.config import ObjectiveConfig
from reidsearch.engine.scoring import SCORE_KEY
from reidsearch.errors import ReidSearchError
from reidsearch.search.keys import (
    CONSTRAINTS_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    FRONT_KEY,
    OBJECTIVE_TAG,
    OBJECTIVES_TAG,
    PARENT_TAG,
    SCORED_PREFIX,
    SEARCHED_PREFIX,
    VIEW_TAG_PREFIX,
)
from reidsearch.search.results.searches import find_searches, search_label
from reidsearch.search.results.store import existing_store

VIEW_KEY_PARAM = "viewStateShareKey"  # the URL parameter naming it
WORKFLOW_PARAM, ML_WORKFLOW = "workflowType", "machine_learning"
# The metric columns shown after the objective: what the score epoch gave (see tracking).
VIEW_METRICS = tuple(f"{SCORED_PREFIX}{m}" for m in ("rank1", "mINP", "mAP"))
DEFAULT_UI = "http://127.0.0.1:5000"  # where `reidsearch ui` serves by default
RUN_NAME_COLUMN = "attributes.`Run Name`"


def column(kind: str, key: str) -> str:
    """The UI's canonical column (and sort) key: ``metrics.`score```, ``params.`a.b```."""
    return f"{kind}.`{key}`"


def view_key(parent_run_id: str) -> str:
    """One view per search, so that writing it again replaces it."""
    return f"reidsearch-{parent_run_id}"


def view_state(
    parent_run_id: str, objective: ObjectiveConfig, searched: list[str], front: bool = False
) -> dict[str, Any]:
    """The runs-table state: this search's trials, best first (a multi-objective search: its
    Pareto front first, by the trials' ``front`` rank), objective and metrics as columns."""
    metrics = [column("metrics", SCORE_KEY), *(column("metrics", m) for m in VIEW_METRICS)]
    if front:
        metrics.insert(0, column("metrics", FRONT_KEY))
    params = [column("params", f"{SEARCHED_PREFIX}{key}") for key in searched]
    # The UI sizes only the columns its order lists: the run name is wide enough to read.
    widths = {RUN_NAME_COLUMN: 420, **dict.fromkeys(metrics, 120), **dict.fromkeys(params, 150)}
    return {
        "searchFilter": f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        "orderByKey": column("metrics", FRONT_KEY if front else SCORE_KEY),
        "orderByAsc": front or objective.mode == "min",
        "selectedColumns": [*metrics, *params],
        "columnOrder": [RUN_NAME_COLUMN, *metrics, *params],
        "columnWidths": widths,
        "runsHiddenMode": "SHOW_ALL",  # every trial in the charts too (default: the first 10)
    }


@dataclass
class SearchView:
    """A saved runs-table view of one search, and the link that opens it."""

    experiment_id: str
    parent_run_id: str
    name: str  # shown in the UI's list of saved views
    state: dict[str, Any]
    created_ms: int

    @property
    def key(self) -> str:
        return view_key(self.parent_run_id)

    def tag_value(self, now_ms: int | None = None) -> str:
        """The saved-view envelope MLflow 3.17 reads (its ``state`` is a JSON string)."""
        envelope = {
            "name": self.name,
            "createdAt": self.created_ms,
            "updatedAt": int(time.time() * 1000) if now_ms is None else now_ms,
            "state": json.dumps(self.state),
        }
        return json.dumps(envelope)

    def url(self, base: str = DEFAULT_UI) -> str:
        """The experiment's runs page with this view, as the ML (not GenAI) workflow."""
        query = urlencode({WORKFLOW_PARAM: ML_WORKFLOW, VIEW_KEY_PARAM: self.key})
        return f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs?{query}"


def searched_keys(client: Any, experiment_id: str, parent_run_id: str) -> list[str]:
    """The searched settings of a search, read from its trials' ``searched.*`` params."""
    trials = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=500
    )
    keys = {k for run in trials for k in run.data.params if k.startswith(SEARCHED_PREFIX)}
    return sorted(k[len(SEARCHED_PREFIX) :] for k in keys)


def build_view(client: Any, parent: Any) -> SearchView:
    """The view of the search whose parent run is ``parent`` (its objective is in its tags)."""
    objective = ObjectiveConfig()
    if OBJECTIVE_TAG in parent.data.tags:
        objective = ObjectiveConfig.model_validate(json.loads(parent.data.tags[OBJECTIVE_TAG]))
    experiment_id, run_id = parent.info.experiment_id, parent.info.run_id
    return SearchView(
        experiment_id=experiment_id,
        parent_run_id=run_id,
        name=f"reidsearch {search_label(parent)}",
        state=view_state(
            run_id,
            objective,
            searched_keys(client, experiment_id, run_id),
            front=OBJECTIVES_TAG in parent.data.tags or CONSTRAINTS_TAG in parent.data.tags,
        ),
        created_ms=int(parent.info.start_time or time.time() * 1000),
    )


def save_view(client: Any, view: SearchView) -> None:
    """Write the view on the experiment, and mark the experiment as model training."""
    client.set_experiment_tag(view.experiment_id, VIEW_TAG_PREFIX + view.key, view.tag_value())
    experiment = client.get_experiment(view.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(view.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def search_view(
    tracking_uri: str, experiment: str | None = None, search: str | None = None
) -> SearchView:
    """Save and return the view of ``search`` (a folder name or parent run id; default: the
    newest search of ``experiment``, default the newest search's), as the leaderboard picks."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=existing_store(tracking_uri))
    found, chosen = find_searches(client, tracking_uri, experiment, search)
    if not chosen:
        raise ReidSearchError(f"{tracking_uri}: experiment {found.name!r} has no search yet")
    view = build_view(client, chosen[0])
    save_view(client, view)
    return view


def ui_base(tracking_uri: str, default: str = DEFAULT_UI) -> str:
    """Where the UI of a store is: a tracking server serves its own, else `reidsearch ui`."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return default
