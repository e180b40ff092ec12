"""The MLflow writes of one trial's run, as the search's tracker (``tracker.py``) makes them:
the run with its params and resolved config, the score kept from each report, and the pictures
(and checkpoint) of the score's epoch. Functions of an MLflow client, so that the tracker can
run them wherever it runs its writes (a background thread, see ``background.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reidsearch.engine.checkpoint import CHECKPOINT_FILE
from reidsearch.engine.scoring import SCORE_EPOCH_KEY, SCORE_KEY
from reidsearch.redact import mask_secrets
from reidsearch.search.driver.logged import SCORED_METRICS, cost_of, flatten_config
from reidsearch.search.keys import (
    BACKBONE_TAG,
    DATASET_TAG,
    HEAD_TAG,
    KIND_TAG,
    PARENT_TAG,
    SEARCH_TAG,
    SEARCHED_PREFIX,
    TRIAL_TAG,
)
from reidsearch.search.results.run_names import readable_run_name
from reidsearch.search.space.trials import resolve_trial
from reidsearch.storage import filesystem


def create_trial_run(
    client: Any,
    *,
    experiment_id: str,
    parent_run_id: str,
    search_name: str,
    fixed: dict[str, Any],
    trial_id: str,
    config: dict[str, Any],
    start_ms: int,
) -> dict[str, Any]:
    """A trial's child run with its params and resolved config; returns the tracker's entry
    for it. ``start_ms``: when Tune started the trial (not when this write runs)."""
    params, resolved = resolve_trial(fixed, config)
    run = client.create_run(
        experiment_id,
        start_time=start_ms,
        run_name=readable_run_name(resolved.model.head, params, trial_id),
        tags={
            PARENT_TAG: parent_run_id,
            KIND_TAG: "trial",
            SEARCH_TAG: search_name,
            TRIAL_TAG: trial_id,
            HEAD_TAG: resolved.model.head,
            DATASET_TAG: mask_secrets(resolved.data.root)
            or f"synthetic-{resolved.data.synthetic.layout}",
            BACKBONE_TAG: resolved.model.backbone,
        },
    )
    from mlflow.entities import Param

    all_params = flatten_config(resolved)
    all_params.update({f"{SEARCHED_PREFIX}{k}": mask_secrets(str(v)) for k, v in params.items()})
    items = [Param(k, v[:6000]) for k, v in sorted(all_params.items())]
    for start in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[start : start + 100])
    client.log_text(
        run.info.run_id,
        json.dumps(mask_secrets(resolved.model_dump()), indent=2),
        "config/resolved_config.json",
    )
    return {
        "run_id": run.info.run_id,
        "last_epoch": 0,
        "score": None,
        "score_checkpoint": None,
        "searched": params,
    }


def record_score(entry: dict[str, Any], result: dict, epoch: int) -> bool:
    """Keep the trial's score as of this report (and the metrics and checkpoint of the epoch it
    comes from); False when the report carries none."""
    if SCORE_KEY not in result:
        return False
    entry["score"] = float(result[SCORE_KEY])
    entry["score_epoch"] = int(result[SCORE_EPOCH_KEY])
    if entry["score_epoch"] == epoch:  # this epoch is now the one the score comes from
        entry["scored"] = {k: float(result[k]) for k in SCORED_METRICS if k in result}
        entry["cost"] = cost_of(result)
        entry["score_checkpoint"] = result.get("checkpoint_path")
    return True


def log_checkpoint_files(
    client: Any, run_id: str, train_storage: str, checkpoint_path: str, with_checkpoint: bool
) -> None:
    """Pictures (and the checkpoint) of the best epoch, read through Ray's Checkpoint API from
    the Train storage, wherever that is."""
    from ray.train import Checkpoint

    filesys, _ = filesystem(train_storage)
    checkpoint = Checkpoint(path=checkpoint_path, filesystem=filesys)
    try:
        with checkpoint.as_directory() as directory:
            for picture in sorted(Path(directory).glob("*.png")):
                client.log_artifact(run_id, str(picture), "pictures")
            if with_checkpoint:
                client.log_artifact(run_id, str(Path(directory) / CHECKPOINT_FILE), "checkpoint")
    except FileNotFoundError:
        pass  # the checkpoint was pruned (num_to_keep) after a better one replaced it


def unrecorded_runs(client: Any, experiment_id: str, parent_run_id: str, recorded: set) -> list:
    """The ids of this search's trial runs that ``recorded`` (the tracker's saved state) does
    not name: created by a driver that died before it saved them."""
    found: list[str] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
        found += [run.info.run_id for run in page if run.info.run_id not in recorded]
        token = page.token
        if not token:
            return found
