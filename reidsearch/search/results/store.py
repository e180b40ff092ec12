"""Where a search's MLflow store is (the default tracking URI) and its experiment, created
marked as model training (not GenAI). Imports no Ray: the read-only commands use it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reidsearch.errors import ReidSearchError
from reidsearch.search.keys import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an ABSOLUTE sqlite file in the working directory
    (Ray moves workers' working directories, so a relative URI would land elsewhere)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve()}/mlflow.db"


def existing_store(tracking_uri: str) -> str:
    """``tracking_uri``, refused in one line when it is a sqlite file that does not exist: MLflow
    creates an empty one on first use, and a read-only command (``leaderboard``, ``ui``,
    ``export --best``) run in the wrong folder must say so rather than leave one behind."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///") :])
        if not path.is_file():
            raise ReidSearchError(
                f"{tracking_uri}: no MLflow store there yet (run `reidsearch run SPACE.yaml` in "
                "this folder first, or pass --tracking-uri)"
            )
    return tracking_uri


def get_or_create_experiment(client: Any, name: str, tracking_uri: str) -> str:
    """The experiment's id, created if need be, marked as model training (unless its kind was
    already chosen), so that the MLflow UI shows runs rather than traces."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            experiment_id = experiment.experiment_id
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):
        db_path = Path(tracking_uri[len("sqlite:///") :])
        artifact_location = (db_path.parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(
        name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    )
