"""What mattered in a search: the leaderboard table and Optuna's analyses on the parent run.

The analyses are rebuilt from the tracker's own record of the trials (searched values, score,
status), not from the live searcher, so that they exist for grid searches too and stay whole
after a resume: an in-memory Optuna study gets one trial per scored trial, with distributions
from the space's ``ParamSpec`` list (a conditional parameter appears only in the trials that
used it). Logged on the parent run:

- ``leaderboard.json``: an MLflow table, one row per trial (id, status, stopped early, score,
  its epoch, the metrics of that epoch, ``param.<key>`` for each searched value), best first;
- ``analysis/param_importances.png``, ``analysis/optimization_history.png`` and
  ``analysis/slice_<key>.png`` (score against each searched parameter that varied);
- ``analysis/importances.json`` and metrics ``importance.<key>``: the importances as numbers,
  or, with too few trials to analyse, only a note saying why.

Importances are Optuna 5's default PED-ANOVA (no scikit-learn, conditional parameters
included): how much each parameter decides whether a trial lands in the top ``q`` of the trials.
``q`` is 5 / trials, clipped to [0.1, 0.5], so that the top holds about five trials (fewer
make the estimate noise). Trials ASHA stopped early are included with their truncated score and
counted in every title and in the json: ASHA stopped them for being worse at a rung, so they
rank below the top where PED-ANOVA puts them anyway, and leaving them out would leave a typical
ASHA search (most trials stopped) with too few trials to say anything. Failed trials and trials
without a score are in the table only.

Nothing here may fail a search: each part catches its errors and warns in one line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reidsearch.search.keys import FINISHED_STATUS, IMPORTANCES_FILE, LEADERBOARD_FILE
from reidsearch.search.rules import board_rank, finite, stopped_early
from reidsearch.search.space.params import ParamSpec

__all__ = ["LEADERBOARD_FILE", "build_study", "leaderboard_rows", "log_search_analysis"]

ANALYSIS_DIR = "analysis"
MIN_TRIALS = 2  # fewer scored trials (or no parameter that varied): no analysis, a note
TOP_TRIALS = 5  # PED-ANOVA's top quantile aims at about this many trials


def leaderboard_rows(
    trials: dict[str, dict[str, Any]], mode: str, full_epochs: int | None = None
) -> list[dict[str, Any]]:
    """One row per trial, best score first (unscored last), for the leaderboard table."""
    rows = []
    for trial_id, entry in trials.items():
        score = entry.get("score")
        rows.append(
            {
                "trial_id": trial_id,
                "status": entry.get("status", "UNKNOWN"),
                "stopped_early": _stopped_early(entry, full_epochs),
                "score": float(score) if finite(score) else None,
                "score_epoch": entry.get("score_epoch"),
                "epochs": entry.get("last_epoch", 0),
                **entry.get("scored", {}),
                **{f"param.{key}": value for key, value in entry.get("searched", {}).items()},
            }
        )
    rows.sort(key=lambda r: board_rank(r["status"], r["score"], mode))
    return rows


def _stopped_early(entry: dict[str, Any], full_epochs: int | None) -> bool:
    failed = entry.get("status") != FINISHED_STATUS  # failed, or not ended (interrupted)
    return stopped_early(entry.get("last_epoch", 0), full_epochs, failed=failed)


def _choice(value: Any) -> Any:
    """A value Optuna accepts as a categorical choice (lists and dicts become their json)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def _distribution(spec: ParamSpec) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if spec.type == "choice":
        return CategoricalDistribution([_choice(v) for v in spec.values])
    if spec.type == "int":
        step = int(spec.step or 1)
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=step)
    log = spec.log or spec.type == "loguniform"
    return FloatDistribution(float(spec.low), float(spec.high), log=log, step=spec.step)


def _observed_distribution(values: list[Any]) -> Any:
    """A distribution that holds what was seen, for a key the space does not describe (a
    tracker built without the space, or a space edited before a resume)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values):
        if all(isinstance(v, int) for v in numbers):
            return IntDistribution(min(numbers), max(numbers))
        return FloatDistribution(float(min(numbers)), float(max(numbers)))
    return CategoricalDistribution(list(dict.fromkeys(_choice(v) for v in values)))


def _fits(distribution: Any, value: Any) -> bool:
    """Whether Optuna takes ``value`` as a value of ``distribution``: ``create_trial`` checks
    each parameter against its distribution (public, unlike ``BaseDistribution._contains``)."""
    from optuna.trial import create_trial

    try:
        create_trial(params={"p": _choice(value)}, distributions={"p": distribution}, value=0.0)
    except (ValueError, TypeError):
        return False
    return True


def build_study(
    trials: dict[str, dict[str, Any]],
    params: list[ParamSpec] | None,
    mode: str,
    full_epochs: int | None = None,
) -> Any:
    """An in-memory Optuna study of the finished, scored trials (in start order), each with
    only the parameters it used; trial user attrs hold ``trial_id`` and ``stopped_early``."""
    import optuna

    scored = {
        trial_id: entry
        for trial_id, entry in trials.items()
        if entry.get("status") == "FINISHED" and finite(entry.get("score"))
    }
    observed: dict[str, list[Any]] = {}
    for entry in scored.values():
        for key, value in entry.get("searched", {}).items():
            observed.setdefault(key, []).append(value)
    specs = {spec.key: spec for spec in params or []}
    distributions = {}
    for key, values in observed.items():
        dist = _distribution(specs[key]) if key in specs else None
        if dist is None or not all(_fits(dist, v) for v in values):
            dist = _observed_distribution(values)
        distributions[key] = dist
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for trial_id, entry in scored.items():
        searched = entry.get("searched", {})
        study.add_trial(
            optuna.trial.create_trial(
                params={key: _choice(value) for key, value in searched.items()},
                distributions={key: distributions[key] for key in searched},
                value=float(entry["score"]),
                user_attrs={
                    "trial_id": trial_id,
                    "stopped_early": _stopped_early(entry, full_epochs),
                },
            )
        )
    return study


def _warn(what: str, err: BaseException) -> None:
    message = str(err).splitlines()[0] if str(err) else ""
    print(f"reidsearch: warning: {what} failed: {type(err).__name__}: {message}", file=sys.stderr)


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's info logs and experimental warnings off, restored after (the driver's own
    searcher uses Optuna too)."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _log_table(client: Any, run_id: str, rows: list[dict[str, Any]]) -> None:
    """``log_table`` appends to an existing table: on a resumed search, replace the file."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    if any(a.path == LEADERBOARD_FILE for a in client.list_artifacts(run_id)):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / LEADERBOARD_FILE
            frame.to_json(path, orient="split", index=False, date_format="iso")
            client.log_artifact(run_id, str(path))
    else:
        client.log_table(run_id, data=frame, artifact_file=LEADERBOARD_FILE)


def _save(ax: Any, title: str, path: Path) -> None:
    """Save the figure of an Axes (or of an array of them) with ``title`` on top."""
    import matplotlib.pyplot as plt

    first = ax.flat[0] if hasattr(ax, "flat") else ax
    figure = first.figure
    first.set_title("", loc="left")  # Optuna's own title, replaced by ours
    first.set_title(title, fontsize=9)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def _analyse(
    client: Any, run_id: str, study: Any, stopped: int, folder: Path
) -> tuple[list[str], dict[str, Any]]:
    """Importances and pictures of a study with enough trials; returns paths and the json."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as vis
    from mlflow.entities import Metric
    from optuna.importance import PedAnovaImportanceEvaluator

    complete = study.trials
    varying = [
        key
        for key in dict.fromkeys(k for t in complete for k in t.params)
        if len({json.dumps(t.params[key]) for t in complete if key in t.params}) > 1
    ]
    info: dict[str, Any] = {"trials": len(complete), "stopped_early_included": stopped}
    if not varying:
        info["note"] = "no searched parameter took more than one value: nothing to compare"
        return [], info
    quantile = min(0.5, max(0.1, TOP_TRIALS / len(complete)))
    evaluator = PedAnovaImportanceEvaluator(target_quantile=quantile)
    importances = optuna.importance.get_param_importances(
        study, evaluator=evaluator, params=varying
    )
    info.update(
        evaluator="PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator)",
        target_quantile=quantile,
        meaning=f"how much each parameter decides reaching the top {quantile:.0%} of trials",
        importances={key: float(value) for key, value in importances.items()},
    )
    now = int(time.time() * 1000)
    metrics = [Metric(f"importance.{k}", float(v), now, 0) for k, v in importances.items()]
    client.log_batch(run_id, metrics=metrics)
    suffix = f"{len(complete)} trials"
    if stopped:
        suffix += f", {stopped} stopped early by ASHA (truncated scores)"
    plots = [
        (
            "param_importances.png",
            "Parameter importances (PED-ANOVA)",
            lambda: vis.plot_param_importances(
                study, evaluator=evaluator, params=varying, target_name="score"
            ),
        ),
        (
            "optimization_history.png",
            "Optimization history",
            lambda: vis.plot_optimization_history(study, target_name="score"),
        ),
        *(
            (
                f"slice_{key}.png",
                f"Score by {key}",
                lambda key=key: vis.plot_slice(study, params=[key], target_name="score"),
            )
            for key in varying
        ),
    ]
    with plt.style.context("default"):  # Optuna's ggplot style stays inside
        for name, title, plot in plots:
            _save(plot(), f"{title}\n{suffix}", folder / name)
    client.log_artifacts(run_id, str(folder), ANALYSIS_DIR)
    return [f"{ANALYSIS_DIR}/{name}" for name, _, _ in plots], info


def log_search_analysis(
    client: Any,
    parent_run_id: str,
    trials: dict[str, dict[str, Any]],
    params: list[ParamSpec] | None,
    mode: str,
    full_epochs: int | None = None,
) -> list[str]:
    """Log the leaderboard table and the analyses on the search's parent run.

    ``trials`` is the tracker's record (trial id -> ``searched``, ``score``, ``score_epoch``,
    ``status``, ``last_epoch``, ``scored``); ``full_epochs`` tells trials ASHA stopped early.
    Returns the artifact paths logged; never raises (a failed part warns in one line).
    """
    logged: list[str] = []
    try:
        if trials:
            _log_table(client, parent_run_id, leaderboard_rows(trials, mode, full_epochs))
            logged.append(LEADERBOARD_FILE)
    except Exception as err:  # noqa: BLE001 - an analysis must never fail the search
        _warn("logging the leaderboard table", err)
    try:
        with _quiet_optuna():
            study = build_study(trials, params, mode, full_epochs)
            stopped = sum(bool(t.user_attrs.get("stopped_early")) for t in study.trials)
            if len(study.trials) < MIN_TRIALS:
                info: dict[str, Any] = {
                    "trials": len(study.trials),
                    "note": f"{len(study.trials)} finished trial(s) with a score: the "
                    f"analyses need at least {MIN_TRIALS}",
                }
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    paths, info = _analyse(client, parent_run_id, study, stopped, Path(tmp))
                logged.extend(paths)
        client.log_text(parent_run_id, json.dumps(info, indent=1), IMPORTANCES_FILE)
        logged.append(IMPORTANCES_FILE)
    except Exception as err:  # noqa: BLE001 - an analysis must never fail the search
        _warn("the search analysis", err)
    return logged
