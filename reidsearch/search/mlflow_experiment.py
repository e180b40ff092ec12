"""The MLflow experiment of a search, created marked as model training (not GenAI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Marks an experiment as model training for MLflow 3 UIs that read it (3.17.2 goes by the URL's
# workflowType instead: see mlflow_view).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


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
