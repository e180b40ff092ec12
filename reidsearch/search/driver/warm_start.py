"""Warm start: a new search's study is told the trials of earlier searches of the same problem
before it suggests (``warm_start:`` in the space: their folders or MLflow parent run ids).

Each earlier study is read from its journal (``results.study``): its finished trials with their
scores and its pruned ones with their per-epoch scores, as Optuna recorded them. A trial is told
only if it would be a trial of the new space: the same active keys (conditions respected) and
every value inside the new distributions; the others are skipped and counted. Searches of
another objective are refused: their scores are not comparable.
"""

from __future__ import annotations

from typing import Any

from reidsearch.errors import ReidSearchError
from reidsearch.redact import mask_secrets
from reidsearch.search.driver.search_record import recorded_objective
from reidsearch.search.keys import EXPERIMENT_DIR_TAG, STUDY_FILE
from reidsearch.search.results.state_files import state_path
from reidsearch.search.results.study import fetch_journal, study_name
from reidsearch.search.space import SearchSpace
from reidsearch.storage import exists


def _folder(entry: str, tracking_uri: str, where: str) -> str:
    """A search folder as given, or the folder an MLflow parent run id records."""
    if exists(state_path(entry, STUDY_FILE)) or exists(entry):
        return entry
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(entry)
    except MlflowException:
        raise ReidSearchError(
            f"{where}: {entry!r} is neither a search folder nor a search's MLflow run id "
            f"in {mask_secrets(tracking_uri)}"
        ) from None
    folder = run.data.tags.get(EXPERIMENT_DIR_TAG)
    if not folder:
        raise ReidSearchError(f"{where}: MLflow run {entry} is not a search's parent run")
    return folder


def _fitting(trial: Any, space: SearchSpace) -> dict[str, Any] | None:
    """The trial's parameters when they are a trial of ``space``, else None."""
    chosen: dict[str, Any] = {}
    for spec in space.params:
        if spec.when is not None and not spec.when.holds(chosen):
            continue
        if spec.key not in trial.params or not spec.contains(trial.params[spec.key]):
            return None
        chosen[spec.key] = trial.params[spec.key]
    return chosen if set(chosen) == set(trial.params) else None


def earlier_trials(space: SearchSpace, tracking_uri: str) -> tuple[list[Any], int]:
    """The earlier searches' finished and pruned trials that fit ``space`` (as Optuna trials of
    its distributions), and how many were skipped."""
    import optuna
    from optuna.trial import TrialState, create_trial

    where = f"{space.source}: warm_start"
    distributions = {spec.key: spec.optuna_distribution() for spec in space.params}
    told, skipped = [], 0
    for entry in space.warm_start:
        folder = _folder(entry, tracking_uri, where)
        objective = recorded_objective(folder)
        if objective is not None and objective != space.objective.model_dump():
            raise ReidSearchError(
                mask_secrets(
                    f"{where}: {folder} searched another objective ({objective}); its scores "
                    "do not compare with this space's"
                )
            )
        journal = fetch_journal(folder)
        if journal is None:
            raise ReidSearchError(mask_secrets(f"{where}: {folder} has no Optuna study"))
        storage = optuna.storages.journal.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        )
        study = optuna.load_study(study_name=study_name(folder), storage=storage)
        if study.direction.name.lower()[:3] != space.mode:
            raise ReidSearchError(f"{where}: {folder} was {study.direction.name.lower()}d")
        for trial in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
            params = _fitting(trial, space)
            if params is None:
                skipped += 1
                continue
            told.append(
                create_trial(
                    params=params,
                    distributions={key: distributions[key] for key in params},
                    value=trial.value if trial.state == TrialState.COMPLETE else None,
                    state=trial.state,
                    intermediate_values=dict(trial.intermediate_values),
                    user_attrs={"warm_start": study_name(folder)},
                )
            )
    return told, skipped


def warm_start_line(space: SearchSpace, told: list[Any], skipped: int) -> str:
    """The one line that says what the study was told."""
    line = f"warm start: the study was told {len(told)} trial(s) of {len(space.warm_start)}"
    line += " earlier search(es)"
    if skipped:
        line += f"; {skipped} skipped (keys or values outside this space)"
    return line
