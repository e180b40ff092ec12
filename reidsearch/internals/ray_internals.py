"""Private parts of Ray (and Ray Tune) that reidsearch uses, each with why no public API does it.

Ray is imported inside the functions (``reidsearch.search.space`` and the CLI's ``--help`` do
not import it). Each function is checked by ``tests/test_private_apis.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# ----------------------------------------------------------------------- finding a running Ray


def local_ray_address() -> str | None:
    """The address of the newest ``ray start`` on this machine whose GCS still runs, else None.

    Private (``ray._private.services``): the public ``ray.init(address="auto")`` does this lookup
    only while connecting, and the search must know before it connects (it says which Ray it
    joins, or starts a private one when none runs)."""
    from ray._private.services import find_bootstrap_address, find_gcs_addresses

    return find_bootstrap_address(None) if find_gcs_addresses() else None


# ---------------------------------------------------------------- the autoscaler's maximum size


def autoscaler_cluster_config() -> Any:
    """Ray's record of the connected cluster's autoscaler config (a protobuf ``ClusterConfig``;
    its ``node_group_configs`` have ``max_count``), or None where no autoscaler recorded one.

    Private (``ray._private.state.state``): the public APIs (``ray.cluster_resources``,
    ``ray.nodes``, ``ray.util.state``) report the nodes that are up, not how far the autoscaler
    may grow the cluster. Ray's own Train and Data read it the same way."""
    from ray._private.state import state

    return state.get_cluster_config()


def autoscaler_max_resources() -> dict[str, int] | None:
    """The resources of the connected cluster at its autoscaler's maximum size, or None.

    Private (``ray._private.state.state``), for the reason of ``autoscaler_cluster_config``."""
    from ray._private.state import state

    return state.get_max_resources_from_cluster_config()


# ------------------------------------------------------------------------------ cluster files


def cluster_config_validator() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function that fills a cluster file's mapping with Ray's defaults and checks it as
    ``ray up`` does, returning the filled copy (raises jsonschema's ``ValidationError``, or
    ValueError etc., where the file is wrong). Ray's validator is imported here, so that a Ray
    that moved it fails at this call rather than as a complaint about the user's file.

    Private (``ray.autoscaler._private.util.prepare_config / validate_config``): the public
    ``ray.autoscaler.sdk.bootstrap_config`` also runs the cloud provider's bootstrap (credentials,
    network calls), and ``ray.autoscaler.sdk.fillout_defaults`` does not validate."""
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    def prepare_and_validate(config: dict[str, Any]) -> dict[str, Any]:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
        return prepared

    return prepare_and_validate


# ------------------------------------------------------------- log lines forwarded to the driver


def driver_log_printer() -> Callable[..., None] | None:
    """The function through which a Ray driver prints the log lines of its workers and the
    raylet, ``print_to_stdstream(data, ignore_prefix)``, or None where Ray has none.

    Private (``ray._private.worker.print_to_stdstream``): Ray has no public way to filter the
    lines it forwards to the driver, only ``ray.init(log_to_driver=...)`` for all or none."""
    import ray._private.worker as ray_worker

    return getattr(ray_worker, "print_to_stdstream", None)


def set_driver_log_printer(printer: Callable[..., None]) -> None:
    """Make Ray print forwarded log lines through ``printer`` (the signature of
    ``driver_log_printer``'s function); ``ray.init`` reads it when it connects.

    Private: see ``driver_log_printer``."""
    import ray._private.worker as ray_worker

    ray_worker.print_to_stdstream = printer


# ------------------------------------------------------------------------- a Tune trial's state


def trial_last_result(trial: Any) -> dict[str, Any] | None:
    """The last result a Tune ``Trial`` reported, as Tune keeps it in the experiment state (so
    also for a trial restored by a resume), or None where there is none.

    Private (``Trial.run_metadata`` is a ``_TrainingRunMetadata``): the public
    ``Trial.last_result`` may block on the trial's actor for default metrics and adds
    ``trial_id`` to the dict it returns."""
    return getattr(getattr(trial, "run_metadata", None), "last_result", None)


def invalidate_trial_metadata(trial: Any) -> None:
    """Drop the JSON that Tune cached of a trial's run metadata, so that the next save of the
    experiment state writes it afresh (e.g. a ``done`` flag Tune set in place).

    Private (``_TrainingRunMetadata.invalidate_cache``): the public
    ``Trial.invalidate_json_state`` drops the trial's own JSON, not its run metadata's."""
    metadata = getattr(trial, "run_metadata", None)
    if metadata is not None:
        metadata.invalidate_cache()


# --------------------------------------------------------------------- Tune's OptunaSearch


def optuna_search_study(searcher: Any) -> Any:
    """The ``optuna.Study`` behind a Tune ``OptunaSearch`` (None until it has a space).

    Private (``OptunaSearch._ot_study``): Tune offers the study through no public attribute;
    the tests read what the searcher told Optuna (also after ``restore_from_dir``)."""
    return searcher._ot_study


def optuna_search_trials(searcher: Any) -> dict[str, Any]:
    """Tune trial id -> the ``optuna.Trial`` that a Tune ``OptunaSearch`` asked Optuna for.

    Private (``OptunaSearch._ot_trials``): see ``optuna_search_study``."""
    return searcher._ot_trials


# ----------------------------------------------------------------------- Tune's ASHAScheduler
# ``ResumableASHA`` saves and restores ASHA's rungs because Tune does not restore a scheduler on
# ``--resume`` (ray-project/ray issue 30838). ASHAScheduler keeps that state private; its public
# ``save``/``restore`` pickle the whole object, which would also bring back per-trial state of
# the previous driver. Nor does it keep its constructor's arguments publicly (ResumableASHA reads
# them rather than keep copies, which a scheduler pickled by an older reidsearch would lack).


def asha_brackets(scheduler: Any) -> list[Any]:
    """The brackets of a Tune ``ASHAScheduler``, in order (``_brackets``; the list itself)."""
    return scheduler._brackets


def bracket_rungs(bracket: Any) -> list[tuple[float, dict[str, float]]]:
    """One ASHA bracket's rungs, highest milestone first: (milestone, trial id -> the score it
    recorded there). The dicts are the bracket's own: adding to one restores a rung
    (``_Bracket._rungs``)."""
    return bracket._rungs


def asha_trial_brackets(scheduler: Any) -> dict[str, Any]:
    """Trial id -> the bracket ASHA put the trial in (``_trial_info``; the dict itself)."""
    return scheduler._trial_info


def set_asha_stop_count(scheduler: Any, count: int) -> None:
    """Set how many trials ASHA says it stopped (``_num_stopped``, in ``debug_string``)."""
    scheduler._num_stopped = count


def asha_time_attr(scheduler: Any) -> str:
    """The result key ASHA measures progress by (``time_attr`` of its constructor)."""
    return scheduler._time_attr


def asha_max_t(scheduler: Any) -> float:
    """The progress at which ASHA ends a trial (``max_t`` of its constructor)."""
    return scheduler._max_t


# ------------------------------------------------------------------ Tune's SearchGenerator


def raised_search_total(state: dict[str, Any], total: int) -> dict[str, Any]:
    """A copy of a ``SearchGenerator``'s saved state (``get_state``) that creates trials until
    ``total`` in all (never fewer than it had): how a finished search is extended.

    Private (the keys of ``SearchGenerator.get_state``): Tune takes a search's sample count
    from its pickled state on restore and offers no way to change it (ray-project/ray issues
    18847, 20886, 30223)."""
    state = dict(state)
    if total > state["total_samples"]:
        state["total_samples"] = total
        state["finished"] = False  # (set when the count was reached or the searcher ended)
    return state
