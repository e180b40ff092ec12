"""MLflow tracking of a search: one parent run, one child run per trial, from the Tune driver.

Only the driver process writes to MLflow (a Tune callback), so a local sqlite store has a
single writer even with many concurrent trials; a cluster can use a tracking server URI.
Logging is idempotent across restarts: per-trial run ids are kept in the experiment folder (a
local folder or an ``s3://`` URI), and epochs already logged are not logged again after a worker
restarts from a checkpoint. Pictures and checkpoints reach MLflow from wherever the trial stored
them, through Ray's ``Checkpoint`` API (on a cluster: the bucket, not this machine's disk).

In a search (``background=True``) the writes of each trial event run in a background thread
(``background.py``), in event order, with the event's own times, so that Tune's event loop never
waits on MLflow or storage between trials; the search's end waits for them all.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from reidsearch.config import ObjectiveConfig
from reidsearch.engine.scoring import SCORE_EPOCH_KEY
from reidsearch.redact import mask_secrets
from reidsearch.search.driver.background import BackgroundWriter
from reidsearch.search.driver.logged import CHART_METRICS
from reidsearch.search.driver.trial_runs import (
    create_trial_run,
    log_checkpoint_files,
    record_score,
    unrecorded_runs,
)
from reidsearch.search.driver.trial_states import failure_reason, trial_ended
from reidsearch.search.keys import (
    CHECKPOINT_TAG,
    CONSTRAINTS_TAG,
    EXPERIMENT_DIR_TAG,
    FAILED_STATUS,
    FAILURE_TAG,
    FINAL_STATUSES,
    FINISHED_STATUS,
    INTERRUPTED,
    KIND_TAG,
    MLFLOW_RUNS_FILE,
    NODE_KEY,
    NODE_TAG,
    OBJECTIVE_TAG,
    OBJECTIVES_TAG,
    RESUMED_TAG,
    SCORED_PREFIX,
    SEARCH_TAG,
    STOPPED_EARLY_TAG,
)
from reidsearch.search.results.best_trial import checkpoint_location
from reidsearch.search.results.front_summary import log_front_summary
from reidsearch.search.results.state_files import state_path
from reidsearch.search.results.store import get_or_create_experiment
from reidsearch.search.results.study import load_study
from reidsearch.search.results.summary import log_search_summary
from reidsearch.search.rules import finite, stopped_early
from reidsearch.search.space.params import ParamSpec
from reidsearch.storage import exists, join, read_text, write_text


@dataclass(frozen=True)
class TrialRef:
    """What a queued write needs of a Tune trial, taken when the event happened."""

    trial_id: str
    config: dict[str, Any]

    @classmethod
    def of(cls, trial: Any) -> TrialRef:
        return cls(trial.trial_id, copy.deepcopy(trial.config))


def _now_ms() -> int:
    return int(time.time() * 1000)


class MLflowSearchTracker(Callback):
    """Tune callback: parent run for the search, a child run per trial, artifacts at the end."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        search_name: str,
        experiment_dir: str,
        train_storage: str,
        space_file: str,
        fixed: dict[str, Any],
        objective: ObjectiveConfig,
        log_checkpoint: bool = False,
        full_epochs: int | None = None,
        params: list[ParamSpec] | None = None,
        objectives: list[ObjectiveConfig] | None = None,
        constraints: list[str] | None = None,
        background: bool = False,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.search_name = search_name
        self.experiment_dir = experiment_dir
        self.train_storage = train_storage
        self.space_file = space_file
        self.fixed = fixed
        self.objective = objective
        self.mode = str(objective.mode)
        self.log_checkpoint = log_checkpoint
        self.full_epochs = full_epochs or int(fixed.get("epochs", 0))  # what ASHA lets run
        self.params = list(params or [])  # the space's distributions, for the analyses
        self.objectives = list(objectives or [])  # several: the board shows a Pareto front
        self.constraints = list(constraints or [])
        self.background = background  # trial events' writes off Tune's event loop
        self._client: Any = None
        self._writer: BackgroundWriter | None = None
        self._state: dict[str, Any] = {}
        self._orphans_checked = False

    # -- state kept beside the Tune experiment so a resumed search continues the same runs --
    def _state_path(self) -> str:
        return state_path(self.experiment_dir, MLFLOW_RUNS_FILE)

    def _save_state(self) -> None:
        write_text(self._state_path(), json.dumps(self._state, indent=1))

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def writer(self) -> BackgroundWriter:
        """Where trial events' writes run: a background thread in a search, else inline."""
        if getattr(self, "_writer", None) is None:  # (trackers pickled before it existed)
            inline = not getattr(self, "background", False)
            self._writer = BackgroundWriter("reidsearch-mlflow", inline=inline)
        return self._writer

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_writer"] = None  # Tune pickles its callbacks: no thread, queue or lock
        return state

    @property
    def parent_run_id(self) -> str:
        return self._state["parent"]

    def setup(self, **info: Any) -> None:
        for path in (self._state_path(), join(self.experiment_dir, MLFLOW_RUNS_FILE)):
            if exists(path):  # (the second: where earlier versions kept it)
                self._state = json.loads(read_text(path))
                break
        if "parent" not in self._state:
            experiment_id = get_or_create_experiment(
                self.client, self.experiment, self.tracking_uri
            )
            run = self.client.create_run(
                experiment_id,
                run_name=self.search_name,
                tags={
                    KIND_TAG: "search",
                    SEARCH_TAG: self.search_name,
                    OBJECTIVE_TAG: self.objective.model_dump_json(),
                    EXPERIMENT_DIR_TAG: mask_secrets(self.experiment_dir),
                    **self._front_tags(),
                },
            )
            self._state = {"parent": run.info.run_id, "experiment_id": experiment_id, "trials": {}}
            space = Path(self.space_file)  # as written, but for credentials in its URIs
            text = mask_secrets(space.read_text())
            self.client.log_text(run.info.run_id, text, f"search_space/{space.name}")
            self._save_state()
        else:  # a resumed search
            self.client.update_run(self.parent_run_id, status="RUNNING")
            self._delete_unrecorded_runs()
            self._reconcile_logged_epochs()

    def _front_tags(self) -> dict[str, str]:
        """A multi-objective or constrained search's objectives and rules, for the board."""
        tags = {}
        if len(getattr(self, "objectives", [])) > 1:
            tags[OBJECTIVES_TAG] = json.dumps([o.model_dump() for o in self.objectives])
        if getattr(self, "constraints", []):
            tags[CONSTRAINTS_TAG] = json.dumps(self.constraints)
        return tags

    def _delete_unrecorded_runs(self) -> None:
        """Trial runs MLflow has but the saved state does not name (the driver died between
        creating one and saving the state, which is written before any epoch is logged to it):
        deleted; a trial Tune still knows gets a new run, so MLflow keeps one run per trial."""
        recorded = {entry["run_id"] for entry in self._state["trials"].values()}
        for run_id in unrecorded_runs(
            self.client, self._state["experiment_id"], self.parent_run_id, recorded
        ):
            self.client.delete_run(run_id)

    def _reconcile_logged_epochs(self) -> None:
        """Epochs MLflow has but the saved state does not (the driver died between logging
        them and saving): counted as logged, so that nothing is logged twice."""
        for entry in self._state["trials"].values():
            if entry.get("status") in FINAL_STATUSES:
                continue
            history = self.client.get_metric_history(entry["run_id"], "epoch")
            entry["last_epoch"] = max([entry["last_epoch"], *(m.step for m in history)])
        self._save_state()

    # -- Tune's events: each one's writes are queued with what they need of it (see `writer`)
    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """Once, on the first step of a resumed search: trial runs that Tune does not know
        (started after its last saved state, before the driver went down; the restored search
        suggests new trials instead) are deleted, so MLflow keeps exactly one run per trial."""
        if self._orphans_checked:
            return
        self._orphans_checked = True
        self.writer.submit(self._delete_orphans, {trial.trial_id for trial in trials})

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.writer.submit(self._start_trial, TrialRef.of(trial), _now_ms())

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self.writer.submit(self._log_result, TrialRef.of(trial), dict(result), _now_ms())

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.writer.submit(self._finish_trial, TrialRef.of(trial), FINISHED_STATUS, "", _now_ms())

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = failure_reason(trial)
        self.writer.submit(self._finish_trial, TrialRef.of(trial), FAILED_STATUS, reason, _now_ms())

    # -- the writes (in the writer's thread; the only code that touches the state meanwhile)
    def _delete_orphans(self, known: set[str]) -> None:
        orphans = [tid for tid in self._state["trials"] if tid not in known]
        for trial_id in orphans:
            self.client.delete_run(self._state["trials"].pop(trial_id)["run_id"])
        if orphans:
            self._save_state()

    def _trial_entry(self, trial: TrialRef, at_ms: int) -> dict[str, Any]:
        entry = self._state["trials"].get(trial.trial_id)
        if entry is not None:
            return entry
        entry = create_trial_run(
            self.client,
            experiment_id=self._state["experiment_id"],
            parent_run_id=self.parent_run_id,
            search_name=self.search_name,
            fixed=self.fixed,
            trial_id=trial.trial_id,
            config=trial.config,
            start_ms=at_ms,
        )
        self._state["trials"][trial.trial_id] = entry
        self._save_state()  # before anything else is logged to the run (see setup)
        return entry

    def _start_trial(self, trial: TrialRef, at_ms: int) -> None:
        entry = self._trial_entry(trial, at_ms)
        if entry.get("status") == INTERRUPTED:  # a resumed search takes it up again
            del entry["status"]
            self.client.update_run(entry["run_id"], status="RUNNING")
            self._save_state()

    def _log_result(self, trial: TrialRef, result: dict, at_ms: int) -> None:
        from mlflow.entities import Metric

        entry = self._trial_entry(trial, at_ms)
        epoch = int(result.get("epoch", 0))
        if epoch <= entry["last_epoch"]:
            # A restarted run repeats epochs already logged: not logged again, but their score
            # counts (the driver may have died between logging an epoch and saving this state).
            if record_score(entry, result, epoch):
                self._save_state()
            return
        metrics = [
            Metric(key, float(result[key]), at_ms, epoch)
            for key in CHART_METRICS
            if key in result and finite(result[key])
        ]
        self.client.log_batch(entry["run_id"], metrics=metrics)
        entry["last_epoch"] = epoch
        if entry.get("status") == FAILED_STATUS:  # a failed trial that --resume took up again
            del entry["status"]
            self.client.update_run(entry["run_id"], status="RUNNING")
            if FAILURE_TAG in self.client.get_run(entry["run_id"]).data.tags:
                self.client.delete_tag(entry["run_id"], FAILURE_TAG)
        resumed_from = int(result.get("start_epoch", 0))
        if resumed_from > 0 and resumed_from not in entry.setdefault("resumed_from", []):
            entry["resumed_from"].append(resumed_from)  # from the checkpoint of that epoch
            tag = ",".join(map(str, entry["resumed_from"]))
            self.client.set_tag(entry["run_id"], RESUMED_TAG, tag)
        node = result.get(NODE_KEY)
        if node and node not in entry.setdefault("nodes", []):
            entry["nodes"].append(node)  # a trial resumed elsewhere lists every node it used
            self.client.set_tag(entry["run_id"], NODE_TAG, ",".join(entry["nodes"]))
        record_score(entry, result, epoch)
        self._save_state()

    def _finish_trial(self, trial: TrialRef, status: str, reason: str, at_ms: int) -> None:
        entry = self._trial_entry(trial, at_ms)
        if entry.get("status") in FINAL_STATUSES:
            return  # ended before a restart of the driver (Tune reports its end again)
        run_id = entry["run_id"]
        if reason:
            self.client.set_tag(run_id, FAILURE_TAG, reason[:5000])
        if entry.get("score_checkpoint"):
            log_checkpoint_files(
                self.client,
                run_id,
                self.train_storage,
                entry["score_checkpoint"],
                self.log_checkpoint,
            )
            where = checkpoint_location(self.train_storage, entry["score_checkpoint"])
            self.client.set_tag(run_id, CHECKPOINT_TAG, where)  # for `reidsearch export --best`
        if entry.get("score") is not None:
            from mlflow.entities import Metric

            step = entry["score_epoch"]
            scored = [
                Metric(f"{SCORED_PREFIX}{key}", value, at_ms, step)
                for key, value in entry.get("scored", {}).items()
                if finite(value)
            ]
            scored += [Metric(key, v, at_ms, step) for key, v in entry.get("cost", {}).items()]
            scored.append(Metric(SCORE_EPOCH_KEY, float(step), at_ms, step))
            self.client.log_batch(run_id, metrics=scored)
            self.client.set_tag(run_id, SCORE_EPOCH_KEY, str(step))
        early = stopped_early(entry["last_epoch"], self.full_epochs, failed=status == FAILED_STATUS)
        self.client.set_tag(run_id, STOPPED_EARLY_TAG, str(early))
        self.client.set_terminated(run_id, status=status, end_time=at_ms)
        entry["status"] = status
        self._save_state()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """The search ended, or was interrupted (Ctrl-C: Tune stops, saves and ends here)."""
        self.writer.close()  # every trial event's writes first (raises the first that failed)
        unfinished = [t for t in trials if not trial_ended(t)]
        if unfinished:  # interrupted: `--resume` continues these runs
            for trial in unfinished:
                entry = self._state["trials"].get(trial.trial_id)
                if entry is not None and entry.get("status") not in FINAL_STATUSES:
                    entry["status"] = INTERRUPTED
                    self.client.set_terminated(entry["run_id"], status=INTERRUPTED)
            self._save_state()
            self.client.set_terminated(self.parent_run_id, status=INTERRUPTED)
            return
        log_search_summary(
            self.client,
            self.parent_run_id,
            self._state["trials"],
            self.params,
            self.mode,
            self.full_epochs,
        )
        if self._front_tags():  # several objectives, or constraints: the front's summary
            study = load_study(self.experiment_dir)
            log_front_summary(self.client, self.tracking_uri, self.parent_run_id, study)
        self.client.set_terminated(self.parent_run_id, status=FINISHED_STATUS)
