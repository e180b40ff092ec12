"""Every name the search's processes share: MLflow tags and param prefixes, result keys, statuses
and state-file names.

The Tune driver writes these, trial processes report them and the read-only commands
(``leaderboard``, ``ui``, ``export --best``) read them back, so they live here, in a module that
imports nothing: reading a tag's name never imports Ray. (The score's own result keys, ``score``
and friends, are the core's: ``reidsearch.engine.scoring``.) Ray Tune's ``result.py`` is the
model.
"""

# --- MLflow tags on a search's parent run and its trial runs
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: a trial run's parent (the search)
KIND_TAG = "reidsearch.kind"  # "search" (the parent run) or "trial"
SEARCH_TAG = "reidsearch.search"  # the search's name, on both
OBJECTIVE_TAG = "reidsearch.objective"  # json of the search's ObjectiveConfig, on the parent
OBJECTIVES_TAG = "reidsearch.objectives"  # every objective (JSON list), a multi-objective one
CONSTRAINTS_TAG = "reidsearch.constraints"  # the space's constraints (JSON list of rules)
FRONT_KEY = "front"  # a trial's Pareto rank (1 = on the front), logged when its search ended
HYPERVOLUME_KEY = "hypervolume"  # on the parent: the front's, after each ranked trial
REFERENCE_TAG = "reidsearch.hypervolume_reference"  # the point the hypervolume is taken to
EXPERIMENT_DIR_TAG = "reidsearch.experiment_dir"  # the search's Tune folder, on the parent
BEST_TRIAL_TAG = "best_trial"  # the best trial's Tune id, on a finished search's parent
TRIAL_TAG = "reidsearch.trial_id"  # the Tune trial id, on a trial run
NODE_TAG = "reidsearch.nodes"  # the Ray node ids a trial's rank 0 trained on
RESUMED_TAG = "reidsearch.resumed_from_epochs"  # epochs whose checkpoint a trial resumed from
FAILURE_TAG = "reidsearch.failure"  # one line: why a trial failed
CHECKPOINT_TAG = "reidsearch.checkpoint"  # the folder of the checkpoint a trial's score is of
STOPPED_EARLY_TAG = "stopped_early"  # "True" for a trial a scheduler ended before full length
HEAD_TAG, DATASET_TAG, BACKBONE_TAG = "head", "dataset", "backbone"  # a trial's model and data

# --- MLflow params and metrics of a trial run
SEARCHED_PREFIX = "searched."  # + key: a searched value (``searched.model.lam``)
SCORED_PREFIX = "scored_"  # + metric: its value at the epoch the trial's score comes from

# --- MLflow experiment tags
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by MLflow 3 UIs (model training vs GenAI)
EXPERIMENT_KIND = "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # + key: a saved runs-table view

# --- MLflow run statuses as the search uses them
FINISHED_STATUS, FAILED_STATUS = "FINISHED", "FAILED"
FINAL_STATUSES = (FINISHED_STATUS, FAILED_STATUS)
INTERRUPTED = "KILLED"  # a run whose search was interrupted (``--resume`` takes it up again)

# --- keys of a trial's results (beside the core's metrics and score keys)
NODE_KEY = "node_id"  # the Ray node rank 0 trained on
GRID_KEY = "grid_point"  # a grid search's point, nested in the Tune trial config
DIVERGED_KEY = "diverged"  # a Train run's return value when training diverged
REPLAYED_KEY = "replayed"  # a report that repeats an epoch a restarted run resumes from

# --- how a trial ended (its outcome file)
FINISHED, DIVERGED = "finished", "diverged"

# --- files a search keeps
STATE_DIR = "reidsearch"  # the subfolder of the Tune experiment folder with our state files
MLFLOW_RUNS_FILE = "mlflow_runs.json"  # the tracker's run ids and logged epochs per trial
ASHA_STATE_FILE = "asha_state.json"  # ASHA's rungs
FRONT_ASHA_STATE_FILE = "front_asha_state.json"  # the multi-objective ASHA's rungs
STUDY_FILE = "study.journal"  # the search's Optuna study (an Optuna journal file)
SEARCH_RECORD_FILE = "search.json"  # where a search logs and what it trains on (for --resume)
OUTCOME_FILE = "outcome.json"  # in a trial's Train run folder: how the trial ended
COMPLETE_MARKER = "complete"  # written last into a checkpoint folder by the in-process runner
LEADERBOARD_FILE = "leaderboard.json"  # the parent run's table of trials, best first
BEST_FILE = "summary/best.json"  # the parent run's best trial
IMPORTANCES_FILE = "analysis/importances.json"  # the parent run's parameter importances

# --- environment
CRASH_ENV = "REIDSEARCH_INJECT_CRASH"  # a fault drill for tests: kill a trial process once
